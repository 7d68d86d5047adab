// A workload's page. Three sources keep it live, each for what it is best at:
//   - the SSE log stream (history first, then live lines, then a "done" event with the
//     final state but not the output, which the lines carried), read with fetch so the
//     bearer token can be sent; at "done" the page fetches the finished workload;
//   - a one-second poll of the workload while it is unfinished, for pending → running
//     and for metadata the stream does not carry;
//   - the stored history once it has finished, merged by seq, so lines the stream missed
//     (a reconnect, a tab asleep) appear exactly once.
import { get, request, streamEvents, ApiError } from "../api.js";
import { h, replace, statusBadge, ms, time, announce, errorBox, TERMINAL } from "../dom.js";

const POLL_MS = 1000;

const VM_FIELDS = [
  ["vm_id", "VM id"], ["vmm", "VMM"], ["accel", "Acceleration"], ["boot_ms", "Boot time"], ["cid", "vsock CID"],
  ["guest_ip", "Guest IP"], ["tap", "TAP device"], ["kernel_version", "Kernel"], ["image_runtime", "Image runtime"],
  ["image_sha256", "Image sha256"], ["agent_version", "Guest agent"], ["vmm_pid", "VMM pid"],
];

export function render(main, { params }) {
  const id = params[0];
  document.title = id + " · Vulcan";
  const ctl = new AbortController();
  let w = null, timer = null, historyMerged = false;
  const seen = new Map(); // seq → <li>

  const statusEl = h("span", { id: "status", role: "status", "aria-live": "polite" });
  const killBtn = h("button", { type: "button", class: "danger", id: "kill", hidden: true, onclick: kill }, "Kill");
  const killMsg = h("span", { class: "muted", id: "kill-msg", "aria-live": "polite" });
  const timeline = h("ol", { class: "timeline", "aria-label": "Lifecycle" });
  const facts = h("dl", { class: "facts", id: "facts" });
  const vm = h("dl", { class: "facts", id: "microvm" });
  const output = h("div", { id: "output" });
  const logList = h("ol", { class: "log", id: "log", "aria-label": "Log lines" });
  const logState = h("span", { class: "muted", id: "log-state" }, "connecting…");
  const logBox = h("div", { class: "log-box", tabindex: "0", role: "region", "aria-label": "Log" }, logList);
  const problem = h("div");

  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: "/", "data-link": true }, "Workloads"), " / ", h("span", { class: "mono" }, id)),
    h("div", { class: "page-head" }, h("h1", {}, "Workload ", h("span", { class: "mono" }, id)), statusEl,
      h("div", { class: "grow" }), killMsg, killBtn),
    problem, timeline,
    h("div", { class: "grid two" },
      h("section", { class: "card", "aria-labelledby": "facts-h" }, h("h2", { id: "facts-h" }, "Run"), facts),
      h("section", { class: "card", "aria-labelledby": "vm-h" }, h("h2", { id: "vm-h" }, "microVM"), vm)),
    h("section", { class: "card", "aria-labelledby": "log-h" },
      h("div", { class: "section-head" }, h("h2", { id: "log-h" }, "Log"), logState,
        h("span", { class: "legend" }, h("span", { class: "stream stream-stdout" }, "stdout"), h("span", { class: "stream stream-stderr" }, "stderr"),
          h("span", { class: "stream stream-system" }, "system"))),
      logBox),
    h("section", { class: "card", "aria-labelledby": "out-h" }, h("h2", { id: "out-h" }, "Output"), output));

  function update(next) {
    const was = w && w.status;
    w = next;
    statusEl.dataset.status = w.status;
    replace(statusEl, statusBadge(w.status));
    if (was && was !== w.status) announce("Workload " + w.status);
    killBtn.hidden = TERMINAL.includes(w.status);
    drawTimeline();
    drawFacts();
    drawVM();
    drawOutput();
    if (TERMINAL.includes(w.status)) {
      clearTimeout(timer);
      mergeHistory();
    }
  }

  function drawTimeline() {
    const end = TERMINAL.includes(w.status) ? w.status : "finished";
    const steps = [
      ["pending", w.created_at, true],
      ["running", w.started_at, !!w.started_at],
      [end, w.finished_at, !!w.finished_at],
    ];
    replace(timeline, steps.map(([name, at, done]) => h("li", {
      class: (done ? "done " : "") + (w.status === name ? "current status-" + name : ""),
      "aria-current": w.status === name ? "step" : null,
    }, h("span", { class: "step" }, name), h("span", { class: "at" }, at ? time(at) : "—"))));
  }

  function drawFacts() {
    const r = w.resources || {};
    const row = (k, v, key) => [h("dt", {}, k), h("dd", { dataset: key ? { k: key } : {} }, v)];
    replace(facts,
      row("Runtime", w.runtime), row("Isolation", w.isolation + (w.backend && w.backend !== w.isolation ? ` (${w.backend})` : "")),
      row("Entrypoint", h("code", {}, w.entrypoint || "—")),
      row("Resources", `${r.cpus} vCPU · ${r.mem_mb} MiB · ${r.timeout_s} s timeout`),
      row("Network", w.network || "none"),
      row("Exit code", w.exit_code === null ? "—" : String(w.exit_code), "exit"),
      row("Queued", ms(w.queue_ms)),
      row("Ran", TERMINAL.includes(w.status) ? ms(w.duration_ms) : w.started_at ? "running…" : "—", "duration"),
      w.error ? row("Error", h("span", { class: "err" }, w.error), "error") : null,
      w.truncated ? row("Output", "truncated at the server's output limit") : null);
  }

  function drawVM() {
    const md = w.metadata || {};
    const rows = VM_FIELDS.filter(([k]) => md[k] !== undefined && md[k] !== "").map(([k, label]) => [
      h("dt", {}, label),
      h("dd", { class: k.endsWith("id") || k.includes("sha") ? "mono" : "", dataset: { k } }, k === "boot_ms" ? ms(Number(md[k])) : md[k]),
    ]);
    if (!md.guest_ip) rows.push([h("dt", {}, "Guest IP"), h("dd", { class: "muted" }, w.network === "none" ? "none (no network)" : "—")]);
    if (!md.vm_id) {
      replace(vm, h("div", { class: "muted" }, TERMINAL.includes(w.status) ? "No microVM details were recorded." : "Details appear when the VM has booted and the run ends."));
      return;
    }
    replace(vm, rows);
  }

  function drawOutput() {
    if (!TERMINAL.includes(w.status)) {
      replace(output, h("p", { class: "muted" }, "The captured stdout and stderr appear here when the workload ends; the log above is live."));
      return;
    }
    const block = (name, text, cls) => [h("h3", {}, name), text
      ? h("pre", { class: cls, id: name, tabindex: "0" }, text)
      : h("p", { class: "none", id: name }, "nothing on " + name)];
    replace(output, block("stdout", w.stdout, "out"), block("stderr", w.stderr, "out err"));
  }

  function addLine(l) {
    if (seen.has(l.seq)) return;
    const li = h("li", { class: "line stream-" + l.stream, dataset: { seq: String(l.seq), stream: l.stream } },
      h("span", { class: "seq", "aria-hidden": "true" }, String(l.seq)),
      h("span", { class: "stream stream-" + l.stream }, l.stream),
      h("span", { class: "text" }, l.text));
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
    // Lines arrive in order; only a history merge can fill a gap behind the newest.
    let after = null;
    for (const [seq, el] of seen) if (seq > l.seq && (!after || Number(after.dataset.seq) > seq)) after = el;
    seen.set(l.seq, li);
    logList.insertBefore(li, after);
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    logState.textContent = `${seen.size} line${seen.size === 1 ? "" : "s"}` + (TERMINAL.includes(w && w.status) ? "" : " · live");
  }

  async function mergeHistory() {
    if (historyMerged) return;
    historyMerged = true;
    try {
      // The history comes in pages (at most 10,000 lines each).
      for (let after = 0; ;) {
        const page = await get(`/v1/workloads/${id}/logs/history?limit=10000&after=${after}`, { signal: ctl.signal });
        for (const l of page.lines) addLine(l);
        if (!page.more || page.next_after <= after) break;
        after = page.next_after;
      }
      logState.textContent = `${seen.size} line${seen.size === 1 ? "" : "s"}`;
      logList.dataset.complete = "true";
    } catch (err) {
      if (!ctl.signal.aborted) logState.textContent = "could not load the stored log: " + err.message;
    }
  }

  async function poll() {
    clearTimeout(timer);
    try {
      update(await get("/v1/workloads/" + id, { signal: ctl.signal }));
    } catch (err) {
      if (ctl.signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) {
        replace(main, h("h1", {}, "Workload not found"), h("p", {}, "No workload has the id ", h("code", {}, id), ". ",
          h("a", { href: "/", "data-link": true }, "Back to the list"), "."));
        ctl.abort();
        return;
      }
      replace(problem, errorBox(err));
    }
    if (!ctl.signal.aborted && !(w && TERMINAL.includes(w.status))) timer = setTimeout(poll, POLL_MS);
  }

  async function follow() {
    try {
      await streamEvents(`/v1/workloads/${id}/logs`, (ev) => {
        if (ev.event === "message") addLine(JSON.parse(ev.data));
        else if (ev.event === "done") poll(); // the event omits the assembled output
      }, { signal: ctl.signal, until: ["done"], onError: () => { logState.textContent = "reconnecting…"; } });
    } catch (err) {
      if (!ctl.signal.aborted) logState.textContent = "log stream refused: " + err.message;
    }
  }

  async function kill() {
    killBtn.disabled = true;
    killMsg.textContent = "killing…";
    try {
      update(await request("DELETE", "/v1/workloads/" + id));
      killMsg.textContent = "";
    } catch (err) {
      killMsg.textContent = err.code === "already_finished" ? "It had already finished." : err.message;
      poll();
    } finally {
      killBtn.disabled = false;
    }
  }

  poll().then(() => { if (w && !TERMINAL.includes(w.status)) follow(); });
  return () => { clearTimeout(timer); ctl.abort(); };
}
