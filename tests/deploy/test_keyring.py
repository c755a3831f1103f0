"""The JWT keyring: rotation without logging anybody out, against moto's Secrets Manager."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from libs.runtime.keyring import JwtKeyring, JwtKeys, open_keyring
from libs.runtime.secrets import SecretsError
from libs.runtime.settings import Settings, load_settings
from libs.runtime.tokens import InvalidToken, issue, verify

MakeSecret = Callable[[dict[str, Any] | str], str]
ACCESS_1, ACCESS_2 = "test-access-key-generation-1-abcdef", "test-access-key-generation-2-abcdef"
REFRESH_1, REFRESH_2 = "test-refresh-key-generation-1-abcdef", "test-refresh-key-generation-2-abcde"


def settings_for(env: dict[str, str]) -> Settings:
    base = {"DATABASE_URL": "postgresql://unused.invalid/weelo", "REDIS_URL": "redis://unused"}
    base.update(JWT_SECRET="test-env-access-key-000000000000000", JWT_REFRESH_SECRET="test-env-r")
    return load_settings({**base, **env})


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def test_without_a_secret_the_environment_keys_are_used() -> None:
    """Without WEELO_SECRETS_ID: JWT_SECRET then JWT_PREVIOUS_SECRETS, and the refresh pair."""
    env = {
        "JWT_SECRET": "a-current",
        "JWT_PREVIOUS_SECRETS": "b-older,c-oldest",
        "JWT_REFRESH_SECRET": "r-current",
        "JWT_REFRESH_PREVIOUS_SECRETS": "q-older",
    }
    keyring = open_keyring(settings_for(env), env)
    assert keyring.access_secrets() == ("a-current", "b-older", "c-oldest")
    assert keyring.refresh_secrets() == ("r-current", "q-older")


def test_secret_keys_win_and_missing_ones_fall_back(
    make_secret: MakeSecret, aws_env: dict[str, str]
) -> None:
    """The secret's JWT_SECRET wins over the environment; a key it lacks comes from the env."""
    arn = make_secret({"JWT_SECRET": ACCESS_1})
    env = {**aws_env, "WEELO_SECRETS_ID": arn, "JWT_REFRESH_SECRET": REFRESH_1}
    keyring = open_keyring(settings_for(env), env)
    assert keyring.access_secrets() == (ACCESS_1,)
    assert keyring.refresh_secrets() == (REFRESH_1,)


def test_rotation_is_picked_up_after_the_refresh_interval(
    make_secret: MakeSecret, secretsmanager: Any, aws_env: dict[str, str]
) -> None:
    """After a rotation the keyring signs with the new key and still accepts the replaced one."""
    arn = make_secret({"JWT_SECRET": ACCESS_1, "JWT_REFRESH_SECRET": REFRESH_1})
    env = {**aws_env, "WEELO_SECRETS_ID": arn}
    keyring = open_keyring(settings_for(env), env, refresh_interval_s=1, check_interval_s=0.1)
    old_token = issue(keyring.access_secrets()[0], role="driver", sub="driver-1", ttl_s=600)
    old_refresh = issue(keyring.refresh_secrets()[0], role="driver", sub="driver-1", ttl_s=600)

    rotated = {"JWT_SECRET": ACCESS_2, "JWT_REFRESH_SECRET": REFRESH_2}
    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(rotated))
    wait_until(lambda: keyring.access_secrets()[0] == ACCESS_2)

    assert keyring.access_secrets() == (ACCESS_2, ACCESS_1)
    assert keyring.refresh_secrets() == (REFRESH_2, REFRESH_1)
    assert verify(old_token, keyring.access_secrets()).sub == "driver-1"
    assert verify(old_refresh, keyring.refresh_secrets()).sub == "driver-1"
    new_token = issue(keyring.access_secrets()[0], role="driver", sub="driver-1", ttl_s=600)
    assert verify(new_token, [ACCESS_2]).sub == "driver-1"
    with pytest.raises(InvalidToken):
        verify(old_refresh, keyring.access_secrets())


def test_listed_previous_keys_survive_an_unrelated_update(
    make_secret: MakeSecret, secretsmanager: Any, aws_env: dict[str, str]
) -> None:
    """A key listed in JWT_PREVIOUS_SECRETS stays accepted after a later, non-JWT update."""
    first = {
        "JWT_SECRET": ACCESS_2,
        "JWT_PREVIOUS_SECRETS": ACCESS_1,
        "JWT_REFRESH_SECRET": REFRESH_2,
    }
    arn = make_secret(first)
    changed = {**first, "DATABASE_URL": "postgresql://other.invalid/weelo"}
    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(changed))
    # AWSPREVIOUS is now `first`, whose JWT_SECRET is ACCESS_2: only the list keeps ACCESS_1.
    env = {**aws_env, "WEELO_SECRETS_ID": arn}
    keyring = open_keyring(settings_for(env), env)
    assert keyring.access_secrets() == (ACCESS_2, ACCESS_1)
    assert keyring.refresh_secrets() == (REFRESH_2,)


def test_unreadable_secret_at_start_raises(aws_env: dict[str, str]) -> None:
    """A keyring whose secret cannot be read fails at start-up instead of serving no keys."""
    env = {**aws_env, "WEELO_SECRETS_ID": "weelo/no-such-secret"}
    with pytest.raises(SecretsError, match="ResourceNotFoundException"):
        open_keyring(settings_for(env), env)


def test_failed_background_reload_keeps_the_last_keys() -> None:
    """When a background re-read fails, the keyring keeps serving the keys it had."""
    attempts = threading.Event()

    def failing_loader() -> JwtKeys:
        attempts.set()
        raise SecretsError("cannot read secret 'weelo/app' in eu-west-1: AccessDeniedException")

    keys = JwtKeys(access=("k-access",), refresh=("k-refresh",))
    keyring = JwtKeyring(keys, failing_loader, check_interval_s=0.0)
    wait_until(lambda: keyring.access_secrets() == ("k-access",) and attempts.is_set())
    assert keyring.refresh_secrets() == ("k-refresh",)


def test_calls_do_not_wait_for_secrets_manager() -> None:
    """access_secrets() returns at once while a re-read is still running in the background."""
    release = threading.Event()
    new_keys = JwtKeys(access=("new",), refresh=("new-r",))

    def slow_loader() -> JwtKeys:
        release.wait(timeout=10)
        return new_keys

    keyring = JwtKeyring(JwtKeys(("old",), ("old-r",)), slow_loader, check_interval_s=0.0)
    started = time.monotonic()
    assert keyring.access_secrets() == ("old",)
    assert keyring.access_secrets() == ("old",)
    assert time.monotonic() - started < 1.0
    release.set()
    wait_until(lambda: keyring.access_secrets() == ("new",))
