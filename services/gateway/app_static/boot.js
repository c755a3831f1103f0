// What every screen does first: find its signed-in user, open the live socket, show both.
import { apiFor } from "./api.js";
import { connectLive } from "./live.js";
import { claimsOf, forgetToken, storedToken, takeFragment } from "./session.js";
import { alertError, h, tickCountdowns } from "./ui.js";

const CONNECTION = { live: "Live", reconnecting: "Reconnecting…", offline: "Offline" };

// The screen's session for `role`, or null (the page then says how to sign in).
export function boot(role) {
  const fragment = takeFragment();
  const token = storedToken();
  const claims = token && claimsOf(token);
  const who = document.getElementById("who");
  if (!claims || claims.role !== role) {
    forgetToken();
    document.getElementById("connection").textContent = "Not connected";
    document.getElementById("main").replaceChildren(
      h("p", { role: "alert" }, `Not signed in as a ${role}. `, h("a", { href: "./" }, "Sign in")),
    );
    return null;
  }
  who.textContent = `Signed in as ${claims.sub}`;
  const expired = () => alertError(new Error("Your sign-in has expired: run `weelo demo` for new links."));
  tickCountdowns();
  return { token, sub: claims.sub, fragment, call: apiFor(token, expired) };
}

// Open the socket; `handlers.onFrame` gets each frame, `handlers.onReload` reloads state.
export function goLive(session, handlers) {
  const connection = document.getElementById("connection");
  const live = connectLive({
    token: session.token,
    onFrame: handlers.onFrame,
    onReload: handlers.onReload,
    onStatus: (state) => {
      connection.textContent = CONNECTION[state];
      connection.dataset.state = state;
    },
  });
  window.weeloLive = live; // for the browser tests and the curious: hold() / resume()
  return live;
}
