// The transporter's screen: the actionable list (new, updated, removed live), accepting one or a
// quantity, my drivers going online and offline live, and my assignments with a chooser that
// offers only online, free drivers and free vehicles of the assignment's type.
import { boot, goLive } from "./boot.js";
import { alertError, announce, countdown, h, place, show } from "./ui.js";

const session = boot("transporter");
const state = {
  broadcasts: new Map(), // broadcastId -> {broadcastId, pickup, drop, openByType, expiresAt, truckRequests}
  drivers: new Map(), // driverId -> {driverId, name, online, activeAssignmentId}
  assignments: new Map(), // assignmentId -> the Assignment (active ones, and cancelled ones seen here)
  vehicles: new Map(), // vehicleId -> vehicleType
  removed: new Set(), // broadcasts a frame removed: a slower read must not bring them back
};

// The vehicles this screen knows: the demo link's (`vehicles=id:type,...`) and those saved here.
function loadVehicles(fragment) {
  const key = `weelo.vehicles.${session.sub}`;
  const known = JSON.parse(localStorage.getItem(key) || "{}");
  for (const pair of (fragment.get("vehicles") || "").split(",").filter(Boolean)) {
    const [id, type] = pair.split(":");
    if (id && type) known[id] = type;
  }
  localStorage.setItem(key, JSON.stringify(known));
  state.vehicles = new Map(Object.entries(known));
}

function rememberVehicle(id, type) {
  state.vehicles.set(id, type);
  localStorage.setItem(`weelo.vehicles.${session.sub}`, JSON.stringify(Object.fromEntries(state.vehicles)));
}

async function reload() {
  await Promise.all([loadBroadcasts(), loadDrivers(), loadAssignments()]);
}

async function loadBroadcasts() {
  try {
    const { broadcasts } = await session.call("GET", "/v1/transporters/me/broadcasts");
    const current = broadcasts.filter((b) => !state.removed.has(b.broadcastId));
    state.broadcasts = new Map(current.map((b) => [b.broadcastId, b]));
    renderBroadcasts();
  } catch (error) {
    alertError(error);
  }
}

async function loadDrivers() {
  try {
    const { drivers } = await session.call("GET", "/v1/transporters/me/drivers");
    state.drivers = new Map(drivers.map((d) => [d.driverId, d]));
    renderDrivers();
    renderAssignments();
  } catch (error) {
    alertError(error);
  }
}

async function loadAssignments() {
  try {
    const { assignments } = await session.call("GET", "/v1/transporters/me/assignments");
    for (const [id, a] of state.assignments) if (a.state !== "cancelled") state.assignments.delete(id);
    for (const a of assignments) state.assignments.set(a.assignmentId, a);
    renderAssignments();
  } catch (error) {
    alertError(error);
  }
}

async function accept(broadcast, vehicleType, quantity) {
  alertError(null);
  const open = (broadcast.truckRequests || []).find((r) => r.vehicleType === vehicleType && r.state === "open");
  try {
    const result = quantity === 1 && open
      ? await session.call("POST", `/v1/truck-requests/${open.truckRequestId}/accept`)
      : await session.call("POST", `/v1/broadcasts/${broadcast.broadcastId}/accept`, { vehicleType, quantity });
    announce(`Accepted ${result.assignments.length} × ${vehicleType}`);
    await loadAssignments();
  } catch (error) {
    const left = error.details.available;
    alertError(left === undefined ? error : new Error(`${error.message} (${left} left)`));
    await loadBroadcasts();
  }
}

async function assign(assignmentId) {
  alertError(null);
  const driverId = document.getElementById(`driver-for-${assignmentId}`).value;
  const vehicleId = document.getElementById(`vehicle-for-${assignmentId}`).value;
  try {
    await session.call("POST", `/v1/assignments/${assignmentId}/driver`, { driverId, vehicleId });
    announce(`Driver ${driverId} assigned with vehicle ${vehicleId}`);
  } catch (error) {
    alertError(error);
  }
  await Promise.all([loadAssignments(), loadDrivers()]);
}

function renderBroadcasts() {
  const list = [...state.broadcasts.values()];
  show(document.getElementById("broadcasts"),
    list.length ? list.map(broadcastItem) : h("li", { class: "empty" }, "No open requests right now."));
}

function broadcastItem(b) {
  return h("li", { "data-broadcast-id": b.broadcastId },
    h("p", { class: "row" }, h("strong", {}, `${place(b.pickup)} → ${place(b.drop)}`), countdown(b.expiresAt)),
    b.note ? h("p", { class: "hint" }, b.note) : null,
    Object.entries(b.openByType).map(([type, open]) => acceptRow(b, type, open)));
}

function acceptRow(b, type, open) {
  const qty = `qty-${b.broadcastId}-${type}`;
  return h("div", { class: "row" },
    h("span", {}, `${type}: ${open} open`),
    h("button", { type: "button", disabled: open < 1, onclick: () => accept(b, type, 1) }, `Accept one ${type}`),
    open > 1 ? [
      h("label", { for: qty }, `How many ${type}`),
      h("input", { id: qty, type: "number", min: 1, max: open, value: open }),
      h("button", { type: "button", class: "secondary",
        onclick: () => accept(b, type, Number(document.getElementById(qty).value)) }, `Accept that many ${type}`),
    ] : null);
}

