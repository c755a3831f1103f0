// The public HTTP API (CONTRACT.md sections 2-6): the token in the Authorization header, JSON in
// and out, every error body turned into an ApiError carrying its `code`.
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.details = error;
  }
}

// A fresh Idempotency-Key: a retry of the same click sends the same key.
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function apiFor(token, onUnauthorized) {
  return async function call(method, path, body, key) {
    const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method === "POST") headers["Idempotency-Key"] = key || newKey();
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      throw new ApiError(0, { error: { code: "network", message: "The server cannot be reached" } });
    }
    const text = await response.text();
    const parsed = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new ApiError(response.status, parsed);
      if (response.status === 401 && onUnauthorized) onUnauthorized(error);
      throw error;
    }
    return parsed;
  };
}
