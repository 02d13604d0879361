// Calls to the service: the API key, the service's errors, and waiting out a busy service.

/** An answer of the service that is not a success: `message` is the service's own. */
export class ServiceError extends Error {
  constructor(code, message, { status = null, field = null, retryAfter = null } = {}) {
    super(message);
    this.name = "ServiceError";
    this.code = code;
    this.status = status;
    this.field = field;
    this.retryAfter = retryAfter; // seconds, when the service said when to come back
  }
}

const MAX_BUSY_RETRIES = 10;
let apiKey = "";

export function setApiKey(key) {
  apiKey = key.trim();
}

export function getApiKey() {
  return apiKey;
}

/** An API path resolved against the page (/web/ -> ../api/...), so a path prefix is kept. */
export function apiUrl(path) {
  return new URL(`../${path}`, document.baseURI);
}

function withKey(headers) {
  const out = new Headers(headers);
  if (apiKey) out.set("X-API-Key", apiKey);
  return out;
}

/** The ServiceError an error answer stands for (JSON error body, or the HTTP status). */
export async function errorOf(response) {
  const text = await response.text().catch(() => "");
  let error = null;
  try {
    error = JSON.parse(text).error ?? null;
  } catch {
    // not JSON: a proxy's page, for instance
  }
  const retryAfter = Number(response.headers.get("Retry-After")) || null;
  const message = error?.message ?? `HTTP ${response.status} ${response.statusText}`.trim();
  return new ServiceError(error?.code ?? `http_${response.status}`, message, {
    status: response.status,
    field: error?.field ?? null,
    retryAfter,
  });
}

/**
 * fetch() an API path with the key; a 503 with Retry-After (busy) is retried after that
 * many seconds, up to MAX_BUSY_RETRIES times, with `onBusy(secondsLeft, attempt)` called
 * every second (and `onBusy(0)` when it is over). Resolves to the ok Response; rejects with
 * ServiceError.
 */
export async function request(path, init = {}, { onBusy = () => {} } = {}) {
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await fetch(apiUrl(path), { ...init, headers: withKey(init.headers) });
    } catch (err) {
      throw new ServiceError("unreachable", `The service did not answer: ${err.message}`);
    }
    if (response.ok) {
      onBusy(0);
      return response;
    }
    const error = await errorOf(response);
    if (response.status !== 503 || !error.retryAfter || attempt > MAX_BUSY_RETRIES) {
      onBusy(0);
      throw error;
    }
    await countdown(error.retryAfter, (left) => onBusy(left, attempt, error.message));
  }
}

/** JSON of an API call (see request). */
export async function json(path, init = {}, hooks = {}) {
  const response = await request(path, init, hooks);
  return response.json();
}

async function countdown(seconds, tick) {
  for (let left = Math.ceil(seconds); left > 0; left--) {
    tick(left);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
