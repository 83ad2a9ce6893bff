// The parameter panel, drawn from dialects.json: one input per wire field, grouped, each showing
// its bounds and default. An empty input is not sent (the server's default applies); a value is
// sent even outside its bounds, so that the server's own error can be read. A new kind of field
// is one more entry in KINDS and one more line per dialect in dialects.json (tools.js adds the
// tools and output-format kinds).

import { el } from "./common.js";
import { TOOL_KINDS } from "./tools.js";

const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

// name -> {control(field, id), read(control) -> {value} | {error} | {} (not set)}
export const KINDS = {
  number: {
    control: (f, id) => el("input", { id, type: "number", step: f.step ?? "any", inputmode: "decimal", ...bounds(f) }),
    read: (c) => {
      if (c.validity.badInput) return { error: "not a number" };
      return c.value === "" ? {} : { value: Number(c.value) };
    },
  },
  integer: {
    control: (f, id) => el("input", { id, type: "text", inputmode: "numeric", pattern: "-?[0-9]+", autocomplete: "off" }),
    read: (c) => {
      const text = c.value.trim();
      if (text === "") return {};
      if (!/^-?\d+$/.test(text)) return { error: "a whole number" };
      const big = BigInt(text);
      return { value: big > SAFE || big < -SAFE ? big : Number(big) };  // seeds go past 2^53
    },
  },
  boolean: {
    control: (f, id) => el("input", { id, type: "checkbox" }),
    read: (c) => (c.checked === Boolean(c.dataset.default === "true") && !c.dataset.touched ? {} : { value: c.checked }),
  },
  enum: {
    control: (f, id) => el("select", { id },
      el("option", { value: "" }, f.default !== undefined ? `(not sent: ${f.default})` : "(not sent)"),
      f.options.map((o) => el("option", { value: o }, o))),
    read: (c) => (c.value === "" ? {} : { value: c.value }),
  },
  string: {
    control: (f, id) => el("input", { id, type: "text", autocomplete: "off" }),
    read: (c) => (c.value === "" ? {} : { value: c.value }),
  },
  text: {
    control: (f, id) => el("textarea", { id, rows: 3, spellcheck: "false" }),
    read: (c) => (c.value === "" ? {} : { value: c.value }),
  },
  strings: {
    control: (f, id) => el("textarea", { id, rows: 2, spellcheck: "false" }),
    read: (c) => {
      const lines = c.value.split("\n").filter((line) => line !== "");
      return lines.length ? { value: lines } : {};
    },
  },
  integers: {
    control: (f, id) => el("input", { id, type: "text", inputmode: "numeric", autocomplete: "off" }),
    read: (c) => {
      const parts = c.value.split(",").map((p) => p.trim()).filter(Boolean);
      if (!parts.length) return {};
      if (!parts.every((p) => /^-?\d+$/.test(p))) return { error: "whole numbers, comma-separated" };
      return { value: parts.map(Number) };
    },
  },
  json: {
    control: (f, id) => el("textarea", { id, rows: 2, spellcheck: "false", placeholder: f.placeholder }),
    read: (c, f) => {
      if (c.value.trim() === "") return {};
      try {
        const value = JSON.parse(c.value);
        const shape = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
        return shape === f.shape ? { value } : { error: `a JSON ${f.shape}` };
      } catch {
        return { error: "not valid JSON" };
      }
    },
  },
  ...TOOL_KINDS,
};

function bounds(f) {
  const attrs = {};
  if (f.minimum !== undefined) attrs.min = f.minimum;
  if (f.maximum !== undefined) attrs.max = f.maximum;
  return attrs;
}

// The 64-bit edges of seeds, as people write them.
const POWERS = { "9223372036854775807": "2⁶³−1", "-9223372036854775808": "−2⁶³", "18446744073709551615": "2⁶⁴−1" };
const edge = (v) => (v === undefined ? undefined : POWERS[String(v)] ?? v);

// "0–2", "(0, 1]", "≥ 1": the documented range, as the README writes it.
export function rangeText(f) {
  const low = edge(f.minimum ?? f.exclusiveMinimum);
  const high = edge(f.maximum ?? f.exclusiveMaximum);
  if (low === undefined && high === undefined) return "";
  if (high === undefined) return f.exclusiveMinimum !== undefined ? `> ${low}` : `≥ ${low}`;
  if (low === undefined) return f.exclusiveMaximum !== undefined ? `< ${high}` : `≤ ${high}`;
  if (f.minimum !== undefined && f.maximum !== undefined) return `${low} – ${high}`;
  return `${f.exclusiveMinimum !== undefined ? "(" : "["}${low}, ${high}${f.exclusiveMaximum !== undefined ? ")" : "]"}`;
}

