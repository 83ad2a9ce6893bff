// A request as code that sends it again: curl, Python with the openai client, Scale's scale-gp
// SDK, or httpx. The key is never written out: the code reads it from $CHATFORGE_API_KEY.
// `req` is {url, path, dialect, headers (without the key), auth, body}.

// JSON text of a body whose integers may be BigInt (seeds past 2^53), with their exact digits.
export function toJSON(value, indent) {
  const big = [];
  const text = JSON.stringify(value, (k, v) => (typeof v === "bigint" ? `\u0000${big.push(v.toString()) - 1}` : v), indent);
  return text.replace(/"\\u0000(\d+)"/g, (_, i) => big[Number(i)]);
}

const shellQuote = (s) => `'${s.replaceAll("'", `'\\''`)}'`;

export function curl(req) {
  const lines = [`curl -sS${req.body.stream ? " -N" : ""} ${shellQuote(req.url)}`, "-H 'Content-Type: application/json'"];
  if (req.keyed) lines.push(req.auth === "x-api-key" ? `-H "x-api-key: $CHATFORGE_API_KEY"` : `-H "Authorization: Bearer $CHATFORGE_API_KEY"`);
  for (const [name, value] of Object.entries(req.headers)) lines.push(`-H ${shellQuote(`${name}: ${value}`)}`);
  lines.push(`-d ${shellQuote(toJSON(req.body, 2))}`);
  return lines.join(" \\\n  ");
}

// A Python literal for a JSON value, on one line when it fits, else one item per line.
export function py(value, indent = 0) {
  const pad = " ".repeat(indent + 4);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "bigint") return value.toString();
  if (typeof value === "string") return JSON.stringify(value);
  const array = Array.isArray(value);
  const items = array ? value.map((v) => py(v, indent + 4)) : Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${py(v, indent + 4)}`);
  const [open, close] = array ? ["[", "]"] : ["{", "}"];
  const flat = `${open}${items.join(", ")}${close}`;
  if (flat.length + indent <= 80 && !flat.includes("\n")) return flat;
  return `${open}\n${items.map((i) => `${pad}${i},`).join("\n")}\n${" ".repeat(indent)}${close}`;
}

function kwargs(entries) {
  return entries.map(([k, v]) => `    ${k}=${py(v, 4)},`).join("\n");
}

// The keyword arguments `chat.completions.create` takes; chatforge's other fields go in extra_body.
const OPENAI_KWARGS = new Set(["model", "messages", "frequency_penalty", "logit_bias", "logprobs", "max_completion_tokens",
  "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "temperature", "tool_choice", "tools",
  "parallel_tool_calls", "response_format", "top_logprobs", "top_p", "user", "prompt_cache_key"]);

export function openaiPython(req) {
  const base = req.url.slice(0, req.url.length - "/chat/completions".length);
  const known = Object.entries(req.body).filter(([k]) => OPENAI_KWARGS.has(k));
  const extra = Object.fromEntries(Object.entries(req.body).filter(([k]) => !OPENAI_KWARGS.has(k)));
  if (Object.keys(extra).length) known.push(["extra_body", extra]);
  const headers = Object.keys(req.headers).length ? `, default_headers=${py(req.headers)}` : "";
  const out = req.body.stream
    ? ["for chunk in response:", "    if chunk.choices:", "        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)",
      "    if chunk.usage:", "        print(\"\\n\", chunk.usage)"]
    : ["print(response.choices[0].message.content)", "print(response.usage)"];
  return [
    "import os", "", "from openai import OpenAI", "",
    `client = OpenAI(base_url=${py(base)}, api_key=os.environ.get("CHATFORGE_API_KEY", "unused")${headers})`,
    `response = client.chat.completions.create(\n${kwargs(known)}\n)`, ...out, "",
  ].join("\n");
}

export function scalePython(req) {
  const { chat_history, prompt, ...rest } = req.body;
  const deployment = decodeURIComponent(req.path.split("/")[3]);
  const account = req.headers["x-selected-account-id"];
  const client = `SGPClient(api_key=os.environ.get("CHATFORGE_API_KEY", "unused"), base_url=${py(req.origin)}`
    + `${account ? `, account_id=${py(account)}` : ""})`;
  const out = req.body.stream
    ? ["for chunk in response:", "    print(chunk.completions[0][1][0], end=\"\", flush=True)"]
    : ["print(response.completions[0][1][0])", "print(response.prompt_tokens, response.response_tokens)"];
  const args = kwargs([["chat_history", chat_history], ["prompt", prompt], ...Object.entries(rest)]);
  return [
    "import os", "", "from scale_gp import SGPClient", "", `client = ${client}`,
    `response = client.models.chat_completions.create(\n    ${py(deployment)},\n${args}\n)`, ...out, "",
  ].join("\n");
}

export function httpxPython(req) {
  const key = req.keyed ? `\nheaders["Authorization"] = "Bearer " + os.environ["CHATFORGE_API_KEY"]` : "";
  const send = req.body.stream
    ? [`with httpx.stream("POST", ${py(req.url)}, headers=headers, json=body, timeout=300) as response:`,
      "    for line in response.iter_lines():", "        print(line)"].join("\n")
    : `response = httpx.post(${py(req.url)}, headers=headers, json=body, timeout=300)\nprint(response.json())`;
  const imports = req.keyed ? "import os\n\nimport httpx" : "import httpx";
  return `${imports}\n\nheaders = ${py(req.headers)}${key}\nbody = ${py(req.body)}\n${send}\n`;
}

export const SNIPPETS = {
  curl: { label: "curl", make: curl },
  openai: { label: "Python (openai)", make: openaiPython },
  "scale-gp": { label: "Python (scale-gp)", make: scalePython },
  httpx: { label: "Python (httpx)", make: httpxPython },
};
