"""The live screens under /app/ in Debian's chromium (Playwright), on a real system with the
`weelo demo` fleet: a customer, two transporters and a driver in browser contexts of their own.
The screenshots in docs/screens/ (shown in the README) are written by this run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import DemoRun, run_demo
from tests.gateway.conftest import Gateway
from tests.processes import ROOT

# Processes (the system, `weelo demo`, chromium); the first test starts the system.
pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]

SHOTS = ROOT / "docs" / "screens"
T1, T2, DRIVER = "demo-transporter-1", "demo-transporter-2", "demo-driver-1"
LIVE_WITHIN_MS = 10_000  # a socket opening, a page loading on a busy runner
expect.set_options(timeout=LIVE_WITHIN_MS)


@contextmanager
def screen(browser: Browser, link: str, *, live: bool = True) -> Iterator[Page]:
    """`link` opened in a browser context of its own, live unless told; fails on any script
    error or CSP violation the page reports."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto(link)
    expect(page.locator("#connection")).to_have_text("Live" if live else "Not connected")
    try:
        yield page
    finally:
        context.close()
    assert problems == []


def tab_to(page: Page, element_id: str) -> None:
    """Press Tab until `element_id` has the focus; it must show a focus outline."""
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == element_id:
            assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
            return
    raise AssertionError(f"#{element_id} is not reachable with Tab")


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(autouse=True)
def no_active_request(screens_system: Gateway) -> None:
    """Each test starts with the demo customer holding no active request (a failed test may
    have left one)."""
    auth = screens_system.auth("customer", "demo-customer")
    with httpx.Client(base_url=screens_system.url, headers=auth) as client:
        active = client.get("/v1/customers/me/broadcasts/active")
        if active.status_code == 200:
            cancel = client.post(f"/v1/broadcasts/{active.json()['broadcastId']}/cancel", json={})
            assert cancel.status_code == 200, cancel.text


