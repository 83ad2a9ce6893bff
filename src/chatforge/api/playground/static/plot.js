// Small SVG plots for the dashboard: stacked bars per time bucket and lines with gaps. Each bar
// carries its group, start and value (data-* attributes and a hover title); the dashboard's table
// holds the same numbers for screen readers and the keyboard.

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 210;
const MARGIN = { top: 10, right: 12, bottom: 26, left: 56 };

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

// A round upper bound and its ticks: 0, 1, 2, 2.5 or 5 × 10^k steps.
function scale(max) {
  if (!(max > 0)) return { top: 1, ticks: [0, 1] };
  const raw = max / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const top = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return { top, ticks };
}

function frame(container, starts, bucketSeconds, label, format, top, ticks) {
  const width = Math.max(280, Math.round(container.clientWidth || 560));
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const root = svg("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, role: "img", "aria-label": label });
  root.append(svg("title", {}, label));
  const y = (v) => MARGIN.top + plotH - (v / top) * plotH;
  const grid = svg("g", { class: "grid" });
  const axis = svg("g", { class: "axis" });
  for (const t of ticks) {
    grid.append(svg("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(t), y2: y(t) }));
    axis.append(svg("text", { x: MARGIN.left - 6, y: y(t) + 4, "text-anchor": "end" }, format(t)));
  }
  const slot = plotW / Math.max(starts.length, 1);
  const every = Math.max(1, Math.ceil(starts.length / Math.max(2, Math.floor(plotW / 70))));
  starts.forEach((start, i) => {
    if (i % every) return;
    axis.append(svg("text", { x: MARGIN.left + slot * (i + 0.5), y: HEIGHT - 8, "text-anchor": "middle" }, timeLabel(start, bucketSeconds)));
  });
  root.append(grid, axis, svg("line", { class: "baseline", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(0), y2: y(0) }));
  return { root, y, slot, plotH };
}

export function timeLabel(date, bucketSeconds) {
  if (bucketSeconds >= 86400) return date.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function empty(root, text) {
  const box = root.viewBox.baseVal;
  root.append(svg("text", { class: "empty-plot", x: box.width / 2, y: HEIGHT / 2, "text-anchor": "middle" }, text));
}

// series: [{group, label, color, values: [number per start]}], stacked in order.
export function stackedBars(container, { starts, bucketSeconds, series, format, label, emptyText }) {
  const totals = starts.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const { top, ticks } = scale(Math.max(0, ...totals));
  const { root, y, slot } = frame(container, starts, bucketSeconds, label, format, top, ticks);
  const barW = Math.max(1, Math.min(28, slot * 0.72));
  const bars = svg("g", { class: "bars" });
  starts.forEach((start, i) => {
    let base = 0;
    for (const s of series) {
      const v = s.values[i] || 0;
      if (!v) continue;
      const x = MARGIN.left + slot * (i + 0.5) - barW / 2;
      const height = Math.max(1, y(base) - y(base + v));
      const rect = svg("rect", {
        class: "bar", x, y: y(base + v), width: barW, height, fill: s.color, rx: Math.min(2, barW / 4),
        "data-group": s.label, "data-value": v, "data-start": start.toISOString(),
      }, svg("title", {}, `${s.label} · ${timeLabel(start, bucketSeconds)}: ${format(v)}`));
      bars.append(rect);
      base += v;
    }
  });
  root.append(bars);
  if (!totals.some(Boolean)) empty(root, emptyText);
  container.replaceChildren(root);
}

// lines: [{label, color, values: [number | null per start]}]; a null breaks the line.
export function lines(container, { starts, bucketSeconds, lines: drawn, format, label, emptyText }) {
  const max = Math.max(0, ...drawn.flatMap((l) => l.values.filter((v) => v !== null)));
  const { top, ticks } = scale(max);
  const { root, y, slot } = frame(container, starts, bucketSeconds, label, format, top, ticks);
  for (const l of drawn) {
    const g = svg("g", { class: "line", "data-line": l.label });
    let path = "";
    l.values.forEach((v, i) => {
      if (v === null) { path += " "; return; }
      const x = MARGIN.left + slot * (i + 0.5);
      path += `${path.endsWith(" ") || !path ? "M" : "L"}${x.toFixed(1)},${y(v).toFixed(1)}`;
      g.append(svg("circle", { cx: x, cy: y(v), r: 3, fill: l.color, "data-value": v, "data-start": starts[i].toISOString() },
        svg("title", {}, `${l.label} · ${timeLabel(starts[i], bucketSeconds)}: ${format(v)}`)));
    });
    g.prepend(svg("path", { d: path.trim(), fill: "none", stroke: l.color, "stroke-width": 2 }));
    root.append(g);
  }
  if (max === 0 && !drawn.some((l) => l.values.some((v) => v !== null))) empty(root, emptyText);
  container.replaceChildren(root);
}
