// The metrics page: everything is drawn from the server's own data — /metrics for the
// microVM boot histogram and the gauges (sampled while the page is open), /v1/stats for
// totals and /v1/workloads for outcomes over time.
import { get } from "../api.js";
import { h, replace, ms, errorBox } from "../dom.js";
import { parseMetrics, histogram, sum } from "../prom.js";
import { barChart, stackedChart, lineChart, legend } from "../chart.js";

const REFRESH_MS = 3000;
const KEEP_SAMPLES = 200;
const OUTCOMES = ["completed", "failed", "killed"];

export function render(main) {
  document.title = "Metrics · Vulcan";
  const tiles = h("div", { class: "tiles", id: "tiles" });
  const boot = h("div", { id: "boot-chart", class: "chart-box" });
  const active = h("div", { id: "active-chart", class: "chart-box" });
  const outcomes = h("div", { id: "outcome-chart", class: "chart-box" });
  const durations = h("div", { id: "duration-chart", class: "chart-box" });
  const problem = h("div");
  const fig = (id, title, box, note) => h("figure", { class: "card", "aria-labelledby": id },
    h("figcaption", { id }, h("h2", {}, title), note ? h("p", { class: "muted" }, note) : null), box);
  replace(main, h("h1", {}, "Metrics"), problem, tiles,
    h("div", { class: "grid two" },
      fig("boot-h", "microVM boot time", boot, "From VMM start to the guest agent's hello (vulcan_microvm_boot_seconds)."),
      fig("active-h", "Active microVMs", active, "Up to 15 minutes back: running workloads from their run times, and vulcan_microvm_active_vms as sampled every 3 s."),
      fig("outcome-h", "Workloads by outcome over time", outcomes, "The newest 500 workloads, by when they finished."),
      fig("duration-h", "Run time", durations, "Over every workload that started and finished.")));

  const samples = [];
  let timer = null, stopped = false;
  const ctl = new AbortController();

  async function load() {
    try {
      const [text, stats, list] = await Promise.all([
        get("/metrics", { text: true, signal: ctl.signal }), get("/v1/stats", { signal: ctl.signal }),
        get("/v1/workloads?limit=500", { signal: ctl.signal })]);
      const m = parseMetrics(text);
      samples.push({ t: Date.now(), vms: sum(m, "vulcan_microvm_active_vms"), running: sum(m, "vulcan_workloads_running"), queued: sum(m, "vulcan_queue_depth") });
      if (samples.length > KEEP_SAMPLES) samples.shift();
      replace(problem);
      drawTiles(m, stats);
      drawBoot(m);
      drawActive(list.workloads);
      drawOutcomes(list.workloads);
      drawDurations(stats);
    } catch (err) {
      if (ctl.signal.aborted) return;
      replace(problem, errorBox(err));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  function drawTiles(m, stats) {
    const bootN = sum(m, "vulcan_microvm_boot_seconds_count"), bootS = sum(m, "vulcan_microvm_boot_seconds_sum");
    const tile = (k, v, label) => h("div", { class: "tile", dataset: { k } }, h("span", { class: "tile-v" }, v), h("span", { class: "tile-k" }, label));
    replace(tiles,
      tile("total", String(stats.total), "workloads"),
      tile("running", `${stats.running} / ${stats.max_concurrent}`, "running / slots"),
      tile("queued", String(stats.queued), "queued"),
      tile("vms", String(sum(m, "vulcan_microvm_active_vms")), "active microVMs"),
      tile("boot", bootN ? ms((1000 * bootS) / bootN) : "—", `mean boot (${bootN} boot${bootN === 1 ? "" : "s"})`));
  }

  function drawBoot(m) {
    const buckets = histogram(m, "vulcan_microvm_boot_seconds");
    const total = buckets.reduce((a, b) => a + b.count, 0);
    if (!buckets.length || !total) {
      replace(boot, h("p", { class: "empty" }, "No microVM has booted since the server started."));
      return;
    }
    const fmt = (v) => String(v) + " s";
    const bars = buckets.map((b) => ({
      label: b.hi === Infinity ? ">" + b.lo : String(b.hi), value: b.count,
      title: `${b.count} boot${b.count === 1 ? "" : "s"} took ${b.hi === Infinity ? "more than " + fmt(b.lo) : fmt(b.lo) + "–" + fmt(b.hi)}`,
    }));
    const words = bars.filter((b) => b.value).map((b) => b.title).join("; ");
    replace(boot, barChart(bars, { label: `Boot time distribution over ${total} boots: ${words}.`, cls: "c1", xTitle: "seconds, up to (histogram bucket)" }));
  }

  // History comes from the list (each workload ran from started_at to finished_at); the
  // gauge only from samples taken while this page is open.
  function drawActive(ws) {
    // The window fits the data: from two minutes (a fresh server) up to fifteen.
    const now = Date.now();
    const starts = ws.filter((w) => w.started_at).map((w) => Date.parse(w.started_at));
    const from = now - Math.min(15 * 60000, Math.max(2 * 60000, now - Math.min(now, ...starts)));
    const edges = [];
    for (const w of ws) {
      if (!w.started_at) continue;
      const a = Date.parse(w.started_at), b = w.finished_at ? Date.parse(w.finished_at) : now;
      if (b < from) continue;
      edges.push([Math.max(a, from), 1], [b, -1]);
    }
    edges.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    let n = 0;
    const running = [{ t: from, v: 0 }];
    for (const [t, d] of edges) {
      n += d;
      if (t <= now) running.push({ t, v: n });
    }
    running.push({ t: now, v: n });
    const vms = samples.filter((x) => x.t >= from).map((x) => ({ t: x.t, v: x.vms }));
    const last = samples[samples.length - 1];
    const peak = Math.max(...running.map((p) => p.v));
    replace(active,
      lineChart([{ cls: "c2", points: running }, { cls: "c1", points: vms }],
        { label: `Running workloads over the last ${Math.round((now - from) / 60000)} minutes, peaking at ${peak}; ${last.vms} microVMs active now.` }),
      legend([["c2", "running workloads (from their start and finish times)"], ["c1", "active microVMs (gauge, sampled here)"]]));
  }

  function drawOutcomes(ws) {
    const done = ws.filter((w) => w.finished_at && OUTCOMES.includes(w.status));
    if (!done.length) {
      replace(outcomes, h("p", { class: "empty" }, "No workload has finished yet."));
      return;
    }
    const times = done.map((w) => Date.parse(w.finished_at));
    const now = Date.now(), t0 = Math.min(...times);
    // Twelve columns over the span of the data, at least a minute each.
    const n = 12, step = Math.max(60000, Math.ceil((now - t0 + 1) / n));
    const start = now - n * step;
    const cols = Array.from({ length: n }, (_, i) => ({
      label: new Date(start + (i + 1) * step).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), parts: {},
    }));
    let older = 0;
    done.forEach((w, i) => {
      const c = Math.floor((times[i] - start) / step);
      if (c < 0) { older++; return; }
      const col = cols[Math.min(n - 1, c)];
      col.parts[w.status] = (col.parts[w.status] || 0) + 1;
    });
    const totals = OUTCOMES.map((k) => `${done.filter((w) => w.status === k).length} ${k}`).join(", ");
    replace(outcomes,
      stackedChart(cols, OUTCOMES, { label: `Finished workloads per ${Math.round(step / 60000)}-minute interval: ${totals}.` }),
      legend(OUTCOMES.map((k) => ["status-" + k, k])),
      older ? h("p", { class: "muted" }, `${older} older workload${older === 1 ? "" : "s"} not shown.`) : null);
  }

  function drawDurations(stats) {
    const d = stats.durations;
    if (!d || !d.count) {
      replace(durations, h("p", { class: "empty" }, "No workload has run to the end yet."));
      return;
    }
    const bars = [
      { label: "mean", value: d.avg_ms / 1000 }, { label: "p50", value: d.p50_ms / 1000 },
      { label: "p95", value: d.p95_ms / 1000 }, { label: "max", value: d.max_ms / 1000 },
      { label: "mean queue", value: d.avg_queue_ms / 1000 },
    ];
    replace(durations, barChart(bars, {
      label: `Run time over ${d.count} workloads: mean ${ms(d.avg_ms)}, median ${ms(d.p50_ms)}, p95 ${ms(d.p95_ms)}, max ${ms(d.max_ms)}.`,
      cls: "c2", integer: false, yFmt: (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0)) + " s",
    }), h("p", { class: "muted" }, `${d.count} workload${d.count === 1 ? "" : "s"}; by status: ` +
      Object.entries(stats.by_status || {}).map(([k, v]) => `${v} ${k}`).join(", ")));
  }

  load();
  return () => { stopped = true; clearTimeout(timer); ctl.abort(); };
}
