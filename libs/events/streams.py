"""Names of every Redis key the bus uses, all under the deployment's key prefix.

Domain events of a stream `<category>-<id>` (for example `broadcast-4f2c...`) are published to
the Redis stream `<prefix>{bus}:events:<category>`. The event streams and the bus epoch key share
the hash tag `{bus}`, so the relay's publish script, which touches them together, also runs on
Redis Cluster.
"""

from __future__ import annotations

CATEGORIES = ("broadcast", "assignment", "driver", "fleet", "probe")


def category_of(stream_id: str) -> str:
    category, _, rest = stream_id.partition("-")
    if not rest or category not in CATEGORIES:
        raise ValueError(f"stream id {stream_id!r} is not '<category>-<id>' with a known category")
    return category


def events_stream(prefix: str, category: str) -> str:
    return f"{prefix}{{bus}}:events:{category}"


def stream_for(prefix: str, stream_id: str) -> str:
    return events_stream(prefix, category_of(stream_id))


def dead_letter_stream(prefix: str) -> str:
    return f"{prefix}dead-letter"


def bus_epoch_key(prefix: str) -> str:
    """Set by the relay; its absence means Redis lost its data since the last publish."""
    return f"{prefix}{{bus}}:epoch"


def bus_losses_key(prefix: str) -> str:
    """Set by the relay to a new value whenever it finds Redis lost data (all of it, or its
    newest writes); the gateways tell every connected client to resync when it changes."""
    return f"{prefix}{{bus}}:losses"


# The mark of a deployment's first epoch (`first_mark`): Redis never held anything of it before,
# so a gateway that saw no mark yet has no loss to tell of when this one appears.
_FIRST = "first:"


def first_mark(epoch: str) -> str:
    return _FIRST + epoch


def is_first_mark(mark: bytes | str) -> bool:
    return (mark.decode() if isinstance(mark, bytes) else mark).startswith(_FIRST)


# --- stream entry ids ---------------------------------------------------------------------------

StreamId = tuple[int, int]  # a Redis stream entry id, `<ms>-<seq>`, as a comparable pair
LARGEST_PART = 2**64 - 1  # each part of a stream id is a 64-bit unsigned integer in Redis


def parse_id(raw: bytes | str) -> StreamId:
    """`1700000000000-3` as a comparable pair; ValueError for anything else, a part past
    `LARGEST_PART` included (Redis refuses such an id in every command)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, dash, seq = text.partition("-")
    if _digits(ms) and (not dash or _digits(seq)):
        pair = int(ms), int(seq or 0)
        if max(pair) <= LARGEST_PART:
            return pair
    raise ValueError(f"not a stream id: {text!r}")


def _digits(text: str) -> bool:
    """1-20 ASCII digits (`LARGEST_PART` has 20)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"
