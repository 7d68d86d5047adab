// The backends page: the facts `vulcan doctor` gives, as the server sees them now.
import { get } from "../api.js";
import { h, replace, errorBox } from "../dom.js";

const RUNTIME_KEYS = ["python", "node", "go"];

export function render(main) {
  document.title = "Backends · Vulcan";
  const list = h("div", { class: "grid two", id: "backends" }, h("p", { class: "muted" }, "Loading…"));
  const ready = h("p", { id: "ready", class: "muted" });
  replace(main, h("div", { class: "page-head" }, h("h1", {}, "Backends"), h("div", { class: "grow" }),
    h("button", { type: "button", onclick: load }, "Refresh")), ready, list);

  async function load() {
    try {
      const [{ backends }, stats] = await Promise.all([get("/v1/backends"), get("/v1/stats")]);
      replace(list, backends.length ? backends.map((b) => card(b, stats)) : h("p", {}, "No backends are registered."));
    } catch (err) {
      replace(list, errorBox(err));
    }
    fetch("/readyz").then((r) => r.json()).then((v) => {
      ready.textContent = v.status === "ready" ? "The server is ready to accept workloads." : "Not ready: " + (v.reason || v.status);
    }).catch(() => {});
  }
  load();
}

function card(b, stats) {
  const caps = b.capabilities || {};
  const d = caps.details || {};
  const row = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  const runtimes = (caps.runtimes || []).map((r) => h("li", {}, h("strong", {}, r), d[r] ? " " + d[r] : ""));
  const other = Object.entries(d).filter(([k]) => !RUNTIME_KEYS.includes(k)).sort(([a], [b]) => a.localeCompare(b));
  return h("section", { class: "card backend", dataset: { name: b.name, available: String(b.available) }, "aria-labelledby": "b-" + b.name },
    h("div", { class: "section-head" }, h("h2", { id: "b-" + b.name }, b.name),
      h("span", { class: "badge " + (b.available ? "ok" : "bad") }, b.available ? "available" : "unavailable")),
    b.available ? null : h("p", { class: "reason", role: "note" }, b.reason || "No reason given."),
    h("h3", {}, "Runtimes"), runtimes.length ? h("ul", { class: "chips" }, runtimes) : h("p", { class: "muted" }, "none"),
    h("h3", {}, "Limits"),
    h("dl", { class: "facts" },
      row("Isolation", caps.isolation || b.name),
      row("Max vCPUs", caps.max_cpus ?? "—"),
      row("Max memory", caps.max_mem_mb ? caps.max_mem_mb + " MiB" : "—"),
      row("Networking", caps.network ? "yes" : "no"),
      row("Server load", `${stats.running} running, ${stats.queued} queued · at most ${stats.max_concurrent} at once, queue of ${stats.queue_size}`)),
    fastStart(caps),
    other.length ? [h("h3", {}, "Details"), h("dl", { class: "facts" }, other.map(([k, v]) => row(k.replaceAll("_", " "), h("code", {}, v))))] : null);
}

// fastStart shows the warm pool's shelves and the template snapshots on disk.
function fastStart(caps) {
  const pool = caps.pool || [], snaps = caps.snapshots || [];
  if (!pool.length && !snaps.length) return null;
  const mib = (b) => (b / 1048576).toFixed(1) + " MiB";
  return [
    h("h3", {}, "Warm pool"),
    pool.length ? h("table", { class: "table", id: "pool" },
      h("thead", {}, h("tr", {}, ["Template", "Shape", "Idle", "Target (min–max)", "Hits", "Misses"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, pool.map((p) => h("tr", { dataset: { template: p.template } },
        h("td", {}, p.template), h("td", {}, `${p.cpus} vCPU · ${p.mem_mb} MiB`),
        h("td", { dataset: { k: "idle" } }, String(p.idle) + (p.filling ? ` (+${p.filling} starting)` : "")),
        h("td", {}, `${p.target} (${p.min}–${p.max})`), h("td", {}, String(p.hits)), h("td", {}, String(p.misses))))))
      : h("p", { class: "muted" }, "No warm pool (VULCAN_POOL=off)."),
    h("h3", {}, "Snapshots"),
    snaps.length ? h("table", { class: "table", id: "snapshots" },
      h("thead", {}, h("tr", {}, ["Template", "Shape", "State", "Built in", "Current"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, snaps.map((s) => h("tr", {},
        h("td", {}, s.template), h("td", {}, `${s.cpus} vCPU · ${s.mem_mb} MiB`),
        h("td", {}, mib(s.state_bytes) + (s.mapped ? " + mapped memory" : "")), h("td", {}, s.build_ms + " ms"),
        h("td", {}, s.current ? "yes" : "stale")))))
      : h("p", { class: "muted" }, "None yet: each template's is built after its first cold start."),
  ];
}
