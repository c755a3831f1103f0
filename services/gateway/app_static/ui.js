// Small DOM helpers shared by the screens. Text always goes in as text (never as HTML).
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Replace what `target` shows, keeping keyboard focus and chosen values on the element of the
// same id, so a live update never pulls the focus from under the user.
export function show(target, ...children) {
  const active = document.activeElement;
  const focusedId = active && target.contains(active) ? active.id : null;
  const values = {};
  for (const el of target.querySelectorAll("select[id], input[id]")) values[el.id] = el.value;
  target.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  for (const [id, value] of Object.entries(values)) {
    const el = document.getElementById(id);
    if (el && target.contains(el) && [...(el.options || [{ value }])].some((o) => o.value === value)) {
      el.value = value;
    }
  }
  if (focusedId) document.getElementById(focusedId)?.focus();
}

// Say something in the page's polite live region (screen readers announce it).
export function announce(text) {
  const status = document.getElementById("status");
  status.textContent = "";
  requestAnimationFrame(() => {
    status.textContent = text;
  });
}

export function alertError(error) {
  const box = document.getElementById("error");
  box.textContent = error ? error.message : "";
  box.hidden = !error;
}

export function place(location) {
  if (!location || typeof location.lat !== "number") return "?";
  return location.address || `${location.lat.toFixed(4)}, ${location.lng.toFixed(4)}`;
}

// "1:58 left" from an ISO `expiresAt` (the server sends no countdown ticks).
export function timeLeft(expiresAt) {
  if (!expiresAt) return "";
  const seconds = Math.max(0, Math.round((Date.parse(expiresAt) - Date.now()) / 1000));
  if (seconds === 0) return "time is up";
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")} left`;
}

// Refresh every countdown on the page (`data-expires` holds the ISO time) four times a second.
export function tickCountdowns() {
  setInterval(() => {
    for (const el of document.querySelectorAll("[data-expires]")) {
      el.textContent = timeLeft(el.dataset.expires);
    }
  }, 250);
}

export function countdown(expiresAt) {
  return h("span", { class: "countdown", role: "timer", "data-expires": expiresAt }, timeLeft(expiresAt));
}
