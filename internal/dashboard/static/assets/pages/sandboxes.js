// The sandboxes list. The list itself is cheap (the server's store) and refreshes every
// 3 s; CPU and memory come from each running guest's agent, so they are sampled less
// often (10 s), a few at a time, and never while the tab is hidden.
import { get } from "../api.js";
import { h, replace, stateBadge, ago, left, bytes, errorBox, announce, SANDBOX_ENDED } from "../dom.js";

const PAGE = 25;
const LIST_MS = 3000;
const METRICS_MS = 10000;
const METRICS_AT_ONCE = 4;
const STATES = ["starting", "running", "paused", "stopping", "killed", "timed_out", "failed", "lost"];

export function render(main, { query }) {
  document.title = "Sandboxes · Vulcan";
  const ctl = new AbortController();
  let timer = null, metricsTimer = null, gen = 0, lastRunning = null;
  let list = [];
  const metrics = new Map(); // id → { m, at } | { err }
  // Cursor pages: the server hands out "next"; going back pops what we came through.
  const state = { state: query.get("state") || "", cursor: query.get("cursor") || "" };
  const back = [];

  const stateSel = h("select", { id: "filter-state", onchange: (e) => { state.state = e.target.value; state.cursor = ""; back.length = 0; sync(); } },
    h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s, selected: state.state === s }, s.replace("_", " "))));
  const body = h("tbody");
  const table = h("table", { class: "list", id: "sandboxes" },
    h("caption", { class: "visually-hidden" }, "Sandboxes, newest first"),
    h("thead", {}, h("tr", {}, ["Sandbox", "State", "Template", "Resources", "CPU", "Memory", "Age", "Time left", "Metadata"]
      .map((c) => h("th", { scope: "col" }, c)))),
    body);
  const summary = h("p", { class: "muted", id: "list-summary", "aria-live": "polite" }, "Loading…");
  const newer = h("button", { type: "button", onclick: () => { state.cursor = back.pop() || ""; sync(); } }, "← Newer");
  const older = h("button", { type: "button" }, "Older →");
  const problem = h("div");
  replace(main,
    h("div", { class: "page-head" }, h("h1", {}, "Sandboxes"),
      h("a", { class: "button primary", href: "/sandboxes/new", "data-link": true, id: "new-sandbox" }, "New sandbox")),
    h("form", { class: "filters", "aria-label": "Filter sandboxes", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field inline" }, h("label", { for: "filter-state" }, "State"), stateSel)),
    problem, h("div", { class: "table-wrap" }, table),
    h("div", { class: "list-foot" }, summary, h("nav", { class: "pager", "aria-label": "Pages" }, newer, older)));

  function sync() {
    const q = new URLSearchParams();
    if (state.state) q.set("state", state.state);
    if (state.cursor) q.set("cursor", state.cursor);
    history.replaceState(null, "", "/sandboxes" + (q.toString() ? "?" + q : ""));
    load();
  }

  async function load() {
    const my = ++gen;
    clearTimeout(timer);
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (state.state) q.set("state", state.state);
    if (state.cursor) q.set("cursor", state.cursor);
    try {
      const page = await get("/v1/sandboxes?" + q, { signal: ctl.signal });
      if (my !== gen) return;
      replace(problem);
      list = page.sandboxes;
      draw(page.next_cursor || "");
    } catch (err) {
      if (ctl.signal.aborted || my !== gen) return;
      replace(problem, errorBox(err));
    }
    if (!ctl.signal.aborted) timer = setTimeout(tick, LIST_MS);
  }
  function tick() {
    if (document.hidden) timer = setTimeout(tick, LIST_MS);
    else load();
  }

  async function sample() {
    clearTimeout(metricsTimer);
    if (!document.hidden) {
      const running = list.filter((s) => s.state === "running").map((s) => s.id);
      for (const id of metrics.keys()) if (!running.includes(id)) metrics.delete(id);
      for (let i = 0; i < running.length && !ctl.signal.aborted; i += METRICS_AT_ONCE) {
        await Promise.all(running.slice(i, i + METRICS_AT_ONCE).map(async (id) => {
          try {
            metrics.set(id, { m: await get(`/v1/sandboxes/${id}/metrics`, { signal: ctl.signal }) });
          } catch (err) {
            if (!ctl.signal.aborted) metrics.set(id, { err });
          }
        }));
      }
      if (!ctl.signal.aborted) draw();
    }
    if (!ctl.signal.aborted) metricsTimer = setTimeout(sample, METRICS_MS);
  }

  let nextCursor = "";
  function draw(next) {
    if (next !== undefined) nextCursor = next;
    const rows = list.map((s) => {
      const m = metrics.get(s.id), live = s.state === "running";
      const cpu = !live ? "—" : !m ? "…" : m.err ? "?" : m.m.cpu_used_pct.toFixed(1) + " %";
      const mem = !live ? "—" : !m ? "…" : m.err ? "?" : `${bytes(m.m.mem_used)} / ${bytes(m.m.mem_total)}`;
      const md = Object.entries(s.metadata || {});
      return h("tr", { dataset: { id: s.id, state: s.state } },
        h("td", {}, h("a", { href: "/sandboxes/" + s.id, "data-link": true, class: "mono" }, s.id)),
        h("td", {}, stateBadge(s.state)),
        h("td", {}, s.template),
        h("td", { class: "num" }, `${s.resources.cpus} vCPU · ${s.resources.mem_mb} MiB`),
        h("td", { class: "num", dataset: { k: "cpu" }, title: m && m.err ? m.err.message : null }, cpu),
        h("td", { class: "num", dataset: { k: "mem" } }, mem),
        h("td", {}, h("time", { datetime: s.created_at, title: s.created_at }, ago(s.created_at))),
        h("td", { class: "num", dataset: { k: "left" } }, SANDBOX_ENDED.includes(s.state) ? "—" : left(s.expires_at)),
        h("td", {}, md.length ? h("ul", { class: "chips small" }, md.map(([k, v]) => h("li", {}, h("span", { class: "mono" }, k), "=", v))) : "—"));
    });
    if (!rows.length) {
      rows.push(h("tr", {}, h("td", { colspan: "9", class: "empty" },
        state.state ? "No sandboxes in this state." : "No sandboxes yet. ",
        state.state ? null : h("a", { href: "/sandboxes/new", "data-link": true }, "Start one."))));
    }
    replace(body, rows);
    const running = list.filter((s) => s.state === "running").length;
    summary.textContent = `${list.length} sandbox${list.length === 1 ? "" : "es"} on this page · ${running} running`;
    if (lastRunning !== null && running !== lastRunning) announce(`${running} sandbox${running === 1 ? "" : "es"} running on this page`);
    lastRunning = running;
    newer.disabled = !state.cursor;
    older.disabled = !nextCursor;
    older.onclick = () => { back.push(state.cursor); state.cursor = nextCursor; sync(); };
  }

  load().then(sample);
  return () => { clearTimeout(timer); clearTimeout(metricsTimer); ctl.abort(); };
}
