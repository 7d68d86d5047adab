// The new-workload form. Client-side checks catch what the form can know (required
// fields, number syntax, env names, the archive's gzip magic); everything else is the
// server's call, and its 400 names the field (error.field) so the message lands next to
// the right control either way.
import { get, request, ApiError } from "../api.js";
import { h, replace, announce } from "../dom.js";

const STARTERS = {
  python: `import os
import sys

name = sys.stdin.read().strip() or "world"
print(f"Hello, {name}, from a microVM!")
print("GREETING is", os.environ.get("GREETING", "unset"), file=sys.stderr)
`,
  node: `const name = require("fs").readFileSync(0, "utf8").trim() || "world";
console.log(\`Hello, \${name}, from a microVM!\`);
console.error("GREETING is", process.env.GREETING ?? "unset");
`,
  go: `package main

import (
	"bufio"
	"fmt"
	"os"
)

func main() {
	name := "world"
	if s := bufio.NewScanner(os.Stdin); s.Scan() && s.Text() != "" {
		name = s.Text()
	}
	fmt.Printf("Hello, %s, from a microVM!\\n", name)
	fmt.Fprintln(os.Stderr, "GREETING is", os.Getenv("GREETING"))
}
`,
};
const ENTRYPOINTS = { python: "main.py", node: "index.js", go: "main.go" };
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
// The request body is capped at 16 MiB and the archive travels as base64 (4/3 larger).
const MAX_ARCHIVE = 12 * 1024 * 1024;

// Server field names → the id of the control that shows the message.
const FIELD_IDS = {
  runtime: "runtime", isolation: "isolation", code: "code", code_archive: "archive", entrypoint: "entrypoint",
  input: "stdin", "resources.cpus": "cpus", "resources.mem_mb": "mem", "resources.timeout_s": "timeout", network: "network",
};

