// The panel's tools and output-format fields (OpenAI's wire, so OpenAI, DeepInfra and Infomaniak's
// successor): `tools` as a list of functions, each with its JSON Schema parameters in an editor
// that checks the JSON; `tool_choice`, whose named choices follow the functions defined; and
// `response_format` (text, json_object, or json_schema with its schema and strict). Each is a
// kind of params.js (a control and a read), so the panel sends them like any other field.

import { el } from "./common.js";

let editors = 0;  // unique ids for the inputs of each function added

// A JSON text that must parse to one of `shapes` ("object", "boolean"): {value} | {error} | {} when empty.
export function readJSON(textarea, shapes, what) {
  const text = textarea.value.trim();
  let got = {};
  if (text !== "") {
    try {
      const value = JSON.parse(text);
      const shape = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
      got = shapes.includes(shape) ? { value } : { error: `${what} must be a JSON ${shapes.join(" or ")}` };
    } catch (err) {
      got = { error: `${what} is not valid JSON (${err.message})` };
    }
  }
  textarea.setAttribute("aria-invalid", got.error ? "true" : "false");
  return got;
}

const changed = (node) => node.dispatchEvent(new Event("input", { bubbles: true }));

function labelled(id, text, control, hint) {
  control.id = id;
  return el("div", { class: "field" }, el("label", { for: id }, text), control, hint ? el("span", { class: "hint" }, hint) : null);
}

function functionEditor(list) {
  const n = ++editors;
  const id = (part) => `tool-${n}-${part}`;
  const name = el("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: "get_weather", dataset: { part: "name" } });
  const description = el("input", { type: "text", autocomplete: "off", placeholder: "what it does, for the model", dataset: { part: "description" } });
  const parameters = el("textarea", {
    rows: 5, spellcheck: "false", class: "json-editor", dataset: { part: "parameters" },
    placeholder: '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
  });
  const box = el("fieldset", { class: "tool" }, el("legend", {}, `Function ${list.children.length + 1}`),
    labelled(id("name"), "Name", name),
    labelled(id("description"), "Description", description, "optional"),
    labelled(id("parameters"), "Parameters (JSON Schema)", parameters, "a JSON object; empty: no arguments"),
    el("button", {
      type: "button", class: "link", onclick: () => {
        const next = box.nextElementSibling || box.previousElementSibling;
        box.remove();
        renumber(list);
        changed(list);
        (next?.querySelector("input") || list.parentElement.querySelector(".add-tool")).focus();
      },
    }, "Remove this function"));
  return box;
}

function renumber(list) {
  [...list.children].forEach((box, i) => { box.querySelector("legend").textContent = `Function ${i + 1}`; });
}

function readTools(control) {
  const tools = [], errors = [];
  for (const box of control.querySelectorAll("fieldset.tool")) {
    const part = (p) => box.querySelector(`[data-part="${p}"]`);
    const name = part("name").value.trim();
    const label = name || box.querySelector("legend").textContent;
    part("name").setAttribute("aria-invalid", name ? "false" : "true");
    if (!name) errors.push(`${label} needs a name`);
    const params = readJSON(part("parameters"), ["object"], `${label}'s parameters`);
    if (params.error) errors.push(params.error);
    const fn = { name };
    if (part("description").value.trim()) fn.description = part("description").value.trim();
    if (params.value) fn.parameters = params.value;
    tools.push({ type: "function", function: fn });
  }
  if (errors.length) return { error: errors.join("; ") };
  return tools.length ? { value: tools } : {};
}

// The names of the functions defined in the same panel as `node`.
function definedNames(node) {
  const panel = node.closest(".panel") || document;
  return [...panel.querySelectorAll('fieldset.tool [data-part="name"]')].map((i) => i.value.trim()).filter(Boolean);
}

// tool_choice's options follow the functions defined: "function: NAME" for each, kept chosen while it exists.
function syncChoices(select) {
  const names = definedNames(select);
  const wanted = ["", ...select.dataset.options.split(" "), ...names.map((n) => `function:${n}`)];
  const have = [...select.options].map((o) => o.value);
  if (wanted.join("\n") === have.join("\n")) return;
  const previous = select.value;
  select.replaceChildren(...wanted.map((value) => el("option", { value },
    value === "" ? "(not sent: auto with tools, none without)" : value.startsWith("function:") ? `function: ${value.slice(9)}` : value)));
  select.value = wanted.includes(previous) ? previous : "";
}

function formatControl(f, id) {
  const type = el("select", { id: `${id}-type`, "aria-label": "response_format type", dataset: { part: "type" } },
    el("option", { value: "" }, "(not sent: text)"), f.options.map((t) => el("option", { value: t }, t)));
  const name = el("input", { type: "text", autocomplete: "off", spellcheck: "false", value: "answer", dataset: { part: "name" } });
  const strict = el("input", { type: "checkbox", dataset: { part: "strict" } });
  const schema = el("textarea", {
    rows: 6, spellcheck: "false", class: "json-editor", dataset: { part: "schema" },
    placeholder: '{"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}',
  });
  const details = el("div", { class: "format-schema", hidden: true },
    labelled(`${id}-name`, "Schema name", name),
    labelled(`${id}-schema`, "Schema (JSON Schema)", schema, "a JSON object, or true for any JSON"),
    el("div", { class: "field field-check" }, strict, el("label", { for: `${id}-strict` }, el("code", {}, "strict"))));
  strict.id = `${id}-strict`;
  type.addEventListener("change", () => { details.hidden = type.value !== "json_schema"; });
  return el("div", { id, class: "composite", role: "group" }, type, details);
}

function readFormat(control) {
  const part = (p) => control.querySelector(`[data-part="${p}"]`);
  const type = part("type").value;
  if (type === "") return {};
  if (type !== "json_schema") return { value: { type } };
  const name = part("name").value.trim();
  part("name").setAttribute("aria-invalid", name ? "false" : "true");
  if (!name) return { error: "the schema needs a name" };
  const schema = readJSON(part("schema"), ["object", "boolean"], "the schema");
  if (schema.error) return { error: schema.error };
  if (!("value" in schema)) {
    part("schema").setAttribute("aria-invalid", "true");
    return { error: "the schema is required (true: any JSON)" };
  }
  const json_schema = { name, schema: schema.value };
  if (part("strict").checked) json_schema.strict = true;
  return { value: { type, json_schema } };
}

// params.js kinds: {control(field, id), read(control, field)}; `group`: the control is a group of inputs.
export const TOOL_KINDS = {
  tools: {
    group: true,
    control(f, id) {
      const list = el("div", { class: "tool-list" });
      const add = el("button", {
        type: "button", class: "add-tool", onclick: () => {
          const box = functionEditor(list);
          list.append(box);
          changed(list);
          box.querySelector("input").focus();
        },
      }, "Add a function");
      return el("div", { id, class: "composite", role: "group" }, list, add);
    },
    read: readTools,
  },
  tool_choice: {
    control: (f, id) => el("select", { id, dataset: { options: f.options.join(" ") } },
      el("option", { value: "" }, "(not sent: auto with tools, none without)"), f.options.map((o) => el("option", { value: o }, o))),
    read(c) {
      syncChoices(c);
      if (c.value === "") return {};
      if (!c.value.startsWith("function:")) return { value: c.value };
      return { value: { type: "function", function: { name: c.value.slice(9) } } };
    },
  },
  response_format: { group: true, control: formatControl, read: readFormat },
};
