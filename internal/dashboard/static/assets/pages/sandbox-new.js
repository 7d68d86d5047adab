// The new-sandbox form. The form checks what it can know (numbers, metadata keys given
// twice); the server checks the rest, and its 400 names the field (error.field:
// template, resources.cpus, resources.mem_mb, timeout_s, network, metadata[.KEY]) so the
// message lands next to that control either way. Creating answers once the VM serves,
// which takes seconds under TCG, so the button says so while it waits.
import { get, request, ApiError } from "../api.js";
import { h, replace, announce } from "../dom.js";

const FIELD_IDS = { template: "template", "resources.cpus": "cpus", "resources.mem_mb": "mem", timeout_s: "timeout", network: "network" };

export function render(main, { navigate }) {
  document.title = "New sandbox · Vulcan";
  let pairSeq = 0;

  const field = (id, label, control, hint) => h("div", { class: "field", id: id + "-field" },
    h("label", { for: id }, label), control,
    hint ? h("p", { class: "hint", id: id + "-hint" }, hint) : null,
    h("p", { class: "field-error", id: id + "-error", hidden: true }));
  const described = (id, hint) => ({ id, name: id, "aria-describedby": (hint ? id + "-hint " : "") + id + "-error" });

  const template = h("select", described("template", true), ["python", "base", "node", "go"].map((r) => h("option", { value: r }, r)));
  const cpus = h("input", { ...described("cpus"), type: "number", inputmode: "numeric", min: "1", step: "1", value: "1" });
  const mem = h("input", { ...described("mem", true), type: "number", inputmode: "numeric", step: "64", value: "256" });
  const timeout = h("input", { ...described("timeout", true), type: "number", inputmode: "numeric", min: "1", max: "86400", step: "1", value: "300" });
  const network = h("select", described("network", true),
    h("option", { value: "none" }, "none — no network interface"),
    h("option", { value: "host" }, "host — the host's bridge only"),
    h("option", { value: "egress" }, "egress — NAT to the internet"));
  const pairs = h("div", { class: "env-rows", id: "metadata-rows" });
  const metaError = h("p", { class: "field-error", id: "metadata-error", hidden: true });
  const formError = h("div", { class: "alert", role: "alert", hidden: true, id: "form-error" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit" }, "Create sandbox");
  const waiting = h("span", { class: "muted", id: "submit-state", "aria-live": "polite" });

  const form = h("form", { class: "card form", novalidate: true, "aria-labelledby": "new-title" },
    h("div", { class: "row" },
      field("template", "Template", template, "The image the microVM boots."),
      field("network", "Network", network, "What the guest may reach.")),
    h("fieldset", {}, h("legend", {}, "Resources"),
      h("div", { class: "row three" },
        field("cpus", "vCPUs", cpus),
        field("mem", "Memory (MiB)", mem, "At least 128."),
        field("timeout", "Timeout (s)", timeout, "Killed after this long unless extended; at most 24 h."))),
    h("fieldset", { class: "env", "aria-describedby": "metadata-hint metadata-error" }, h("legend", {}, "Metadata"),
      h("p", { class: "hint", id: "metadata-hint" }, "String pairs the list can filter by (the API's ?metadata=key=value)."),
      pairs, metaError,
      h("button", { type: "button", class: "small", id: "metadata-add", onclick: () => addPair("", "", true) }, "+ Add pair")),
    formError,
    h("div", { class: "actions" }, submit, h("a", { href: "/sandboxes", "data-link": true, class: "button" }, "Cancel"), waiting));

  replace(main, h("h1", { id: "new-title" }, "New sandbox"), form);

  function addPair(key, value, focus) {
    const n = ++pairSeq;
    const keyIn = h("input", { id: "meta-key-" + n, type: "text", value: key, autocomplete: "off", spellcheck: "false", class: "meta-key", "aria-describedby": "meta-key-" + n + "-error" });
    const valueIn = h("input", { id: "meta-value-" + n, type: "text", value, autocomplete: "off", spellcheck: "false", class: "meta-value", "aria-describedby": "meta-value-" + n + "-error" });
    const row = h("div", { class: "env-row" },
      h("div", { class: "field" }, h("label", { for: keyIn.id }, "Key"), keyIn, h("p", { class: "field-error", id: keyIn.id + "-error", hidden: true })),
      h("div", { class: "field" }, h("label", { for: valueIn.id }, "Value"), valueIn, h("p", { class: "field-error", id: valueIn.id + "-error", hidden: true })),
      h("button", { type: "button", class: "small remove", "aria-label": "Remove pair " + n, onclick: () => {
        row.remove();
        document.getElementById("metadata-add").focus();
      } }, "Remove"));
    pairs.append(row);
    if (focus) keyIn.focus();
  }
  addPair("", "", false);

  form.addEventListener("input", (e) => { if (e.target.id) clearError(e.target.id); clearError("metadata"); });

  function setError(id, message) {
    const el = document.getElementById(id), msg = document.getElementById(id + "-error");
    if (!msg) return false;
    msg.textContent = message;
    msg.hidden = false;
    if (el) el.setAttribute("aria-invalid", "true");
    return true;
  }
  function clearError(id) {
    const el = document.getElementById(id), msg = document.getElementById(id + "-error");
    if (el) el.removeAttribute("aria-invalid");
    if (msg) { msg.hidden = true; msg.textContent = ""; }
  }
  function clearAll() {
    for (const el of form.querySelectorAll("[aria-invalid]")) clearError(el.id);
    clearError("metadata");
    formError.hidden = true;
  }
  function focusFirstError() {
    const bad = form.querySelector("[aria-invalid=true]");
    if (bad) { bad.scrollIntoView({ block: "center" }); bad.focus(); }
  }

  function intField(el, label, min, max) {
    const v = el.value.trim();
    if (v === "") return 0; // the server's default
    if (!/^\d+$/.test(v)) { setError(el.id, `${label} must be a whole number.`); return null; }
    const n = Number(v);
    if (min !== null && n < min) { setError(el.id, `${label} must be at least ${min}.`); return null; }
    if (max !== null && n > max) { setError(el.id, `${label} must be at most ${max}.`); return null; }
    return n;
  }

  function buildSpec() {
    let ok = true;
    const c = intField(cpus, "vCPUs", 1, null), m = intField(mem, "Memory", null, null), t = intField(timeout, "Timeout", 1, 86400);
    if (c === null || m === null || t === null) ok = false;
    const spec = { template: template.value, network: network.value, resources: { cpus: c || 0, mem_mb: m || 0 } };
    if (t) spec.timeout_s = t;
    const md = {};
    for (const row of pairs.querySelectorAll(".env-row")) {
      const keyIn = row.querySelector(".meta-key"), key = keyIn.value.trim(), value = row.querySelector(".meta-value").value;
      if (key === "" && value === "") continue;
      if (key === "") { setError(keyIn.id, "Give the pair a key."); ok = false; continue; }
      if (key in md) { setError(keyIn.id, `${key} is given twice.`); ok = false; continue; }
      md[key] = value;
    }
    if (Object.keys(md).length) spec.metadata = md;
    return ok ? spec : null;
  }

  // place shows a server error next to its control; false when no control fits.
  function place(err) {
    const message = err.message.replace(/^invalid request: /, "");
    if (FIELD_IDS[err.field]) return setError(FIELD_IDS[err.field], message);
    if (err.field.startsWith("metadata.")) {
      const key = err.field.slice("metadata.".length);
      const row = [...pairs.querySelectorAll(".env-row")].find((r) => r.querySelector(".meta-key").value.trim() === key);
      if (row) return setError(row.querySelector(".meta-value").id, message);
    }
    if (err.field.startsWith("metadata")) return setError("metadata", message);
    return false;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearAll();
    const spec = buildSpec();
    if (!spec) {
      announce("The form has errors.");
      focusFirstError();
      return;
    }
    submit.disabled = true;
    waiting.textContent = "Booting the microVM…";
    try {
      const sb = await request("POST", "/v1/sandboxes", { body: spec });
      navigate("/sandboxes/" + sb.id);
    } catch (err) {
      const placed = err instanceof ApiError && err.field ? place(err) : false;
      if (!placed) {
        formError.textContent = err.message + (err.status === 429 ? " — the server is at capacity; try again shortly." : "");
        formError.hidden = false;
      }
      announce("The server refused the sandbox: " + err.message);
      if (placed) focusFirstError();
    } finally {
      submit.disabled = false;
      waiting.textContent = "";
    }
  });

  // Offer the templates and limits the backends report.
  get("/v1/backends").then(({ backends }) => {
    const up = backends.filter((b) => b.available && b.capabilities);
    if (!up.length) {
      formError.textContent = "No backend is available: sandboxes will be refused. See the Backends page.";
      formError.hidden = false;
      return;
    }
    const runtimes = [...new Set(up.flatMap((b) => b.capabilities.templates || b.capabilities.runtimes || []))];
    if (runtimes.length) replace(template, runtimes.map((r) => h("option", { value: r, selected: r === "python" }, r)));
    const maxCPUs = Math.max(...up.map((b) => b.capabilities.max_cpus || 1));
    const maxMem = Math.max(...up.map((b) => b.capabilities.max_mem_mb || 128));
    cpus.max = String(maxCPUs);
    mem.max = String(maxMem);
    document.getElementById("mem-hint").textContent = `At least 128, at most ${maxMem}.`;
  }).catch(() => {});
}
