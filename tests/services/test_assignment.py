"""Driver assignment (CONTRACT.md section 6) through the acceptance service, as real processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psycopg
import pytest

from libs.events.client import CommandClient
from libs.events.commands import (
    AcceptResult,
    AcceptSlots,
    AssignDriver,
    Availability,
    BroadcastRef,
    CancelBroadcast,
    DriverOnAssignment,
    RegisterDriver,
    RegisterVehicle,
    Reply,
    SetAvailability,
)
from tests.events.helpers import eventually
from tests.keys import forget_keys
from tests.processes import environment, services
from tests.services.helpers import PICKUP, command_client, fleet, new_broadcast, ok


@pytest.fixture(scope="module")
def running(service_env_module: dict[str, str], redis_url: str) -> Iterator[None]:
    env = environment(service_env_module, PRESENCE_TTL_SECONDS="600")
    with services(["broadcast", "acceptance", "acceptance", "presence"], env):
        yield
    forget_keys(redis_url, service_env_module["REDIS_KEY_PREFIX"])


@pytest.fixture
async def client(redis_url: str, running: None, module_prefix: str) -> AsyncIterator[CommandClient]:
    async for c in command_client(redis_url, module_prefix):
        yield c


@dataclass(frozen=True)
class Won:
    """A transporter that won `assignments` on one broadcast of `customer`."""

    transporter: str
    vehicle: str
    customer: str
    broadcast: str
    assignments: list[str]


async def win(client: CommandClient, slots: int = 1, transporter: str | None = None) -> Won:
    """A new broadcast whose `slots` truck requests all went to one transporter."""
    if transporter is None:
        [transporter] = await fleet(client, 1)
    customer, bid = await new_broadcast(client, quantity=slots)
    claim = AcceptSlots(
        transporter_id=transporter, broadcast_id=bid, vehicle_type="open_17ft", quantity=slots
    )
    result = ok(await client.send(claim), AcceptResult)
    ids = [a.assignment_id for a in result.assignments]
    return Won(transporter, f"v-{transporter}", customer, bid, ids)


async def driver_of(client: CommandClient, transporter: str, online: bool = True) -> str:
    """A new driver of `transporter`, online unless told otherwise."""
    driver = f"d-{uuid.uuid4().hex[:8]}"
    cmd = RegisterDriver(transporter_id=transporter, driver_id=driver, name="Ravi", phone="+91")
    assert (await client.send(cmd)).failure is None
    if online:
        ok(await client.send(SetAvailability(driver_id=driver, online=True)), Availability)
    return driver


async def vehicle_of(client: CommandClient, transporter: str) -> str:
    """A new open_17ft vehicle of `transporter`, far from the pickup (no search matches it)."""
    vehicle = f"v-{uuid.uuid4().hex[:8]}"
    cmd = RegisterVehicle(
        transporter_id=transporter,
        vehicle_id=vehicle,
        vehicle_type="open_17ft",
        lat=PICKUP.lat + 2.0,
        lng=PICKUP.lng,
    )
    assert (await client.send(cmd)).failure is None
    return vehicle


def assign(won: Won, driver: str, n: int = 0, vehicle: str | None = None) -> AssignDriver:
    return AssignDriver(
        transporter_id=won.transporter,
        assignment_id=won.assignments[n],
        driver_id=driver,
        vehicle_id=vehicle or won.vehicle,
    )


def refused(reply: Reply) -> str:
    assert reply.failure is not None, "expected a refusal"
    return reply.failure.code


async def rows(database_url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())


async def assignment(database_url: str, assignment_id: str) -> tuple[object, ...]:
    """(state, driver id, vehicle id) of the assignment."""
    [row] = await rows(
        database_url,
        "SELECT state, driver_id, vehicle_id FROM assignments WHERE assignment_id = %s",
        assignment_id,
    )
    return row


async def driver_assigned_events(database_url: str, broadcast: str) -> list[tuple[object, ...]]:
    """(assignmentId, driverId, vehicleId) of each driver_assigned event of the broadcast."""
    return await rows(
        database_url,
        "SELECT data->>'assignmentId', data->>'driverId', data->>'vehicleId' FROM events"
        " WHERE stream_id = %s AND event_type = 'driver_assigned' ORDER BY version",
        f"broadcast-{broadcast}",
    )


async def test_assigning_an_online_driver_records_it_once(
    client: CommandClient, database_url: str
) -> None:
    """An online driver of the transporter goes on its assignment with one driver_assigned event
    ordered in the broadcast's stream; the same call again answers the same and records nothing."""
    won = await win(client)
    driver = await driver_of(client, won.transporter)
    result = ok(await client.send(assign(won, driver)), DriverOnAssignment)
    assert result == DriverOnAssignment(
        assignment_id=won.assignments[0],
        broadcast_id=won.broadcast,
        driver_id=driver,
        vehicle_id=won.vehicle,
    )
    again = ok(await client.send(assign(won, driver)), DriverOnAssignment)
    assert again.replayed and again.driver_id == driver
    assert await assignment(database_url, won.assignments[0]) == (
        "driver_assigned",
        driver,
        won.vehicle,
    )
    assert await driver_assigned_events(database_url, won.broadcast) == [
        (won.assignments[0], driver, won.vehicle)
    ]
    [(version, last)] = await rows(
        database_url,
        "SELECT b.version, max(e.version) FROM broadcasts b JOIN events e"
        " ON e.stream_id = 'broadcast-' || b.broadcast_id WHERE b.broadcast_id = %s"
        " GROUP BY b.version",
        won.broadcast,
    )
    assert version == last


