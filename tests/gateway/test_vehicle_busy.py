"""A vehicle is never booked twice (CONTRACT.md section 6, issue 10): driver assignments through
real HTTP against two gateways, two acceptance processes and presence, checked against
PostgreSQL too. Concurrent assignments naming one vehicle are fired at once, several rounds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from tests.gateway import races_fixtures
from tests.gateway.conftest import new_id
from tests.gateway.helpers import PICKUP, error, search, vehicle_type
from tests.gateway.races_fixtures import RACE_SERVICES, Cluster, Lanes, start_cluster, stop_cluster

# The race cluster's fixtures (its own database, a client, a connection); `cluster` is this
# module's own, with presence too, so drivers can go online.
database_url = races_fixtures.database_url
lanes = races_fixtures.lanes
client = races_fixtures.client
db = races_fixtures.db

Conn = psycopg.AsyncConnection[Any]

ROUNDS = 3
RACERS = 50


@pytest.fixture(scope="module")
def cluster(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Two gateways, two broadcast and two acceptance processes, and presence."""
    running = start_cluster(
        service_env_module,
        tmp_path_factory.mktemp("vehicle-cluster"),
        (*RACE_SERVICES, "presence"),
        PRESENCE_TTL_SECONDS="600",
    )
    yield running
    stop_cluster(running.gateways)


@dataclass(frozen=True)
class Won:
    """An assignment that `transporter` won on a new `customer`'s broadcast."""

    transporter: str
    customer: str
    broadcast_id: str
    assignment_id: str


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _vehicle(http: httpx.AsyncClient, cluster: Cluster, transporter: str, kind: str) -> str:
    vehicle_id = new_id("v")
    body = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    url = cluster.url(f"/v1/transporters/me/vehicles/{vehicle_id}")
    _ok(await http.put(url, json=body, headers=cluster.auth("transporter", transporter)))
    return vehicle_id


async def _online_driver(http: httpx.AsyncClient, cluster: Cluster, transporter: str) -> str:
    driver_id = new_id("d")
    url = cluster.url(f"/v1/transporters/me/drivers/{driver_id}")
    body = {"name": "Ravi", "phone": "+919800000002"}
    _ok(await http.put(url, json=body, headers=cluster.auth("transporter", transporter)))
    online = await http.put(
        cluster.url("/v1/drivers/me/availability"),
        json={"online": True},
        headers=cluster.auth("driver", driver_id),
    )
    assert _ok(online)["online"] is True
    return driver_id


async def _won(http: httpx.AsyncClient, cluster: Cluster, transporter: str, kind: str) -> Won:
    """A new customer's search for one `kind` truck, accepted by `transporter`."""
    customer = new_id("c")
    created = _ok(
        await http.post(
            cluster.url("/v1/broadcasts"),
            json=search(kind),
            headers=cluster.auth("customer", customer),
        ),
        201,
    )
    accepted = _ok(
        await http.post(
            cluster.url(f"/v1/broadcasts/{created['broadcastId']}/accept"),
            json={"vehicleType": kind, "quantity": 1},
            headers=cluster.auth("transporter", transporter),
        )
    )
    assignment_id = accepted["assignments"][0]["assignmentId"]
    return Won(transporter, customer, created["broadcastId"], assignment_id)


def _assign_request(
    http: httpx.AsyncClient, cluster: Cluster, won: Won, driver_id: str, vehicle_id: str
) -> httpx.Request:
    return http.build_request(
        "POST",
        cluster.url(f"/v1/assignments/{won.assignment_id}/driver"),
        json={"driverId": driver_id, "vehicleId": vehicle_id},
        headers=cluster.auth("transporter", won.transporter),
    )


async def _assign(
    http: httpx.AsyncClient, cluster: Cluster, won: Won, driver_id: str, vehicle_id: str
) -> httpx.Response:
    return await http.send(_assign_request(http, cluster, won, driver_id, vehicle_id))


async def _cancel(http: httpx.AsyncClient, cluster: Cluster, won: Won) -> None:
    url = cluster.url(f"/v1/broadcasts/{won.broadcast_id}/cancel")
    _ok(await http.post(url, headers=cluster.auth("customer", won.customer)))


async def _active_on_vehicle(db: Conn, vehicle_id: str) -> list[str]:
    """Ids of the vehicle's active (driver_assigned) assignments, as PostgreSQL holds them."""
    cur = await db.execute(
        "SELECT assignment_id FROM assignments WHERE vehicle_id = %s AND state = 'driver_assigned'",
        (vehicle_id,),
    )
    return [row[0] for row in await cur.fetchall()]


