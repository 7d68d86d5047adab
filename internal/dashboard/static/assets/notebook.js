// notebook.js: the code interpreter panel of a code-interpreter sandbox's page. Cells run
// with POST /v1/sandboxes/{id}/code (SSE); variables persist between them. What a cell
// returns comes from the sandbox, so it is shown without letting it run anything here:
// PNG, JPEG and SVG as images, HTML (tables) in a sandboxed iframe with no scripts,
// everything else as text.
import { token } from "./api.js";
import { h, replace, announce } from "./dom.js";

// postEvents POSTs a JSON body and calls onEvent for each Server-Sent Event of the answer.
async function postEvents(path, body, onEvent, signal) {
  const headers = new Headers({ "Content-Type": "application/json", Accept: "text/event-stream" });
  if (token()) headers.set("Authorization", "Bearer " + token());
  const resp = await fetch(path, { method: "POST", headers, body: JSON.stringify(body), signal });
  if (!resp.ok) {
    let msg = resp.status + " " + resp.statusText;
    try { msg = (await resp.json()).error.message; } catch {}
    throw new Error(msg);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "", event = "message", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (line === "") {
        if (data.length) onEvent(event, JSON.parse(data.join("\n")));
        event = "message"; data = [];
      } else if (line.startsWith("event: ")) event = line.slice(7);
      else if (line.startsWith("data: ")) data.push(line.slice(6));
    }
  }
}

function result(r) {
  const parts = [];
  if (r.png) parts.push(h("img", { src: "data:image/png;base64," + r.png, alt: r.text || "PNG result", class: "cell-img" }));
  else if (r.jpeg) parts.push(h("img", { src: "data:image/jpeg;base64," + r.jpeg, alt: r.text || "JPEG result", class: "cell-img" }));
  else if (r.svg) parts.push(h("img", { src: "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(r.svg))), alt: r.text || "SVG result", class: "cell-img" }));
  else if (r.html) parts.push(h("iframe", { sandbox: "", srcdoc: r.html, class: "cell-html", title: "HTML result" }));
  else if (r.text !== undefined) parts.push(h("pre", { class: "out" }, r.text));
  return h("div", { class: "cell-result", dataset: { kinds: ["png", "jpeg", "svg", "html", "text"].filter((k) => r[k]).join(" ") } }, parts);
}

export function notebook(base) {
  const cells = h("div", { id: "cells" });
  const code = h("textarea", { id: "cell-code", class: "code", rows: 5, spellcheck: "false", "aria-label": "Python code" },
    "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 4, 1])\nplt.show()");
  const run = h("button", { type: "submit", class: "primary", id: "cell-run" }, "Run");
  let n = 0;
  const form = h("form", { id: "cell-form", onsubmit: async (e) => {
    e.preventDefault();
    const src = code.value;
    const out = h("div", { class: "cell-out", "aria-live": "polite" });
    const cell = h("div", { class: "cell", dataset: { n: String(++n), state: "running" } },
      h("pre", { class: "cell-src" }, src), out);
    cells.append(cell);
    run.disabled = true;
    let stdout = null, stderr = null;
    try {
      await postEvents(base + "/code", { code: src }, (ev, d) => {
        if (ev === "stdout" || ev === "stderr") {
          let el = ev === "stdout" ? stdout : stderr;
          if (!el) {
            el = h("pre", { class: "out" + (ev === "stderr" ? " err" : ""), dataset: { stream: ev } });
            out.append(el);
            if (ev === "stdout") stdout = el; else stderr = el;
          }
          el.append(d.text);
        } else if (ev === "result") out.append(result(d));
        else if (ev === "error") out.append(h("pre", { class: "out err cell-error" }, d.name + ": " + d.value + (d.traceback ? "\n" + d.traceback : "")));
        else if (ev === "number_of_executions") cell.dataset.count = String(d.execution_count);
      });
      cell.dataset.state = "done";
      announce("Cell " + n + " done");
    } catch (err) {
      out.append(h("pre", { class: "out err" }, String(err.message || err)));
      cell.dataset.state = "failed";
    } finally {
      run.disabled = false;
    }
  } }, code, h("div", { class: "actions" }, run, h("span", { class: "muted" }, " Variables persist between cells.")));
  return h("section", { class: "card", id: "notebook", "aria-labelledby": "nb-h" },
    h("div", { class: "section-head" }, h("h2", { id: "nb-h" }, "Code interpreter")), cells, form);
}
