// api.js: the dashboard's only door to the server. Every call goes through request(), so
// the bearer token (when the server wants one) and error decoding live in one place.

const TOKEN_KEY = "vulcan.token";

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || "";
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const h = new Headers(extra || {});
  const t = token();
  if (t) h.set("Authorization", "Bearer " + t);
  return h;
}

async function failure(resp) {
  let code = "http_" + resp.status, message = resp.statusText || "request failed", field = "";
  try {
    const body = await resp.json();
    if (body && body.error) ({ code, message, field } = body.error);
  } catch {
    // Not our JSON (a proxy's error page): keep the status line.
  }
  if (resp.status === 401) window.dispatchEvent(new CustomEvent("vulcan:unauthorized"));
  return new ApiError(resp.status, code, message, field);
}

// request fetches a JSON (or, with opts.text, a text) resource and throws ApiError on
// any non-2xx answer.
export async function request(method, path, opts = {}) {
  const init = { method, headers: headers(opts.headers), signal: opts.signal };
  if (opts.body !== undefined) {
    init.body = JSON.stringify(opts.body);
    init.headers.set("Content-Type", "application/json");
  }
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp);
  return opts.text ? resp.text() : resp.json();
}

export const get = (path, opts) => request("GET", path, opts);

// raw performs a request whose body or answer is bytes, not JSON (a sandbox's files), and
// returns the Response; a File or Blob body is streamed by the browser, not read here.
export async function raw(method, path, opts = {}) {
  const init = { method, headers: headers(opts.headers), body: opts.body, signal: opts.signal };
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp);
  return resp;
}

// socket opens a WebSocket on an API path. A browser cannot put headers on one, so the
// token travels as a second subprotocol, vulcan.token.<token>; the server selects the
// first.
export function socket(path, protocol) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const protocols = [protocol];
  if (token()) protocols.push("vulcan.token." + token());
  return new WebSocket(url, protocols);
}

// streamEvents reads a Server-Sent Events stream with fetch, because EventSource cannot
// send the Authorization header. It resumes after a dropped connection with
// Last-Event-ID, and resolves when the server ends the stream after an event named in
// opts.until, or rejects with ApiError when the server refuses the stream.
export async function streamEvents(path, onEvent, opts = {}) {
  let lastId = opts.lastEventId || "";
  let retry = 1000;
  for (;;) {
    let finished = false;
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId) h.set("Last-Event-ID", lastId);
      const resp = await fetch(path, { headers: h, signal: opts.signal, cache: "no-store" });
      if (!resp.ok) throw await failure(resp);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let ev = { event: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
          if (line === "") {
            if (ev.id !== null) lastId = ev.id;
            if (ev.data.length) {
              onEvent({ event: ev.event, id: ev.id, data: ev.data.join("\n") });
              if (opts.until && opts.until.includes(ev.event)) finished = true;
            }
            ev = { event: "message", data: [], id: null };
            continue;
          }
          if (line.startsWith(":")) continue; // heartbeat
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (name === "data") ev.data.push(val);
          else if (name === "event") ev.event = val;
          else if (name === "id") ev.id = val;
          else if (name === "retry" && /^\d+$/.test(val)) retry = Number(val);
        }
      }
    } catch (err) {
      if (opts.signal && opts.signal.aborted) return;
      if (err instanceof ApiError && err.status < 500) throw err;
      if (opts.onError) opts.onError(err);
    }
    if (finished || (opts.signal && opts.signal.aborted)) return;
    await new Promise((r) => setTimeout(r, retry));
    retry = Math.min(retry * 2, 10000);
  }
}
