"""Each stream entry's message is decoded once: by its ordering key when the runner reads it;
the handler, the handler's look at the entries after it, a retry of it and the copies the runner
makes of its delivery get the same decoded value. An undecodable entry is still poison."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from libs.events.catalogue import BusProbe, DriverRegistered, Envelope, Event
from libs.events.codec import envelope_from_fields
from libs.events.delivery import Delivery, EntryDecoder, PoisonMessage
from libs.events.dispatch import envelope_of, event_handler, stream_key
from libs.events.handlers import Handlers
from tests.events.helpers import eventually
from tests.events.runners import Running, make_runner, probe_entry


class Counting:
    """An envelope decoder that counts the decodes it made."""

    def __init__(self) -> None:
        self.decodes = 0

    def __call__(self, fields: dict[bytes, bytes]) -> Envelope:
        self.decodes += 1
        try:
            return envelope_from_fields(fields)
        except ValueError as e:
            raise PoisonMessage(str(e)) from e


def test_a_delivery_and_its_copies_are_decoded_once() -> None:
    """The copies the runner makes of a delivery (its later entries, a redelivery) share its
    decoded message."""
    counting = Counting()
    decoded = EntryDecoder(counting)
    delivery = Delivery("s", "1-0", probe_entry("probe-a", 1), 1)
    first = decoded(delivery)
    assert decoded(replace(delivery, deliveries=2)) is first
    assert decoded(replace(delivery, later=(delivery,))) is first
    assert counting.decodes == 1


def test_an_undecodable_entry_is_poison_every_time_it_is_asked() -> None:
    """An entry that does not decode raises `PoisonMessage` each time, decoding it once."""
    counting = Counting()
    decoded = EntryDecoder(counting)
    delivery = Delivery("s", "1-0", {b"envelope": b"{not json"}, 1)
    for _ in range(2):
        with pytest.raises(PoisonMessage):
            decoded(delivery)
    assert counting.decodes == 1


def test_two_decoders_of_one_entry_each_decode_it() -> None:
    """A decoder never answers what another one decoded."""
    delivery = Delivery("s", "1-0", probe_entry("probe-a", 1), 1)
    ids = EntryDecoder(lambda fields: envelope_from_fields(fields).event_id)
    envelope = envelope_of(delivery)
    assert ids(delivery) == envelope.event_id
    assert envelope_of(delivery) == envelope


async def test_the_runner_decodes_each_entry_once(
    redis: Redis, prefix: str, running: Running
) -> None:
    """Entries read by a runner keyed by their envelope, whose handler reads its envelope and
    those of the entries after it: one decode per entry."""
    stream, counting, seen = prefix + "s", Counting(), []
    decoded = EntryDecoder(counting)

    async def handle(d: Delivery) -> None:
        seen.append((decoded(d).version, [decoded(x).version for x in d.later]))

    for v in range(1, 21):
        await redis.xadd(stream, probe_entry("probe-a", v))

    def key(d: Delivery) -> str:
        return decoded(d).stream_id

    running.start(make_runner(redis, stream, handle, key=key))
    await eventually(lambda: _done(seen, 20))
    assert [v for v, _ in seen] == list(range(1, 21))
    assert counting.decodes == 20


async def test_an_event_table_gets_the_dependencies_and_the_typed_event(
    redis: Redis, prefix: str, running: Running
) -> None:
    """`event_handler` calls the table's function for the entry's event type with the
    dependencies and the event; an entry that is no envelope goes to the dead-letter stream."""
    stream, got = prefix + "s", []

    async def on_probe(deps: str, event: BusProbe) -> None:
        got.append((deps, event.sequence))

    table = Handlers[Event, str, Awaitable[None]]().on(BusProbe, on_probe)
    await redis.xadd(stream, probe_entry("probe-a", 1, sequence=7))
    await redis.xadd(stream, {b"envelope": b"{not json"})
    running.start(make_runner(redis, stream, event_handler(table, "deps"), key=stream_key))
    await eventually(lambda: _done(got, 1))
    await eventually(lambda: _has_entries(redis, stream + ":dead", 1))
    assert got == [("deps", 7)]


async def test_an_event_type_not_in_the_table_is_done_with_without_effect() -> None:
    """An event whose type has no entry in the table: the handler returns (it is acknowledged)
    without calling anything."""

    async def on_driver(_deps: None, _event: DriverRegistered) -> None:
        raise AssertionError("not a driver_registered event")

    table = Handlers[Event, None, Awaitable[None]]().on(DriverRegistered, on_driver)
    await event_handler(table, None)(Delivery("s", "1-0", probe_entry("probe-a", 1), 1))


async def _done(seen: list[object], count: int) -> bool:
    await asyncio.sleep(0)
    return len(seen) >= count


async def _has_entries(redis: Redis, stream: str, count: int) -> bool:
    return int(await redis.xlen(stream)) >= count
