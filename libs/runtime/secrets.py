"""Secrets from AWS Secrets Manager, read before anything else initialises.

`bootstrap_secrets(environ)` is the first thing the `weelo` CLI does. When `WEELO_SECRETS_ID`
is set it reads that secret (a JSON object) through aws-secretsmanager-caching and overlays its
known keys (`SECRET_KEYS`, plus the optional `PREVIOUS_KEY_LISTS`) onto `environ`, so a key found
there wins over the environment. A secret that is missing, unreadable, not a JSON object, or
holding a known key that is not a string raises `SecretsError`; the CLI prints its message and
exits 3 before any pool, server or task started.

Where the secret is read:
- region: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the region in the secret's ARN, else the
  AWS config file's region, else `us-east-1`;
- endpoint: `AWS_ENDPOINT_URL_SECRETS_MANAGER` when set (a moto server in the tests), else AWS's;
- credentials: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from `environ` when both are there,
  else botocore's default chain (the ECS task role in production).

`open_secret_source` gives the same secret as a `SecretSource` for code that re-reads it while
running (the JWT keyring in `libs.runtime.keyring`): any version by its staging label, with its
id and creation date. Its cache (aws-secretsmanager-caching's per-secret item) asks Secrets
Manager which version carries which label (`DescribeSecret`) at most once per
`WEELO_SECRETS_REFRESH_SECONDS` (default 300), and fetches each version (`GetSecretValue`) once.

No secret value is ever logged or put in an error message: only the secret id, the region, key
names and AWS error codes. botocore's DEBUG wire logs (which would print response bodies) are
held at INFO whatever LOG_LEVEL says.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SECRETS_ID_VAR = "WEELO_SECRETS_ID"
ENDPOINT_VAR = "AWS_ENDPOINT_URL_SECRETS_MANAGER"
REFRESH_VAR = "WEELO_SECRETS_REFRESH_SECONDS"
SECRET_KEYS = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_REFRESH_SECRET", "FCM_SERVER_KEY")
PREVIOUS_KEY_LISTS = ("JWT_PREVIOUS_SECRETS", "JWT_REFRESH_PREVIOUS_SECRETS")
CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"
DEFAULT_REGION = "us-east-1"
DEFAULT_REFRESH_INTERVAL_S = 300
_ARN_REGION = re.compile(r"^arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):")
_HINTS = {
    "ResourceNotFoundException": "it does not exist in that region (check {var})",
    "AccessDeniedException": "access denied: the task role needs secretsmanager:GetSecretValue "
    "and secretsmanager:DescribeSecret on it (and kms:Decrypt on its key)",
    "DecryptionFailure": "its KMS key cannot decrypt it: grant kms:Decrypt to the task role",
    "UnrecognizedClientException": "the AWS credentials are not valid",
    "InvalidSignatureException": "the AWS credentials are not valid",
    "ExpiredTokenException": "the AWS credentials have expired",
}


class SecretsError(RuntimeError):
    """The configured secret could not be read or is not a JSON object of strings."""


@dataclass(frozen=True)
class SecretVersion:
    """One version of the secret: its values, its id, and when Secrets Manager created it."""

    values: dict[str, str]
    version_id: str
    created_at: float | None  # seconds since the epoch (Secrets Manager's clock)


@dataclass(frozen=True)
class SecretSource:
    """One Secrets Manager secret, read through a cache of its versions."""

    secret_id: str
    region: str
    cache: Any  # aws_secretsmanager_caching's SecretCacheItem for this secret (untyped)

    def read(self, stage: str = CURRENT) -> dict[str, str] | None:
        """The version labelled `stage` as a dict, or None when no version carries that label."""
        version = self.read_version(stage)
        return None if version is None else version.values

    def read_version(self, stage: str = CURRENT) -> SecretVersion | None:
        """The version labelled `stage`, or None when no version carries that label."""
        try:
            found = self.cache.get_secret_value(stage)
        except Exception as e:  # botocore raises many unrelated types; all are translated
            raise _translate(e, self.secret_id, self.region) from e
        if not found or found.get("SecretString") is None:
            return None
        return SecretVersion(
            values=parse_secret(self.secret_id, str(found["SecretString"])),
            version_id=str(found.get("VersionId", "")),
            created_at=_epoch_seconds(found.get("CreatedDate")),
        )


def bootstrap_secrets(environ: MutableMapping[str, str]) -> list[str]:
    """Overlay the secret's known keys onto `environ`; return the key names applied."""
    source = open_secret_source(environ)
    if source is None:
        return []
    values = source.read(CURRENT)
    if values is None:
        raise SecretsError(f"secret {source.secret_id!r} has no {CURRENT} string value")
    applied = [k for k in (*SECRET_KEYS, *PREVIOUS_KEY_LISTS) if k in values]
    for key in applied:
        environ[key] = values[key]
    _announce("secrets_loaded", secret_id=source.secret_id, region=source.region, keys=applied)
    return applied


