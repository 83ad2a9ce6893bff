// The conversation: the transcript, sending a turn, reading the answer as it streams, stopping
// it, and errors shown as the dialect returned them. The page supplies the request (`build`) and
// hears when one is sent and when it ends.

import { callsView, jsonView, toolMessageView } from "./calls.js";
import { authHeaders, el, errorView, readError } from "./common.js";
import { toJSON } from "./snippets.js";
import { sseEvents } from "./sse.js";
import { tokenView } from "./tokens.js";
import { Outcome, StreamError, WIRES } from "./wires.js";

let turnIds = 0;

export class Chat {
  constructor(ui) {
    this.ui = ui;
    // {id, role, content}, {id, role: "tool", tool_call_id, content},
    // or {id, role: "assistant", choices, selected, state, showTokens, json}
    this.turns = [];
    this.running = null;
    this.items = new Map();  // turn id -> its <li>
    ui.composer.form.addEventListener("submit", (event) => { event.preventDefault(); this.send(); });
    ui.composer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); this.send(); }
    });
    document.addEventListener("keydown", (event) => { if (event.key === "Escape" && this.running) this.running.abort(); });
    document.getElementById("stop").addEventListener("click", () => this.running?.abort());
    document.getElementById("clear").addEventListener("click", () => {
      this.running?.abort();
      this.turns = [];
      this.render();
      this.ui.errorBox.replaceChildren();
      this.ui.changed();
    });
    this.render();
  }

  wire(name) { return WIRES[name]; }

  // The conversation so far as wire messages (an answer counts by its chosen choice, with its tool calls).
  history() {
    return this.turns.filter((t) => t.state !== "streaming").map((t) => {
      if (t.role === "tool") return { role: "tool", tool_call_id: t.tool_call_id, content: t.content };
      if (t.role !== "assistant") return { role: t.role, content: t.content };
      const choice = t.choices[t.selected];
      const calls = (choice?.calls || []).filter((c) => c.id);
      if (!calls.length) return { role: "assistant", content: choice?.text ?? "" };
      return { role: "assistant", content: choice.text || null,
        tool_calls: calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })) };
    });
  }

  // True when the last turn is a tool result: Send then continues without a new user message.
  continues() {
    return this.turns.at(-1)?.role === "tool";
  }

  // A tool message answering `call` of `turn`, placed after the turn's other answers.
  answerCall(turn, call, content) {
    let at = this.turns.indexOf(turn) + 1;
    while (this.turns[at]?.role === "tool") at++;
    this.turns.splice(at, 0, { id: ++turnIds, role: "tool", tool_call_id: call.id, content });
    this.render();
    this.ui.changed();
    const next = this.items.get(turn.id).querySelector(".call-answer textarea");
    if (next) next.focus();
    else {
      this.status("Results added: Send continues the conversation (the message box may stay empty).");
      this.ui.composer.focus();
    }
  }

  status(text) { this.ui.status.textContent = text; }

  buttons(running) {
    document.getElementById("send").disabled = running;
    document.getElementById("stop").disabled = !running;
  }

  async send() {
    if (this.running) return;
    const prompt = this.ui.composer.value;
    const continuing = !prompt.trim() && this.continues();
    if (!prompt.trim() && !continuing) {
      this.status("Write a message first.");
      this.ui.composer.focus();
      return;
    }
    const { req, errors } = this.ui.build();
    this.ui.errorBox.replaceChildren();
    if (errors.length) {
      this.ui.errorBox.replaceChildren(errorView({ status: "", code: "not_sent", message: `Fix first: ${errors.join("; ")}.` }));
      return;
    }
    const user = continuing ? null : { id: ++turnIds, role: "user", content: prompt };
    const json = ["json_object", "json_schema"].includes(req.body.response_format?.type);
    const reply = { id: ++turnIds, role: "assistant", choices: [], selected: 0, state: "streaming", showTokens: false, json };
    this.turns.push(...(user ? [user] : []), reply);
    this.ui.composer.value = "";
    this.render();
    this.ui.sent(req);
    const controller = new AbortController();
    this.running = controller;
    this.buttons(true);
    this.status("Waiting for the first token…");
    const outcome = new Outcome(performance.now());
    let requestId = null;
    try {
      const response = await fetch(req.url, {
        method: "POST", headers: { "Content-Type": "application/json", ...authHeaders(req.auth) },
        body: toJSON(req.body), signal: controller.signal,
      });
      requestId = response.headers.get("x-request-id");
      if (!response.ok) {
        const text = await response.text();
        let body = null;
        try { body = JSON.parse(text); } catch { /* shown as text */ }
        return this.refused(user, reply, prompt, readError(response.status, body, text), text, requestId);
      }
      const wire = WIRES[req.wire];
      if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) {
        outcome.streamed = true;
        for await (const event of sseEvents(response)) {
          if (!wire.stream(event, outcome)) break;
          this.update(reply, outcome);
          if (outcome.firstTokenAt !== null) this.status("Streaming…");
        }
      } else {
        wire.whole(await response.json(), outcome);
      }
      reply.state = "done";
      this.status("Done.");
    } catch (err) {
      if (err.name === "AbortError") {
        reply.state = "stopped";
        this.status("Stopped.");
      } else if (err instanceof StreamError) {
        reply.state = "failed";
        this.ui.errorBox.replaceChildren(errorView(err.error, err.raw));
        this.status("The answer ended with an error.");
      } else if (!outcome.choices.length) {
        return this.refused(user, reply, prompt, readError(0, null, `Could not reach the server: ${err.message}`), null, requestId);
      } else {
        reply.state = "failed";
        this.ui.errorBox.replaceChildren(errorView(readError(0, null, `The connection broke: ${err.message}`)));
        this.status("The answer was cut short.");
      }
    } finally {
      this.running = null;
      this.buttons(false);
    }
    outcome.endedAt = performance.now();
    this.update(reply, outcome);
    this.ui.finished(outcome, requestId);
  }

  // Refused before any answer: the turn goes back into the message box, the error is shown.
  refused(user, reply, prompt, error, raw, requestId) {
    this.turns = this.turns.filter((t) => t !== user && t !== reply);
    if (!this.ui.composer.value) this.ui.composer.value = prompt;
    this.render();
    this.ui.errorBox.replaceChildren(errorView(error, raw));
    this.status(`Refused: ${error.status || "no answer"}.`);
    this.ui.finished(null, requestId);
  }

  update(reply, outcome) {
    reply.choices = outcome.choices.map((c) => ({ ...c, calls: c.calls.map((call) => ({ ...call })) }));
    reply.renders = (reply.renders || 0) + 1;  // how many times the answer was redrawn as it came
    this.replace(reply);
  }

  render() {
    this.items.clear();
    this.ui.transcript.replaceChildren(...this.turns.map((t) => this.item(t)));
    this.ui.empty.hidden = this.turns.length > 0;
  }

  replace(turn) {
    const old = this.items.get(turn.id);
    const fresh = this.item(turn);
    if (old) old.replaceWith(fresh);
    return fresh;
  }

  item(turn) {
    const remove = el("button", {
      type: "button", class: "link", "aria-label": `Remove this ${turn.role} message`, disabled: turn.state === "streaming",
      onclick: () => { this.turns = this.turns.filter((t) => t !== turn); this.render(); this.ui.changed(); },
    }, "Remove");
    const badge = turn.state && turn.state !== "done" ? el("span", { class: `badge badge-${turn.state}` }, turn.state) : null;
    const li = el("li", { class: `turn turn-${turn.role}`, dataset: { turn: turn.id, renders: turn.renders || 0, state: turn.state || "" } },
      el("div", { class: "turn-head" }, el("span", { class: "role" }, turn.role), badge, remove));
    if (turn.role === "user") li.append(el("div", { class: "bubble" }, turn.content));
    else if (turn.role === "tool") li.append(...toolMessageView(turn));
    else li.append(...this.answer(turn));
    this.items.set(turn.id, li);
    return li;
  }

  answer(turn) {
    const several = turn.choices.length > 1;
    const streaming = turn.state === "streaming";
    const parts = turn.choices.map((c, i) => {
      const body = turn.showTokens && c.tokens ? [tokenView(c.tokens)]
        : turn.json ? jsonView(c.text, streaming)
          : c.calls.length && !c.text ? []
            : [el("div", { class: "bubble" }, c.text || (streaming ? "…" : ""))];
      const finish = c.finish ? el("span", { class: "finish" }, `finish: ${c.finish}`) : null;
      const answering = turn.state === "done" && i === turn.selected ? {
        answered: (call) => this.turns.some((t) => t.role === "tool" && t.tool_call_id === call.id),
        answer: (call, text) => this.answerCall(turn, call, text),
      } : null;
      const calls = c.calls.length ? callsView(turn.id, c.calls, answering, streaming) : null;
      if (!several) return el("div", { class: "choice" }, ...body, calls, finish);
      const radio = el("input", {
        type: "radio", name: `choice-${turn.id}`, id: `choice-${turn.id}-${i}`, checked: i === turn.selected,
        onchange: () => {  // the chosen choice's calls are the ones to answer: redraw, keeping the focus
          turn.selected = i;
          this.replace(turn).querySelector(`#choice-${turn.id}-${i}`).focus();
          this.ui.changed();
        },
      });
      return el("div", { class: "choice" },
        el("div", { class: "choice-head" }, radio, el("label", { for: radio.id }, `Choice ${i} — continue with this one`)), ...body, calls, finish);
    });
    if (!turn.choices.length) parts.push(el("div", { class: "bubble muted" }, turn.state === "streaming" ? "…" : "(no answer)"));
    if (turn.state !== "streaming" && turn.choices.some((c) => c.tokens)) {
      parts.push(el("button", {
        type: "button", class: "token-toggle", "aria-pressed": String(turn.showTokens),
        onclick: () => { turn.showTokens = !turn.showTokens; this.replace(turn).querySelector(".token-toggle").focus(); },
      }, turn.showTokens ? "Show text" : "Show token probabilities"));
    }
    return parts;
  }
}