function renderDrivers() {
  const rows = [...state.drivers.values()].map((d) =>
    h("tr", { "data-driver-id": d.driverId },
      h("td", {}, `${d.name} (${d.driverId})`),
      h("td", { class: d.online ? "online" : "offline" }, d.online ? "Online" : "Offline"),
      h("td", {}, d.activeAssignmentId ? "On a trip" : "Free")));
  show(document.getElementById("drivers"),
    rows.length ? rows : h("tr", {}, h("td", { colspan: 3 }, "No drivers registered.")));
}

function busyVehicles() {
  return new Set([...state.assignments.values()]
    .filter((a) => a.state === "driver_assigned" && a.vehicleId).map((a) => a.vehicleId));
}

function renderAssignments() {
  const list = [...state.assignments.values()];
  show(document.getElementById("assignments"),
    list.length ? list.map(assignmentItem) : h("li", { class: "empty" }, "No assignments yet."));
  renderVehicles();
}

function assignmentItem(a) {
  const head = h("p", { class: "row" }, h("strong", {}, `${a.vehicleType}: ${place(a.pickup)} → ${place(a.drop)}`),
    h("span", { class: "state" }, a.state.replace(/_/g, " ")));
  if (a.state === "cancelled") return h("li", { "data-assignment-id": a.assignmentId }, head, h("p", { class: "notice" }, a.message || "Request cancelled"));
  if (a.state === "driver_assigned") {
    return h("li", { "data-assignment-id": a.assignmentId }, head, h("p", { class: "good" }, `Driver ${a.driverId}, vehicle ${a.vehicleId}`));
  }
  return h("li", { "data-assignment-id": a.assignmentId }, head, chooser(a));
}

function chooser(a) {
  const drivers = [...state.drivers.values()].filter((d) => d.online && !d.activeAssignmentId);
  const busy = busyVehicles();
  const vehicles = [...state.vehicles].filter(([id, type]) => type === a.vehicleType && !busy.has(id));
  const ready = drivers.length > 0 && vehicles.length > 0;
  return h("div", { class: "row" },
    h("label", { for: `driver-for-${a.assignmentId}` }, "Driver"),
    h("select", { id: `driver-for-${a.assignmentId}`, disabled: !drivers.length },
      drivers.length ? drivers.map((d) => h("option", { value: d.driverId }, `${d.name} (${d.driverId})`))
        : h("option", { value: "" }, "No online, free driver")),
    h("label", { for: `vehicle-for-${a.assignmentId}` }, "Vehicle"),
    h("select", { id: `vehicle-for-${a.assignmentId}`, disabled: !vehicles.length },
      vehicles.length ? vehicles.map(([id]) => h("option", { value: id }, id))
        : h("option", { value: "" }, `No free ${a.vehicleType}`)),
    h("button", { type: "button", id: `assign-${a.assignmentId}`, disabled: !ready, onclick: () => assign(a.assignmentId) }, "Assign driver"));
}

function renderVehicles() {
  const busy = busyVehicles();
  show(document.getElementById("vehicles"), [...state.vehicles].map(([id, type]) =>
    h("li", {}, `${id}: ${type}${busy.has(id) ? " (on a trip)" : ""}`)));
}

async function saveVehicle(event) {
  event.preventDefault();
  alertError(null);
  const value = (id) => document.getElementById(id).value;
  const id = value("vehicle-id").trim();
  try {
    const vehicle = await session.call("PUT", `/v1/transporters/me/vehicles/${encodeURIComponent(id)}`,
      { vehicleType: value("vehicle-type").trim(), lat: Number(value("vehicle-lat")), lng: Number(value("vehicle-lng")) });
    rememberVehicle(vehicle.vehicleId, vehicle.vehicleType);
    announce(`Vehicle ${vehicle.vehicleId} saved`);
    renderAssignments();
  } catch (error) {
    alertError(error);
  }
}

function onFrame(frame) {
  const data = frame.data || {};
  switch (frame.type) {
    case "new_broadcast":
      state.broadcasts.set(data.broadcastId, { ...data, truckRequests: [] });
      announce(`New request: ${place(data.pickup)} → ${place(data.drop)}`);
      renderBroadcasts();
      loadBroadcasts(); // its truck requests, for "accept one"
      break;
    case "broadcast_updated":
      if (state.broadcasts.has(data.broadcastId)) state.broadcasts.get(data.broadcastId).openByType = data.openByType;
      renderBroadcasts();
      loadBroadcasts();
      break;
    case "broadcast_removed":
      state.broadcasts.delete(data.broadcastId);
      state.removed.add(data.broadcastId);
      announce(`A request was removed (${data.reason.replace(/_/g, " ")})`);
      renderBroadcasts();
      break;
    case "assignment_cancelled": {
      const known = state.assignments.get(data.assignmentId);
      state.assignments.set(data.assignmentId, { ...(known || { vehicleType: "", pickup: {}, drop: {} }),
        ...data, state: "cancelled" });
      announce(data.message);
      renderAssignments();
      loadDrivers();
      break;
    }
    case "driver_status_changed": {
      const driver = state.drivers.get(data.driverId);
      if (!driver) return void loadDrivers();
      driver.online = data.online;
      announce(`${driver.name} is ${data.online ? "online" : "offline"}`);
      renderDrivers();
      renderAssignments();
      break;
    }
    default:
      break;
  }
}

if (session) {
  loadVehicles(session.fragment);
  document.getElementById("vehicle-form").addEventListener("submit", saveVehicle);
  goLive(session, { onFrame, onReload: reload });
  reload();
}
