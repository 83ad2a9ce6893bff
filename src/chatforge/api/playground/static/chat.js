// The conversation: the transcript, sending a turn, reading the answer as it streams, stopping
// it, and errors shown as the dialect returned them. The page supplies the request (`build`) and
// hears when one is sent and when it ends.

import { authHeaders, el, errorView, readError } from "./common.js";
import { toJSON } from "./snippets.js";
import { sseEvents } from "./sse.js";
import { tokenView } from "./tokens.js";
import { Outcome, StreamError, WIRES } from "./wires.js";

let turnIds = 0;

export class Chat {
  constructor(ui) {
    this.ui = ui;
    this.turns = [];  // {id, role, content} or {id, role: "assistant", choices, selected, state, showTokens}
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

  // The conversation so far, as {role, content} turns (an answer counts by its chosen choice).
  history() {
    return this.turns.filter((t) => t.state !== "streaming").map((t) => ({
      role: t.role, content: t.role === "assistant" ? t.choices[t.selected]?.text ?? "" : t.content,
    }));
  }

  status(text) { this.ui.status.textContent = text; }

  buttons(running) {
    document.getElementById("send").disabled = running;
    document.getElementById("stop").disabled = !running;
  }

  async send() {
    if (this.running) return;
    const prompt = this.ui.composer.value;
    if (!prompt.trim()) {
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
    const user = { id: ++turnIds, role: "user", content: prompt };
    const reply = { id: ++turnIds, role: "assistant", choices: [], selected: 0, state: "streaming", showTokens: false };
    this.turns.push(user, reply);
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
    reply.choices = outcome.choices.map((c) => ({ ...c }));
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
    else li.append(...this.answer(turn));
    this.items.set(turn.id, li);
    return li;
  }

  answer(turn) {
    const several = turn.choices.length > 1;
    const parts = turn.choices.map((c, i) => {
      const body = turn.showTokens && c.tokens ? tokenView(c.tokens) : el("div", { class: "bubble" }, c.text || (turn.state === "streaming" ? "…" : ""));
      const finish = c.finish ? el("span", { class: "finish" }, `finish: ${c.finish}`) : null;
      if (!several) return el("div", { class: "choice" }, body, finish);
      const radio = el("input", {
        type: "radio", name: `choice-${turn.id}`, id: `choice-${turn.id}-${i}`, checked: i === turn.selected,
        onchange: () => { turn.selected = i; this.ui.changed(); },
      });
      return el("div", { class: "choice" },
        el("div", { class: "choice-head" }, radio, el("label", { for: radio.id }, `Choice ${i} — continue with this one`)), body, finish);
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
