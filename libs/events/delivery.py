"""A stream entry in the runner's hands, and its message decoded once.

The runner reads entries as raw fields; what they hold (an event envelope, a command) is for the
handler to say. An `EntryDecoder` decodes an entry's message the first time anything asks (the
ordering key, when the runner reads it) and keeps the result with the entry, so the handler, and
a handler looking at the entries after it (`Delivery.later`), get the same decoded value again.
An entry that does not decode is a `PoisonMessage` each time it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

M = TypeVar("M")


class PoisonMessage(Exception):
    """Raised by a handler for an entry that can never succeed: dead-letter it at once."""


class Memo:
    """What an entry's message decoded to, and by which decoder; empty until first asked. Every
    copy of the entry's `Delivery` (`with_later`, `dataclasses.replace`) shares it."""

    __slots__ = ("decoder", "value")

    def __init__(self) -> None:
        self.decoder: object = None
        self.value: object = None


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    # The entries with the same key after this one, already read, in the order they will run.
    later: tuple[Delivery, ...] = field(default=(), repr=False)
    memo: Memo = field(default_factory=Memo, repr=False, compare=False)

    def with_later(self, later: tuple[Delivery, ...]) -> Delivery:
        """This delivery as it runs, knowing the entries of its key after it (a copy sharing its
        memo; cheaper than `dataclasses.replace`, on the path of every entry)."""
        return Delivery(self.stream, self.entry_id, self.fields, self.deliveries, later, self.memo)


class EntryDecoder(Generic[M]):
    """Decodes an entry's message with `decode` (which raises `PoisonMessage` for one that is not
    a valid message) once per entry."""

    def __init__(self, decode: Callable[[dict[bytes, bytes]], M]) -> None:
        self._decode = decode

    def __call__(self, delivery: Delivery) -> M:
        memo = delivery.memo
        if memo.decoder is not self:
            memo.value = self._decoded(delivery.fields)
            memo.decoder = self
        if isinstance(memo.value, _Undecodable):
            raise PoisonMessage(memo.value.error)
        # This decoder put it there (`memo.decoder is self`): it is an M.
        return cast(M, memo.value)

    def _decoded(self, fields: dict[bytes, bytes]) -> M | _Undecodable:
        try:
            return self._decode(fields)
        except PoisonMessage as e:  # kept as its text: no traceback held with the entry
            return _Undecodable(str(e))


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error
