// What tools and output formats add to the transcript: an answer's tool calls (the function's
// name and its arguments, pretty-printed when they parse as JSON) with a form to answer each one
// with a `tool` message, a tool message itself, and JSON output pretty-printed.

import { el } from "./common.js";

// `text` as indented JSON, or null when it is not JSON.
export function prettyJSON(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return null;
  }
}

// An answer's text in a JSON response format: pretty-printed once whole; as it came otherwise.
export function jsonView(text, streaming) {
  const pretty = streaming ? null : prettyJSON(text);
  if (pretty === null) {
    const note = streaming ? null : el("span", { class: "finish" }, "not valid JSON: shown as it came");
    return [el("div", { class: "bubble json" }, text || (streaming ? "…" : "")), note];
  }
  return [el("div", { class: "bubble json", dataset: { json: "pretty" } }, pretty), el("span", { class: "finish" }, "JSON, pretty-printed")];
}

// One choice's tool calls. `answering`: {answered(call) -> bool, answer(call, text)} when the
// calls may be answered now (the chosen choice of a finished answer), else null. While the
// answer streams, the arguments show as they come.
export function callsView(turnId, calls, answering, streaming) {
  return el("ol", { class: "tool-calls", "aria-label": "Tool calls" }, calls.map((call, i) => {
    const pretty = streaming ? null : prettyJSON(call.arguments || "{}");
    const args = pretty === null
      ? [el("pre", { class: "call-args" }, call.arguments),
        streaming ? null : el("span", { class: "field-note" }, "the arguments are not valid JSON")]
      : [el("pre", { class: "call-args", dataset: { json: "pretty" } }, pretty)];
    return el("li", { class: "tool-call", dataset: { call: call.id, name: call.name } },
      el("p", { class: "call-head" }, "calls ", el("code", { class: "call-name" }, call.name || "…"),
        call.id ? el("span", { class: "muted" }, ` (${call.id})`) : null),
      ...args, answering ? answerForm(turnId, i, call, answering) : null);
  }));
}

function answerForm(turnId, i, call, answering) {
  if (answering.answered(call)) return el("p", { class: "hint" }, "Answered below.");
  const id = `result-${turnId}-${i}`;
  const text = el("textarea", { id, rows: 2, spellcheck: "false", placeholder: '{"temperature": 21}' });
  const add = () => {
    if (!text.value.trim()) { text.setAttribute("aria-invalid", "true"); text.focus(); return; }
    answering.answer(call, text.value);
  };
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); add(); }
  });
  return el("div", { class: "field call-answer" },
    el("label", { for: id }, "Result of ", el("code", {}, call.name), " (a ", el("code", {}, "tool"), " message)"),
    text, el("button", { type: "button", class: "add-result", onclick: add }, "Add the result"));
}

// A `tool` message in the transcript: its content and the call it answers.
export function toolMessageView(turn) {
  const pretty = prettyJSON(turn.content);
  return [el("div", { class: `bubble${pretty === null ? "" : " json"}` }, pretty ?? turn.content),
    el("span", { class: "finish" }, "answers ", el("code", {}, turn.tool_call_id))];
}
