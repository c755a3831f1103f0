"""Access and refresh tokens: HS256 JWTs with `sub`, `role` and `exp` (CONTRACT.md section 2).

`recording_principals()` collects the principals `verify` accepts within it (in its context and
the tasks started from it): the gateway's access log names a request's caller that way, without
a second check of its token.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Literal

import jwt
import msgspec

Role = Literal["customer", "transporter", "driver"]
ROLES: tuple[Role, ...] = ("customer", "transporter", "driver")
SUBJECT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# RFC 7519 NumericDate claims: a JSON number. PyJWT converts strings ("1796170403") itself.
NUMERIC_DATES = ("exp", "iat", "nbf")
ACCESS_TTL_S = 3600
REFRESH_TTL_S = 30 * 24 * 3600


class InvalidToken(Exception):
    """The token is missing, malformed, wrongly signed, expired or names an unknown role."""


class Principal(msgspec.Struct, frozen=True):
    sub: str
    role: Role


# Where `verify` records the principals it accepts, inside `recording_principals()`.
_recorded: ContextVar[list[Principal] | None] = ContextVar("weelo_verified", default=None)


def issue(secret: str, *, role: Role, sub: str, ttl_s: int, now: float | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not SUBJECT.match(sub):
        raise ValueError("sub must be 1-64 characters of A-Z a-z 0-9 _ -")
    issued = int(now if now is not None else time.time())
    claims = {"sub": sub, "role": role, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(token: str, secrets: Sequence[str]) -> Principal:
    """The token's principal if any of `secrets` signed it (HS256 only) and it is valid."""
    for secret in secrets:
        try:
            claims = jwt.decode(
                token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from e
        principal = _principal(claims)
        recorded = _recorded.get()
        if recorded is not None:
            recorded.append(principal)
        return principal
    raise InvalidToken("signature verification failed")


@contextlib.contextmanager
def recording_principals() -> Iterator[list[Principal]]:
    """A list that receives each principal `verify` accepts until the block ends."""
    recorded: list[Principal] = []
    reset = _recorded.set(recorded)
    try:
        yield recorded
    finally:
        _recorded.reset(reset)


def _principal(claims: dict[str, object]) -> Principal:
    _check_numeric_dates(claims)
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not SUBJECT.match(sub):
        raise InvalidToken("sub is malformed")
    if role not in ROLES:
        raise InvalidToken("role is unknown")
    return Principal(sub=sub, role=role)


def _check_numeric_dates(claims: dict[str, object]) -> None:
    """Each of `exp`, `iat`, `nbf` present is a JSON number (not a string, boolean or null)."""
    for name in NUMERIC_DATES:
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidToken(f"{name} is not a NumericDate")
