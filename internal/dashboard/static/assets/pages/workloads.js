// The workloads list: filters and page live in the URL, so a reload or a shared link
// shows the same view; rows refresh every two seconds while the tab is visible.
import { get } from "../api.js";
import { h, replace, statusBadge, ms, ago, announce, errorBox, TERMINAL } from "../dom.js";

const PAGE = 20;
const POLL_MS = 2000;

const FILTERS = {
  status: ["pending", "running", "completed", "failed", "killed"],
  runtime: ["python", "node", "go"],
  isolation: ["microvm"],
};

export function render(main, { query }) {
  document.title = "Workloads · Vulcan";
  let timer = null, stopped = false, lastActive = null;
  const state = {
    status: query.get("status") || "", runtime: query.get("runtime") || "", isolation: query.get("isolation") || "",
    page: Math.max(1, parseInt(query.get("page") || "1", 10) || 1),
  };
  const setQuery = (changes) => {
    Object.assign(state, changes);
    const q = new URLSearchParams();
    for (const k of ["status", "runtime", "isolation"]) if (state[k]) q.set(k, state[k]);
    if (state.page > 1) q.set("page", String(state.page));
    // Only the URL and the rows change: re-rendering would take focus off the control.
    history.replaceState(null, "", "/" + (q.toString() ? "?" + q : ""));
    load();
  };

  const filters = h("form", { class: "filters", "aria-label": "Filter workloads", onsubmit: (e) => e.preventDefault() },
    Object.entries(FILTERS).map(([name, values]) => h("div", { class: "field inline" },
      h("label", { for: "filter-" + name }, name[0].toUpperCase() + name.slice(1)),
      h("select", { id: "filter-" + name, name, onchange: (e) => setQuery({ [name]: e.target.value, page: 1 }) },
        h("option", { value: "" }, "any"),
        values.map((v) => h("option", { value: v, selected: state[name] === v }, v))))),
  );
  const body = h("tbody");
  const table = h("table", { class: "list" },
    h("caption", { class: "visually-hidden" }, "Workloads, newest first"),
    h("thead", {}, h("tr", {}, ["Workload", "Status", "Runtime", "Isolation", "Exit", "Duration", "Created"].map((c) => h("th", { scope: "col" }, c)))),
    body);
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const summary = h("p", { class: "muted", id: "list-summary", "aria-live": "polite" }, "Loading…");
  const problem = h("div");
  replace(main,
    h("div", { class: "page-head" }, h("h1", {}, "Workloads"), h("a", { class: "button primary", href: "/workloads/new", "data-link": true }, "New workload")),
    filters, problem, h("div", { class: "table-wrap" }, table), h("div", { class: "list-foot" }, summary, pager));

  const ctl = new AbortController();
  let gen = 0;
  async function load() {
    const my = ++gen;
    clearTimeout(timer);
    const q = new URLSearchParams({ limit: String(PAGE), offset: String((state.page - 1) * PAGE) });
    for (const k of ["status", "runtime", "isolation"]) if (state[k]) q.set(k, state[k]);
    try {
      const list = await get("/v1/workloads?" + q, { signal: ctl.signal });
      if (my !== gen) return; // a newer filter's answer owns the table
      replace(problem);
      draw(list);
    } catch (err) {
      if (ctl.signal.aborted || my !== gen) return;
      replace(problem, errorBox(err));
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  }
  function tick() {
    if (document.hidden) timer = setTimeout(tick, POLL_MS);
    else load();
  }

  function draw(list) {
    const rows = list.workloads.map((w) => h("tr", { dataset: { id: w.id, status: w.status } },
      h("td", {}, h("a", { href: "/workloads/" + w.id, "data-link": true, class: "mono" }, w.id)),
      h("td", {}, statusBadge(w.status)),
      h("td", {}, w.runtime),
      h("td", {}, w.isolation),
      h("td", { class: "num" }, w.exit_code === null ? "—" : String(w.exit_code)),
      h("td", { class: "num" }, TERMINAL.includes(w.status) ? ms(w.duration_ms) : w.started_at ? ms(Date.now() - Date.parse(w.started_at)) + "…" : "queued"),
      h("td", {}, h("time", { datetime: w.created_at, title: w.created_at }, ago(w.created_at)))));
    if (!rows.length) {
      const filtered = state.status || state.runtime || state.isolation;
      rows.push(h("tr", {}, h("td", { colspan: "7", class: "empty" },
        filtered ? "No workloads match these filters." : "No workloads yet. ",
        filtered ? null : h("a", { href: "/workloads/new", "data-link": true }, "Run your first one."))));
    }
    replace(body, rows);
    const first = list.total ? list.offset + 1 : 0, last = list.offset + list.workloads.length;
    summary.textContent = `${first}–${last} of ${list.total} workload${list.total === 1 ? "" : "s"}`;
    const pages = Math.max(1, Math.ceil(list.total / PAGE));
    replace(pager,
      h("button", { type: "button", disabled: state.page <= 1, onclick: () => setQuery({ page: state.page - 1 }) }, "← Newer"),
      h("span", { class: "muted" }, `Page ${state.page} of ${pages}`),
      h("button", { type: "button", disabled: state.page >= pages, onclick: () => setQuery({ page: state.page + 1 }) }, "Older →"));
    const active = list.workloads.filter((w) => !TERMINAL.includes(w.status)).length;
    if (lastActive !== null && active !== lastActive) announce(`${active} workload${active === 1 ? "" : "s"} active on this page`);
    lastActive = active;
  }

  load();
  return () => { stopped = true; clearTimeout(timer); ctl.abort(); };
}
