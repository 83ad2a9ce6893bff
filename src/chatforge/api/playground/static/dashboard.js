// The dashboard: the caller's usage from GET /v1/usage, grouped and bucketed, drawn as plots
// (requests, tokens, cost, latency percentiles, rate-limit refusals) and a table by group.

import { bindCredentials, el, errorView, formatCost, getJSON } from "./common.js";
import { lines, stackedBars } from "./plot.js";

const $ = (id) => document.getElementById(id);
// Okabe-Ito, readable by people with any kind of colour blindness.
const COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
const WINDOWS = { "15m": [900, "minute"], "1h": [3600, "minute"], "6h": [21600, "minute"], "24h": [86400, "hour"], "7d": [604800, "hour"],
  "30d": [2592000, "day"] };
const NONE = { key: "(open mode)", account: "(no account)", product: "(no product)", deployment: "(no deployment)", model: "(none)" };
const number = new Intl.NumberFormat();
const seconds = (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(v < 10 ? 2 : 1)} s`);
const compact = (v) => (v >= 10000 ? `${(v / 1000).toFixed(v >= 100000 ? 0 : 1)}k` : number.format(v));

let last = null;  // the last report, redrawn on resize

async function refresh() {
  const by = $("by").value;
  const [span, bucket] = WINDOWS[$("window").value];
  const until = new Date();
  const since = new Date(until.getTime() - span * 1000);
  history.replaceState(null, "", `?by=${by}&window=${$("window").value}`);
  $("status").textContent = "Loading…";
  const query = new URLSearchParams({ by, bucket, since: since.toISOString(), until: until.toISOString() });
  const got = await getJSON(`/v1/usage?${query}`);
  if (!got.ok) {
    $("error").replaceChildren(errorView(got.error, got.body ? JSON.stringify(got.body, null, 2) : null));
    $("status").textContent = "Could not load the usage.";
    return;
  }
  $("error").replaceChildren();
  last = got.body;
  draw(last);
  $("status").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

function draw(report) {
  const width = report.bucket_seconds * 1000;
  const first = Math.floor(new Date(report.since).getTime() / width) * width;
  const starts = [];
  for (let t = first; t < new Date(report.until).getTime(); t += width) starts.push(new Date(t));
  const index = new Map(starts.map((d, i) => [d.getTime(), i]));
  const name = (g) => (g === null ? NONE[report.by] : String(g));
  const groups = report.groups.map((g, i) => ({ ...g, label: name(g.group), color: COLORS[i % COLORS.length] }));
  const column = (field) => groups.map((g) => {
    const values = new Array(starts.length).fill(0);
    for (const b of report.series) {
      const i = index.get(new Date(b.start).getTime());
      if (name(b.group) === g.label && i !== undefined) values[i] += typeof field === "function" ? field(b) : b[field];
    }
    return { group: g.group, label: g.label, color: g.color, values };
  });
  const common = { starts, bucketSeconds: report.bucket_seconds, emptyText: "Nothing in this window." };
  const per = `per ${report.bucket}`;
  const total = (field) => report.groups.reduce((sum, g) => sum + (typeof field === "function" ? field(g) : g[field]), 0);

  stackedBars($("plot-requests"), { ...common, series: column("requests"), format: compact,
    label: `Requests ${per}, by ${report.by}: ${total("requests")} in all` });
  stackedBars($("plot-tokens"), { ...common, series: column((b) => b.prompt_tokens + b.completion_tokens), format: compact,
    label: `Tokens ${per}, by ${report.by}: ${total((g) => g.prompt_tokens + g.completion_tokens)} in all` });
  stackedBars($("plot-cost"), { ...common, series: column("estimated_cost"), format: usdTick,
    label: `Estimated cost ${per}, by ${report.by}: ${formatCost(total("estimated_cost"))} in all` });
  stackedBars($("plot-refusals"), { ...common, series: column("rate_limited"), format: compact,
    label: `Requests refused by a rate limit ${per}, by ${report.by}: ${total("rate_limited")} in all`, emptyText: "No refusals in this window." });
  const percentiles = [["p50", "#0072B2"], ["p90", "#E69F00"], ["p99", "#D55E00"]];
  const at = (p) => starts.map((s) => report.latency.find((l) => new Date(l.start).getTime() === s.getTime())?.[p] ?? null);
  lines($("plot-latency"), { ...common, format: seconds, emptyText: "No completed request in this window.",
    label: `Latency percentiles of completed requests ${per}`,
    lines: percentiles.map(([p, color]) => ({ label: p, color, values: at(p) })) });

  $("legend").replaceChildren(...groups.map((g) => legendItem(g.color, g.label)));
  $("latency-legend").replaceChildren(...percentiles.map(([p, color]) => legendItem(color, p)));
  const set = (key, text) => { document.querySelector(`[data-total="${key}"]`).textContent = text; };
  set("requests", number.format(total("requests")));
  set("tokens", number.format(total((g) => g.prompt_tokens + g.completion_tokens)));
  set("cost", formatCost(total("estimated_cost")));
  set("p50", report.latency_s ? seconds(report.latency_s.p50) : "—");
  set("p99", report.latency_s ? seconds(report.latency_s.p99) : "—");
  set("rate_limited", number.format(total("rate_limited")));
  table(report.by, groups);
}

function legendItem(color, label) {
  const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
  swatch.style.background = color;
  return el("li", {}, swatch, label);
}

// An axis tick in dollars: as few digits as tell the ticks apart.
const usdTick = (v) => (v === 0 ? "$0" : `$${Number(v.toPrecision(3))}`);

function table(by, groups) {
  if (!groups.length) {
    $("table").replaceChildren(el("p", { class: "muted" }, "No requests in this window."));
    return;
  }
  const heads = [by, "requests", "prompt tokens", "completion tokens", "estimated cost", "p50", "p90", "p99", "rate-limited"];
  $("table").replaceChildren(el("table", { class: "usage" },
    el("thead", {}, el("tr", {}, heads.map((h, i) => el("th", { scope: "col", class: i ? "num" : null }, h)))),
    el("tbody", {}, groups.map((g) => el("tr", {},
      el("th", { scope: "row" }, g.label),
      [number.format(g.requests), number.format(g.prompt_tokens), number.format(g.completion_tokens), formatCost(g.estimated_cost),
        ...["p50", "p90", "p99"].map((p) => (g.latency_s ? seconds(g.latency_s[p]) : "—")), number.format(g.rate_limited)]
        .map((v) => el("td", { class: "num" }, v)))))));
}

function init() {
  const params = new URLSearchParams(location.search);
  if ([...$("by").options].some((o) => o.value === params.get("by"))) $("by").value = params.get("by");
  if (WINDOWS[params.get("window")]) $("window").value = params.get("window");
  bindCredentials($("key"), $("account"), $("key-toggle"), refresh);
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("by").addEventListener("change", refresh);
  $("window").addEventListener("change", refresh);
  let resize = null;
  window.addEventListener("resize", () => {
    clearTimeout(resize);
    resize = setTimeout(() => last && draw(last), 150);
  });
  refresh();
}

init();
