"""JWT keys that rotate without logging anybody out.

Usage (the gateway's auth):

    keyring = open_keyring(settings)        # at start-up: reads the secret once (blocking I/O)
    principal = tokens.verify(token, keyring.access_secrets())
    claims = tokens.verify(refresh_token, keyring.refresh_secrets())
    tokens.issue(keyring.access_secrets()[0], ...)   # the first key signs new tokens

`access_secrets()` and `refresh_secrets()` return the accepted keys, current one first. They are
cheap, thread-safe and never block, so they may be called from async code on every request: they
return the keys held in memory and, once `check_interval_s` has passed, start one background
thread that re-reads the secret through its `SecretCache` (which calls Secrets Manager at most
once per `WEELO_SECRETS_REFRESH_SECONDS`). A failed re-read keeps the last keys and logs a
warning; no key is ever logged.

Where the keys come from:
- without `WEELO_SECRETS_ID`: `JWT_SECRET` then `JWT_PREVIOUS_SECRETS` (comma-separated), and
  `JWT_REFRESH_SECRET` then `JWT_REFRESH_PREVIOUS_SECRETS`, fixed for the life of the process;
- with it: the secret's AWSCURRENT version's `JWT_SECRET`, then the keys it lists in
  `JWT_PREVIOUS_SECRETS`, then the AWSPREVIOUS version's `JWT_SECRET` (and the same for the
  refresh keys). A key missing from the secret falls back to the environment's.

So a rotation (a new AWSCURRENT version with a new key) keeps tokens signed with the replaced
key valid until it is rotated out a second time: with rotations at least `REFRESH_TTL_S`
(30 days) apart nobody is logged out. `docs/operations.md` has the procedure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog

from libs.runtime.secrets import CURRENT, PREVIOUS, SecretsError, SecretSource, open_secret_source
from libs.runtime.settings import Settings

log = structlog.get_logger(__name__)

DEFAULT_CHECK_INTERVAL_S = 5.0


@dataclass(frozen=True)
class JwtKeys:
    """Accepted keys per token kind, the signing key first."""

    access: tuple[str, ...]
    refresh: tuple[str, ...]


class JwtKeyring:
    """The accepted JWT keys, re-read in the background when they come from a secret."""

    def __init__(
        self,
        keys: JwtKeys,
        loader: Callable[[], JwtKeys] | None = None,
        *,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
    ) -> None:
        self._keys = keys
        self._loader = loader
        self._check_interval_s = check_interval_s
        self._next_check = time.monotonic() + check_interval_s
        self._lock = threading.Lock()
        self._reloading = False

    def access_secrets(self) -> tuple[str, ...]:
        """Keys that verify access tokens; the first signs new ones."""
        self._reload_if_due()
        return self._keys.access

    def refresh_secrets(self) -> tuple[str, ...]:
        """Keys that verify refresh tokens; the first signs new ones."""
        self._reload_if_due()
        return self._keys.refresh

    def reload(self) -> JwtKeys:
        """Re-read the keys now, through the cache (blocking); raises `SecretsError`."""
        if self._loader is not None:
            keys = self._loader()
            if keys != self._keys:
                log.info(
                    "jwt_keys_changed", access_keys=len(keys.access), refresh_keys=len(keys.refresh)
                )
            self._keys = keys
        return self._keys

    def _reload_if_due(self) -> None:
        if self._loader is None or time.monotonic() < self._next_check:
            return
        with self._lock:
            if self._reloading or time.monotonic() < self._next_check:
                return
            self._reloading = True
        threading.Thread(target=self._reload_in_background, name="jwt-keyring", daemon=True).start()

    def _reload_in_background(self) -> None:
        try:
            self.reload()
        except SecretsError as e:
            log.warning("jwt_keys_refresh_failed", error=str(e))
        finally:
            with self._lock:
                self._next_check = time.monotonic() + self._check_interval_s
                self._reloading = False


def open_keyring(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    refresh_interval_s: int | None = None,
    check_interval_s: float | None = None,
) -> JwtKeyring:
    """The keyring for this process; with `WEELO_SECRETS_ID` it reads the secret once now."""
    env = os.environ if environ is None else environ
    fallback = static_keys(settings, env)
    source = open_secret_source(env, refresh_interval_s=refresh_interval_s)
    if source is None:
        return JwtKeyring(fallback)

    def load() -> JwtKeys:
        return keys_from_secret(source, fallback)

    interval = check_interval_s
    if interval is None:
        interval = min(
            DEFAULT_CHECK_INTERVAL_S, float(refresh_interval_s or DEFAULT_CHECK_INTERVAL_S)
        )
    return JwtKeyring(load(), load, check_interval_s=interval)


def static_keys(settings: Settings, environ: Mapping[str, str]) -> JwtKeys:
    """The keys the settings and environment name, current first."""
    refresh_previous = _split(environ.get("JWT_REFRESH_PREVIOUS_SECRETS", ""))
    return JwtKeys(
        access=_unique([settings.jwt_secret, *settings.jwt_previous_secrets]),
        refresh=_unique([settings.jwt_refresh_secret, *refresh_previous]),
    )


def keys_from_secret(source: SecretSource, fallback: JwtKeys) -> JwtKeys:
    """Current, listed-previous and AWSPREVIOUS keys of the secret, current first."""
    current = source.read(CURRENT)
    if current is None:
        raise SecretsError(f"secret {source.secret_id!r} has no {CURRENT} string value")
    previous = source.read(PREVIOUS) or {}
    return JwtKeys(
        access=_accepted(
            current, previous, "JWT_SECRET", "JWT_PREVIOUS_SECRETS", fallback.access[0]
        ),
        refresh=_accepted(
            current,
            previous,
            "JWT_REFRESH_SECRET",
            "JWT_REFRESH_PREVIOUS_SECRETS",
            fallback.refresh[0],
        ),
    )


def _accepted(
    current: Mapping[str, str], previous: Mapping[str, str], key: str, listed: str, default: str
) -> tuple[str, ...]:
    older = [*_split(current.get(listed, "")), previous.get(key, "")]
    return _unique([current.get(key) or default, *older])


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _unique(keys: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for k in keys if k))