export function render(main, { navigate }) {
  document.title = "New workload · Vulcan";
  let limits = { cpus: 8, mem: 8192, network: true };
  let envSeq = 0;

  const field = (id, label, control, hint) => h("div", { class: "field", id: id + "-field" },
    h("label", { for: id }, label), control,
    hint ? h("p", { class: "hint", id: id + "-hint" }, hint) : null,
    h("p", { class: "field-error", id: id + "-error", hidden: true }));
  const described = (id, hint) => ({ id, name: id, "aria-describedby": (hint ? id + "-hint " : "") + id + "-error" });

  const runtime = h("select", described("runtime"), ["python", "node", "go"].map((r) => h("option", { value: r }, r)));
  const isolation = h("select", described("isolation", true),
    h("option", { value: "auto" }, "auto"), h("option", { value: "microvm" }, "microvm"));
  const code = h("textarea", { ...described("code", true), rows: "14", spellcheck: "false", autocapitalize: "off", class: "code", value: STARTERS.python });
  const archive = h("input", { ...described("archive", true), type: "file", accept: ".tar.gz,.tgz,application/gzip" });
  const dropName = h("span", { class: "drop-name" }, "No file chosen");
  const drop = h("div", { class: "dropzone", id: "dropzone" },
    h("p", {}, "Drag a ", h("code", {}, ".tar.gz"), " here, or ", h("label", { for: "archive", class: "link" }, "choose a file"), "."),
    archive, dropName);
  const entrypoint = h("input", { ...described("entrypoint", true), type: "text", placeholder: ENTRYPOINTS.python, autocomplete: "off", spellcheck: "false" });
  const stdin = h("textarea", { ...described("stdin", true), rows: "3", spellcheck: "false" });
  const cpus = h("input", { ...described("cpus"), type: "number", inputmode: "numeric", min: "1", step: "1", value: "1" });
  const mem = h("input", { ...described("mem", true), type: "number", inputmode: "numeric", step: "64", value: "256" });
  const timeout = h("input", { ...described("timeout", true), type: "number", inputmode: "numeric", min: "1", step: "1", value: "60" });
  const network = h("select", described("network", true),
    h("option", { value: "none" }, "none — no network interface"),
    h("option", { value: "host" }, "host — the host's bridge only"),
    h("option", { value: "egress" }, "egress — NAT to the internet"));
  const envRows = h("div", { class: "env-rows" });
  const formError = h("div", { class: "alert", role: "alert", hidden: true, id: "form-error" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit" }, "Run workload");

  const inlineRadio = h("input", { type: "radio", name: "source", id: "source-inline", value: "inline", checked: true });
  const archiveRadio = h("input", { type: "radio", name: "source", id: "source-archive", value: "archive" });
  const inlinePanel = h("div", { id: "inline-panel" },
    field("code", "Code", code, "Tab indents. Press Esc, then Tab, to move on from the editor."));
  const archivePanel = h("div", { id: "archive-panel", hidden: true },
    field("archive", "Archive", drop, "A gzip-compressed tar of your project, up to 12 MiB."),
    field("entrypoint", "Entrypoint", entrypoint, "The file to run, relative to the archive's root. Default: main.py."));

  const form = h("form", { class: "card form", novalidate: true, "aria-labelledby": "new-title" },
    h("div", { class: "row" },
      field("runtime", "Runtime", runtime),
      field("isolation", "Isolation", isolation, "auto picks the strongest available backend.")),
    h("fieldset", { class: "source" }, h("legend", {}, "Code source"),
      h("div", { class: "radios" },
        h("label", { for: "source-inline" }, inlineRadio, " Inline code"),
        h("label", { for: "source-archive" }, archiveRadio, " Upload an archive")),
      inlinePanel, archivePanel),
    field("stdin", "Standard input", stdin, "Sent to the program's stdin as text. Optional."),
    h("fieldset", { class: "env" }, h("legend", {}, "Environment variables"), envRows,
      h("button", { type: "button", class: "small", id: "env-add", onclick: () => addEnv("", "", true) }, "+ Add variable")),
    h("fieldset", {}, h("legend", {}, "Resources"),
      h("div", { class: "row three" },
        field("cpus", "vCPUs", cpus),
        field("mem", "Memory (MiB)", mem, "At least 128."),
        field("timeout", "Timeout (s)", timeout, "Killed after this long."))),
    field("network", "Network", network, "What the guest may reach."),
    formError,
    h("div", { class: "actions" }, submit, h("a", { href: "/", "data-link": true, class: "button" }, "Cancel")));

  replace(main, h("h1", { id: "new-title" }, "New workload"), form);

  function addEnv(name, value, focus) {
    const n = ++envSeq;
    const nameIn = h("input", { id: "env-name-" + n, type: "text", value: name, autocomplete: "off", spellcheck: "false", class: "env-name", "aria-describedby": "env-name-" + n + "-error" });
    const valueIn = h("input", { id: "env-value-" + n, type: "text", value, autocomplete: "off", spellcheck: "false", class: "env-value" });
    const row = h("div", { class: "env-row" },
      h("div", { class: "field" }, h("label", { for: nameIn.id }, "Name"), nameIn,
        h("p", { class: "field-error", id: nameIn.id + "-error", hidden: true })),
      h("div", { class: "field" }, h("label", { for: valueIn.id }, "Value"), valueIn),
      h("button", { type: "button", class: "small remove", "aria-label": "Remove variable " + n, onclick: () => {
        row.remove();
        document.getElementById("env-add").focus();
      } }, "Remove"));
    envRows.append(row);
    if (focus) nameIn.focus();
  }
  addEnv("GREETING", "hello", false);

  // Switching runtime swaps the starter, unless the user has written their own code.
  runtime.addEventListener("change", () => {
    if (Object.values(STARTERS).includes(code.value) || code.value.trim() === "") code.value = STARTERS[runtime.value];
    entrypoint.placeholder = ENTRYPOINTS[runtime.value];
    document.getElementById("entrypoint-hint").textContent =
      `The file to run, relative to the archive's root. Default: ${ENTRYPOINTS[runtime.value]}.`;
  });
  const showSource = () => {
    inlinePanel.hidden = !inlineRadio.checked;
    archivePanel.hidden = inlineRadio.checked;
  };
  inlineRadio.addEventListener("change", showSource);
  archiveRadio.addEventListener("change", showSource);

  // The editor keeps Tab for indentation; Esc hands the next Tab back to the page.
  let escaped = false;
  code.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { escaped = true; return; }
    if (e.key !== "Tab" || escaped || e.ctrlKey || e.altKey || e.metaKey) { escaped = false; return; }
    e.preventDefault();
    const indent = runtime.value === "go" ? "\t" : runtime.value === "node" ? "  " : "    ";
    const { selectionStart: a, selectionEnd: b, value } = code;
    if (e.shiftKey) {
      const lineStart = value.lastIndexOf("\n", a - 1) + 1;
      const lead = value.slice(lineStart).match(/^(\t| {1,4})/);
      if (lead) {
        code.setRangeText("", lineStart, lineStart + lead[0].length, "preserve");
        code.setSelectionRange(Math.max(lineStart, a - lead[0].length), Math.max(lineStart, b - lead[0].length));
      }
    } else {
      code.setRangeText(indent, a, b, "end");
    }
  });
  code.addEventListener("blur", () => { escaped = false; });

  // Drag and drop onto the zone sets the file input, so one code path reads the file.
  const chosen = () => {
    const f = archive.files[0];
    dropName.textContent = f ? `${f.name} (${(f.size / 1024).toFixed(1)} KiB)` : "No file chosen";
    if (f) clearError("archive");
  };
  archive.addEventListener("change", chosen);
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      archive.files = e.dataTransfer.files;
      chosen();
    }
  });

  for (const el of [runtime, isolation, code, entrypoint, stdin, cpus, mem, timeout, network]) {
    el.addEventListener("input", () => clearError(el.id));
  }
  envRows.addEventListener("input", (e) => { if (e.target.classList.contains("env-name")) clearError(e.target.id); });

  function setError(id, message) {
    const el = document.getElementById(id), msg = document.getElementById(id + "-error");
    if (!el || !msg) return false;
    msg.textContent = message;
    msg.hidden = false;
    el.setAttribute("aria-invalid", "true");
    return true;
  }
  function clearError(id) {
    const el = document.getElementById(id), msg = document.getElementById(id + "-error");
    if (el) el.removeAttribute("aria-invalid");
    if (msg) { msg.hidden = true; msg.textContent = ""; }
  }
  function clearAll() {
    for (const el of form.querySelectorAll("[aria-invalid]")) clearError(el.id);
    formError.hidden = true;
  }
  function focusFirstError() {
    const bad = form.querySelector("[aria-invalid=true]");
    if (bad) (bad.type === "file" ? document.getElementById("dropzone") : bad).scrollIntoView({ block: "center" });
    if (bad) bad.focus();
  }

  function intField(el, label, min, max) {
    const v = el.value.trim();
    if (v === "") return 0; // the server's default
    if (!/^\d+$/.test(v)) { setError(el.id, `${label} must be a whole number.`); return null; }
    const n = Number(v);
    if (min !== null && n < min) { setError(el.id, `${label} must be at least ${min}.`); return null; }
    if (max !== null && n > max) { setError(el.id, `${label} must be at most ${max} on this server.`); return null; }
    return n;
  }

  async function buildSpec() {
    let ok = true;
    const spec = { runtime: runtime.value, isolation: isolation.value, network: network.value, resources: {} };
    if (inlineRadio.checked) {
      if (code.value.trim() === "") { setError("code", "Write some code to run."); ok = false; }
      spec.code = code.value;
    } else {
      const f = archive.files[0];
      if (!f) { setError("archive", "Choose a .tar.gz archive, or switch to inline code."); ok = false; }
      else if (f.size > MAX_ARCHIVE) { setError("archive", "The archive is larger than 12 MiB."); ok = false; }
      else {
        const bytes = new Uint8Array(await f.arrayBuffer());
        if (bytes[0] !== 0x1f || bytes[1] !== 0x8b) { setError("archive", `${f.name} is not gzip-compressed; upload a .tar.gz.`); ok = false; }
        else spec.code_archive = base64(bytes);
      }
      if (entrypoint.value.trim()) spec.entrypoint = entrypoint.value.trim();
    }
    if (stdin.value !== "") spec.input = stdin.value;
    const env = {};
    for (const row of envRows.querySelectorAll(".env-row")) {
      const nameIn = row.querySelector(".env-name"), name = nameIn.value.trim(), value = row.querySelector(".env-value").value;
      if (name === "" && value === "") continue;
      if (!ENV_NAME.test(name)) { setError(nameIn.id, "Use letters, digits and _, not starting with a digit."); ok = false; continue; }
      if (name in env) { setError(nameIn.id, `${name} is set twice.`); ok = false; continue; }
      env[name] = value;
    }
    if (Object.keys(env).length) spec.env = env;
    const c = intField(cpus, "vCPUs", 1, limits.cpus), m = intField(mem, "Memory", null, limits.mem), t = intField(timeout, "Timeout", 1, null);
    if (c === null || m === null || t === null) ok = false;
    spec.resources = { cpus: c || 0, mem_mb: m || 0, timeout_s: t || 0 };
    return ok ? spec : null;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearAll();
    submit.disabled = true;
    try {
      const spec = await buildSpec();
      if (!spec) {
        announce("The form has errors.");
        focusFirstError();
        return;
      }
      const w = await request("POST", "/v1/workloads/async", { body: spec });
      navigate("/workloads/" + w.id);
    } catch (err) {
      let placed = false;
      if (err instanceof ApiError && err.field) {
        let id = FIELD_IDS[err.field];
        if (err.field.startsWith("env.")) {
          const name = err.field.slice(4);
          const input = [...envRows.querySelectorAll(".env-name")].find((i) => i.value.trim() === name);
          id = input && input.id;
        }
        placed = id ? setError(id, err.message.replace(/^invalid request: /, "")) : false;
      }
      if (!placed) {
        formError.textContent = err.message;
        formError.hidden = false;
      }
      announce("The server refused the workload: " + err.message);
      if (placed) focusFirstError();
    } finally {
      submit.disabled = false;
    }
  });

  // The limits and runtimes come from the backends, so the form offers what can run.
  get("/v1/backends").then(({ backends }) => {
    const up = backends.filter((b) => b.available && b.capabilities);
    if (!up.length) {
      formError.textContent = "No backend is available: workloads will be refused. See the Backends page.";
      formError.hidden = false;
      return;
    }
    limits = {
      cpus: Math.max(...up.map((b) => b.capabilities.max_cpus || 1)),
      mem: Math.max(...up.map((b) => b.capabilities.max_mem_mb || 128)),
      network: up.some((b) => b.capabilities.network),
    };
    cpus.max = String(limits.cpus);
    mem.max = String(limits.mem);
    document.getElementById("mem-hint").textContent = `At least 128, at most ${limits.mem}.`;
    document.getElementById("network-hint").textContent = limits.network
      ? "What the guest may reach."
      : "No backend here has networking yet; choose none.";
  }).catch(() => {});
}

function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
