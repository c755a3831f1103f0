"""`weelo demo`: a small fleet around Bengaluru, registered through the public HTTP API, and for
a customer, two transporters and a driver a link that opens their live screen signed in.

Every registration is a `PUT` of a fixed id, so a second run changes nothing. Each link carries
a short-lived access token in its fragment (`#token=...`), which a browser never sends to a
server: it reaches no request line and no log. With `--start` (what `make demo` runs) a system
that does not answer is started first: `weelo up` in the background, its output in
`.weelo/demo-up.log`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from libs.local.probes import healthy
from libs.runtime.settings import local_secret, state_dir
from libs.runtime.tokens import Role, issue

CITY = "Bengaluru"
START_WITHIN_S = 180.0
RETRIES = 10  # a service still starting answers 503 for a moment
RETRY_PAUSE_S = 1.0


class DemoError(Exception):
    """The demo could not reach or use the system; the message says what to do."""


@dataclass(frozen=True)
class Vehicle:
    vehicle_id: str
    vehicle_type: str
    lat: float
    lng: float


@dataclass(frozen=True)
class Driver:
    driver_id: str
    name: str
    phone: str


@dataclass(frozen=True)
class Transporter:
    transporter_id: str
    vehicles: tuple[Vehicle, ...]
    drivers: tuple[Driver, ...]


# Within BROADCAST_RADIUS_KM (25) of MG Road, the customer screen's default pickup.
FLEET = (
    Transporter(
        "demo-transporter-1",
        (
            Vehicle("demo-t1-open-1", "open_17ft", 12.9719, 77.6412),  # Indiranagar
            Vehicle("demo-t1-open-2", "open_17ft", 12.9352, 77.6245),  # Koramangala
            Vehicle("demo-t1-container-1", "container_20ft", 13.0358, 77.5970),  # Hebbal
            Vehicle("demo-t1-mini-1", "mini_truck_8ft", 12.9250, 77.5938),  # Jayanagar
        ),
        (
            Driver("demo-driver-1", "Ravi Kumar", "+91 98450 00001"),
            Driver("demo-driver-2", "Anil Shetty", "+91 98450 00002"),
        ),
    ),
    Transporter(
        "demo-transporter-2",
        (
            Vehicle("demo-t2-open-1", "open_17ft", 12.9698, 77.7500),  # Whitefield
            Vehicle("demo-t2-container-1", "container_20ft", 12.8452, 77.6602),  # Electronic City
            Vehicle("demo-t2-mini-1", "mini_truck_8ft", 13.0285, 77.5197),  # Yeshwanthpur
        ),
        (
            Driver("demo-driver-3", "Suresh Gowda", "+91 98450 00003"),
            Driver("demo-driver-4", "Meena Rao", "+91 98450 00004"),
        ),
    ),
)
CUSTOMER = "demo-customer"


@dataclass(frozen=True)
class Link:
    role: Role
    sub: str
    url: str


def run_demo(environ: Mapping[str, str], *, url: str, ttl_s: int, start: bool) -> int:
    """Register the fleet at `url` (starting the system first when `start`), print the links."""
    try:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise DemoError(f"--url must be an http:// or https:// URL, got {url!r}")
        if not healthy(f"{url}/health"):
            if not start:
                raise DemoError(f"nothing answers {url}/health: start weelo (`make run`) first")
            start_system(environ, url)
        secret = environ.get("JWT_SECRET") or local_secret(state_dir(environ), "jwt_secret")
        for transporter in FLEET:
            register(
                url,
                issue(secret, role="transporter", sub=transporter.transporter_id, ttl_s=300),
                transporter,
            )
    except DemoError as e:
        print(f"weelo demo: {e}", file=sys.stderr)
        return 1
    print(describe(url, ttl_s, links(url, secret, ttl_s)))
    return 0


def default_url(environ: Mapping[str, str]) -> str:
    host = environ.get("GATEWAY_HOST") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{environ.get('GATEWAY_PORT') or 8000}"


def register(url: str, token: str, transporter: Transporter) -> None:
    """PUT each vehicle and driver of `transporter` (the same ids every run)."""
    base = f"{url}/v1/transporters/me"
    for v in transporter.vehicles:
        body = {"vehicleType": v.vehicle_type, "lat": v.lat, "lng": v.lng}
        put(f"{base}/vehicles/{v.vehicle_id}", token, body)
    for d in transporter.drivers:
        put(f"{base}/drivers/{d.driver_id}", token, {"name": d.name, "phone": d.phone})


def put(url: str, token: str, body: Mapping[str, object]) -> None:
    """One idempotent PUT, retried while the system answers 503 or not at all."""
    request = urllib.request.Request(  # noqa: S310 (run_demo admits only http(s) URLs)
        url,
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for attempt in range(RETRIES):
        try:
            with opener.open(request, timeout=15):
                return
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == RETRIES - 1:
                raise DemoError(
                    f"PUT {url} answered {e.code}: {e.read().decode(errors='replace')}"
                ) from e
        except (urllib.error.URLError, OSError) as e:
            if attempt == RETRIES - 1:
                raise DemoError(f"PUT {url} failed: {e}") from e
        time.sleep(RETRY_PAUSE_S)


def links(url: str, secret: str, ttl_s: int) -> list[Link]:
    """The customer's, both transporters' and the first driver's screen, each signed in."""
    first, second = FLEET

    def link(role: Role, sub: str, **extra: str) -> Link:
        fragment = urllib.parse.urlencode(
            {"token": issue(secret, role=role, sub=sub, ttl_s=ttl_s), **extra}
        )
        return Link(role, sub, f"{url}/app/{role}.html#{fragment}")

    return [
        link("customer", CUSTOMER),
        *(link("transporter", t.transporter_id, vehicles=vehicle_list(t)) for t in (first, second)),
        link("driver", first.drivers[0].driver_id),
    ]


