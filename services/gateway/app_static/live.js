// The WebSocket /v1/ws (CONTRACT.md section 7). A browser's WebSocket cannot send headers, so
// the token goes as `?token=` (the gateway logs route templates, never query strings). After a
// dropped socket it reconnects with `?lastEventId=` of the last frame seen, so the server
// replays what was missed; `resync_required`, or an open with no frame seen yet, makes the
// screen reload its state over HTTP instead.
const PING_MS = 20000;
const MAX_BACKOFF_MS = 8000;

export function connectLive({ token, onFrame, onReload, onStatus }) {
  let socket = null;
  let lastEventId = null;
  let attempts = 0;
  let held = false;
  let pinger = null;
  let retryTimer = null;

  function url() {
    const u = new URL("/v1/ws", location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.searchParams.set("token", token);
    if (lastEventId) u.searchParams.set("lastEventId", lastEventId);
    return u.toString();
  }

  function open() {
    retryTimer = null;
    socket = new WebSocket(url());
    socket.addEventListener("open", () => {
      attempts = 0;
      onStatus("live");
      pinger = setInterval(() => socket.send('{"type":"ping"}'), PING_MS);
      // With no frame seen yet, what happened before this socket was subscribed is read over
      // HTTP now (on a first open as on a reconnect); with one, the server replays it.
      if (!lastEventId) onReload();
    });
    socket.addEventListener("message", (message) => receive(JSON.parse(message.data)));
    socket.addEventListener("close", () => {
      clearInterval(pinger);
      if (held) return;
      onStatus("reconnecting");
      const pause = Math.min(MAX_BACKOFF_MS, 250 * 2 ** attempts++);
      retryTimer = setTimeout(open, pause);
    });
  }

  function receive(frame) {
    if (frame.type === "pong") return;
    if (frame.type === "resync_required") {
      onReload();
      return;
    }
    if (frame.eventId) lastEventId = frame.eventId;
    onFrame(frame);
  }

  open();
  return {
    // Close the socket and stay away until `resume` (what a lost network does to a phone).
    hold() {
      held = true;
      clearTimeout(retryTimer);
      socket.close();
      onStatus("offline");
    },
    // Reconnect; `from` replaces the last event id seen (the tests use it to force a resync).
    resume(from) {
      held = false;
      if (from !== undefined) lastEventId = from;
      if (socket.readyState === WebSocket.CLOSED) open();
    },
    get lastEventId() {
      return lastEventId;
    },
  };
}
