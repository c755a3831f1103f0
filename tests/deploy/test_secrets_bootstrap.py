"""`bootstrap_secrets()` against a real Secrets Manager API (moto's server on loopback)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from libs.runtime.secrets import (
    DEFAULT_REGION,
    SecretsError,
    bootstrap_secrets,
    open_secret_source,
    secrets_region,
)
from tests.deploy.conftest import REGION

MakeSecret = Callable[[dict[str, Any] | str], str]


def test_secret_keys_win_over_the_environment(
    make_secret: MakeSecret, aws_env: dict[str, str]
) -> None:
    """Every known key in the secret replaces the environment's value; other keys stay out."""
    arn = make_secret(
        {
            "DATABASE_URL": "postgresql://db.invalid/weelo",
            "JWT_SECRET": "test-from-secret",
            "UNRELATED": "ignored",
        }
    )
    env = {
        **aws_env,
        "WEELO_SECRETS_ID": arn,
        "JWT_SECRET": "test-from-env",
        "REDIS_URL": "redis://env.invalid/0",
    }
    applied = bootstrap_secrets(env)
    assert applied == ["DATABASE_URL", "JWT_SECRET"]
    assert env["JWT_SECRET"] == "test-from-secret"
    assert env["DATABASE_URL"] == "postgresql://db.invalid/weelo"
    assert env["REDIS_URL"] == "redis://env.invalid/0"
    assert "UNRELATED" not in env


def test_previous_key_lists_are_applied_too(
    make_secret: MakeSecret, aws_env: dict[str, str]
) -> None:
    """JWT_PREVIOUS_SECRETS from the secret reaches the environment, so settings accept it."""
    arn = make_secret({"JWT_SECRET": "test-new", "JWT_PREVIOUS_SECRETS": "test-old"})
    env = {**aws_env, "WEELO_SECRETS_ID": arn}
    assert bootstrap_secrets(env) == ["JWT_SECRET", "JWT_PREVIOUS_SECRETS"]
    assert env["JWT_PREVIOUS_SECRETS"] == "test-old"


def test_without_secrets_id_nothing_is_read() -> None:
    """Without WEELO_SECRETS_ID the environment is left as it is and no endpoint is called."""
    env = {"JWT_SECRET": "test-env", "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:9"}
    assert bootstrap_secrets(env) == []
    assert env == {
        "JWT_SECRET": "test-env",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:9",
    }


def test_missing_secret_is_named_with_its_region(aws_env: dict[str, str]) -> None:
    """A secret that does not exist raises a message naming it, the region and the AWS error."""
    env = {**aws_env, "WEELO_SECRETS_ID": "weelo/does-not-exist"}
    with pytest.raises(SecretsError) as raised:
        bootstrap_secrets(env)
    message = str(raised.value)
    assert f"'weelo/does-not-exist' in {REGION}: ResourceNotFoundException" in message
    assert "WEELO_SECRETS_ID" in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("DATABASE_URL=test-value-leak", "is not valid JSON"),
        ('["test-value-leak"]', "must be a JSON object"),
        (
            '{"DATABASE_URL": 5, "JWT_SECRET": "test-value-leak"}',
            "DATABASE_URL must be a non-empty",
        ),
        ('{"REDIS_URL": "", "JWT_SECRET": "test-value-leak"}', "REDIS_URL must be a non-empty"),
    ],
)
def test_malformed_secret_is_refused_without_quoting_it(
    make_secret: MakeSecret, aws_env: dict[str, str], value: str, problem: str
) -> None:
    """A secret that is not a JSON object of strings is refused; the message quotes no value."""
    env = {**aws_env, "WEELO_SECRETS_ID": make_secret(value)}
    before = dict(env)
    with pytest.raises(SecretsError, match=problem) as raised:
        bootstrap_secrets(env)
    assert "test-value-leak" not in str(raised.value)
    assert env == before


def test_log_line_names_keys_never_values(
    make_secret: MakeSecret, aws_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The one log line of a bootstrap (JSON on stderr) names the keys, never their values."""
    values = {"JWT_SECRET": "test-access-value", "REDIS_URL": "redis://:test-redis-pw@r.invalid/0"}
    arn = make_secret(values)
    bootstrap_secrets({**aws_env, "WEELO_SECRETS_ID": arn})
    out, err = capsys.readouterr()
    assert out == ""
    line = json.loads(err.strip().splitlines()[-1])
    assert line["event"] == "secrets_loaded"
    assert line["keys"] == ["REDIS_URL", "JWT_SECRET"]
    assert line["secret_id"] == arn
    for value in values.values():
        assert value not in err


def test_region_comes_from_the_arn_when_none_is_set(
    make_secret: MakeSecret, aws_env: dict[str, str]
) -> None:
    """With neither AWS_REGION nor AWS_DEFAULT_REGION set, the secret's ARN names the region."""
    arn = make_secret({"JWT_SECRET": "test-arn-region"})
    env = {k: v for k, v in aws_env.items() if k != "AWS_REGION"}
    env["WEELO_SECRETS_ID"] = arn
    assert bootstrap_secrets(env) == ["JWT_SECRET"]


def test_region_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """AWS_REGION beats AWS_DEFAULT_REGION beats the ARN's region; with none, us-east-1."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    arn = "arn:aws:secretsmanager:ap-south-1:123456789012:secret:weelo/app-AbCdEf"
    assert secrets_region(arn, {"AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "us-west-2"}) == (
        "eu-west-2"
    )
    assert secrets_region(arn, {"AWS_DEFAULT_REGION": "us-west-2"}) == "us-west-2"
    assert secrets_region(arn, {}) == "ap-south-1"
    assert secrets_region("weelo/app", {}) == DEFAULT_REGION


def test_unreachable_endpoint_fails_fast_and_says_so(aws_env: dict[str, str]) -> None:
    """An endpoint nobody listens on stops the bootstrap within seconds with a clear message."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **aws_env,
        "WEELO_SECRETS_ID": "weelo/app",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{port}",
    }
    started = time.monotonic()
    with pytest.raises(SecretsError, match="Secrets Manager is unreachable"):
        bootstrap_secrets(env)
    assert time.monotonic() - started < 20


def test_refresh_interval_must_be_whole_seconds() -> None:
    """A malformed WEELO_SECRETS_REFRESH_SECONDS is a configuration error, not a silent default."""
    with pytest.raises(SecretsError, match="WEELO_SECRETS_REFRESH_SECONDS"):
        open_secret_source(
            {"WEELO_SECRETS_ID": "weelo/app", "WEELO_SECRETS_REFRESH_SECONDS": "soon"}
        )


def test_debug_logging_never_shows_secret_values(
    make_secret: MakeSecret, aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Even with LOG_LEVEL=DEBUG, botocore's wire logging does not print the secret's values."""
    arn = make_secret({"JWT_SECRET": "test-debug-canary-value-0000000000"})
    caplog.set_level(logging.DEBUG)  # after the test's own client wrote the secret
    bootstrap_secrets({**aws_env, "WEELO_SECRETS_ID": arn})
    assert "test-debug-canary-value" not in caplog.text
