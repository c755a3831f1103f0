// The driver's screen: going online and offline, a heartbeat while the page is open and the
// driver online, the trip as it is assigned, and "Trip cancelled" when it is.
import { boot, goLive } from "./boot.js";
import { alertError, announce, h, place, show } from "./ui.js";

const HEARTBEAT_MS = 10000; // well inside PRESENCE_TTL_SECONDS (30 by default)
const ONLINE_KEY = "weelo.online";
const session = boot("driver");
const state = { online: sessionStorage.getItem(ONLINE_KEY) === "true", trip: null, notice: null };

async function setOnline(online) {
  alertError(null);
  try {
    const result = await session.call("PUT", "/v1/drivers/me/availability", { online });
    state.online = result.online;
    sessionStorage.setItem(ONLINE_KEY, String(state.online));
    announce(state.online ? "You are online" : "You are offline");
    renderDuty();
  } catch (error) {
    alertError(error);
  }
}

async function heartbeat() {
  if (!state.online) return;
  try {
    await session.call("POST", "/v1/drivers/me/heartbeat");
  } catch (error) {
    alertError(error);
  }
}

async function loadTrip() {
  try {
    state.trip = await session.call("GET", "/v1/drivers/me/assignment");
  } catch (error) {
    if (error.status !== 404) alertError(error);
    state.trip = null;
  }
  renderTrip();
}

function renderDuty() {
  document.getElementById("duty").textContent = state.online ? "You are online." : "You are offline.";
  const button = document.getElementById("toggle-online");
  button.textContent = state.online ? "Go offline" : "Go online";
  button.setAttribute("aria-pressed", String(state.online));
}

function renderTrip() {
  const target = document.getElementById("trip");
  const notice = state.notice ? h("p", { class: "notice", id: "trip-notice" }, state.notice) : null;
  const trip = state.trip;
  if (!trip) return show(target, notice, h("p", {}, "No trip assigned."));
  show(target, notice,
    h("dl", { id: "trip-details" },
      h("dt", {}, "Pickup"), h("dd", {}, place(trip.pickup)),
      h("dt", {}, "Drop"), h("dd", {}, place(trip.drop)),
      h("dt", {}, "Vehicle"), h("dd", {}, `${trip.vehicleId} (${trip.vehicleType})`),
      h("dt", {}, "Transporter"), h("dd", {}, trip.transporterId),
      h("dt", {}, "Trip"), h("dd", {}, trip.assignmentId)));
}

function onFrame(frame) {
  const data = frame.data || {};
  if (frame.type === "trip_assigned") {
    state.trip = data;
    state.notice = null;
    announce(`New trip: ${place(data.pickup)} → ${place(data.drop)}`);
    renderTrip();
  } else if (frame.type === "trip_cancelled") {
    if (!state.trip || state.trip.assignmentId === data.assignmentId) state.trip = null;
    state.notice = data.message;
    announce(data.message);
    renderTrip();
  }
}

if (session) {
  renderDuty();
  document.getElementById("toggle-online").addEventListener("click", () => setOnline(!state.online));
  setInterval(heartbeat, HEARTBEAT_MS);
  goLive(session, { onFrame, onReload: loadTrip });
  loadTrip();
}
