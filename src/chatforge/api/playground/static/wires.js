// Each dialect's wire format, as the playground speaks it: the conversation fields of a request
// body, and streamed events or a whole response folded into one Outcome (choices' text, tool
// calls, tokens with their logprobs, finish reasons, usage). Nothing here knows the page.

import { readError } from "./common.js";

export class StreamError extends Error {
  constructor(error, raw) {
    super(error.message);
    this.error = error;
    this.raw = raw;
  }
}

export class Outcome {
  constructor(startedAt) {
    this.startedAt = startedAt;
    this.firstTokenAt = null;
    this.lastTokenAt = null;
    this.choices = [];
    this.usage = null;  // {prompt, completion, total, cost}
  }

  choice(index) {
    return (this.choices[index] ||= { text: "", tokens: null, finish: null, calls: [] });
  }

  // A tool call, whole or a streamed piece of it: {index, id, function: {name, arguments}}.
  call(index, piece, position) {
    const calls = this.choice(index || 0).calls;
    const call = (calls[piece.index ?? position] ||= { id: "", name: "", arguments: "" });
    if (piece.id) call.id = piece.id;
    if (piece.function?.name) call.name = piece.function.name;
    if (piece.function?.arguments) {
      const now = performance.now();
      this.firstTokenAt ??= now;
      this.lastTokenAt = now;
      call.arguments += piece.function.arguments;
    }
  }

  add(index, text, logprobs, finish) {
    const c = this.choice(index || 0);
    if (text) {
      const now = performance.now();
      this.firstTokenAt ??= now;
      this.lastTokenAt = now;
      c.text += text;
    }
    if (logprobs && logprobs.length) {
      c.tokens ||= [];
      for (const t of logprobs) {
        const top = (t.top_logprobs || []).map((a) => ({ token: a.token, logprob: a.logprob, bytes: a.bytes }));
        c.tokens.push({ token: t.token, logprob: t.logprob, bytes: t.bytes, top });
      }
    }
    if (finish) c.finish = finish;
  }
}

// conv: {system, turns (wire messages, tool calls and tool results included), prompt (null: the
// conversation continues after tool results, with no new user message)}.
function messages(conv) {
  return [...(conv.system ? [{ role: "system", content: conv.system }] : []), ...conv.turns,
    ...(conv.prompt === null ? [] : [{ role: "user", content: conv.prompt }])];
}

// The wires without tools: each turn's role and text.
const plain = (turns) => turns.map(({ role, content }) => ({ role, content }));

function openaiUsage(u) {
  return u ? { prompt: u.prompt_tokens, completion: u.completion_tokens, total: u.total_tokens, cost: u.estimated_cost } : null;
}

// OpenAI, DeepInfra and Infomaniak's successor.
const openai = {
  conversation: (conv, scope) => ({ model: scope.model, messages: messages(conv) }),
  stream(event, out) {
    if (event.data === "[DONE]") return false;
    const obj = JSON.parse(event.data);
    if (obj.error) throw new StreamError(readError("stream", obj), event.data);
    for (const c of obj.choices || []) {
      out.add(c.index, c.delta?.content || "", c.logprobs?.content, c.finish_reason);
      for (const piece of c.delta?.tool_calls || []) out.call(c.index, piece);
    }
    if (obj.usage) out.usage = openaiUsage(obj.usage);
    return true;
  },
  whole(body, out) {
    for (const c of body.choices) {
      out.add(c.index, c.message?.content || "", c.logprobs?.content, c.finish_reason);
      (c.message?.tool_calls || []).forEach((call, i) => out.call(c.index, call, i));
    }
    out.usage = openaiUsage(body.usage);
  },
};

const legacyUsage = (u) => (u ? { prompt: u.input_tokens, completion: u.output_tokens, total: u.total_tokens, cost: null } : null);

// Infomaniak's legacy /1/llm/{product}: no system role (the prompt goes in system_prompt).
const legacy = {
  conversation(conv, scope) {
    const body = { messages: [...plain(conv.turns), ...(conv.prompt === null ? [] : [{ role: "user", content: conv.prompt }])] };
    if (conv.system) body.system_prompt = conv.system;
    if (scope.model) body.model = scope.model;
    return body;
  },
  stream(event, out) {
    if (event.event === "error") throw new StreamError(readError("stream", JSON.parse(event.data)), event.data);
    if (event.data === "[DONE]") return false;
    const data = JSON.parse(event.data);
    for (const c of data.choices || []) out.add(c.index, c.delta?.content || "", null, c.finish_reason);
    if (data.usage) out.usage = legacyUsage(data.usage);
    return true;
  },
  whole(body, out) {
    for (const c of body.data.choices) out.add(c.index, c.message?.content || "", null, c.finish_reason);
    out.usage = legacyUsage(body.data.usage);
  },
};

function egpFold(obj, out) {
  const text = obj.completions?.[0]?.[1]?.[0] || "";
  out.add(0, text, obj.choices?.[0]?.logprobs?.content, obj.finish_reason);
  if (obj.prompt_tokens !== undefined && obj.prompt_tokens !== null) {
    out.usage = { prompt: obj.prompt_tokens, completion: obj.response_tokens, total: obj.prompt_tokens + obj.response_tokens, cost: null };
  }
}

// Scale EGP v4: the history and the new prompt apart; every streamed event a whole response.
const egp = {
  conversation(conv) {
    const history = [...(conv.system ? [{ role: "system", content: conv.system }] : []), ...plain(conv.turns)];
    return { chat_history: history, prompt: conv.prompt ?? "" };
  },
  stream(event, out) {
    if (event.event === "error") throw new StreamError(readError("stream", JSON.parse(event.data)), event.data);
    egpFold(JSON.parse(event.data), out);
    return true;
  },
  whole: (body, out) => egpFold(body, out),
};

export const WIRES = { openai, successor: openai, legacy, egp };
