// Who is signed in on this tab: the token arrives in the URL fragment (`#token=...`), which the
// browser never sends to a server; it is kept in this tab's sessionStorage and the fragment is
// cleared at once, so it stays out of the address bar, the history and every log.
const TOKEN_KEY = "weelo.token";

// The fragment's parameters (token, and for a transporter the demo's vehicles), read once.
export function takeFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  }
  if (location.hash) {
    history.replaceState(null, "", location.pathname + location.search);
  }
  return params;
}

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// The token's claims (`sub`, `role`, `exp`), read without checking it: the server checks it.
export function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.sub === "string" && typeof claims.role === "string" ? claims : null;
  } catch {
    return null;
  }
}