DRIVER_RACERS = 20  # the most slots one claim may take (CONTRACT.md section 4)


@pytest.mark.parametrize("round_", range(5))
async def test_one_driver_sent_to_many_assignments_at_once_gets_exactly_one(
    client: CommandClient, database_url: str, round_: int
) -> None:
    """Twenty concurrent assignments of one driver, each with its own vehicle, through two
    acceptance processes: one wins, every other is driver_busy, and the database holds one
    active assignment for the driver and one driver_assigned event."""
    won = await win(client, slots=DRIVER_RACERS)
    driver = await driver_of(client, won.transporter)
    vehicles = [won.vehicle] + [
        await vehicle_of(client, won.transporter) for _ in range(DRIVER_RACERS - 1)
    ]
    replies = await asyncio.gather(
        *(client.send(assign(won, driver, n, v)) for n, v in enumerate(vehicles))
    )
    codes = [r.failure.code if r.failure else "ok" for r in replies]
    assert sorted(codes) == ["driver_busy"] * (DRIVER_RACERS - 1) + ["ok"], codes
    active = await rows(
        database_url,
        "SELECT assignment_id FROM assignments WHERE driver_id = %s AND state = 'driver_assigned'",
        driver,
    )
    winner = codes.index("ok")
    assert active == [(won.assignments[winner],)]
    assert len(await driver_assigned_events(database_url, won.broadcast)) == 1


async def test_the_unique_index_backstop_answers_driver_busy(
    client: CommandClient, database_url: str
) -> None:
    """A writer that put the driver on another assignment but has not committed yet: the
    assignment waits on the unique index and, once that commits, is refused driver_busy."""
    won = await win(client, slots=2)
    driver = await driver_of(client, won.transporter)
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        await other.execute(
            "UPDATE assignments SET state = 'driver_assigned', driver_id = %s"
            " WHERE assignment_id = %s",
            (driver, won.assignments[0]),
        )
        sent = asyncio.create_task(client.send(assign(won, driver, 1)))
        await eventually(lambda: _waiting_on_a_lock(database_url), timeout=4)
        await other.commit()
    assert refused(await sent) == "driver_busy"
    assert (await assignment(database_url, won.assignments[1]))[0] == "accepted"


async def test_the_unique_index_backstop_answers_vehicle_busy(
    client: CommandClient, database_url: str
) -> None:
    """A writer that put the vehicle on another assignment but has not committed yet: the
    assignment waits on the unique index and, once that commits, is refused vehicle_busy."""
    won = await win(client, slots=2)
    first, second = [await driver_of(client, won.transporter) for _ in range(2)]
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        await other.execute(
            "UPDATE assignments SET state = 'driver_assigned', driver_id = %s, vehicle_id = %s"
            " WHERE assignment_id = %s",
            (first, won.vehicle, won.assignments[0]),
        )
        sent = asyncio.create_task(client.send(assign(won, second, 1)))
        await eventually(lambda: _waiting_on_a_lock(database_url), timeout=4)
        await other.commit()
    assert refused(await sent) == "vehicle_busy"
    assert (await assignment(database_url, won.assignments[1]))[0] == "accepted"


async def _waiting_on_a_lock(database_url: str) -> bool:
    found = await rows(
        database_url,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE assignments%%'",
    )
    return bool(found)


