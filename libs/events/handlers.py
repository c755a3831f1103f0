"""Handler tables, typed so that mypy checks every pairing of a message type with its handler.

A service's handlers are plain functions taking first what they need (the service's frozen
`Deps`, or a context such as a `Change` or a `Request`) and then the message, of its own type:
`async def schedule(deps: TimerDeps, event: BroadcastCreated) -> None`. Its handlers module ends
with the table, `HANDLERS = Handlers[...]().on(BroadcastCreated, schedule).on(...)`, whose `on`
ties the type to the function's message parameter: a function registered for a type it does not
take does not type-check, and no handler narrows its message again. The runner's side
(`dispatch.event_handler`, `bus.command_handler`) gets the table and the service's `Deps`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar, cast

import msgspec
import psycopg

from libs.events.commands import Command, Rejected

B = TypeVar("B")  # the messages the table dispatches (events, exceptions)
C = TypeVar("C")  # what every handler takes before the message: dependencies, a context
R = TypeVar("R")  # what every handler answers
M = TypeVar("M")
D = TypeVar("D")  # a service's dependencies
K = TypeVar("K", bound=Command)

Conn = psycopg.AsyncConnection[Any]
# A command handler, `fn(deps, conn, command)`, and one of several commands together.
One = Callable[[D, Conn, K], Awaitable[msgspec.Struct]]
Many = Callable[[D, Conn, list[K]], Awaitable[Sequence[msgspec.Struct | Rejected]]]
ManyRun = Callable[[Conn, list[Command]], Awaitable[Sequence[msgspec.Struct | Rejected]]]


class Handlers(Generic[B, C, R]):
    """Each message type to `fn(context, message)`; built once, at import, by `on`.

    A handler is looked up by the type of the message it is then called with (or, like
    Starlette's exception handlers, by a class of that type's MRO), so it only ever gets
    messages of the type it was registered for."""

    def __init__(self) -> None:
        self._fns: dict[type[object], Callable[[C, B], R]] = {}

    def on(self, kind: type[M], fn: Callable[[C, M], R]) -> Self:
        # Sound by the lookup above: `fn` is called with instances of `kind` only.
        self._fns[kind] = cast(Callable[[C, B], R], fn)
        return self

    def get(self, kind: type[object]) -> Callable[[C, B], R] | None:
        """The handler registered for exactly `kind`, if any."""
        return self._fns.get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._fns

    def as_mapping(self) -> Mapping[type[object], Callable[[C, B], R]]:
        return dict(self._fns)


@dataclass(frozen=True)
class CommandRun:
    """A command type's handlers with the service's dependencies applied.

    `many`, when there is one, runs several commands of one ordering key, read in one batch, in
    one transaction: it answers each command's result, or its `Rejected`, exactly as running them
    one after another would. Under load a batch holds many claims of one broadcast; deciding them
    together takes one lock, one commit and one flush of the WAL instead of one each. The
    transactions of such a type (of one command or many) run in psycopg's pipeline mode: `BEGIN`
    goes out with the first query and `COMMIT` with nothing else waiting, two round trips fewer.
    So its functions must fetch every result they act on (an error surfaces at a fetch or at the
    end of a `conn.pipeline()` block, not at `execute`)."""

    one: Callable[[Conn, Command], Awaitable[msgspec.Struct]]
    many: ManyRun | None

    @property
    def batched(self) -> bool:
        return self.many is not None


class CommandHandlers(Generic[D]):
    """A service's command table: each command type to `fn(deps, conn, command)` (and, for a type
    decided in batches, `many(deps, conn, commands)`); built once, at import, by `on`."""

    def __init__(self) -> None:
        self._fns: dict[type[Command], tuple[One[D, Command], Many[D, Command] | None]] = {}

    def on(self, kind: type[K], fn: One[D, K], many: Many[D, K] | None = None) -> Self:
        # Sound: the executor calls them with commands of type `kind` only.
        self._fns[kind] = cast(tuple[One[D, Command], Many[D, Command] | None], (fn, many))
        return self

    def __contains__(self, kind: object) -> bool:
        return kind in self._fns

    def bind(self, deps: D) -> Mapping[type[Command], CommandRun]:
        """The table with `deps` applied, for the executor (`bus.command_handler`)."""
        return {
            kind: CommandRun(
                functools.partial(fn, deps), functools.partial(many, deps) if many else None
            )
            for kind, (fn, many) in self._fns.items()
        }
