// The customer's screen: search, the broadcast live (state, countdown, accepted trucks and
// their drivers), cancel, and a retry once it ends without trucks.
import { boot, goLive } from "./boot.js";
import { alertError, announce, countdown, h, place, show } from "./ui.js";

const ACTIVE = new Set(["broadcasting", "partially_filled"]);
const CANCELLABLE = new Set(["broadcasting", "partially_filled", "fully_filled"]);
const session = boot("customer");
const state = { broadcast: null, drivers: new Map(), rows: 0 };

function truckRow() {
  const n = ++state.rows;
  const row = h(
    "div",
    { class: "truck", "data-truck": n },
    h("label", { for: `truck-type-${n}` }, `Vehicle type ${n}`),
    h("div", { class: "row" },
      h("input", { id: `truck-type-${n}`, list: "vehicle-types", required: true,
        pattern: "[a-z0-9_]{1,32}", value: n === 1 ? "open_17ft" : "" }),
      h("label", { for: `truck-qty-${n}` }, `Quantity ${n}`),
      h("input", { id: `truck-qty-${n}`, type: "number", min: 1, max: 20, value: 1, required: true }),
      n > 1 ? h("button", { type: "button", class: "secondary", "aria-label": `Remove vehicle type ${n}`,
        onclick: () => row.remove() }, "Remove") : null),
  );
  document.getElementById("trucks").append(row);
}

function searchBody() {
  const value = (id) => document.getElementById(id).value;
  const where = (side) => ({ lat: Number(value(`${side}-lat`)), lng: Number(value(`${side}-lng`)),
    address: value(`${side}-address`) || undefined });
  const trucks = [...document.querySelectorAll("[data-truck]")].map((row) => ({
    vehicleType: value(`truck-type-${row.dataset.truck}`).trim(),
    quantity: Number(value(`truck-qty-${row.dataset.truck}`)),
  }));
  const note = value("note").trim();
  return { pickup: where("pickup"), drop: where("drop"), trucks, ...(note ? { note } : {}) };
}

async function search(body) {
  alertError(null);
  try {
    setBroadcast(await session.call("POST", "/v1/broadcasts", body));
    announce(endedMessage(state.broadcast) || "Searching for trucks…");
  } catch (error) {
    if (error.code === "active_broadcast_exists") await refresh(error.details.broadcastId);
    alertError(error);
  }
}

async function cancel() {
  alertError(null);
  try {
    setBroadcast(await session.call("POST", `/v1/broadcasts/${state.broadcast.broadcastId}/cancel`, {}));
    announce("Request cancelled");
  } catch (error) {
    alertError(error);
    await refresh(state.broadcast.broadcastId);
  }
}

async function refresh(broadcastId) {
  try {
    setBroadcast(await session.call("GET", `/v1/broadcasts/${broadcastId}`));
  } catch (error) {
    alertError(error);
  }
}

async function reload() {
  try {
    setBroadcast(await session.call("GET", "/v1/customers/me/broadcasts/active"));
  } catch (error) {
    if (error.status !== 404) alertError(error);
    else if (state.broadcast) await refresh(state.broadcast.broadcastId);
    else render();
  }
}

function setBroadcast(broadcast) {
  state.broadcast = broadcast;
  render();
  for (const request of broadcast.truckRequests) {
    if (request.assignmentId && !state.drivers.has(request.assignmentId)) loadDriver(request.assignmentId);
  }
}

async function loadDriver(assignmentId) {
  state.drivers.set(assignmentId, null);
  try {
    const assignment = await session.call("GET", `/v1/assignments/${assignmentId}`);
    if (assignment.driverId) state.drivers.set(assignmentId, assignment);
    render();
  } catch {
    state.drivers.delete(assignmentId);
  }
}

function endedMessage(broadcast) {
  if (broadcast.state === "cancelled") return "Request cancelled";
  if (broadcast.state !== "expired") return null;
  const filled = broadcast.truckRequests.some((r) => r.state === "accepted");
  return broadcast.endReason === "no_transporters" || !filled ? "No transporters found" : "Request expired";
}

function render() {
  const target = document.getElementById("request");
  const b = state.broadcast;
  if (!b) return show(target, h("p", {}, "No active request."));
  const filled = b.truckRequests.filter((r) => r.state === "accepted").length;
  const ended = endedMessage(b);
  show(target,
    h("p", { class: "row" }, h("span", { class: "state", id: "broadcast-state" }, label(b.state)),
      ACTIVE.has(b.state) ? countdown(b.expiresAt) : null,
      h("span", {}, `${filled} of ${b.truckRequests.length} trucks`),
      h("span", { class: "hint" }, `${b.notifiedTransporters} transporters notified`)),
    h("p", {}, `${place(b.pickup)} → ${place(b.drop)}`),
    ended ? h("p", { class: "notice", id: "ended" }, ended) : null,
    h("ul", { class: "cards", id: "truck-requests" }, b.truckRequests.map(truckItem)),
    h("div", { class: "row" },
      CANCELLABLE.has(b.state) ? h("button", { type: "button", id: "cancel", onclick: cancel }, "Cancel request") : null,
      b.state === "expired"
        ? h("button", { type: "button", id: "retry", onclick: () => search(searchBody()) },
          "Search again")
        : null),
  );
}

function truckItem(request) {
  const assignment = request.assignmentId && state.drivers.get(request.assignmentId);
  return h("li", { "data-truck-request": request.truckRequestId },
    h("span", { class: "state" }, request.vehicleType), ": ", label(request.state),
    request.transporterId ? ` by ${request.transporterId}` : "",
    assignment ? h("span", { class: "good" }, ` · driver ${assignment.driverId}, vehicle ${assignment.vehicleId}`) : "");
}

function label(value) {
  return value.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function onFrame(frame) {
  const data = frame.data || {};
  if (!state.broadcast || data.broadcastId !== state.broadcast.broadcastId) {
    // Another request's frame: a late one of an older request is ignored while this one is
    // active; otherwise it may be a search made elsewhere, so read the active one.
    if (!state.broadcast || !ACTIVE.has(state.broadcast.state)) reload();
    return;
  }
  if (frame.type === "broadcast_state_changed") announce(`Request ${label(data.state).toLowerCase()}: ${data.filled} of ${data.total} trucks`);
  if (frame.type === "truck_accepted") announce(`A truck was accepted by ${data.transporterId}`);
  if (frame.type === "driver_assigned") {
    state.drivers.delete(data.assignmentId);
    announce(`Driver ${data.driverId} assigned`);
  }
  if (frame.type === "broadcast_expired") announce(data.message);
  refresh(data.broadcastId);
}

if (session) {
  truckRow();
  document.getElementById("add-truck").addEventListener("click", truckRow);
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    search(searchBody());
  });
  goLive(session, { onFrame, onReload: reload });
  reload();
}
