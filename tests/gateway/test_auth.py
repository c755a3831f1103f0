"""Authentication and roles at the gateway (CONTRACT.md section 2)."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from libs.runtime.tokens import Role, issue
from tests.gateway.conftest import Gateway, new_id

ACTIVE = "/v1/customers/me/broadcasts/active"


def claims(role: str = "customer", sub: str | None = None, ttl_s: int = 600) -> dict[str, object]:
    return {"sub": sub or new_id("c"), "role": role, "exp": int(time.time()) + ttl_s}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.json()["error"]["message"]


async def test_no_token_is_401(api: httpx.AsyncClient) -> None:
    """A /v1 call without an Authorization header is 401 unauthorized."""
    assert_unauthorized(await api.get(ACTIVE))


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "token abc", "bearer"])
async def test_malformed_authorization_is_401(api: httpx.AsyncClient, header: str) -> None:
    """An Authorization header that is not `Bearer <jwt>` is 401."""
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": header}))


async def test_garbage_token_is_401(api: httpx.AsyncClient) -> None:
    """A bearer value that is not a JWT is 401."""
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": "Bearer not.a.jwt"}))


async def test_bad_signature_is_401(api: httpx.AsyncClient) -> None:
    """A token signed with another key is 401."""
    token = issue("some-other-secret-0123456789abcdef", role="customer", sub="c1", ttl_s=600)
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_alg_none_is_401(api: httpx.AsyncClient) -> None:
    """An unsigned token (`alg: none`) is 401."""
    token = jwt.encode(claims(), "", algorithm="none")
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_hs512_is_401(api: httpx.AsyncClient, system: Gateway) -> None:
    """A token signed with the right key but HS512 instead of HS256 is 401."""
    token = jwt.encode(claims(), system.access_secret, algorithm="HS512")
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_expired_token_is_401(api: httpx.AsyncClient, system: Gateway) -> None:
    """A token past its `exp` is 401."""
    token = issue(system.access_secret, role="customer", sub="c1", ttl_s=-60)
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_unknown_role_is_401(api: httpx.AsyncClient, system: Gateway) -> None:
    """A validly signed token naming a role outside customer/transporter/driver is 401."""
    token = jwt.encode(claims(role="admin"), system.access_secret, algorithm="HS256")
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_malformed_subject_is_401(api: httpx.AsyncClient, system: Gateway) -> None:
    """A token whose `sub` is not 1-64 of A-Za-z0-9_- is 401."""
    token = jwt.encode(claims(sub="no spaces!"), system.access_secret, algorithm="HS256")
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_token_without_exp_is_401(api: httpx.AsyncClient, system: Gateway) -> None:
    """A token without an `exp` claim is 401."""
    token = jwt.encode({"sub": "c1", "role": "customer"}, system.access_secret, algorithm="HS256")
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_refresh_token_as_access_token_is_401(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """A refresh token (signed with JWT_REFRESH_SECRET) is refused as an access token."""
    token = issue(system.refresh_secret, role="customer", sub="c1", ttl_s=600)
    assert_unauthorized(await api.get(ACTIVE, headers={"Authorization": f"Bearer {token}"}))


async def test_valid_token_is_accepted(api: httpx.AsyncClient, system: Gateway) -> None:
    """A valid customer token reaches the route (no active broadcast yet: 404)."""
    response = await api.get(ACTIVE, headers=system.auth("customer"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", ACTIVE, "transporter"),
        ("GET", ACTIVE, "driver"),
        ("POST", "/v1/broadcasts", "transporter"),
        ("GET", "/v1/transporters/me/drivers", "customer"),
        ("PUT", "/v1/transporters/me/vehicles/v1", "driver"),
        ("POST", "/v1/broadcasts/b1/accept", "customer"),
        ("POST", "/v1/truck-requests/tr1/accept", "driver"),
        ("GET", "/v1/broadcasts/b1", "driver"),
        ("GET", "/v1/drivers/me/assignment", "transporter"),
    ],
)
async def test_wrong_role_is_403(
    api: httpx.AsyncClient, system: Gateway, method: str, path: str, role: Role
) -> None:
    """A route called with a valid token of a role it does not admit is 403 forbidden."""
    response = await api.request(method, path, headers=system.auth(role), json={})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"


async def test_refresh_returns_a_working_token_pair(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """POST /v1/auth/refresh trades a refresh token for a new access and refresh token."""
    sub = new_id("t")
    refresh = issue(system.refresh_secret, role="transporter", sub=sub, ttl_s=600)
    response = await api.post("/v1/auth/refresh", json={"refreshToken": refresh})
    assert response.status_code == 200, response.text
    pair = response.json()
    assert set(pair) == {"accessToken", "refreshToken"}
    listed = await api.get(
        "/v1/transporters/me/drivers", headers={"Authorization": f"Bearer {pair['accessToken']}"}
    )
    assert listed.status_code == 200
    again = await api.post("/v1/auth/refresh", json={"refreshToken": pair["refreshToken"]})
    assert again.status_code == 200


async def test_refresh_refuses_an_access_token(api: httpx.AsyncClient, system: Gateway) -> None:
    """An access token is not a refresh token: 401."""
    response = await api.post("/v1/auth/refresh", json={"refreshToken": system.token("customer")})
    assert_unauthorized(response)


async def test_refresh_refuses_an_expired_refresh_token(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """An expired refresh token is 401."""
    refresh = issue(system.refresh_secret, role="customer", sub="c1", ttl_s=-60)
    assert_unauthorized(await api.post("/v1/auth/refresh", json={"refreshToken": refresh}))


async def test_refresh_without_the_field_is_422(api: httpx.AsyncClient) -> None:
    """A refresh body without `refreshToken` is 422 naming the field."""
    response = await api.post("/v1/auth/refresh", json={})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "refreshToken"
