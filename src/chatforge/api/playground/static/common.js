// What both pages share: the key and account kept in this tab's sessionStorage only, calls to the
// server's own API with them, error envelopes read whatever their dialect, and a small DOM helper.

const KEY = "chatforge.key";
const ACCOUNT = "chatforge.account";

export const credentials = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
  get account() { return sessionStorage.getItem(ACCOUNT) || ""; },
  set account(value) { value ? sessionStorage.setItem(ACCOUNT, value) : sessionStorage.removeItem(ACCOUNT); },
};

// The headers that carry the key: `Authorization: Bearer` (OpenAI, DeepInfra, Infomaniak, /v1/usage)
// or `x-api-key` (EGP); `x-selected-account-id` when an account is named.
export function authHeaders(auth) {
  const headers = {};
  if (credentials.key) {
    if (auth === "x-api-key") headers["x-api-key"] = credentials.key;
    else headers["Authorization"] = `Bearer ${credentials.key}`;
  }
  if (credentials.account) headers["x-selected-account-id"] = credentials.account;
  return headers;
}

// The status, code and message of an error response, in whichever envelope it came:
// OpenAI {error: {message, type, code}}, Infomaniak {result: "error", error: {code, description}},
// EGP {detail, code, param}, or anything else as text.
export function readError(status, body, text) {
  if (body && typeof body === "object") {
    if (body.error && typeof body.error === "object") {
      const e = body.error;
      return { status, code: e.code || e.type || "error", message: e.message || e.description || "" };
    }
    if (typeof body.detail === "string") return { status, code: body.code || "error", message: body.detail };
  }
  return { status, code: status ? `http_${status}` : "network_error", message: (text || "").slice(0, 500) };
}

// GET a JSON document of this server; {ok, status, body, error}.
export async function getJSON(path, auth = "bearer") {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders(auth) });
  } catch (err) {
    return { ok: false, status: 0, error: readError(0, null, `Could not reach the server: ${err.message}`) };
  }
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON: reported as text */ }
  if (!response.ok) return { ok: false, status: response.status, body, error: readError(response.status, body, text) };
  return { ok: true, status: response.status, body };
}

// el("div", {class: "x", onclick: f}, child, "text") -> an element.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// An error as the page shows it: status, code and message, the raw body on demand.
export function errorView(error, raw) {
  return el("div", { class: "error", role: "alert" },
    el("p", { class: "error-head" },
      el("span", { class: "badge badge-error" }, error.status ? String(error.status) : "—"),
      el("code", {}, error.code)),
    el("p", { class: "error-message" }, error.message || "(no message)"),
    raw ? el("details", {}, el("summary", {}, "Response body"), el("pre", {}, raw)) : null);
}

// Wire the credential inputs of a page to sessionStorage; `changed` runs when either changes.
export function bindCredentials(keyInput, accountInput, toggle, changed) {
  keyInput.value = credentials.key;
  accountInput.value = credentials.account;
  keyInput.addEventListener("change", () => { credentials.key = keyInput.value.trim(); changed(); });
  accountInput.addEventListener("change", () => { credentials.account = accountInput.value.trim(); changed(); });
  toggle.addEventListener("click", () => {
    const shown = keyInput.type === "text";
    keyInput.type = shown ? "password" : "text";
    toggle.setAttribute("aria-pressed", String(!shown));
    toggle.textContent = shown ? "Show" : "Hide";
  });
}

// Copy text to the clipboard; on a page without the Clipboard API (plain http on another host),
// through a selected text area.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = el("textarea", { class: "offscreen", "aria-hidden": "true" });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

export function formatCost(usd) {
  if (usd === null || usd === undefined) return "—";
  if (usd === 0) return "$0";
  return usd < 0.01 ? `$${usd.toPrecision(3)}` : `$${usd.toFixed(4)}`;
}
