"""The JWT keyring against moto's Secrets Manager: a new key is accepted at once, signs only once
every gateway can verify it (sign after accept), and nobody is logged out."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from libs.runtime.keyring import JwtKeyring, JwtKeys, open_keyring
from libs.runtime.secrets import SecretsError
from libs.runtime.settings import Settings, load_settings
from libs.runtime.tokens import InvalidToken, issue, verify

MakeSecret = Callable[[dict[str, Any] | str], str]
Open = Callable[..., JwtKeyring]
ACCESS_1, ACCESS_2 = "test-access-key-generation-1-abcdef", "test-access-key-generation-2-abcdef"
ACCESS_3 = "test-access-key-generation-3-abcdef"
REFRESH_1, REFRESH_2 = "test-refresh-key-generation-1-abcdef", "test-refresh-key-generation-2-abcde"
WINDOW_S = 600.0  # the promotion window the tests give their keyrings
FIRST = {"JWT_SECRET": ACCESS_1, "JWT_REFRESH_SECRET": REFRESH_1}
# What the stack's rotation Lambda writes: new keys, the replaced ones listed as previous.
ROTATED = {
    "JWT_SECRET": ACCESS_2,
    "JWT_PREVIOUS_SECRETS": ACCESS_1,
    "JWT_REFRESH_SECRET": REFRESH_2,
    "JWT_REFRESH_PREVIOUS_SECRETS": REFRESH_1,
}


class Clock:
    """The keyring's wall clock, set by the test (Secrets Manager's dates are real)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


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


def created(secretsmanager: Any, arn: str, stage: str = "AWSCURRENT") -> float:
    """When Secrets Manager created the version labelled `stage` (seconds since the epoch)."""
    found = secretsmanager.get_secret_value(SecretId=arn, VersionStage=stage)
    return float(found["CreatedDate"].timestamp())


@pytest.fixture
def opened(aws_env: dict[str, str]) -> Iterator[Callable[..., JwtKeyring]]:
    """Open keyrings on a secret (re-read every 0.05 s, window `WINDOW_S`); closed afterwards."""
    keyrings: list[JwtKeyring] = []

    def open_on(arn: str, clock: Clock | None = None, **options: Any) -> JwtKeyring:
        env = {**aws_env, "WEELO_SECRETS_ID": arn}
        defaults: dict[str, Any] = {
            "refresh_interval_s": 1,
            "check_interval_s": 0.05,
            "promote_after_s": WINDOW_S,
        }
        keyring = open_keyring(
            settings_for(env), env, clock=clock or time.time, **{**defaults, **options}
        )
        keyrings.append(keyring)
        return keyring

    yield open_on
    for keyring in keyrings:
        keyring.close()


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


def test_secret_keys_win_and_missing_ones_fall_back(make_secret: MakeSecret, opened: Open) -> None:
    """The secret's JWT_SECRET wins over the environment; a key it lacks comes from the env."""
    arn = make_secret({"JWT_SECRET": ACCESS_1})
    keyring = opened(arn)
    assert keyring.access_secrets() == (ACCESS_1,)
    assert keyring.refresh_secrets() == ("test-env-r",)


def test_rotation_is_picked_up_after_the_refresh_interval(
    make_secret: MakeSecret, secretsmanager: Any, opened: Open
) -> None:
    """A rotated key verifies as soon as it is read, signs only once the window after its
    creation has passed, and tokens of the replaced key stay valid throughout."""
    arn = make_secret(FIRST)
    clock = Clock()
    keyring = opened(arn, clock)
    old_token = issue(keyring.access_secrets()[0], role="driver", sub="driver-1", ttl_s=600)
    old_refresh = issue(keyring.refresh_secrets()[0], role="driver", sub="driver-1", ttl_s=600)

    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(ROTATED))
    wait_until(lambda: ACCESS_2 in keyring.access_secrets())
    promoted_at = created(secretsmanager, arn) + WINDOW_S

    clock.now = promoted_at - 0.01
    assert keyring.access_secrets() == (ACCESS_1, ACCESS_2)
    assert keyring.refresh_secrets() == (REFRESH_1, REFRESH_2)
    new_token = issue(ACCESS_2, role="driver", sub="driver-1", ttl_s=600)
    assert verify(new_token, keyring.access_secrets()).sub == "driver-1"
    clock.now = promoted_at
    assert keyring.access_secrets() == (ACCESS_2, ACCESS_1)
    assert keyring.refresh_secrets() == (REFRESH_2, REFRESH_1)
    assert verify(old_token, keyring.access_secrets()).sub == "driver-1"
    assert verify(old_refresh, keyring.refresh_secrets()).sub == "driver-1"
    with pytest.raises(InvalidToken):
        verify(old_refresh, keyring.access_secrets())


def test_a_pending_key_is_accepted_at_once_and_never_signs(
    make_secret: MakeSecret, secretsmanager: Any, opened: Open
) -> None:
    """A rotation's AWSPENDING version (its createSecret step) is verified at once; the
    AWSCURRENT key goes on signing however long the pending version waits."""
    arn = make_secret(FIRST)
    clock = Clock()
    keyring = opened(arn, clock)
    secretsmanager.put_secret_value(
        SecretId=arn, SecretString=json.dumps(ROTATED), VersionStages=["AWSPENDING"]
    )
    wait_until(lambda: ACCESS_2 in keyring.access_secrets())
    clock.now += 30 * 24 * 3600
    assert keyring.access_secrets() == (ACCESS_1, ACCESS_2)
    assert keyring.refresh_secrets() == (REFRESH_1, REFRESH_2)


