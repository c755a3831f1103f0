"""A 401 says why the token was refused (`reason` beside the contract's code and message), and
never echoes the token back."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from libs.runtime.tokens import issue
from tests.gateway.conftest import Gateway, new_id

ACTIVE = "/v1/customers/me/broadcasts/active"
MESSAGE = "A valid bearer token is required"


def refused(response: httpx.Response, reason: str, token: str = "") -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["code"], error["message"], error["reason"]) == ("unauthorized", MESSAGE, reason)
    assert response.headers["www-authenticate"] == "Bearer"
    if token:
        assert token not in response.text
        assert token.rsplit(".", 1)[-1] not in response.text  # not even its signature


async def get(api: httpx.AsyncClient, token: str) -> httpx.Response:
    return await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"})


async def test_no_bearer_token_says_missing(api: httpx.AsyncClient) -> None:
    """No Authorization header, or one that is not `Bearer <token>`: reason `missing`."""
    refused(await api.get(ACTIVE), "missing")
    refused(await api.get(ACTIVE, headers={"Authorization": "Basic dXNlcjpwYXNz"}), "missing")


async def test_expired_token_says_expired(api: httpx.AsyncClient, system: Gateway) -> None:
    """A well-signed token past its `exp`: reason `expired`."""
    token = issue(system.access_secret, role="customer", sub=new_id("c"), ttl_s=60, now=0)
    refused(await get(api, token), "expired", token)


async def test_token_of_another_key_says_so(api: httpx.AsyncClient) -> None:
    """A token signed with a key the gateway does not hold (another checkout's `.weelo/`):
    reason `unknown_key`."""
    token = issue("another-checkout-key-0123456789abcdef", role="customer", sub="c1", ttl_s=600)
    refused(await get(api, token), "unknown_key", token)


@pytest.mark.parametrize("token", ["not.a.jwt", "abc", "eyJhbGciOiJIUzI1NiJ9.e30"])
async def test_malformed_token_says_malformed(api: httpx.AsyncClient, token: str) -> None:
    """A bearer value that is not a JWT at all: reason `malformed`."""
    refused(await get(api, token), "malformed", token)


async def test_wrong_algorithm_says_malformed(api: httpx.AsyncClient, system: Gateway) -> None:
    """A token signed with the right key but HS512 (or not signed at all): `malformed`."""
    claims = {"sub": "c1", "role": "customer", "exp": int(time.time()) + 600}
    refused(
        await get(api, jwt.encode(claims, system.access_secret, algorithm="HS512")), "malformed"
    )
    refused(await get(api, jwt.encode(claims, "", algorithm="none")), "malformed")


async def test_bad_claims_say_invalid_claims(api: httpx.AsyncClient, system: Gateway) -> None:
    """A well-signed, unexpired token with an unknown role, a bad `sub` or no `exp`:
    reason `invalid_claims`."""
    exp = int(time.time()) + 600
    for claims in (
        {"sub": "c1", "role": "admin", "exp": exp},
        {"sub": "c 1", "role": "customer", "exp": exp},
        {"sub": "c1", "role": "customer"},
        {"sub": "c1", "role": "customer", "exp": True},  # not a number, though int(True) is 1
        {"sub": "c1", "role": "customer", "exp": str(exp)},
    ):
        token = jwt.encode(claims, system.access_secret, algorithm="HS256")
        refused(await get(api, token), "invalid_claims", token)


async def test_refresh_with_an_access_token_says_unknown_key(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """An access token offered as a refresh token is signed with the other key: `unknown_key`."""
    token = system.token("customer")
    response = await api.post("/v1/auth/refresh", json={"refreshToken": token})
    refused(response, "unknown_key", token)
