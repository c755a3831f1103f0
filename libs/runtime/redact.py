"""No log line holds a credential (CONTRACT.md section 2): every rendered line is scrubbed.

The line is scrubbed after rendering, not field by field, so that every place a credential can
hide is covered: the request line uvicorn logs for each WebSocket (`?token=` is the only way a
browser can authenticate one), the handshake headers websockets logs at DEBUG, an exception's
message or traceback, a field some code adds later. Three shapes are replaced by `[redacted]`:

- the value of a query parameter whose name suggests a credential (`token`, `access_token`,
  `refreshToken`, `password`, `secret`, `api_key`, `signature`, `session`, ...);
- what follows `Bearer` (an `Authorization` header);
- anything shaped like a JWT (three base64url parts, the first starting `eyJ`, which is how
  the JSON header of every JWT encodes).
"""

from __future__ import annotations

import re

import structlog

REDACTED = "[redacted]"

_NAME_PART = r"[A-Za-z0-9_.\-]*"
_CREDENTIAL_WORD = r"token|secret|passw|pwd|key|auth|jwt|signature|sig(?==)|credential|session"
_CREDENTIAL_NAME = rf"{_NAME_PART}(?:{_CREDENTIAL_WORD}){_NAME_PART}"
_STOP = r"\s\"'\\"  # a value ends at a space, a quote or an escape of the rendered JSON
_CREDENTIALS = re.compile(
    r"(?P<jwt>eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*)"
    rf"|(?P<bearer>\bbearer\s+)[^{_STOP},;]+"
    rf"|(?P<param>[?&;]{_CREDENTIAL_NAME}=)[^{_STOP}&;#]*",
    re.IGNORECASE,
)


def _replace(match: re.Match[str]) -> str:
    kept = match.group("bearer") or match.group("param") or ""
    return kept + REDACTED


def redact(line: str) -> str:
    """`line` with every credential in it replaced by `[redacted]`."""
    return _CREDENTIALS.sub(_replace, line)


class RedactingJSONRenderer:
    """structlog's `JSONRenderer`, with credentials scrubbed from the rendered line."""

    def __init__(self) -> None:
        self._render = structlog.processors.JSONRenderer()

    def __call__(self, logger: object, name: str, event_dict: structlog.types.EventDict) -> str:
        rendered = self._render(logger, name, event_dict)
        return redact(rendered if isinstance(rendered, str) else rendered.decode())
