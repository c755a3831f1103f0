"""Time as the contract shows it: UTC, millisecond precision, ISO 8601 with a trailing Z."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Now in UTC, truncated to whole milliseconds (what every stored and shown time uses)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso_ms(moment: datetime) -> str:
    """`2026-11-24T10:00:00.123Z`."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )
