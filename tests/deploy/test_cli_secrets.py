"""The `weelo` command reads WEELO_SECRETS_ID first, as real processes against moto's server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from libs.runtime.tokens import InvalidToken, verify
from tests.deploy.conftest import REGION, ROOT

MakeSecret = Callable[[dict[str, Any] | str], str]
DEAD_DATABASE = "postgresql://weelo@127.0.0.1:9/nothing"
DEAD_REDIS = "redis://127.0.0.1:9/0"


def weelo(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", [["migrate"], ["run", "broadcast"], ["run", "gateway"]])
def test_missing_secret_stops_the_command_before_anything_starts(
    cli_env: dict[str, str], command: list[str]
) -> None:
    """A missing secret makes `weelo migrate`/`weelo run` exit 3 with a message, nothing started."""
    env = {
        **cli_env,
        "WEELO_SECRETS_ID": "weelo/missing",
        "DATABASE_URL": DEAD_DATABASE,
        "REDIS_URL": DEAD_REDIS,
    }
    result = weelo(command, env)
    assert result.returncode == 3
    assert result.stderr.startswith(
        f"weelo: cannot read secret 'weelo/missing' in {REGION}: ResourceNotFoundException"
    )
    assert result.stdout == ""
    assert "service_started" not in result.stderr


def test_malformed_secret_stops_the_service_without_printing_it(
    cli_env: dict[str, str], make_secret: MakeSecret
) -> None:
    """A malformed key in the secret stops `weelo run` with exit 3; no value of it is printed."""
    arn = make_secret({"DATABASE_URL": 5, "JWT_SECRET": "test-only-leak-canary"})
    result = weelo(["run", "timer"], {**cli_env, "WEELO_SECRETS_ID": arn})
    assert result.returncode == 3
    assert "DATABASE_URL must be a non-empty string" in result.stderr
    assert "test-only-leak-canary" not in result.stdout + result.stderr


def test_token_is_signed_with_the_key_from_the_secret(
    cli_env: dict[str, str], make_secret: MakeSecret
) -> None:
    """`weelo token` signs with the secret's JWT_SECRET, not the environment's, printing no key."""
    stored, in_env = (
        "test-only-access-key-in-the-secret-0001",
        "test-only-access-key-in-the-env-0001",
    )
    arn = make_secret(
        {"JWT_SECRET": stored, "JWT_REFRESH_SECRET": "test-only-refresh-key-0001-abcdef"}
    )
    env = {**cli_env, "WEELO_SECRETS_ID": arn, "JWT_SECRET": in_env}
    result = weelo(["token", "--role", "driver", "--sub", "driver-1"], env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert verify(token, [stored]).sub == "driver-1"
    with pytest.raises(InvalidToken):
        verify(token, [in_env])
    assert stored not in result.stdout + result.stderr
    assert '"event": "secrets_loaded"' in result.stderr


def test_migrate_uses_the_database_url_from_the_secret(
    cli_env: dict[str, str], make_secret: MakeSecret, database_url: str, redis_url: str
) -> None:
    """`weelo migrate` reaches the database the secret names even when the environment's is dead."""
    arn = make_secret({"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    env = {
        **cli_env,
        "WEELO_SECRETS_ID": arn,
        "DATABASE_URL": DEAD_DATABASE,
        "REDIS_URL": DEAD_REDIS,
    }
    result = weelo(["migrate"], env)
    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stdout
    assert database_url not in result.stdout + result.stderr
