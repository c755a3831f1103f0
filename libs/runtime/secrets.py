"""Secrets bootstrap: when `WEELO_SECRETS_ID` is set, read that AWS Secrets Manager secret (a JSON
object) before anything else initialises and let its keys win over the environment.

No secret value is ever logged: only key names.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping

import structlog

log = structlog.get_logger(__name__)

SECRET_KEYS = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_REFRESH_SECRET", "FCM_SERVER_KEY")


class SecretsError(RuntimeError):
    """The configured secret could not be read or is not a JSON object of strings."""


def bootstrap_secrets(environ: MutableMapping[str, str]) -> list[str]:
    """Overlay the secret's known keys onto `environ`; return the key names applied."""
    secret_id = environ.get("WEELO_SECRETS_ID")
    if not secret_id:
        return []
    values = _parse(secret_id, _fetch(secret_id, environ))
    applied = [k for k in SECRET_KEYS if k in values]
    for key in applied:
        environ[key] = values[key]
    log.info("secrets_loaded", secret_id=secret_id, keys=applied)
    return applied


def _fetch(secret_id: str, environ: MutableMapping[str, str]) -> str:
    import botocore.session
    from aws_secretsmanager_caching import SecretCache

    try:
        session = botocore.session.get_session()
        client = session.create_client(
            "secretsmanager",
            endpoint_url=environ.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or None,
            region_name=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
        )
        value = SecretCache(client=client).get_secret_string(secret_id)
    except Exception as e:
        raise SecretsError(f"cannot read secret {secret_id!r}: {type(e).__name__}: {e}") from e
    if value is None:
        raise SecretsError(f"secret {secret_id!r} has no string value")
    return str(value)


def _parse(secret_id: str, raw: str) -> dict[str, str]:
    try:
        values = json.loads(raw)
    except ValueError as e:
        raise SecretsError(f"secret {secret_id!r} is not JSON") from e
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise SecretsError(f"secret {secret_id!r} must be a JSON object of strings")
    return values