function outside(f, value) {
  if (typeof value !== "number" && typeof value !== "bigint") return false;
  const n = (x) => (typeof value === "bigint" ? BigInt(x) : Number(x));
  return (f.minimum !== undefined && value < n(f.minimum)) || (f.maximum !== undefined && value > n(f.maximum))
    || (f.exclusiveMinimum !== undefined && value <= n(f.exclusiveMinimum))
    || (f.exclusiveMaximum !== undefined && value >= n(f.exclusiveMaximum));
}

// The panel for one wire's fields, their ids `${prefix}-${name}` (dots as dashes): returns {read() -> {values: [[path, value]], errors}, setPresets(p)}.
export function buildPanel(container, groups, fields, onChange, prefix) {
  container.replaceChildren();
  const rows = [];
  for (const group of groups) {
    const mine = fields.filter((f) => f.group === group.id);
    if (!mine.length) continue;
    const fieldset = el("fieldset", { class: "params" }, el("legend", {}, group.label));
    for (const f of mine) fieldset.append(fieldRow(f, rows, `${prefix}-${f.name.replaceAll(".", "-")}`));
    container.append(fieldset);
  }
  const byName = Object.fromEntries(rows.map((r) => [r.field.name, r]));
  const refresh = () => {
    for (const r of rows) {
      const hidden = r.field.when && !byName[r.field.when]?.control.checked;
      r.row.hidden = Boolean(hidden);
      const got = hidden ? {} : KINDS[r.field.kind].read(r.control, r.field);
      const problem = got.error || (outside(r.field, got.value) ? `outside ${rangeText(r.field)}: the server will refuse it` : "");
      r.control.setAttribute("aria-invalid", problem ? "true" : "false");
      r.note.textContent = problem;
      r.got = got;
    }
  };
  container.addEventListener("input", () => { refresh(); onChange(); });
  container.addEventListener("change", (event) => {
    if (event.target.type === "checkbox") event.target.dataset.touched = "1";
    refresh();
    onChange();
  });
  refresh();
  return {
    read() {
      refresh();
      const values = [], errors = [];
      for (const r of rows) {
        if (r.got.error) errors.push(`${r.field.label || r.field.name}: ${r.got.error}`);
        else if ("value" in r.got) values.push([r.field.name, r.got.value]);
      }
      return { values, errors };
    },
    setPresets(preset, profile) {  // Infomaniak's profile_type: the preset's values become the defaults shown
      for (const r of rows) {
        if (!r.field.preset) continue;
        const v = preset ? preset[r.field.name] : undefined;
        r.control.placeholder = preset ? `${v === null ? "off" : v} (${profile})` : "";
      }
    },
    rows: byName,
  };
}

function fieldRow(f, rows, id) {
  const control = KINDS[f.kind].control(f, id);
  const label = f.label || f.name;
  if (f.kind === "boolean") {
    control.checked = f.playground ?? f.default ?? false;
    control.dataset.default = String(f.default ?? false);
    if (f.playground !== undefined && f.playground !== f.default) control.dataset.touched = "1";
  } else if (f.playground !== undefined) {
    control.value = String(f.playground);
  }
  if (!control.placeholder && f.default !== undefined && !["enum", "boolean"].includes(f.kind)) control.placeholder = String(f.default);
  if (!control.placeholder && f.defaultText) control.placeholder = f.defaultText;
  const hints = [rangeText(f), f.default !== undefined ? `default ${f.default}` : f.defaultText ? `default: ${f.defaultText}` : "",
    f.help || ""].filter(Boolean).join(" · ");
  const hintId = `${id}-hint`;
  control.setAttribute("aria-describedby", `${hintId} ${id}-note`);
  if (KINDS[f.kind].group) control.setAttribute("aria-labelledby", `${id}-label`);  // a group: no <label for>
  const note = el("span", { class: "field-note", id: `${id}-note`, "aria-live": "polite" });
  const row = f.kind === "boolean"
    ? el("div", { class: "field field-check" }, control, el("label", { for: id }, el("code", {}, label)),
      el("span", { class: "hint", id: hintId }, hints), note)
    : el("div", { class: "field" }, el("label", { for: id, id: `${id}-label` }, el("code", {}, label)), control,
      el("span", { class: "hint", id: hintId }, hints), note);
  row.dataset.field = f.name;
  rows.push({ field: f, control, note, row, got: {} });
  return row;
}

// Sets `value` at a dotted path of `body` ("stream_options.include_usage").
export function setPath(body, path, value) {
  const parts = path.split(".");
  let node = body;
  for (const part of parts.slice(0, -1)) node = node[part] ??= {};
  node[parts[parts.length - 1]] = value;
}