def vehicle_list(transporter: Transporter) -> str:
    """`id:type,...`: the API lists no vehicles, so the transporter's screen learns them here."""
    return ",".join(f"{v.vehicle_id}:{v.vehicle_type}" for v in transporter.vehicles)


def describe(url: str, ttl_s: int, shown: list[Link]) -> str:
    vehicles = [v for t in FLEET for v in t.vehicles]
    types = sorted({v.vehicle_type for v in vehicles})
    drivers = sum(len(t.drivers) for t in FLEET)
    lines = [
        f"Weelo demo around {CITY} at {url}: {len(FLEET)} transporters, {len(vehicles)} vehicles "
        f"({', '.join(types)}), {drivers} drivers.",
        f"Open each link in a tab of its own; each is signed in for {ttl_s // 60} minutes "
        "(run `weelo demo` again for new links):",
        "",
        *(f"  {link.role:<12} {link.sub:<19} {link.url}" for link in shown),
        "",
        "Then: search as the customer; both transporters see the request at once; accept it on",
        f"one; put {FLEET[0].drivers[0].driver_id} online on the driver's screen and assign them; "
        "cancel as the customer.",
    ]
    return "\n".join(lines)


def start_system(environ: Mapping[str, str], url: str) -> None:
    """Run `weelo up` in the background and wait until every service answers its /health."""
    from libs.local.supervisor import plan

    state = state_dir(environ)
    state.mkdir(parents=True, exist_ok=True)
    log = state / "demo-up.log"
    print(f"weelo demo: starting the system (`weelo up`, output in {log})", file=sys.stderr)
    with open(log, "ab") as out:
        process = subprocess.Popen(  # this interpreter, fixed arguments
            [sys.executable, "-m", "libs.cli", "up"],
            env=dict(environ),
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # it outlives `make demo`; stop it with `kill PID`
        )
    ports = [p.port for p in plan(environ, 1)]
    wait_until_up(process, url, ports, log)
    print(
        f"weelo demo: the system runs in the background (pid {process.pid}); "
        f"stop it with `kill {process.pid}`",
        file=sys.stderr,
    )


def wait_until_up(process: subprocess.Popen[bytes], url: str, ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + START_WITHIN_S
    checks = [f"{url}/health", *(f"http://127.0.0.1:{port}/health" for port in ports[1:])]
    while not all(healthy(check, timeout=1) for check in checks):
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise DemoError(f"`weelo up` exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise DemoError(f"the system did not answer within {START_WITHIN_S:.0f} s (see {log})")
        time.sleep(0.5)
