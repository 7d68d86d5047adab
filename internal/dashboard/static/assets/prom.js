// prom.js: reads the Prometheus text format that /metrics serves — only what the charts
// need (samples with labels; comments and timestamps ignored).

export function parseMetrics(text) {
  const out = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const lm of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

// sum adds the samples of one metric across all label sets that match filter.
export function sum(samples, name, filter = () => true) {
  return samples.filter((s) => s.name === name && filter(s.labels)).reduce((a, s) => a + s.value, 0);
}

// histogram turns a Prometheus histogram (cumulative buckets, any labels summed) into
// per-bucket counts: [{lo, hi, count}], hi = Infinity for the overflow bucket.
export function histogram(samples, name) {
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== name + "_bucket") continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  const les = [...byLe.keys()].sort((a, b) => a - b);
  let prevLe = 0, prevCum = 0;
  return les.map((le) => {
    const cum = byLe.get(le);
    const b = { lo: prevLe, hi: le, count: Math.max(0, cum - prevCum) };
    prevLe = le;
    prevCum = cum;
    return b;
  });
}
