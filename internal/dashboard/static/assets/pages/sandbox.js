// A sandbox's page: its state (polled every 2 s while it lives, the time left counted
// down in between), a live terminal on the PTY WebSocket, a file browser (list, navigate,
// download, upload by drag and drop or a file chooser), its processes and its resource
// use (both polled every 5 s while it runs and the tab is visible), and Kill / Extend.
import { get, request, raw, token, ApiError } from "../api.js";
import { h, replace, stateBadge, time, left, bytes, announce, errorBox, SANDBOX_ENDED } from "../dom.js";
import * as terminal from "../terminal.js";
import { notebook } from "../notebook.js";

const STATE_MS = 2000;
const LIVE_MS = 5000;
const EXTEND = [["300", "5 min"], ["900", "15 min"], ["3600", "1 h"]];

export function render(main, { params }) {
  const id = params[0];
  const base = "/v1/sandboxes/" + encodeURIComponent(id);
  document.title = id + " · Vulcan";
  const ctl = new AbortController();
  let sb = null, stateTimer = null, liveTimer = null, tickTimer = null, term = null, cwd = "";

  const stateEl = h("span", { id: "state", role: "status", "aria-live": "polite" });
  const extendSel = h("select", { id: "extend-by", "aria-label": "Extend by" }, EXTEND.map(([v, l]) => h("option", { value: v }, "+" + l)));
  const extendBtn = h("button", { type: "button", id: "extend", onclick: extend }, "Extend");
  const killBtn = h("button", { type: "button", class: "danger", id: "kill", onclick: kill }, "Kill");
  const pauseBtn = h("button", { type: "button", id: "pause", onclick: () => lifecycle("pause", pauseBtn, "pausing…") }, "Pause");
  const resumeBtn = h("button", { type: "button", id: "resume", hidden: true, onclick: () => lifecycle("resume", resumeBtn, "resuming…") }, "Resume");
  const actionMsg = h("span", { class: "muted", id: "action-msg", "aria-live": "polite" });
  const controls = h("div", { class: "controls", id: "controls", hidden: true }, extendSel, extendBtn, pauseBtn, resumeBtn, killBtn);
  const facts = h("dl", { class: "facts", id: "facts" });
  const usage = h("dl", { class: "facts", id: "usage" });
  const problem = h("div");

  const termBox = h("div", { class: "terminal", id: "terminal" });
  const termState = h("span", { class: "muted", id: "term-state", "aria-live": "polite" });
  const reconnect = h("button", { type: "button", class: "small", id: "term-connect", hidden: true, onclick: connect }, "New terminal");

  const pathIn = h("input", { type: "text", id: "fs-path", "aria-label": "Directory", autocomplete: "off", spellcheck: "false" });
  const files = h("tbody");
  const fsMsg = h("p", { class: "muted", id: "fs-msg", "aria-live": "polite" });
  const upload = h("input", { type: "file", id: "upload", multiple: true, class: "visually-hidden", onchange: () => { send(upload.files); upload.value = ""; } });
  const fsCard = h("section", { class: "card dropzone-card", id: "files", "aria-labelledby": "files-h" },
    h("div", { class: "section-head" }, h("h2", { id: "files-h" }, "Files"),
      h("form", { class: "fs-nav", onsubmit: (e) => { e.preventDefault(); list(pathIn.value.trim() || "."); } },
        pathIn, h("button", { type: "submit", class: "small" }, "Go")),
      h("label", { for: "upload", class: "button small" }, "Upload…"), upload),
    h("div", { class: "table-wrap" }, h("table", { class: "list compact", id: "fs-list" },
      h("caption", { class: "visually-hidden" }, "Directory contents"),
      h("thead", {}, h("tr", {}, ["Name", "Size", "Mode", "Modified", ""].map((c) => h("th", { scope: "col" }, c)))), files)),
    h("p", { class: "hint" }, "Drop files anywhere on this card to upload them into the directory shown."),
    fsMsg);

  const procs = h("tbody");
  const procCard = h("section", { class: "card", "aria-labelledby": "procs-h" },
    h("div", { class: "section-head" }, h("h2", { id: "procs-h" }, "Processes"),
      h("button", { type: "button", class: "small", id: "procs-refresh", onclick: () => loadProcesses() }, "Refresh")),
    h("div", { class: "table-wrap" }, h("table", { class: "list compact", id: "processes" },
      h("caption", { class: "visually-hidden" }, "Running processes"),
      h("thead", {}, h("tr", {}, ["PID", "Tag", "Command", "User", "PTY", "Started"].map((c) => h("th", { scope: "col" }, c)))), procs)));

  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: "/sandboxes", "data-link": true }, "Sandboxes"), " / ", h("span", { class: "mono" }, id)),
    h("div", { class: "page-head" }, h("h1", {}, "Sandbox ", h("span", { class: "mono" }, id)), stateEl,
      h("div", { class: "grow" }), actionMsg, controls),
    problem,
    h("div", { class: "grid two" },
      h("section", { class: "card", "aria-labelledby": "facts-h" }, h("h2", { id: "facts-h" }, "Sandbox"), facts),
      h("section", { class: "card", "aria-labelledby": "usage-h" }, h("h2", { id: "usage-h" }, "Resource use"), usage)),
    h("section", { class: "card", "aria-labelledby": "term-h" },
      h("div", { class: "section-head" }, h("h2", { id: "term-h" }, "Terminal"), termState, h("div", { class: "grow" }), reconnect),
      termBox,
      h("p", { class: "hint" }, "Drawn by xterm.js (MIT: ",
        h("a", { href: "/assets/vendor/xterm.LICENSE.txt" }, "licence"), ", ",
        h("a", { href: "/assets/vendor/addon-fit.LICENSE.txt" }, "fit addon"), "). Resizing the window resizes the terminal.")),
    h("div", { class: "grid two" }, fsCard, procCard));

  const ended = () => !sb || SANDBOX_ENDED.includes(sb.state);

  let nb = null;
  function update(next) {
    const was = sb && sb.state;
    sb = next;
    if (!nb && sb.template === "code-interpreter") {
      nb = notebook(base);
      problem.after(nb);
    }
    stateEl.dataset.state = sb.state;
    replace(stateEl, stateBadge(sb.state));
    if (was && was !== sb.state) announce("Sandbox " + sb.state.replace("_", " "));
    controls.hidden = ended() || sb.state === "stopping";
    const paused = sb.state === "paused";
    pauseBtn.hidden = paused || sb.state !== "running";
    resumeBtn.hidden = !paused;
    extendBtn.hidden = extendSel.hidden = paused;
    drawFacts();
    if (ended()) {
      clearTimeout(stateTimer);
      clearTimeout(liveTimer);
      clearInterval(tickTimer);
      replace(usage, h("div", { class: "muted" }, "The sandbox has ended; its VM is gone."));
      replace(procs, h("tr", {}, h("td", { colspan: "6", class: "empty" }, "No processes: the sandbox has ended.")));
      fsMsg.textContent = "The sandbox has ended; its files went with its VM.";
      reconnect.hidden = true;
    }
  }

  function drawFacts() {
    const r = sb.resources || {}, md = Object.entries(sb.metadata || {}), vm = sb.vm || {};
    const row = (k, v, key) => [h("dt", {}, k), h("dd", { dataset: key ? { k: key } : {} }, v)];
    replace(facts,
      row("Template", sb.template, "template"),
      row("Resources", `${r.cpus} vCPU · ${r.mem_mb} MiB`, "resources"),
      row("Network", sb.network || "none"),
      row("Created", time(sb.created_at)),
      sb.ended_at ? row("Ended", time(sb.ended_at))
        : sb.state === "paused" ? row("Time left", "its timeout counts again from the resume", "left")
        : row("Time left", left(sb.expires_at), "left"),
      ended() || sb.state === "paused" ? null : row("Expires", time(sb.expires_at), "expires"),
      md.length ? row("Metadata", h("ul", { class: "chips small" }, md.map(([k, v]) => h("li", {}, h("span", { class: "mono" }, k), "=", v))), "metadata") : null,
      sb.state === "paused" && vm.paused_at ? row("Paused", time(vm.paused_at), "paused") : null,
      vm.start ? row("Started from", vm.start + (vm.start_ms ? ` in ${vm.start_ms} ms` : ""), "start") : null,
      vm.vm_id ? row("VM", h("span", { class: "mono" }, vm.vm_id + (vm.vmm ? ` (${vm.vmm}${vm.accel ? ", " + vm.accel : ""})` : ""))) : null,
      sb.error ? row("Error", h("span", { class: "err" }, sb.error), "error") : null);
  }

  async function poll() {
    clearTimeout(stateTimer);
    try {
      update(await get(base, { signal: ctl.signal }));
      replace(problem);
    } catch (err) {
      if (ctl.signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) {
        stop();
        replace(main, h("h1", {}, "Sandbox not found"), h("p", {}, "No sandbox has the id ", h("code", {}, id), ". ",
          h("a", { href: "/sandboxes", "data-link": true }, "Back to the list"), "."));
        return;
      }
      replace(problem, errorBox(err));
    }
    if (!ctl.signal.aborted && !ended()) stateTimer = setTimeout(poll, STATE_MS);
  }

  // The guest's own numbers and process table, while it runs and someone looks.
  async function live() {
    clearTimeout(liveTimer);
    if (!document.hidden && sb && sb.state === "running") await Promise.all([loadMetrics(), loadProcesses()]);
    if (!ctl.signal.aborted && !ended()) liveTimer = setTimeout(live, LIVE_MS);
  }

  async function loadMetrics() {
    try {
      const m = await get(base + "/metrics", { signal: ctl.signal });
      const pct = (a, b) => (b ? ` (${Math.round((100 * a) / b)} %)` : "");
      const row = (k, v, key) => [h("dt", {}, k), h("dd", { dataset: { k: key } }, v)];
      replace(usage,
        row("CPU", `${m.cpu_used_pct.toFixed(1)} % of ${m.cpu_count} vCPU`, "cpu"),
        row("Memory", `${bytes(m.mem_used)} of ${bytes(m.mem_total)}${pct(m.mem_used, m.mem_total)}`, "mem"),
        row("Disk", `${bytes(m.disk_used)} of ${bytes(m.disk_total)}${pct(m.disk_used, m.disk_total)}`, "disk"),
        row("Sampled", time(new Date(m.timestamp_unix_ms).toISOString()), "sampled"));
    } catch (err) {
      if (!ctl.signal.aborted && !ended()) replace(usage, h("div", { class: "muted" }, "Could not sample: " + err.message));
    }
  }

  async function loadProcesses() {
    if (ended()) return;
    try {
      const { processes } = await get(base + "/processes", { signal: ctl.signal });
      processes.sort((a, b) => a.pid - b.pid);
      const rows = processes.map((p) => {
        const s = p.spec || {};
        return h("tr", { dataset: { pid: String(p.pid) } },
          h("td", { class: "num" }, String(p.pid)),
          h("td", {}, p.tag || "—"),
          h("td", { class: "mono cmd", title: s.shell || (s.argv || []).join(" ") }, s.shell || (s.argv || []).join(" ")),
          h("td", {}, s.user || "user"),
          h("td", {}, s.pty ? `${s.pty.cols}×${s.pty.rows}` : "—"),
          h("td", {}, p.start_unix_ms ? time(new Date(p.start_unix_ms).toISOString()) : "—"));
      });
      replace(procs, rows.length ? rows : h("tr", {}, h("td", { colspan: "6", class: "empty" }, "No processes running.")));
    } catch (err) {
      if (!ctl.signal.aborted && !ended()) replace(procs, h("tr", {}, h("td", { colspan: "6", class: "empty" }, "Could not list: " + err.message)));
    }
  }

  // Files. Paths are absolute once known; "." is the user's home, which stat resolves.
  const parent = (p) => (p === "/" ? "/" : p.replace(/\/[^/]+\/?$/, "") || "/");
  const join = (dir, name) => (dir.endsWith("/") ? dir : dir + "/") + name;
  const fileURL = (p) => `${base}/files?path=${encodeURIComponent(p)}`;

  async function list(path) {
    fsMsg.textContent = "Loading…";
    try {
      const dir = await get(`${base}/fs/stat?path=${encodeURIComponent(path)}`, { signal: ctl.signal });
      if (dir.type !== "dir") throw new Error(dir.path + " is not a directory");
      const { entries } = await get(`${base}/fs?path=${encodeURIComponent(dir.path)}&depth=1`, { signal: ctl.signal });
      cwd = dir.path;
      pathIn.value = cwd;
      entries.sort((a, b) => (a.type === "dir") !== (b.type === "dir") ? (a.type === "dir" ? -1 : 1) : a.name.localeCompare(b.name));
      const rows = entries.map((e) => h("tr", { dataset: { name: e.name, type: e.type } },
        h("td", {}, e.type === "dir"
          ? h("button", { type: "button", class: "linkish", onclick: () => list(e.path) }, e.name + "/")
          : h("span", { class: "mono" }, e.name + (e.type === "symlink" ? " → " + (e.target || "?") : ""))),
        h("td", { class: "num" }, e.type === "file" ? bytes(e.size) : "—"),
        h("td", { class: "mono" }, (e.mode & 0o7777).toString(8).padStart(4, "0")),
        h("td", {}, e.mtime_unix_ms ? time(new Date(e.mtime_unix_ms).toISOString()) : "—"),
        h("td", {}, e.type === "file" ? downloadLink(e) : null)));
      if (cwd !== "/") rows.unshift(h("tr", { dataset: { name: "..", type: "dir" } },
        h("td", {}, h("button", { type: "button", class: "linkish", onclick: () => list(parent(cwd)) }, "../")), h("td"), h("td"), h("td"), h("td")));
      if (!entries.length) rows.push(h("tr", {}, h("td", { colspan: "5", class: "empty" }, "Empty directory.")));
      replace(files, rows);
      fsMsg.textContent = `${entries.length} entr${entries.length === 1 ? "y" : "ies"} in ${cwd}`;
    } catch (err) {
      if (!ctl.signal.aborted) fsMsg.textContent = ended() ? "The sandbox has ended." : "Could not list " + path + ": " + err.message;
    }
  }

  // Without a token the browser downloads the link itself, streaming; with one it must
  // fetch (a link cannot carry the header) and hand over a blob.
  function downloadLink(e) {
    return h("a", { href: fileURL(e.path), download: e.name, class: "small", onclick: async (ev) => {
      if (!token()) return;
      ev.preventDefault();
      try {
        const blob = await (await raw("GET", fileURL(e.path), { signal: ctl.signal })).blob();
        const url = URL.createObjectURL(blob);
        const a = h("a", { href: url, download: e.name, hidden: true });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (err) {
        fsMsg.textContent = "Download failed: " + err.message;
      }
    } }, "Download");
  }

  // Uploads go one at a time, the File as the body: the browser streams it.
  async function send(list_) {
    const chosen = [...(list_ || [])];
    if (!chosen.length || !cwd) return;
    let done = 0;
    for (const f of chosen) {
      fsMsg.textContent = `Uploading ${f.name} (${bytes(f.size)})…`;
      try {
        await raw("PUT", fileURL(join(cwd, f.name)), { body: f, headers: { "Content-Type": "application/octet-stream" }, signal: ctl.signal });
        done++;
      } catch (err) {
        if (ctl.signal.aborted) return;
        fsMsg.textContent = `Uploading ${f.name} failed: ${err.message}`;
        await list(cwd);
        fsMsg.textContent = `Uploading ${f.name} failed: ${err.message}`;
        return;
      }
    }
    await list(cwd);
    fsMsg.textContent = `Uploaded ${done} file${done === 1 ? "" : "s"} to ${cwd}.`;
    announce(fsMsg.textContent);
  }
  let depth = 0; // dragenter/leave fire for every child crossed
  fsCard.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; fsCard.classList.add("over"); });
  fsCard.addEventListener("dragover", (e) => e.preventDefault());
  fsCard.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; fsCard.classList.remove("over"); } });
  fsCard.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    fsCard.classList.remove("over");
    if (!ended() && e.dataTransfer) send(e.dataTransfer.files);
  });

  // The terminal: a login shell on a PTY, sized to the box.
  async function connect() {
    if (term) { term.close(); term = null; }
    replace(termBox);
    reconnect.hidden = true;
    termBox.dataset.state = "loading";
    try {
      term = await terminal.open(termBox, id, { onState: (s, detail) => {
        termBox.dataset.state = s;
        termState.textContent = s === "exited" ? `exited with code ${detail.exit_code}` : s === "closed" ? "disconnected" : s === "error" ? detail.error : s;
        if ((s === "exited" || s === "closed" || s === "error") && !ended()) reconnect.hidden = false;
      } });
    } catch (err) {
      termBox.dataset.state = "unavailable";
      termState.textContent = "";
      replace(termBox, h("div", { class: "terminal-missing", id: "term-missing" },
        h("p", {}, "The terminal needs xterm.js, which this build did not embed (", h("code", {}, err.message), ")."),
        h("p", {}, "It is installed from npm at build time: run ", h("code", {}, "make"), " (or ", h("code", {}, "make dashboard-vendor"),
          ") and rebuild. ", h("code", {}, "vulcan shell " + id), " works meanwhile.")));
    }
  }

  async function kill() {
    killBtn.disabled = true;
    actionMsg.textContent = "killing…";
    try {
      update(await request("DELETE", base));
      actionMsg.textContent = "";
    } catch (err) {
      actionMsg.textContent = err.message;
      poll();
    } finally {
      killBtn.disabled = false;
    }
  }

  // Pause saves the sandbox and stops its VM; Resume brings it back as it was.
  async function lifecycle(action, btn, doing) {
    btn.disabled = true;
    actionMsg.textContent = doing;
    try {
      update(await request("POST", base + "/" + action, { body: {} }));
      const vm = sb.vm || {};
      actionMsg.textContent = action === "pause" ? `Paused in ${vm.pause_ms} ms.` : `Resumed in ${vm.start_ms} ms.`;
      if (action === "resume") { poll(); live(); }
    } catch (err) {
      actionMsg.textContent = err.message;
      poll();
    } finally {
      btn.disabled = false;
    }
  }

  // Extend sets the timeout to what is left plus the chosen amount (the API's timeout
  // counts from now).
  async function extend() {
    extendBtn.disabled = true;
    const leftS = Math.max(0, Math.round((Date.parse(sb.expires_at) - Date.now()) / 1000));
    const want = Math.min(86400, leftS + Number(extendSel.value));
    try {
      update(await request("POST", base + "/timeout", { body: { timeout_s: want } }));
      actionMsg.textContent = "Extended: expires " + new Date(sb.expires_at).toLocaleTimeString() + ".";
    } catch (err) {
      actionMsg.textContent = err.message;
    } finally {
      extendBtn.disabled = false;
    }
  }

  function stop() {
    clearTimeout(stateTimer);
    clearTimeout(liveTimer);
    clearInterval(tickTimer);
    ctl.abort();
    if (term) { term.close(); term = null; }
  }

  poll().then(() => {
    if (!sb) return;
    if (ended()) {
      replace(termBox, h("p", { class: "muted terminal-missing" }, "The sandbox has ended: no terminal."));
      return;
    }
    tickTimer = setInterval(() => {
      const el = facts.querySelector("[data-k=left]");
      if (el && sb && !ended() && sb.state !== "paused") el.textContent = left(sb.expires_at);
    }, 1000);
    connect();
    list(".");
    live();
  });
  return stop;
}
