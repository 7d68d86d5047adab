// app.js: the client-side router. Each page module exports render(main, ctx) and may
// return a function that stops what the page started (polls, streams) when the user
// leaves it.
import { get, setToken, token } from "./api.js";
import { h, replace } from "./dom.js";
import * as workloads from "./pages/workloads.js";
import * as create from "./pages/new.js";
import * as detail from "./pages/detail.js";
import * as backends from "./pages/backends.js";
import * as charts from "./pages/charts.js";
import * as sandboxes from "./pages/sandboxes.js";
import * as sandboxNew from "./pages/sandbox-new.js";
import * as sandbox from "./pages/sandbox.js";
import * as templates from "./pages/templates.js";
import * as nodes from "./pages/nodes.js";

const routes = [
  { re: /^\/(workloads\/?)?$/, page: workloads, nav: "workloads" },
  { re: /^\/workloads\/new\/?$/, page: create, nav: "new" },
  { re: /^\/workloads\/([0-9A-Za-z]+)\/?$/, page: detail, nav: "workloads" },
  { re: /^\/sandboxes\/?$/, page: sandboxes, nav: "sandboxes" },
  { re: /^\/sandboxes\/new\/?$/, page: sandboxNew, nav: "sandboxes" },
  { re: /^\/sandboxes\/([0-9A-Za-z_-]+)\/?$/, page: sandbox, nav: "sandboxes" },
  { re: /^\/templates\/?$/, page: templates, nav: "templates" },
  { re: /^\/backends\/?$/, page: backends, nav: "backends" },
  { re: /^\/nodes\/?$/, page: nodes, nav: "nodes" },
  { re: /^\/charts\/?$/, page: charts, nav: "charts" },
];

const main = document.getElementById("main");
let leave = null;

export function navigate(url, { replace: swap = false } = {}) {
  if (swap) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route(true);
}

function route(moved) {
  if (leave) leave();
  leave = null;
  const path = location.pathname;
  const match = routes.map((r) => ({ r, m: path.match(r.re) })).find((x) => x.m);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (match && a.dataset.nav === match.r.nav) a.setAttribute("aria-current", match.r.page === detail || match.r.page === sandbox || match.r.page === sandboxNew ? "true" : "page");
    else a.removeAttribute("aria-current");
  }
  if (!match) {
    document.title = "Not found · Vulcan";
    replace(main, h("h1", {}, "Page not found"), h("p", {}, "Nothing lives at ", h("code", {}, path), ". ",
      h("a", { href: "/", "data-link": true }, "Back to the workloads"), "."));
  } else {
    const ctx = { params: match.m.slice(1), query: new URLSearchParams(location.search), navigate };
    replace(main);
    leave = match.r.page.render(main, ctx) || null;
  }
  // Move focus to the new content so keyboard and screen-reader users start there.
  if (moved) main.focus({ preventScroll: false });
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[href]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || a.target || a.hasAttribute("download")) return;
  if (url.pathname.startsWith("/v1/") || url.pathname.startsWith("/assets/") || url.pathname === "/metrics") return; // documents, not pages
  e.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => route(true));

// A 401 from any call means the server wants a token this tab does not have.
let asking = false;
window.addEventListener("vulcan:unauthorized", () => {
  if (asking) return;
  asking = true;
  if (leave) leave();
  leave = null;
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "card narrow", onsubmit: (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    asking = false;
    route(true);
  } },
  h("h1", {}, "API token"),
  h("p", {}, token() ? "The server refused the token. Enter the right one." : "This server requires a bearer token (VULCAN_API_TOKEN)."),
  h("label", { for: "token" }, "Token"), input,
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Continue")));
  replace(main, form);
  input.focus();
});

get("/healthz").then((v) => { document.getElementById("version").textContent = "v" + v.version; }).catch(() => {});
route(false);
