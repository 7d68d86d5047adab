// The nodes page: the cluster this server is a node of (GET /v1/cluster), refreshed
// every 2 s. A single node (no --nats) says so.
import { get } from "../api.js";
import { h, replace, errorBox, ago } from "../dom.js";

export function render(main) {
  document.title = "Nodes · Vulcan";
  const summary = h("p", { id: "cluster-summary", class: "muted" }, "Loading…");
  const table = h("div", { id: "nodes" });
  replace(main, h("div", { class: "page-head" }, h("h1", {}, "Nodes")), summary, table);

  async function load() {
    try {
      const st = await get("/v1/cluster");
      const live = st.nodes.filter((n) => n.alive).length;
      const counts = (m) => Object.entries(m || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "none";
      summary.textContent = `${live} live node${live === 1 ? "" : "s"} · this node ${st.self}` +
        (st.connected ? "" : " (not connected to NATS)") + ` · ${st.queue_depth} queued · workloads: ${counts(st.workloads)} · sandboxes: ${counts(st.sandboxes)}`;
      const cols = ["Node", "State", "URL", "Slots free", "Sandboxes", "Memory free", "vCPU free", "Templates", "Warm", "Up since", "Version"];
      replace(table, h("table", { class: "table" },
        h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, st.nodes.map((n) => h("tr", { dataset: { node: n.id, alive: String(n.alive) } },
          h("td", {}, n.self ? h("strong", {}, n.id + " (this node)") : n.id),
          h("td", {}, h("span", { class: "badge " + (n.alive ? "ok" : "bad") }, n.alive ? "alive" : "lapsing")),
          h("td", {}, h("code", {}, n.url)),
          h("td", {}, `${n.slots_free}/${n.slots}`),
          h("td", {}, n.can_sandbox ? `${n.sandboxes}/${n.max_sandboxes}` : "cannot boot VMs"),
          h("td", {}, `${n.mem_free_mb}/${n.mem_budget_mb} MiB`),
          h("td", {}, `${n.cpu_free}/${n.cpu_budget}`),
          h("td", {}, (n.templates || []).join(", ") || "—"),
          h("td", {}, (n.warm || []).join(", ") || "—"),
          h("td", {}, ago(n.started_at)),
          h("td", {}, n.version))))));
    } catch (err) {
      if (err.status === 404) {
        summary.textContent = "This server is a single node: start it with --nats to join a cluster (see the README's Cluster section).";
        replace(table);
        return;
      }
      replace(table, errorBox(err));
    }
  }
  load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}