def test_a_keyring_opened_after_the_window_signs_with_the_current_key(
    make_secret: MakeSecret, secretsmanager: Any, opened: Open
) -> None:
    """A gateway started long after a rotation signs with the current key at once; one started
    within the window signs with the replaced key until the window ends."""
    arn = make_secret(FIRST)
    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(ROTATED))
    promoted_at = created(secretsmanager, arn) + WINDOW_S
    late, early = Clock(), Clock()
    late.now, early.now = promoted_at + 3600, promoted_at - 1
    assert opened(arn, late).access_secrets() == (ACCESS_2, ACCESS_1)
    assert opened(arn, early).access_secrets() == (ACCESS_1, ACCESS_2)


def test_an_unrelated_update_does_not_restart_the_window(
    make_secret: MakeSecret, secretsmanager: Any, opened: Open
) -> None:
    """The window counts from the oldest version holding the key: changing another key of the
    secret after a rotation neither holds the current key back nor promotes it early."""
    arn = make_secret(FIRST)
    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(ROTATED))
    rotated_at = created(secretsmanager, arn)
    wait_until(lambda: time.time() >= rotated_at + 1)  # moto dates versions in whole seconds
    other = {**ROTATED, "FCM_SERVER_KEY": "test-fcm-placeholder"}
    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(other))
    assert created(secretsmanager, arn) > rotated_at
    within, after = Clock(), Clock()
    within.now, after.now = rotated_at + WINDOW_S - 1, rotated_at + WINDOW_S
    assert opened(arn, within).access_secrets() == (ACCESS_1, ACCESS_2)
    assert opened(arn, after).access_secrets() == (ACCESS_2, ACCESS_1)


def test_two_rotations_in_a_row_refuse_the_first_key(
    make_secret: MakeSecret, secretsmanager: Any, opened: Open
) -> None:
    """Rotating twice (a leaked key): the first key is refused at once, and until the window
    ends the middle key signs, which more gateways accept than the newest."""
    arn = make_secret(FIRST)
    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(ROTATED))
    again = {**ROTATED, "JWT_SECRET": ACCESS_3, "JWT_PREVIOUS_SECRETS": ACCESS_2}
    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps(again))
    keyring = opened(arn)
    assert keyring.access_secrets() == (ACCESS_2, ACCESS_3)
    with pytest.raises(InvalidToken):
        verify(issue(ACCESS_1, role="driver", sub="d1", ttl_s=60), keyring.access_secrets())


def test_the_first_keys_of_a_new_secret_sign_at_once(make_secret: MakeSecret, opened: Open) -> None:
    """A key with no key before it (a new secret) signs at once: there is nothing to wait for."""
    arn = make_secret(FIRST)
    keyring = opened(arn)
    assert keyring.access_secrets() == (ACCESS_1,)
    assert keyring.refresh_secrets() == (REFRESH_1,)


def test_listed_previous_keys_survive_an_unrelated_update(
    make_secret: MakeSecret, secretsmanager: Any, opened: Open
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
    keyring = opened(arn, promote_after_s=0)
    assert keyring.access_secrets() == (ACCESS_2, ACCESS_1)
    assert keyring.refresh_secrets() == (REFRESH_2,)


def test_unreadable_secret_at_start_raises(aws_env: dict[str, str]) -> None:
    """A keyring whose secret cannot be read fails at start-up instead of serving no keys."""
    env = {**aws_env, "WEELO_SECRETS_ID": "weelo/no-such-secret"}
    with pytest.raises(SecretsError, match="ResourceNotFoundException"):
        open_keyring(settings_for(env), env)


def test_keys_are_re_read_without_any_request() -> None:
    """The keyring re-reads on its own, so an idle gateway is not behind on its first request."""
    reads = threading.Semaphore(0)

    def loader() -> JwtKeys:
        reads.release()
        return JwtKeys.fixed(["k-access"], ["k-refresh"])

    keyring = JwtKeyring(JwtKeys.fixed(["k-access"], ["k-refresh"]), loader, check_interval_s=0.01)
    try:
        assert reads.acquire(timeout=5) and reads.acquire(timeout=5)
    finally:
        keyring.close()


def test_failed_background_reload_keeps_the_last_keys() -> None:
    """When a background re-read fails, the keyring keeps serving the keys it had."""
    attempts = threading.Event()

    def failing_loader() -> JwtKeys:
        attempts.set()
        raise SecretsError("cannot read secret 'weelo/app' in eu-west-1: AccessDeniedException")

    keys = JwtKeys.fixed(["k-access"], ["k-refresh"])
    keyring = JwtKeyring(keys, failing_loader, check_interval_s=0.01)
    try:
        assert attempts.wait(timeout=5)
        assert keyring.access_secrets() == ("k-access",)
        assert keyring.refresh_secrets() == ("k-refresh",)
    finally:
        keyring.close()


def test_calls_do_not_wait_for_secrets_manager() -> None:
    """access_secrets() returns at once while a re-read is still running in the background."""
    release, reading = threading.Event(), threading.Event()
    new_keys = JwtKeys.fixed(["new"], ["new-r"])

    def slow_loader() -> JwtKeys:
        reading.set()
        release.wait(timeout=10)
        return new_keys

    keyring = JwtKeyring(JwtKeys.fixed(["old"], ["old-r"]), slow_loader, check_interval_s=0.01)
    try:
        assert reading.wait(timeout=5)
        started = time.monotonic()
        assert keyring.access_secrets() == ("old",)
        assert keyring.access_secrets() == ("old",)
        assert time.monotonic() - started < 1.0
        release.set()
        wait_until(lambda: keyring.access_secrets() == ("new",))
    finally:
        keyring.close()
        release.set()
