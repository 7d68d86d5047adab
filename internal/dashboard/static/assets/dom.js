// dom.js: a tiny element builder and the formatting every page shares. Text always goes
// in as text nodes, so nothing from the server is ever parsed as HTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" || k === "checked" || k === "selected") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// replace swaps an element's children for new ones.
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const TERMINAL = ["completed", "failed", "killed"];

export function statusBadge(status) {
  return h("span", { class: "badge status-" + status }, status);
}

export function ms(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  if (n < 1000) return Math.round(n) + " ms";
  if (n < 60000) return (n / 1000).toFixed(n < 10000 ? 2 : 1) + " s";
  const m = Math.floor(n / 60000);
  return m + " min " + Math.round((n % 60000) / 1000) + " s";
}

export function ago(iso) {
  if (!iso) return "—";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return new Date(iso).toLocaleDateString();
}

export function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: d.toISOString() }, d.toLocaleTimeString());
}

// announce tells screen-reader users about something that changed off-focus.
export function announce(text) {
  const el = document.getElementById("announce");
  if (el) el.textContent = text;
}

// errorBox is how a page says that loading failed.
export function errorBox(err) {
  return h("div", { class: "alert", role: "alert" }, err && err.message ? err.message : String(err));
}

// A sandbox in one of these states is over: no VM, nothing to poll.
export const SANDBOX_ENDED = ["killed", "timed_out", "failed", "lost"];

export function stateBadge(state) {
  return h("span", { class: "badge state-" + state }, state.replace("_", " "));
}

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

// left says how long until an ISO time, coarsely ("4 min 10 s", "expired").
export function left(iso) {
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (!(s > 0)) return "expired";
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}
