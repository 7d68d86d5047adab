// The templates page: the templates this server has (built-in and built here), a form
// that builds one from a Dockerfile, and each build's steps with their progress and
// its live log.
import { get, request, streamEvents } from "../api.js";
import { h, replace, errorBox, bytes, ago, announce } from "../dom.js";

const EXAMPLE = `FROM python
# vulcan:apt python3-numpy
ENV GREETING=hello
WORKDIR /opt/app
RUN echo 'print("hi")' > hello.py && python3 -m compileall -q .
`;

export function render(main, ctx) {
  document.title = "Templates · Vulcan";
  const stop = new AbortController();
  const list = h("div", { id: "templates" }, h("p", { class: "muted" }, "Loading…"));
  const builds = h("div", { id: "builds" });
  const name = h("input", { id: "tpl-name", type: "text", required: true, pattern: "[a-z0-9][a-z0-9_\\-]{0,62}", placeholder: "my-template" });
  const file = h("textarea", { id: "tpl-dockerfile", rows: 10, spellcheck: "false", class: "code" }, EXAMPLE);
  const network = h("select", { id: "tpl-network" }, ["egress", "host", "none"].map((n) => h("option", { value: n }, n)));
  const err = h("div", { role: "alert" });
  const form = h("form", { class: "card", id: "build-form", onsubmit: async (e) => {
    e.preventDefault();
    replace(err);
    try {
      const b = await request("POST", "/v1/templates", { body: { name: name.value.trim(), dockerfile: file.value, network: network.value } });
      announce("Build " + b.id + " started");
      watch(b);
    } catch (x) {
      replace(err, errorBox(x));
    }
  } },
    h("h2", {}, "Build a template"),
    h("p", { class: "muted" }, "From a Dockerfile (the subset in the README). RUN steps execute in a build microVM; unchanged steps come from the cache. COPY needs a context: use ",
      h("code", {}, "vulcan template build NAME --context DIR"), "."),
    h("label", { for: "tpl-name" }, "Name"), name,
    h("label", { for: "tpl-dockerfile" }, "Dockerfile"), file,
    h("label", { for: "tpl-network" }, "Build VM network"), network,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Build")), err);
  replace(main, h("div", { class: "page-head" }, h("h1", {}, "Templates"), h("div", { class: "grow" }),
    h("button", { type: "button", onclick: load }, "Refresh")), list, form, h("h2", {}, "Builds"), builds);

  const cards = new Map();
  async function load() {
    try {
      const [{ templates }, { builds: bl }] = await Promise.all([get("/v1/templates"), get("/v1/builds").catch(() => ({ builds: [] }))]);
      replace(list, table(templates, load));
      for (const b of bl.slice().reverse()) if (!cards.has(b.id)) watch(b);
    } catch (x) {
      replace(list, errorBox(x));
    }
  }

  // watch shows a build's card and follows its events until it ends.
  function watch(b) {
    if (cards.has(b.id)) return;
    const steps = h("ol", { class: "steps" });
    const log = h("pre", { class: "out build-log", "aria-label": "Build log", tabindex: "0" });
    const state = h("span", { class: "badge", dataset: { k: "state" } }, b.state);
    const summary = h("p", { class: "muted", dataset: { k: "summary" } });
    const card = h("section", { class: "card build", dataset: { id: b.id, template: b.template } },
      h("div", { class: "section-head" }, h("h3", {}, b.template), state, h("span", { class: "muted" }, " " + b.id)),
      summary, steps, h("details", { open: b.state === "running" || b.state === "queued" }, h("summary", {}, "Log"), log));
    cards.set(b.id, card);
    builds.prepend(card);
    const rows = new Map();
    const total = (b.steps || []).length - 1;
    const draw = (s) => {
      let row = rows.get(s.index);
      if (!row) {
        row = h("li", { dataset: { index: String(s.index) } });
        rows.set(s.index, row);
        steps.append(row);
      }
      const pct = s.state === "done" || s.state === "cached" ? 100 : s.state === "running" ? 50 : 0;
      replace(row, h("progress", { max: "100", value: String(pct), "aria-label": `step ${s.index} of ${total}` }),
        h("span", { class: "badge step-" + s.state }, s.state), " ", h("code", {}, s.text),
        s.seconds ? h("span", { class: "muted" }, ` ${s.seconds.toFixed(1)} s`) : null);
      row.dataset.state = s.state;
    };
    (b.steps || []).forEach(draw);
    const end = (info) => {
      state.textContent = info.state;
      state.className = "badge " + (info.state === "ready" ? "ok" : info.state === "failed" ? "bad" : "");
      summary.textContent = info.state === "ready" ? `Ready in ${info.seconds.toFixed(1)} s: ${info.cached} steps from the cache, ${info.ran} run.`
        : info.state === "failed" ? "Failed: " + info.error : "";
      (info.steps || []).forEach(draw);
    };
    if (b.state === "ready" || b.state === "failed") end(b);
    streamEvents("/v1/builds/" + encodeURIComponent(b.id) + "/events", (ev) => {
      const e = JSON.parse(ev.data);
      if (e.type === "step") draw(e.step);
      else if (e.type === "log") {
        log.append(e.stream === "build" ? "# " + e.data : e.data);
        if (log.textContent.length > 400000) log.textContent = log.textContent.slice(-300000);
        log.scrollTop = log.scrollHeight;
      } else if (e.type === "end") {
        end(e.build);
        load();
      }
    }, { until: ["end"], signal: stop.signal }).catch(() => {});
  }
  load();
  return () => stop.abort();
}

function table(templates, reload) {
  if (!templates.length) return h("p", { class: "muted" }, "No templates: run make images.");
  return h("div", { class: "table-wrap" }, h("table", { class: "list compact" },
    h("thead", {}, h("tr", {}, ["Name", "Kind", "From", "Size", "Built", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, templates.map((t) => h("tr", { dataset: { name: t.name } },
      h("td", {}, h("code", {}, t.name)), h("td", {}, t.builtin ? "built-in" : "user"), h("td", {}, t.from || "—"),
      h("td", {}, t.size_bytes ? bytes(t.size_bytes) : "—"), h("td", {}, t.created_at ? ago(t.created_at) : "—"),
      h("td", {}, t.builtin ? null : h("button", { type: "button", onclick: async () => {
        if (!confirm("Remove template " + t.name + "?")) return;
        await request("DELETE", "/v1/templates/" + encodeURIComponent(t.name)).catch(() => {});
        reload();
      } }, "Remove")))))));
}
