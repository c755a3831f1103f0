"""Who is calling: bearer access tokens, roles, and the refresh-token exchange.

A refused token is a 401 whose body says why in `reason` (the token itself is never echoed):
`missing` (no `Bearer <token>`), `malformed` (not a JWT, or not HS256), `expired`,
`unknown_key` (signed with a key this gateway does not hold: another checkout's `.weelo/`, or a
refresh token offered as an access token and the reverse) or `invalid_claims` (`sub`, `role` or
`exp` missing or wrong).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import jwt
from jwt.api_jws import PyJWS
from starlette.requests import Request

from libs.runtime import tokens
from libs.runtime.settings import Settings
from libs.runtime.tokens import InvalidToken, Principal, Role
from services.gateway.errors import ApiError, forbidden, unauthorized

Reason = Literal["missing", "malformed", "expired", "unknown_key", "invalid_claims"]


class KeySource(Protocol):
    """The accepted JWT keys, current (signing) key first; `JwtKeyring` is one."""

    def access_secrets(self) -> Sequence[str]: ...

    def refresh_secrets(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class SettingsKeys:
    """The keys named by the settings: fixed for the life of the process."""

    settings: Settings

    def access_secrets(self) -> Sequence[str]:
        return (self.settings.jwt_secret, *self.settings.jwt_previous_secrets)

    def refresh_secrets(self) -> Sequence[str]:
        return (self.settings.jwt_refresh_secret,)


def bearer_principal(request: Request, keys: KeySource) -> Principal:
    """The caller named by the request's access token; 401 for anything else."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing")
    secrets = keys.access_secrets()
    try:
        return tokens.verify(token.strip(), secrets)
    except InvalidToken as e:
        raise refused_token(token.strip(), secrets) from e


def require_role(principal: Principal, roles: Sequence[Role]) -> None:
    if principal.role not in roles:
        raise forbidden()


def refresh_principal(refresh_token: str, keys: KeySource) -> Principal:
    """The caller named by a refresh token; an access token (other key) is refused."""
    secrets = keys.refresh_secrets()
    try:
        return tokens.verify(refresh_token, secrets)
    except InvalidToken as e:
        raise refused_token(refresh_token, secrets) from e


def refused_token(token: str, secrets: Sequence[str]) -> ApiError:
    """The 401 for a token `tokens.verify` refused, with the reason it did."""
    return unauthorized(refusal_reason(token, secrets))


def refusal_reason(token: str, secrets: Sequence[str]) -> Reason:
    """Why `token`, which `tokens.verify` refused with `secrets`, was refused: read from the
    token itself (its structure, its signature, its `exp`), not from the error's wording."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "malformed"
    if header.get("alg") != "HS256":
        return "malformed"
    if not any(_signed_with(token, secret) for secret in secrets):
        return "unknown_key"
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= time.time():
        return "expired"
    return "invalid_claims"


def _signed_with(token: str, secret: str) -> bool:
    try:
        PyJWS().decode(token, secret, algorithms=["HS256"])
    except jwt.PyJWTError:
        return False
    return True


def token_pair(principal: Principal, keys: KeySource) -> tuple[str, str]:
    """A new access token and a new refresh token for `principal`."""
    role, sub = principal.role, principal.sub
    access = tokens.issue(keys.access_secrets()[0], role=role, sub=sub, ttl_s=tokens.ACCESS_TTL_S)
    refresh = tokens.issue(
        keys.refresh_secrets()[0], role=role, sub=sub, ttl_s=tokens.REFRESH_TTL_S
    )
    return access, refresh
