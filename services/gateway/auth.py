"""Who is calling: bearer access tokens, roles, and the refresh-token exchange."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from libs.runtime import tokens
from libs.runtime.settings import Settings
from libs.runtime.tokens import InvalidToken, Principal, Role
from services.gateway.errors import forbidden, unauthorized


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
        raise unauthorized()
    try:
        return tokens.verify(token.strip(), keys.access_secrets())
    except InvalidToken as e:
        raise unauthorized() from e


def require_role(principal: Principal, roles: Sequence[Role]) -> None:
    if principal.role not in roles:
        raise forbidden()


def refresh_principal(refresh_token: str, keys: KeySource) -> Principal:
    """The caller named by a refresh token; an access token (other key) is refused."""
    try:
        return tokens.verify(refresh_token, keys.refresh_secrets())
    except InvalidToken as e:
        raise unauthorized() from e


def token_pair(principal: Principal, keys: KeySource) -> tuple[str, str]:
    """A new access token and a new refresh token for `principal`."""
    role, sub = principal.role, principal.sub
    access = tokens.issue(keys.access_secrets()[0], role=role, sub=sub, ttl_s=tokens.ACCESS_TTL_S)
    refresh = tokens.issue(
        keys.refresh_secrets()[0], role=role, sub=sub, ttl_s=tokens.REFRESH_TTL_S
    )
    return access, refresh
