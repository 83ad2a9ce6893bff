// The logprobs view: each generated token shaded by its probability (the less likely, the
// warmer), its top alternatives in a tooltip on hover and on keyboard focus. The tokens form one
// tab stop; the arrow keys, Home and End move between them, Escape hides the tooltip.

import { el } from "./common.js";

let views = 0;

const shown = (token) => token.replaceAll("\n", "↵\n").replaceAll("\t", "⇥");
// A token as code; one that is only part of a character (a byte of an emoji) by its bytes.
const spelled = (t) => (t.token.includes("\ufffd") && t.bytes
  ? `bytes ${t.bytes.map((b) => b.toString(16).padStart(2, "0")).join(" ")}` : JSON.stringify(t.token));
const percent = (logprob) => `${(Math.exp(logprob) * 100).toFixed(logprob > -0.0005 ? 0 : 1)}%`;

export function tokenView(tokens) {
  const id = `token-tip-${++views}`;
  const tip = el("div", { class: "token-tip", role: "tooltip", id, hidden: true });
  const box = el("div", {
    class: "tokens", role: "group",
    "aria-label": "Tokens shaded by probability. Arrow keys move between tokens; each one's alternatives are read out.",
  });
  const spans = tokens.map((t, i) => {
    const span = el("span", { class: "tok", tabindex: i === 0 ? "0" : "-1", "aria-describedby": id, dataset: { index: i } }, shown(t.token));
    span.style.setProperty("--p", Math.exp(t.logprob).toFixed(4));
    span.addEventListener("mouseenter", () => show(span, t));
    span.addEventListener("mouseleave", () => { if (document.activeElement !== span) tip.hidden = true; });
    span.addEventListener("focus", () => show(span, t));
    span.addEventListener("blur", () => { tip.hidden = true; });
    return span;
  });
  box.append(...spans);
  box.addEventListener("keydown", (event) => {
    const current = spans.indexOf(document.activeElement);
    if (current < 0) return;
    const next = { ArrowRight: current + 1, ArrowDown: current + 1, ArrowLeft: current - 1, ArrowUp: current - 1,
      Home: 0, End: spans.length - 1 }[event.key];
    if (event.key === "Escape") { tip.hidden = true; return; }
    if (next === undefined) return;
    event.preventDefault();
    const target = spans[Math.max(0, Math.min(spans.length - 1, next))];
    spans[current].tabIndex = -1;
    target.tabIndex = 0;
    target.focus();
  });

  function show(span, t) {
    tip.replaceChildren(
      el("p", { class: "tip-head" }, el("code", {}, spelled(t)), ` ${percent(t.logprob)} · logprob ${t.logprob.toFixed(3)}`),
      t.top.length
        ? el("table", {}, el("caption", {}, "Top alternatives"),
          el("tbody", {}, t.top.map((a) => el("tr", { class: a.token === t.token ? "chosen" : null },
            el("td", {}, el("code", {}, spelled(a))), el("td", { class: "num" }, percent(a.logprob))))))
        : el("p", { class: "muted" }, "No alternatives asked for (top_logprobs)."));
    tip.hidden = false;
    tip.style.left = `${Math.min(span.offsetLeft, Math.max(0, box.clientWidth - 260))}px`;
    tip.style.top = `${span.offsetTop + span.offsetHeight + 4}px`;
  }

  return el("div", { class: "token-view" }, box, tip);
}
