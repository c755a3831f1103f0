"""The gateway as a real process reading its signing key from Secrets Manager (moto's server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from libs.runtime.tokens import issue
from tests.processes import environment, services


def test_gateway_accepts_a_token_signed_with_the_key_stored_in_the_secret(
    cli_env: dict[str, str], service_env: dict[str, str], make_secret: Callable[[Any], str]
) -> None:
    """WEELO_SECRETS_ID set: the key in the secret, not the environment's, signs valid tokens."""
    stored = "key-from-secrets-manager-" + "x" * 32
    arn = make_secret({"JWT_SECRET": stored, "JWT_REFRESH_SECRET": "refresh-" + "y" * 32})
    env = environment(
        {**service_env, **cli_env},
        WEELO_SECRETS_ID=arn,
        JWT_SECRET="environment-key-that-the-secret-overrides-" + "z" * 16,
    )
    with services(["gateway"], env) as running:
        url = f"http://127.0.0.1:{running['gateway'].port}/v1/customers/me/broadcasts/active"
        good = issue(stored, role="customer", sub="c1", ttl_s=60)
        other = issue(env["JWT_SECRET"], role="customer", sub="c1", ttl_s=60)
        accepted = httpx.get(url, headers={"Authorization": f"Bearer {good}"})
        refused = httpx.get(url, headers={"Authorization": f"Bearer {other}"})
    assert accepted.status_code == 404  # authenticated: this customer has no active broadcast
    assert accepted.json()["error"]["code"] == "not_found"
    assert refused.status_code == 401