async def test_assigning_after_a_cancel_is_request_cancelled(client: CommandClient) -> None:
    """Once the customer cancelled, assigning a driver to the broadcast's assignment is refused."""
    won = await win(client)
    driver = await driver_of(client, won.transporter)
    cancel = CancelBroadcast(customer_id=won.customer, broadcast_id=won.broadcast)
    ok(await client.send(cancel), BroadcastRef)
    assert refused(await client.send(assign(won, driver))) == "request_cancelled"


async def test_a_cancel_after_assigning_frees_the_driver(
    client: CommandClient, database_url: str
) -> None:
    """Cancelling a broadcast cancels its assigned assignment; the driver can take a new one."""
    won = await win(client)
    driver = await driver_of(client, won.transporter)
    ok(await client.send(assign(won, driver)), DriverOnAssignment)
    cancel = CancelBroadcast(customer_id=won.customer, broadcast_id=won.broadcast)
    ok(await client.send(cancel), BroadcastRef)
    assert await assignment(database_url, won.assignments[0]) == ("cancelled", driver, won.vehicle)
    [(cancelled,)] = await rows(
        database_url,
        "SELECT data->'cancelledAssignments' FROM events WHERE stream_id = %s"
        " AND event_type = 'broadcast_cancelled'",
        f"broadcast-{won.broadcast}",
    )
    assert cancelled == [
        {"assignmentId": won.assignments[0], "transporterId": won.transporter, "driverId": driver}
    ]
    second = await win(client, transporter=won.transporter)
    ok(await client.send(assign(second, driver)), DriverOnAssignment)


async def test_reassigning_to_another_driver_frees_the_first(
    client: CommandClient, database_url: str
) -> None:
    """Putting a second driver on an assignment replaces the first, who is free for another."""
    won = await win(client, slots=2)
    first, second = [await driver_of(client, won.transporter) for _ in range(2)]
    ok(await client.send(assign(won, first, 0)), DriverOnAssignment)
    ok(await client.send(assign(won, second, 0)), DriverOnAssignment)
    assert (await assignment(database_url, won.assignments[0]))[1] == second
    vehicle = await vehicle_of(client, won.transporter)
    ok(await client.send(assign(won, first, 1, vehicle)), DriverOnAssignment)
    assert [e[1] for e in await driver_assigned_events(database_url, won.broadcast)] == [
        first,
        second,
        first,
    ]


async def test_an_offline_driver_is_refused(client: CommandClient, database_url: str) -> None:
    """A driver of the transporter who is offline cannot be assigned: driver_offline."""
    won = await win(client)
    driver = await driver_of(client, won.transporter, online=False)
    reply = await client.send(assign(won, driver))
    assert refused(reply) == "driver_offline"
    assert reply.failure is not None and reply.failure.message == "Driver is offline"
    assert (await assignment(database_url, won.assignments[0]))[0] == "accepted"


async def test_someone_elses_driver_or_vehicle_is_forbidden(client: CommandClient) -> None:
    """Another transporter's driver, an unregistered driver and another transporter's vehicle
    are refused as forbidden."""
    won = await win(client)
    mine = await driver_of(client, won.transporter)
    [stranger] = await fleet(client, 1)
    theirs = await driver_of(client, stranger)
    assert refused(await client.send(assign(won, theirs))) == "forbidden"
    assert refused(await client.send(assign(won, "d-nobody"))) == "forbidden"
    assert refused(await client.send(assign(won, mine, vehicle=f"v-{stranger}"))) == "forbidden"
    assert refused(await client.send(assign(won, mine, vehicle="v-nowhere"))) == "forbidden"


async def test_an_unknown_or_someone_elses_assignment_is_not_found(client: CommandClient) -> None:
    """An assignment id that does not exist, or belongs to another transporter, is not_found."""
    won = await win(client)
    driver = await driver_of(client, won.transporter)
    unknown = AssignDriver(
        transporter_id=won.transporter,
        assignment_id="a-nothing",
        driver_id=driver,
        vehicle_id=won.vehicle,
    )
    assert refused(await client.send(unknown)) == "not_found"
    [stranger] = await fleet(client, 1)
    other = AssignDriver(
        transporter_id=stranger,
        assignment_id=won.assignments[0],
        driver_id=await driver_of(client, stranger),
        vehicle_id=f"v-{stranger}",
    )
    assert refused(await client.send(other)) == "not_found"
