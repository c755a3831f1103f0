"""Configuration: one frozen settings object read from an environment mapping.

Every service reads the same variables (CONTRACT.md section 1). Nothing here touches the network;
`load_settings` only reads the mapping it is given and, for local runs, the generated JWT keys
under the state directory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


class PortInUse(SettingsError):
    """A port this process must listen on is taken: the message names it and the variable to set."""

    def __init__(self, port: int, variable: str, host: str = "127.0.0.1") -> None:
        super().__init__(
            f"port {port} ({host}) is in use by another program, perhaps another weelo: "
            f"stop it, or set {variable} to a free port"
        )
        self.port, self.variable = port, variable


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    redis_url: str
    redis_key_prefix: str = "weelo:"
    jwt_secret: str
    jwt_refresh_secret: str
    jwt_previous_secrets: tuple[str, ...] = ()
    broadcast_timeout_seconds: float = 120.0
    broadcast_radius_km: float = 25.0
    presence_ttl_seconds: float = 30.0
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    health_port: int | None = None
    http_keepalive_seconds: int = 130
    http_header_timeout_seconds: float = 10.0
    # The peers whose X-Forwarded-For names the client (addresses, CIDRs); by default none.
    forwarded_allow_ips: str = ""
    db_pool_size: int = 10
    fcm_server_key: str | None = None
    state_dir: Path = Path(".weelo")


_NUMBERS: dict[str, tuple[str, type[int] | type[float], float]] = {
    "BROADCAST_TIMEOUT_SECONDS": ("broadcast_timeout_seconds", float, 0.1),
    "BROADCAST_RADIUS_KM": ("broadcast_radius_km", float, 0.0),
    "PRESENCE_TTL_SECONDS": ("presence_ttl_seconds", float, 0.1),
    "GATEWAY_PORT": ("gateway_port", int, 0),
    "HEALTH_PORT": ("health_port", int, 0),
    "HTTP_KEEPALIVE_SECONDS": ("http_keepalive_seconds", int, 1),
    "HTTP_HEADER_TIMEOUT_SECONDS": ("http_header_timeout_seconds", float, 0.1),
    "DB_POOL_SIZE": ("db_pool_size", int, 1),
}


def state_dir(environ: Mapping[str, str]) -> Path:
    """Where local state (embedded servers, generated keys) lives: `WEELO_STATE_DIR`, else
    `.weelo` at the root of the checkout this code runs from, whatever the current folder (so
    `weelo token` and `weelo up` find the same keys from anywhere), else `.weelo` (an installed
    package, as in the image, has no checkout)."""
    if environ.get("WEELO_STATE_DIR"):
        return Path(environ["WEELO_STATE_DIR"])
    root = checkout_root()
    return root / ".weelo" if root is not None else Path(".weelo")


def checkout_root(code: Path = Path(__file__)) -> Path | None:
    """The checkout holding `code` (libs/runtime/settings.py): the folder with its pyproject."""
    root = code.resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "libs").is_dir() else None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {"state_dir": state_dir(env)}
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not env.get(name):
            raise SettingsError(f"{name} is not set")
        values[name.lower()] = env[name]
    values.update(_parse_numbers(env))
    for name, field in (
        ("REDIS_KEY_PREFIX", "redis_key_prefix"),
        ("GATEWAY_HOST", "gateway_host"),
        ("FCM_SERVER_KEY", "fcm_server_key"),
        ("FORWARDED_ALLOW_IPS", "forwarded_allow_ips"),
    ):
        if name in env:
            values[field] = env[name]
    values.update(_jwt_keys(env, values["state_dir"]))
    return Settings(**values)


def _parse_numbers(env: Mapping[str, str]) -> dict[str, int | float]:
    parsed: dict[str, int | float] = {}
    for name, (field, kind, minimum) in _NUMBERS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = kind(raw)
        except ValueError as e:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from e
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
        parsed[field] = value
    return parsed


def _jwt_keys(env: Mapping[str, str], directory: Path) -> dict[str, Any]:
    """The JWT keys of the environment; a local run without them generates its own once. A
    deployment that reads Secrets Manager (`WEELO_SECRETS_ID`) never does: there a missing key
    stays empty (only the gateway needs one, and it refuses to start without it) instead of a
    random key of this task's, which no other task would accept."""
    keys: dict[str, Any] = {}
    deployed = bool(env.get("WEELO_SECRETS_ID", "").strip())
    for name in ("JWT_SECRET", "JWT_REFRESH_SECRET"):
        generated = "" if deployed else local_secret(directory, name.lower())
        keys[name.lower()] = env.get(name) or generated
    previous = env.get("JWT_PREVIOUS_SECRETS", "")
    keys["jwt_previous_secrets"] = tuple(s for s in previous.split(",") if s)
    return keys


def local_secret(directory: Path, name: str) -> str:
    """Read a key generated once under `directory`, creating it (mode 0600) if missing.

    The key is written to a temporary file and linked into place, so processes starting at the
    same moment all read the one complete key that won.
    """
    path = directory / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        draft = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
        draft.write_text(secrets.token_urlsafe(48))
        draft.chmod(0o600)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    value = path.read_text().strip()
    if not value:
        raise SettingsError(f"{path} is empty: delete it to generate a new key")
    return value
