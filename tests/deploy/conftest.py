"""A local Secrets Manager for the deploy tests: moto's server on 127.0.0.1, on a free port.

The code under test talks to it over HTTP exactly as to AWS (`AWS_ENDPOINT_URL_SECRETS_MANAGER`);
nothing is mocked inside the process.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": REGION,
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto server speaking the Secrets Manager API on loopback."""
    from moto.server import ThreadedMotoServer  # here: importing moto takes about 1 s

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def secretsmanager(moto_endpoint: str) -> Any:
    """A botocore client for arranging secrets on the moto server (the test's own hands)."""
    import botocore.session  # here: only the tests that use it pay for importing it

    return botocore.session.get_session().create_client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def aws_env(moto_endpoint: str) -> dict[str, str]:
    """Variables that point the code under test at the moto server."""
    return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_endpoint}


@pytest.fixture
def make_secret(secretsmanager: Any) -> Callable[[dict[str, Any] | str], str]:
    """Create a secret with a unique name; return its ARN."""

    def make(value: dict[str, Any] | str) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        name = f"weelo/test-{uuid.uuid4().hex[:12]}"
        return str(secretsmanager.create_secret(Name=name, SecretString=text)["ARN"])

    return make


@pytest.fixture
def cli_env(aws_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Environment for `weelo` subprocesses: the moto endpoint and no stray AWS settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TEST_", "PYTEST_"))}
    env.update(aws_env)
    env["WEELO_STATE_DIR"] = str(tmp_path / "state")
    return env