def test_the_screens_are_static_files_under_a_strict_policy(screens_system: Gateway) -> None:
    """/app/ serves the screens with a CSP allowing only this origin; a missing file, a folder
    or a path leaving the folder is the API's 404 `not_found`, never a redirect."""
    with httpx.Client(base_url=screens_system.url, follow_redirects=False) as client:
        index = client.get("/app/")
        script = client.get("/app/customer.js")
        assert index.status_code == 200 and "Weelo" in index.text
        assert script.headers["content-type"].startswith("text/javascript")
        for response in (index, script):
            policy = response.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert response.headers["x-content-type-options"] == "nosniff"
        for path in ("/app/missing.js", "/app", "/app/%2e%2e/pyproject.toml", "/app/../app.py"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"


def test_the_demo_prints_signed_in_links_and_is_safe_to_run_twice(
    screens_system: Gateway, demo: DemoRun
) -> None:
    """`weelo demo` gives a customer, two transporters and a driver a link whose token is in
    the fragment and is accepted by the API; a second run registers the same fleet again."""
    again = run_demo(screens_system)
    assert set(demo.links) == set(again.links) == {"demo-customer", T1, T2, DRIVER}
    for link in demo.links.values():
        assert "?" not in link and "#token=" in link
    token = demo.links[T1].split("#token=", 1)[1].split("&", 1)[0]
    drivers = httpx.get(
        f"{screens_system.url}/v1/transporters/me/drivers",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert drivers.status_code == 200
    assert sorted(d["driverId"] for d in drivers.json()["drivers"]) == [
        "demo-driver-1",
        "demo-driver-2",
    ]


def test_a_search_reaches_both_transporters_and_a_cancel_reaches_the_driver(
    browser: Browser, demo: DemoRun, screens_system: Gateway
) -> None:
    """Customer searches, both transporters see it without reloading, one accepts, the other
    sees it go; the driver goes online and the transporter's list shows it within 2 s; the
    chooser offers only that driver and free matching vehicles; the driver sees the trip; the
    customer cancels and the driver sees "Trip cancelled", the transporter "Request cancelled"."""
    links = demo.links
    with (
        screen(browser, links["demo-customer"]) as customer,
        screen(browser, links[T1]) as t1,
        screen(browser, links[T2]) as t2,
        screen(browser, links[DRIVER]) as driver,
    ):
        assert "token" not in customer.url  # the fragment is cleared once read
        customer.get_by_role("button", name="Search", exact=True).click()
        for transporter in (t1, t2):
            expect(transporter.locator("#broadcasts [data-broadcast-id]")).to_have_count(1)
        expect(customer.locator("#broadcast-state")).to_have_text("Broadcasting")
        shoot(t2, "transporter-request")

        t1.get_by_role("button", name="Accept one open_17ft").click()
        expect(t2.locator("#broadcasts [data-broadcast-id]")).to_have_count(0)
        expect(customer.locator("#broadcast-state")).to_have_text("Fully filled")

        row = t1.locator(f'#drivers tr[data-driver-id="{DRIVER}"]')
        expect(row).to_contain_text("Offline")
        tab_to(driver, "toggle-online")  # by keyboard, its focus visible
        driver.keyboard.press("Enter")
        expect(row).to_contain_text("Online", timeout=2_000)
        expect(driver.locator("#status")).to_have_text("You are online")  # the live region

        drivers = t1.get_by_label("Driver", exact=True)
        expect(drivers.locator("option")).to_have_text([f"Ravi Kumar ({DRIVER})"])
        vehicles = t1.get_by_label("Vehicle", exact=True)
        expect(vehicles.locator("option")).to_have_text(["demo-t1-open-1", "demo-t1-open-2"])
        shoot(t1, "transporter")
        t1.get_by_role("button", name="Assign driver").click()
        expect(driver.locator("#trip-details")).to_contain_text("MG Road, Bengaluru")
        expect(customer.locator("#truck-requests")).to_contain_text(f"driver {DRIVER}")
        expect(row).to_contain_text("On a trip")
        shoot(driver, "driver")
        shoot(customer, "customer")

        customer.get_by_role("button", name="Cancel request").click()
        expect(driver.locator("#trip-notice")).to_have_text("Trip cancelled")
        expect(driver.locator("#trip")).to_contain_text("No trip assigned.")
        shoot(driver, "driver-cancelled")
        expect(t1.locator("#assignments")).to_contain_text("Request cancelled")
        expect(customer.locator("#ended")).to_have_text("Request cancelled")
        driver.get_by_role("button", name="Go offline").click()
        expect(row).to_contain_text("Offline")
    tokens = [link.split("#token=", 1)[1].split("&", 1)[0] for link in links.values()]
    for proc in screens_system.procs:  # the sockets sent theirs as ?token=
        written = proc.log.read_text(errors="replace")
        assert '"access"' in written or proc.name != "gateway"
        assert not any(token in written for token in tokens), proc.name


def test_a_dropped_socket_reconnects_with_the_last_event_id_and_misses_nothing(
    browser: Browser, demo: DemoRun
) -> None:
    """A transporter whose socket dropped reconnects with `lastEventId` of the last frame it
    saw, and the request created while it was away appears through the replay."""
    with (
        screen(browser, demo.links["demo-customer"]) as customer,
        screen(browser, demo.links[T2]) as t2,
    ):
        sockets: list[str] = []
        t2.on("websocket", lambda ws: sockets.append(ws.url))
        requests = t2.locator("#broadcasts [data-broadcast-id]")
        customer.get_by_role("button", name="Search", exact=True).click()
        expect(requests).to_have_count(1)
        customer.get_by_role("button", name="Cancel request").click()
        expect(requests).to_have_count(0)
        seen = t2.evaluate("window.weeloLive.lastEventId")
        assert seen

        t2.evaluate("window.weeloLive.hold()")
        expect(t2.locator("#connection")).to_have_text("Offline")
        customer.get_by_role("button", name="Search", exact=True).click()
        expect(customer.locator("#broadcast-state")).to_have_text("Broadcasting")
        started = time.monotonic()
        t2.evaluate("window.weeloLive.resume()")
        expect(requests).to_have_count(1)
        assert time.monotonic() - started < LIVE_WITHIN_MS / 1000
        assert sockets and f"lastEventId={seen}" in sockets[-1]
        customer.get_by_role("button", name="Cancel request").click()
        expect(customer.locator("#ended")).to_have_text("Request cancelled")


def test_a_reconnect_the_inbox_cannot_replay_reloads_the_state(
    browser: Browser, demo: DemoRun
) -> None:
    """A socket reconnecting with a `lastEventId` older than the inbox gets `resync_required`,
    and the screen reloads its list over HTTP: the request made meanwhile appears."""
    with (
        screen(browser, demo.links["demo-customer"]) as customer,
        screen(browser, demo.links[T2]) as t2,
    ):
        reads: list[str] = []
        t2.on("request", lambda r: reads.append(r.url) if "/me/broadcasts" in r.url else None)
        t2.evaluate("window.weeloLive.hold()")
        expect(t2.locator("#connection")).to_have_text("Offline")
        customer.get_by_role("button", name="Search", exact=True).click()
        expect(customer.locator("#broadcast-state")).to_have_text("Broadcasting")
        reads.clear()
        t2.evaluate("window.weeloLive.resume('0-1')")
        expect(t2.locator("#broadcasts [data-broadcast-id]")).to_have_count(1)
        assert reads, "the list was not read again after resync_required"
        customer.get_by_role("button", name="Cancel request").click()
        expect(customer.locator("#ended")).to_have_text("Request cancelled")


def test_a_search_no_transporter_can_serve_says_so_and_offers_a_retry(
    browser: Browser, demo: DemoRun
) -> None:
    """A search for a vehicle type nobody has ends at once in "No transporters found" with a
    retry; the retry (with the type corrected) starts a new live request."""
    with screen(browser, demo.links["demo-customer"]) as customer:
        customer.get_by_label("Vehicle type 1").fill("refrigerated_32ft")
        customer.get_by_role("button", name="Search", exact=True).click()
        expect(customer.locator("#ended")).to_have_text("No transporters found")
        expect(customer.locator("#broadcast-state")).to_have_text("Expired")
        shoot(customer, "customer-no-transporters")
        customer.get_by_label("Vehicle type 1").fill("open_17ft")
        customer.get_by_role("button", name="Search again").click()
        expect(customer.locator("#broadcast-state")).to_have_text("Broadcasting")
        expect(customer.locator("#ended")).to_have_count(0)
        customer.get_by_role("button", name="Cancel request").click()
        expect(customer.locator("#ended")).to_have_text("Request cancelled")


def test_a_partial_accept_updates_the_other_list_and_a_quantity_takes_the_rest(
    browser: Browser, demo: DemoRun
) -> None:
    """One truck of three accepted: the other transporter's list shows 2 open without a
    reload; it accepts a quantity of 2 at once and both lists lose the request."""
    with (
        screen(browser, demo.links["demo-customer"]) as customer,
        screen(browser, demo.links[T1]) as t1,
        screen(browser, demo.links[T2]) as t2,
    ):
        customer.get_by_label("Quantity 1").fill("3")
        customer.get_by_role("button", name="Search", exact=True).click()
        expect(t2.locator("#broadcasts")).to_contain_text("open_17ft: 3 open")
        t1.get_by_role("button", name="Accept one open_17ft").click()
        expect(t2.locator("#broadcasts")).to_contain_text("open_17ft: 2 open")
        expect(customer.locator("#broadcast-state")).to_have_text("Partially filled")
        t2.get_by_label("How many open_17ft").fill("2")
        t2.get_by_role("button", name="Accept that many open_17ft").click()
        for transporter in (t1, t2):
            expect(transporter.locator("#broadcasts [data-broadcast-id]")).to_have_count(0)
        expect(t2.locator("#assignments [data-assignment-id]")).to_have_count(2)
        expect(customer.locator("#broadcast-state")).to_have_text("Fully filled")
        customer.get_by_role("button", name="Cancel request").click()
        expect(t2.locator("#assignments .notice")).to_have_count(2)
        expect(t1.locator("#assignments")).to_contain_text("Request cancelled")


def test_a_pasted_token_opens_the_screen_of_its_role(
    browser: Browser, screens_system: Gateway
) -> None:
    """/app/ takes a token from `weelo token` and opens that role's screen, signed in; a
    string that is no token is refused with an alert."""
    with screen(browser, f"{screens_system.url}/app/driver.html", live=False) as page:
        expect(page.get_by_role("alert")).to_contain_text("Not signed in as a driver")
        page.goto(f"{screens_system.url}/app/")
        page.get_by_label("Access token").fill("not-a-token")
        page.get_by_role("button", name="Open my screen").click()
        expect(page.get_by_role("alert")).to_have_text("That is not a Weelo access token.")
        page.get_by_label("Access token").fill(screens_system.token("driver", DRIVER))
        page.get_by_role("button", name="Open my screen").click()
        expect(page.locator("#who")).to_have_text(f"Signed in as {DRIVER}")
        expect(page.locator("#connection")).to_have_text("Live")
        assert page.url == f"{screens_system.url}/app/driver.html"
