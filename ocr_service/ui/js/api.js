// Talking to the service: requests with the API key, the task event stream, page images.
//
// The key the user entered is kept in localStorage and sent as X-API-Key on every request,
// never in a URL (URLs end up in access logs, browser history and Referer headers). That is
// why the event stream is read with fetch() and not EventSource (which cannot send headers),
// and why images are fetched and shown through blob: URLs rather than <img src> on the API.

const KEY_STORAGE = "ocr.apiKey";
// The UI lives at <service>/ui/; the API at <service>/ (also behind a proxy prefix).
export const SERVICE_ROOT = new URL("../", window.location.href);

export class ApiError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export function storedKey() {
  return window.localStorage.getItem(KEY_STORAGE) || "";
}

export function storeKey(key) {
  if (key) window.localStorage.setItem(KEY_STORAGE, key);
  else window.localStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  const key = storedKey();
  return key ? { "X-API-Key": key, ...extra } : { ...extra };
}

export function url(path) {
  return new URL(path, SERVICE_ROOT).toString();
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  } catch {
    // not JSON
  }
  return `${response.status} ${response.statusText}`;
}

export async function request(path, options = {}) {
  const response = await fetch(url(path), { ...options, headers: headers(options.headers) });
  if (!response.ok) {
    throw new ApiError(response.status, await detailOf(response), response.headers.get("Retry-After"));
  }
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function submitFile(file, params) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("prompt", params.prompt);
  form.append("max_tokens", String(params.maxTokens));
  return (await request("ocr", { method: "POST", body: form })).json();
}

export async function submitUrl(address, params) {
  const body = JSON.stringify({ url: address, prompt: params.prompt, max_tokens: params.maxTokens });
  return (await request("ocr/url", { method: "POST", body, headers: { "Content-Type": "application/json" } })).json();
}

export async function cancelTask(taskId) {
  return (await request(`ocr/${encodeURIComponent(taskId)}`, { method: "DELETE" })).json();
}

export async function fetchBlobUrl(path) {
  const response = await request(path);
  return URL.createObjectURL(await response.blob());
}

// Read GET /ocr/{id}/events once: calls onEvent({event, id, data}) for each event until the
// stream ends. Resolves with the retry delay the server asked for (ms), or null if none.
export async function readEvents(taskId, lastEventId, onEvent, signal) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(url(`ocr/${encodeURIComponent(taskId)}/events`), { headers: headers(extra), signal });
  if (!response.ok) {
    throw new ApiError(response.status, await detailOf(response), response.headers.get("Retry-After"));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let retry = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const event = parseEvent(block);
      if (event.retry !== null) retry = event.retry;
      if (event.data !== null) onEvent(event);
    }
  }
  return retry;
}

// One SSE event block -> {event, id, data (parsed JSON or null), retry}. Comments are skipped.
function parseEvent(block) {
  const out = { event: "message", id: null, data: null, retry: null };
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") out.event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") out.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) out.retry = Number(value);
  }
  if (data.length) out.data = JSON.parse(data.join("\n"));
  return out;
}
