// chart.js: a few SVG charts drawn with DOM calls (no inline styles, so the page's CSP
// holds). Each chart is an <svg role="img"> with a label that says what it shows in
// words, for readers who cannot see it.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// axisMax picks the top of the y axis so that its four gridlines land on round
// numbers — whole ones when the data are counts.
function axisMax(v, integer) {
  const raw = Math.max(v, integer ? 1 : 1e-9) / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((x) => x >= raw);
  if (integer) step = Math.max(1, Math.ceil(step));
  return step * 4;
}

const PAD = { top: 12, right: 12, bottom: 40, left: 44 };

function frame(width, height, label, yMax, yFmt) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart", preserveAspectRatio: "xMidYMid meet" });
  svg.append(s("title", {}, label));
  const plotH = height - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4, y = PAD.top + plotH - (plotH * i) / 4;
    svg.append(s("line", { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: i ? "grid" : "axis" }));
    svg.append(s("text", { x: PAD.left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, yFmt(v)));
  }
  return { svg, plotW: width - PAD.left - PAD.right, plotH };
}

const intFmt = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));

// bars: [{label, value, title}] drawn as vertical bars.
export function barChart(bars, { width = 560, height = 240, label, cls = "c1", yFmt = intFmt, integer = true, xTitle } = {}) {
  const max = axisMax(Math.max(0, ...bars.map((b) => b.value)), integer);
  const { svg, plotW, plotH } = frame(width, height, label, max, yFmt);
  const slot = plotW / Math.max(1, bars.length), bw = Math.max(2, slot * 0.7);
  bars.forEach((b, i) => {
    const bh = (plotH * b.value) / max, x = PAD.left + i * slot + (slot - bw) / 2, y = PAD.top + plotH - bh;
    const rect = s("rect", { x, y, width: bw, height: Math.max(0, bh), class: "bar " + cls, rx: 2 });
    rect.append(s("title", {}, b.title || `${b.label}: ${b.value}`));
    svg.append(rect);
    if (b.value > 0) svg.append(s("text", { x: x + bw / 2, y: y - 3, class: "val", "text-anchor": "middle" }, yFmt(b.value)));
    svg.append(s("text", { x: x + bw / 2, y: PAD.top + plotH + 16, class: "tick", "text-anchor": "middle" }, b.label));
  });
  if (xTitle) svg.append(s("text", { x: PAD.left + plotW / 2, y: height - 6, class: "tick", "text-anchor": "middle" }, xTitle));
  return svg;
}

// stacked: [{label, parts: {key: n}}] with keys drawn bottom-up in the given order.
export function stackedChart(columns, keys, { width = 560, height = 240, label } = {}) {
  const totals = columns.map((c) => keys.reduce((a, k) => a + (c.parts[k] || 0), 0));
  const max = axisMax(Math.max(0, ...totals), true);
  const { svg, plotW, plotH } = frame(width, height, label, max, intFmt);
  const slot = plotW / Math.max(1, columns.length), bw = Math.max(2, slot * 0.7);
  const every = Math.ceil(columns.length / 8);
  columns.forEach((c, i) => {
    const x = PAD.left + i * slot + (slot - bw) / 2;
    let y = PAD.top + plotH;
    for (const k of keys) {
      const n = c.parts[k] || 0;
      if (!n) continue;
      const bh = (plotH * n) / max;
      y -= bh;
      const rect = s("rect", { x, y, width: bw, height: bh, class: "bar status-" + k });
      rect.append(s("title", {}, `${c.label}: ${n} ${k}`));
      svg.append(rect);
    }
    if (i % every === 0) svg.append(s("text", { x: x + bw / 2, y: PAD.top + plotH + 16, class: "tick", "text-anchor": "middle" }, c.label));
  });
  return svg;
}

// lineChart: series [{name, cls, points: [{t (ms), v}]}] over a shared time axis.
export function lineChart(series, { width = 560, height = 240, label } = {}) {
  const all = series.flatMap((x) => x.points);
  const max = axisMax(Math.max(1, ...all.map((p) => p.v)), true);
  const { svg, plotW, plotH } = frame(width, height, label, max, intFmt);
  const t0 = Math.min(...all.map((p) => p.t)), t1 = Math.max(...all.map((p) => p.t));
  const span = Math.max(1, t1 - t0);
  const X = (t) => PAD.left + (plotW * (t - t0)) / span, Y = (v) => PAD.top + plotH - (plotH * v) / max;
  for (const ser of series) {
    if (!ser.points.length) continue;
    // Steps, not slopes: a gauge holds its value until the next sample.
    let d = `M${X(ser.points[0].t)},${Y(ser.points[0].v)}`;
    for (let i = 1; i < ser.points.length; i++) d += ` H${X(ser.points[i].t)} V${Y(ser.points[i].v)}`;
    svg.append(s("path", { d, class: "line " + ser.cls, fill: "none" }));
  }
  if (all.length) {
    const fmt = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    svg.append(s("text", { x: PAD.left, y: PAD.top + plotH + 16, class: "tick", "text-anchor": "start" }, fmt(t0)));
    svg.append(s("text", { x: PAD.left + plotW, y: PAD.top + plotH + 16, class: "tick", "text-anchor": "end" }, fmt(t1)));
  }
  return svg;
}

// legend is HTML, so it wraps and reads as a list.
export function legend(items) {
  const ul = document.createElement("ul");
  ul.className = "chart-legend";
  for (const [cls, text] of items) {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch " + cls;
    sw.setAttribute("aria-hidden", "true");
    li.append(sw, text);
    ul.append(li);
  }
  return ul;
}
