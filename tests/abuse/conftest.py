"""Every module here runs gateway processes (with their relay and projector) on a database of its
own; `gateway` is one gateway of the module's, with `gateway_settings` as extra environment and
`gateway_services` behind it, both of which a module may override."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.conftest import Gateway, started


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """The gateways' relay and projector act on their whole database: each module has its own."""
    return module_database


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def gateway_services() -> tuple[str, ...]:
    return ()


@pytest.fixture(scope="module")
def gateway(
    service_env_module: dict[str, str],
    gateway_settings: dict[str, str],
    gateway_services: tuple[str, ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """One gateway process of this module's, logging to a file, stopped after the module."""
    env = {**service_env_module, **gateway_settings}
    with started(env, tmp_path_factory.mktemp("gateway"), gateway_services) as running:
        yield running