def open_secret_source(
    environ: Mapping[str, str], *, refresh_interval_s: int | None = None
) -> SecretSource | None:
    """The secret named by `WEELO_SECRETS_ID`, or None when it is not set. Does no I/O."""
    secret_id = environ.get(SECRETS_ID_VAR, "").strip()
    if not secret_id:
        return None
    from aws_secretsmanager_caching import SecretCacheConfig

    # The item `SecretCache` keeps per secret: the keyring needs the whole GetSecretValue answer
    # (a version's CreatedDate), which `SecretCache` reduces to the string. The package calls
    # its `cache` module internal: its version is locked in uv.lock, and tests/deploy read
    # through this item against moto's server.
    from aws_secretsmanager_caching.cache.items import SecretCacheItem

    region = secrets_region(secret_id, environ)
    interval = refresh_interval_s or refresh_interval(environ)
    config = SecretCacheConfig(
        secret_refresh_interval=interval,
        exception_retry_delay_base=1,
        exception_retry_growth_factor=2,
        exception_retry_delay_max=min(interval, 60),
    )
    client = _client(environ, region)
    return SecretSource(secret_id, region, SecretCacheItem(config, client, secret_id))


def secrets_region(secret_id: str, environ: Mapping[str, str]) -> str:
    """The region to read `secret_id` from (see the module docstring for the order)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if environ.get(name):
            return environ[name]
    arn = _ARN_REGION.match(secret_id)
    if arn:
        return arn.group(1)
    import botocore.session

    configured = botocore.session.get_session().get_config_variable("region")
    return str(configured) if configured else DEFAULT_REGION


def parse_secret(secret_id: str, raw: str) -> dict[str, str]:
    """The secret's JSON object; every known key it holds must be a string (not logged)."""
    try:
        values = json.loads(raw)
    except ValueError:
        raise SecretsError(f"secret {secret_id!r} is not valid JSON") from None
    if not isinstance(values, dict):
        raise SecretsError(f"secret {secret_id!r} must be a JSON object")
    for key in SECRET_KEYS:
        if key in values and (not isinstance(values[key], str) or not values[key]):
            raise SecretsError(f"secret {secret_id!r}: {key} must be a non-empty string")
    for key in PREVIOUS_KEY_LISTS:
        if key in values and not isinstance(values[key], str):
            raise SecretsError(f"secret {secret_id!r}: {key} must be a comma-separated string")
    return {k: v for k, v in values.items() if isinstance(v, str)}


def refresh_interval(environ: Mapping[str, str]) -> int:
    """`WEELO_SECRETS_REFRESH_SECONDS`: whole seconds, at least 1 (default 300)."""
    raw = environ.get(REFRESH_VAR, "")
    if not raw:
        return DEFAULT_REFRESH_INTERVAL_S
    if not raw.isdigit() or int(raw) < 1:
        raise SecretsError(f"{REFRESH_VAR} must be a whole number of seconds, got {raw!r}")
    return int(raw)


def _client(environ: Mapping[str, str], region: str) -> Any:
    import botocore.config
    import botocore.session

    _quiet_wire_logs()
    key_id, key = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    explicit = bool(key_id and key)
    config = botocore.config.Config(
        connect_timeout=5,
        read_timeout=10,
        retries={"max_attempts": 3, "mode": "standard"},
        user_agent_extra="weelo-secrets",
    )
    return botocore.session.get_session().create_client(
        "secretsmanager",
        region_name=region,
        endpoint_url=environ.get(ENDPOINT_VAR) or None,
        aws_access_key_id=key_id if explicit else None,
        aws_secret_access_key=key if explicit else None,
        aws_session_token=environ.get("AWS_SESSION_TOKEN") if explicit else None,
        config=config,
    )


def _epoch_seconds(value: object) -> float | None:
    """A GetSecretValue `CreatedDate` (botocore gives a datetime) as seconds since the epoch."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _quiet_wire_logs() -> None:
    """botocore logs whole response bodies (here: secret values) at DEBUG; never let it."""
    for name in ("botocore", "boto3", "aws_secretsmanager_caching"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)


def _translate(error: Exception, secret_id: str, region: str) -> SecretsError:
    """A message naming the secret, the region and the cause; never a secret value."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = f"cannot read secret {secret_id!r} in {region}"
    if isinstance(error, SecretsError):
        return error
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", "ClientError"))
        if code in _HINTS:
            hint = _HINTS[code].format(var=SECRETS_ID_VAR)
        else:
            hint = str(details.get("Message", "request refused"))[:200]
        return SecretsError(f"{where}: {code}: {hint}")
    if isinstance(error, NoCredentialsError):
        return SecretsError(f"{where}: no AWS credentials found (task role or AWS_* variables)")
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return SecretsError(f"{where}: Secrets Manager is unreachable: {error}")
    # Other errors (response parsing, for one) may quote the response body: name the type only.
    return SecretsError(f"{where}: {type(error).__name__}")


def _announce(event: str, **fields: object) -> None:
    """One JSON log line on stderr (logging is not configured yet; stdout belongs to commands)."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = {"event": event, "level": "info", "logger": __name__, "timestamp": stamp, **fields}
    print(json.dumps(line), file=sys.stderr, flush=True)