async def _driver_assigned_events(db: Conn, broadcasts: list[str]) -> int:
    cur = await db.execute(
        "SELECT count(*) FROM events WHERE event_type = 'driver_assigned' AND stream_id = ANY(%s)",
        ([f"broadcast-{b}" for b in broadcasts],),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_busy_vehicle_is_409_until_its_assignment_is_cancelled(
    cluster: Cluster, client: httpx.AsyncClient, db: Conn
) -> None:
    """A vehicle on one active assignment is 409 vehicle_busy for another; once the customer
    cancels the first broadcast the vehicle can be assigned again."""
    transporter, kind = new_id("t"), vehicle_type()
    vehicle = await _vehicle(client, cluster, transporter, kind)
    first, second = [await _won(client, cluster, transporter, kind) for _ in range(2)]
    drivers = [await _online_driver(client, cluster, transporter) for _ in range(2)]
    _ok(await _assign(client, cluster, first, drivers[0], vehicle))
    refused = await _assign(client, cluster, second, drivers[1], vehicle)
    error(refused, 409, "vehicle_busy")
    assert await _active_on_vehicle(db, vehicle) == [first.assignment_id]
    await _cancel(client, cluster, first)
    again = _ok(await _assign(client, cluster, second, drivers[1], vehicle))
    assert (again["state"], again["vehicleId"]) == ("driver_assigned", vehicle)
    assert await _active_on_vehicle(db, vehicle) == [second.assignment_id]


async def test_another_driver_on_the_same_assignment_keeps_its_vehicle(
    cluster: Cluster, client: httpx.AsyncClient, db: Conn
) -> None:
    """Replacing the driver of an assignment with the same vehicle is not vehicle_busy."""
    transporter, kind = new_id("t"), vehicle_type()
    vehicle = await _vehicle(client, cluster, transporter, kind)
    won = await _won(client, cluster, transporter, kind)
    first, second = [await _online_driver(client, cluster, transporter) for _ in range(2)]
    _ok(await _assign(client, cluster, won, first, vehicle))
    replaced = _ok(await _assign(client, cluster, won, second, vehicle))
    assert (replaced["driverId"], replaced["vehicleId"]) == (second, vehicle)
    assert await _active_on_vehicle(db, vehicle) == [won.assignment_id]


async def test_a_vehicle_of_another_type_is_409_and_changes_nothing(
    cluster: Cluster, client: httpx.AsyncClient, db: Conn
) -> None:
    """A vehicle whose type is not the assignment's vehicleType is 409 vehicle_type_mismatch;
    the assignment stays accepted with no driver, and no event is recorded."""
    transporter, kind = new_id("t"), vehicle_type()
    await _vehicle(client, cluster, transporter, kind)
    other = await _vehicle(client, cluster, transporter, vehicle_type())
    won = await _won(client, cluster, transporter, kind)
    driver = await _online_driver(client, cluster, transporter)
    error(await _assign(client, cluster, won, driver, other), 409, "vehicle_type_mismatch")
    url = cluster.url(f"/v1/assignments/{won.assignment_id}")
    shown = _ok(await client.get(url, headers=cluster.auth("transporter", transporter)))
    assert (shown["state"], shown["driverId"], shown["vehicleId"]) == ("accepted", None, None)
    assert await _active_on_vehicle(db, other) == []
    assert await _driver_assigned_events(db, [won.broadcast_id]) == 0
    mine = await client.get(
        cluster.url("/v1/drivers/me/assignment"), headers=cluster.auth("driver", driver)
    )
    assert mine.status_code == 404, mine.text


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_one_vehicle_sent_to_many_assignments_at_once_is_booked_once(
    round_: int, cluster: Cluster, lanes: Lanes, client: httpx.AsyncClient, db: Conn
) -> None:
    """50 assignments, each with its own free online driver, all naming one vehicle at once:
    exactly one 200, the rest 409 vehicle_busy, and PostgreSQL holds one active assignment."""
    transporter, kind = new_id("t"), vehicle_type()
    vehicle = await _vehicle(client, cluster, transporter, kind)
    wins = await asyncio.gather(*(_won(client, cluster, transporter, kind) for _ in range(RACERS)))
    drivers = await asyncio.gather(
        *(_online_driver(client, cluster, transporter) for _ in range(RACERS))
    )
    await lanes.warm(cluster, RACERS)
    requests = [
        _assign_request(client, cluster, won, driver, vehicle)
        for won, driver in zip(wins, drivers, strict=True)
    ]
    responses = await lanes.all_at_once(requests)
    winners = [w for w, r in zip(wins, responses, strict=True) if r.status_code == 200]
    assert len(winners) == 1, [(r.status_code, r.text) for r in responses]
    for response in responses:
        if response.status_code != 200:
            error(response, 409, "vehicle_busy")
    assert await _active_on_vehicle(db, vehicle) == [winners[0].assignment_id]
    assert await _driver_assigned_events(db, [w.broadcast_id for w in wins]) == 1
