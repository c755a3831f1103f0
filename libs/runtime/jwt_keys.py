"""Which JWT keys verify and which one signs: the rules, with no I/O (the keyring reads them).

Sign after accept: a key verifies from the first read of the secret that shows it, and signs only
once it has been in the secret for `promote_after_s`, counted from the creation date Secrets
Manager gives the oldest version holding it (AWSCURRENT or AWSPREVIOUS, so an unrelated update
of the secret does not restart the count). Until then the key it replaced signs: the AWSPREVIOUS
version's, else the first listed in `JWT_PREVIOUS_SECRETS`. A key with none before it (a new
secret) or without a creation date signs at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from libs.runtime.secrets import SecretVersion

# (the key, the list of older keys still accepted) in the secret, per token kind
ACCESS_NAMES = ("JWT_SECRET", "JWT_PREVIOUS_SECRETS")
REFRESH_NAMES = ("JWT_REFRESH_SECRET", "JWT_REFRESH_PREVIOUS_SECRETS")
# The secret's AWSCURRENT, AWSPENDING and AWSPREVIOUS versions
Versions = tuple[SecretVersion, SecretVersion | None, SecretVersion | None]


@dataclass(frozen=True)
class TokenKeys:
    """One token kind's keys: `accepted` verify, the current key first; `interim` (the key the
    current one replaced) signs instead of it until `promote_at` (time.time() seconds)."""

    accepted: tuple[str, ...]
    interim: str | None = None
    promote_at: float = 0.0

    def signing_first(self, now: float) -> tuple[str, ...]:
        """The accepted keys, the one that signs at `now` first."""
        if self.interim is None or now >= self.promote_at:
            return self.accepted
        return unique([self.interim, *self.accepted])

    def new_key_signs_in(self, now: float) -> float:
        """Seconds until the current key signs (0 when it does)."""
        return round(max(0.0, self.promote_at - now), 1) if self.interim is not None else 0.0


@dataclass(frozen=True)
class JwtKeys:
    """The keys of access tokens and of refresh tokens."""

    access: TokenKeys
    refresh: TokenKeys

    @classmethod
    def fixed(cls, access: Iterable[str], refresh: Iterable[str]) -> JwtKeys:
        """Keys that sign as listed: the first of each signs."""
        return cls(TokenKeys(unique(access)), TokenKeys(unique(refresh)))


def token_keys(
    versions: Versions, names: tuple[str, str], default: str, promote_after_s: float
) -> TokenKeys:
    """One kind's keys from the (current, pending, previous) versions; `names` are the key's
    and its list of older keys' names in the secret; `default` is the environment's key."""
    current, pending, previous = versions
    name, listed = names
    key = current.values.get(name) or default
    older = split_keys(current.values.get(listed, ""))
    replaced = _value(previous, name)
    accepted = unique([key, _value(pending, name), *older, replaced])
    interim = next((k for k in (replaced, *older) if k and k != key), None)
    since = _in_secret_since(key, name, (current, previous))
    if interim is None or since is None:
        return TokenKeys(accepted)
    return TokenKeys(accepted, interim, since + promote_after_s)


def split_keys(raw: str) -> list[str]:
    """The keys of a comma-separated list."""
    return [part.strip() for part in raw.split(",") if part.strip()]


def unique(keys: Iterable[str]) -> tuple[str, ...]:
    """The non-empty keys, each once, in order."""
    return tuple(dict.fromkeys(k for k in keys if k))


def _in_secret_since(key: str, name: str, versions: Iterable[SecretVersion | None]) -> float | None:
    """The creation date of the oldest of `versions` whose `name` is `key`."""
    dates = [v.created_at for v in versions if v and v.values.get(name) == key]
    known = [date for date in dates if date is not None]
    return min(known) if known else None


def _value(version: SecretVersion | None, name: str) -> str:
    return version.values.get(name, "") if version else ""
