"""JWT keys that rotate without a 401 and without logging anybody out.

Usage (the gateway's auth):

    keyring = open_keyring(settings)        # at start-up: reads the secret once (blocking I/O)
    principal = tokens.verify(token, keyring.access_secrets())
    claims = tokens.verify(refresh_token, keyring.refresh_secrets())
    tokens.issue(keyring.access_secrets()[0], ...)   # the first key signs new tokens

`access_secrets()` and `refresh_secrets()` return the accepted keys, the signing key first. They
are cheap, thread-safe and never block, so they may be called from async code on every request:
they return the keys held in memory. A daemon thread re-reads the secret every
`check_interval_s` through the secret's cache, which asks Secrets Manager at most once per
`WEELO_SECRETS_REFRESH_SECONDS`. A failed re-read keeps the last keys and logs a warning; no key
is ever logged.

Where the keys come from:
- without `WEELO_SECRETS_ID`: `JWT_SECRET` then `JWT_PREVIOUS_SECRETS` (comma-separated), and
  `JWT_REFRESH_SECRET` then `JWT_REFRESH_PREVIOUS_SECRETS`, fixed for the life of the process;
- with it: the AWSCURRENT version's `JWT_SECRET`, the AWSPENDING version's (a rotation under
  way), the keys AWSCURRENT lists in `JWT_PREVIOUS_SECRETS`, then the AWSPREVIOUS version's
  `JWT_SECRET` (and the same for the refresh keys). A key missing from the secret falls back to
  the environment's.

Sign after accept (`jwt_keys.py` has the rule): every gateway accepts a new key from its first
read after the key was written, at most one refresh interval and one check later. So a new key
signs only once it has been in the secret for `promote_after_s`, by default twice
`WEELO_SECRETS_REFRESH_SECONDS` plus the check interval; until then the key it replaced signs,
which every gateway still accepts.

A rotation keeps tokens signed with the replaced key valid until it is rotated out a second
time: with rotations at least `REFRESH_TTL_S` (30 days) apart nobody is logged out.
`docs/operations.md` ("Rotate secrets") has the procedure and the reasons.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping

import structlog

from libs.runtime.jwt_keys import ACCESS_NAMES, REFRESH_NAMES, JwtKeys, split_keys, token_keys
from libs.runtime.secrets import (
    CURRENT,
    PENDING,
    PREVIOUS,
    SecretsError,
    SecretSource,
    open_secret_source,
    refresh_interval,
)
from libs.runtime.settings import Settings, SettingsError

__all__ = ["JwtKeyring", "JwtKeys", "keys_from_secret", "open_keyring", "static_keys"]

log = structlog.get_logger(__name__)

DEFAULT_CHECK_INTERVAL_S = 5.0
Clock = Callable[[], float]


class JwtKeyring:
    """The accepted JWT keys, re-read in the background when they come from a secret."""

    def __init__(
        self,
        keys: JwtKeys,
        loader: Callable[[], JwtKeys] | None = None,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        clock: Clock = time.time,
    ) -> None:
        self._keys = keys
        self._loader = loader
        self._clock = clock
        self._closed = threading.Event()
        if loader is not None:
            threading.Thread(
                target=self._reload_every, args=(check_interval_s,), name="jwt-keyring", daemon=True
            ).start()

    def access_secrets(self) -> tuple[str, ...]:
        """Keys that verify access tokens; the first signs new ones."""
        return self._keys.access.signing_first(self._clock())

    def refresh_secrets(self) -> tuple[str, ...]:
        """Keys that verify refresh tokens; the first signs new ones."""
        return self._keys.refresh.signing_first(self._clock())

    def reload(self) -> JwtKeys:
        """Re-read the keys now, through the cache (blocking); raises `SecretsError`."""
        if self._loader is not None:
            keys = self._loader()
            if keys != self._keys:
                now = self._clock()
                log.info(
                    "jwt_keys_changed",
                    access_keys=len(keys.access.accepted),
                    refresh_keys=len(keys.refresh.accepted),
                    access_signing_key_new_in_s=keys.access.new_key_signs_in(now),
                    refresh_signing_key_new_in_s=keys.refresh.new_key_signs_in(now),
                )
            self._keys = keys
        return self._keys

    def close(self) -> None:
        """Stop re-reading (the keys held stay served)."""
        self._closed.set()

    def _reload_every(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            try:
                self.reload()
            except SecretsError as e:
                log.warning("jwt_keys_refresh_failed", error=str(e))


def open_keyring(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    refresh_interval_s: int | None = None,
    check_interval_s: float | None = None,
    promote_after_s: float | None = None,
    clock: Clock = time.time,
) -> JwtKeyring:
    """The keyring for this process; with `WEELO_SECRETS_ID` it reads the secret once now.

    Defaults: the refresh interval from `WEELO_SECRETS_REFRESH_SECONDS`; a check every quarter
    of it, at most every 5 s; a new key signs once it is older than twice the refresh interval
    plus the check interval."""
    env = os.environ if environ is None else environ
    fallback = static_keys(settings, env)
    source = open_secret_source(env, refresh_interval_s=refresh_interval_s)
    if source is None:
        return JwtKeyring(fallback)
    refresh_s = refresh_interval_s or refresh_interval(env)
    check_s = check_interval_s
    if check_s is None:
        check_s = min(DEFAULT_CHECK_INTERVAL_S, refresh_s / 4)
    window_s = 2 * refresh_s + check_s if promote_after_s is None else promote_after_s

    def load() -> JwtKeys:
        return keys_from_secret(source, fallback, window_s)

    first = load()
    if not (first.access.accepted and first.refresh.accepted):
        raise SettingsError(
            f"no JWT_SECRET or JWT_REFRESH_SECRET: the secret {source.secret_id!r} holds none "
            "and neither does the environment"
        )
    return JwtKeyring(first, load, check_interval_s=check_s, clock=clock)


def static_keys(settings: Settings, environ: Mapping[str, str]) -> JwtKeys:
    """The keys the settings and environment name, current first."""
    return JwtKeys.fixed(
        access=[settings.jwt_secret, *settings.jwt_previous_secrets],
        refresh=[settings.jwt_refresh_secret, *split_keys(environ.get(REFRESH_NAMES[1], ""))],
    )


def keys_from_secret(source: SecretSource, fallback: JwtKeys, promote_after_s: float) -> JwtKeys:
    """The secret's accepted keys, and when its current keys start signing (`jwt_keys.py`)."""
    current = source.read_version(CURRENT)
    if current is None:
        raise SecretsError(f"secret {source.secret_id!r} has no {CURRENT} string value")
    versions = (current, source.read_version(PENDING), source.read_version(PREVIOUS))
    return JwtKeys(
        access=token_keys(
            versions, ACCESS_NAMES, _first(fallback.access.accepted), promote_after_s
        ),
        refresh=token_keys(
            versions, REFRESH_NAMES, _first(fallback.refresh.accepted), promote_after_s
        ),
    )


def _first(keys: tuple[str, ...]) -> str:
    """The environment's key of one kind, "" when it has none (then the secret must)."""
    return keys[0] if keys else ""
