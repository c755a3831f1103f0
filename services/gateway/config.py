"""The gateway's own settings, read from the environment beside the shared `Settings`."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from libs.runtime.settings import SettingsError


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True):
    rate_limit_per_minute: int = 6000
    auth_failures_per_minute: int = 300
    max_body_bytes: int = 64 * 1024
    command_timeout_s: float = 5.0
    idempotency_stale_s: float = 60.0


_VARIABLES: dict[str, tuple[str, type[int] | type[float]]] = {
    "RATE_LIMIT_PER_MINUTE": ("rate_limit_per_minute", int),
    "AUTH_FAILURES_PER_MINUTE": ("auth_failures_per_minute", int),
    "COMMAND_TIMEOUT_SECONDS": ("command_timeout_s", float),
}


def config_from_environ(environ: Mapping[str, str]) -> GatewayConfig:
    """`GatewayConfig` from `RATE_LIMIT_PER_MINUTE`, `AUTH_FAILURES_PER_MINUTE` and
    `COMMAND_TIMEOUT_SECONDS`."""
    values: dict[str, int | float] = {}
    for name, (field, kind) in _VARIABLES.items():
        raw = environ.get(name, "")
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError as e:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from e
        if value <= 0:
            raise SettingsError(f"{name} must be positive, got {raw!r}")
        values[field] = value
    return GatewayConfig(**values)  # type: ignore[arg-type]
