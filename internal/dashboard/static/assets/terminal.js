// terminal.js: a sandbox's terminal. xterm.js draws it; the bytes go over the PTY
// WebSocket (subprotocol vulcan.pty.v1): binary messages are keystrokes out and screen in,
// text messages JSON control ({"type":"resize"} from here, {"type":"exit"|"error"} from
// the server). xterm.js comes from npm at build time (`make dashboard-vendor` copies it
// into assets/vendor, gitignored and embedded), so a tree built without it still serves
// the rest of the dashboard and this module says what is missing.
import { socket } from "./api.js";

export const PTY_PROTOCOL = "vulcan.pty.v1";
const CSS = "/assets/vendor/xterm.css";

let loading = null;

// load imports xterm.js and its fit addon once per page, with their stylesheet.
export function load() {
  if (!loading) {
    loading = Promise.all([import("./vendor/xterm.mjs"), import("./vendor/addon-fit.mjs"), stylesheet()])
      .then(([xterm, fit]) => ({ Terminal: xterm.Terminal, FitAddon: fit.FitAddon }));
    loading.catch(() => { loading = null; }); // a later page may try again
  }
  return loading;
}

function stylesheet() {
  if (document.querySelector(`link[href="${CSS}"]`)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = CSS;
    link.onload = () => resolve();
    link.onerror = () => reject(new Error("could not load " + CSS));
    document.head.append(link);
  });
}

// open draws a terminal into el and connects it to a new PTY in the sandbox (a login
// shell, or cmd). onState(state, detail) hears "connecting", "connected", "exited"
// (detail: the exit control message), "closed" (detail: the CloseEvent) and "error".
// It returns a handle whose close() hangs the terminal up and frees everything.
export async function open(el, sandboxID, { cmd = "", onState = () => {} } = {}) {
  const { Terminal, FitAddon } = await load();
  const term = new Terminal({
    cursorBlink: true, scrollback: 5000, fontSize: 14,
    fontFamily: '"DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace',
    theme: { background: "#0f172a", foreground: "#e2e8f0", cursor: "#f8fafc", selectionBackground: "#334155" },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();

  const q = new URLSearchParams({ cols: String(term.cols), rows: String(term.rows) });
  if (cmd) q.set("cmd", cmd);
  onState("connecting");
  const ws = socket(`/v1/sandboxes/${encodeURIComponent(sandboxID)}/pty?${q}`, PTY_PROTOCOL);
  ws.binaryType = "arraybuffer";
  let ended = false;
  const enc = new TextEncoder();
  const send = (data) => { if (ws.readyState === WebSocket.OPEN) ws.send(data); };
  const sendSize = () => send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));

  ws.onopen = () => {
    onState("connected");
    sendSize(); // the box may have changed size while the socket opened
    term.focus();
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") {
      term.write(new Uint8Array(e.data));
      return;
    }
    let ctl;
    try { ctl = JSON.parse(e.data); } catch { return; }
    if (ctl.type === "exit") {
      ended = true;
      term.write(`\r\n\x1b[2m[exited${ctl.signal ? " on " + ctl.signal : " with code " + ctl.exit_code}]\x1b[0m\r\n`);
      onState("exited", ctl);
    } else if (ctl.type === "error") {
      ended = true;
      term.write(`\r\n\x1b[31m[${ctl.error}]\x1b[0m\r\n`);
      onState("error", ctl);
    }
  };
  ws.onclose = (e) => {
    if (ended) return;
    term.write("\r\n\x1b[2m[disconnected]\x1b[0m\r\n");
    onState("closed", e);
  };
  const subs = [
    term.onData((d) => send(enc.encode(d))),
    // Non-UTF-8 input (some mouse reports): one byte per char code.
    term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff))),
    term.onResize(sendSize),
  ];
  // The box follows the window (and any layout change); refit once per frame at most.
  let frame = 0;
  const refit = () => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      if (el.isConnected && el.clientWidth > 0) fit.fit();
    });
  };
  const ro = new ResizeObserver(refit);
  ro.observe(el);
  window.addEventListener("resize", refit);

  return {
    term,
    socket: ws,
    close() {
      ended = true;
      ro.disconnect();
      window.removeEventListener("resize", refit);
      cancelAnimationFrame(frame);
      for (const s of subs) s.dispose();
      ws.close();
      term.dispose();
    },
  };
}
