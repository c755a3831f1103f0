"""A non-gateway service as its task definition runs it: WEELO_SECRETS_ID names the app secret
(DATABASE_URL, REDIS_URL, no JWT key) on a local Secrets Manager (moto's server), and no JWT
key anywhere in its environment (issue 13, item 8: only the gateway gets the JWT keys)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.processes import environment, run_weelo, services

JWT_NAMES = ("JWT_SECRET", "JWT_REFRESH_SECRET", "JWT_PREVIOUS_SECRETS")


def test_a_service_starts_without_any_jwt_key(
    cli_env: dict[str, str],
    service_env: dict[str, str],
    make_secret: Callable[[Any], str],
) -> None:
    """broadcast, given only the app secret's keys (no JWT key in the secret or the
    environment), starts and answers /health 200 with PostgreSQL and Redis ok."""
    arn = make_secret(
        {
            "DATABASE_URL": service_env["DATABASE_URL"],
            "REDIS_URL": service_env["REDIS_URL"],
            "FCM_SERVER_KEY": "test-fcm-key",
        }
    )
    base = {k: v for k, v in {**service_env, **cli_env}.items() if k not in JWT_NAMES}
    base.pop("DATABASE_URL")
    base.pop("REDIS_URL")
    env = environment(base, WEELO_SECRETS_ID=arn)
    assert not any(name.startswith("JWT_") for name in env)
    with services(["broadcast"], env) as running:
        health = httpx.get(f"http://127.0.0.1:{running['broadcast'].port}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["checks"] == {"postgres": "ok", "redis": "ok"}


def test_a_deployed_service_writes_no_key_of_its_own(
    cli_env: dict[str, str],
    service_env: dict[str, str],
    make_secret: Callable[[Any], str],
    tmp_path: Path,
) -> None:
    """With WEELO_SECRETS_ID set and no JWT key anywhere, a service generates none: its state
    folder gets no `secrets/` (a local run's generated keys), where before it got two random
    keys that no other task shares."""
    arn = make_secret({"DATABASE_URL": service_env["DATABASE_URL"]})
    base = {k: v for k, v in {**service_env, **cli_env}.items() if k not in JWT_NAMES}
    env = environment(base, WEELO_SECRETS_ID=arn, WEELO_STATE_DIR=str(tmp_path))
    with services(["broadcast"], env) as running:
        health = httpx.get(f"http://127.0.0.1:{running['broadcast'].port}/health", timeout=10)
    assert health.status_code == 200
    assert not (tmp_path / "secrets").exists()


def test_a_gateway_whose_secret_holds_no_jwt_key_refuses_to_start(
    cli_env: dict[str, str],
    service_env: dict[str, str],
    make_secret: Callable[[Any], str],
    tmp_path: Path,
) -> None:
    """A gateway pointed at a secret without JWT keys, and none in its environment, exits 2
    naming the missing keys instead of signing with a random key of its own."""
    arn = make_secret({"FCM_SERVER_KEY": "test-fcm-key"})
    base = {k: v for k, v in {**service_env, **cli_env}.items() if k not in JWT_NAMES}
    env = environment(base, WEELO_SECRETS_ID=arn, WEELO_STATE_DIR=str(tmp_path))
    done = run_weelo(env, "run", "gateway", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no JWT_SECRET or JWT_REFRESH_SECRET" in done.stderr
    assert not (tmp_path / "secrets").exists()
