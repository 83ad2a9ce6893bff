// The playground page: pick a dialect and what the key may use, set the dialect's parameters,
// chat, and see the answer stream in with its timing, usage and cost, and the request as code.

import { bindCredentials, copyText, credentials, el, errorView, formatCost, getJSON } from "./common.js";
import { buildPanel, setPath } from "./params.js";
import { SNIPPETS, toJSON } from "./snippets.js";
import { Chat } from "./chat.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_PRODUCT = "10775";  // the Infomaniak pages' own example; open mode runs any id
const DEFAULT_DEPLOYMENT = "my-deployment";

const state = {
  spec: null,
  dialect: null,
  panels: {},  // wire -> {panel, box}: each wire keeps its values while another is shown
  presets: null,  // Infomaniak's profile_type presets, from /1/llm/profiles
  lastSent: null,  // the request the code panel shows until something changes
  tab: "curl",
  scopeLoads: 0,
  deployments: [],
};

function wireFields(name) {
  const spec = state.spec.wire[name];
  if (!spec.extends) return spec.fields;
  return wireFields(spec.extends).map((f) => ({ ...f, ...(spec.overrides?.[f.name] || {}) }));
}

function panelFor(wire) {
  if (!state.panels[wire]) {
    const box = el("div", { class: "panel", dataset: { wire } });
    $("params").append(box);
    const panel = buildPanel(box, state.spec.groups, wireFields(wire), changed, wire);
    const profile = panel.rows.profile_type?.control;
    if (profile) {
      const apply = () => state.presets && panel.setPresets(state.presets[profile.value || "standard"], profile.value || "standard");
      profile.addEventListener("change", apply);
      loadPresets().then(apply);
    }
    state.panels[wire] = { panel, box };
  }
  return state.panels[wire];
}

async function loadPresets() {
  if (state.presets) return;
  const got = await getJSON("/1/llm/profiles");
  if (got.ok) state.presets = got.body.data;
}

function selectDialect(id) {
  state.dialect = { id, ...state.spec.dialects[id] };
  sessionStorage.setItem("chatforge.dialect", id);
  $("route").replaceChildren("POST ", el("code", {}, state.dialect.path));
  const { box } = panelFor(state.dialect.wire);
  for (const other of $("params").children) other.hidden = other !== box;
  for (const field of document.querySelectorAll(".field[data-scope]")) field.hidden = field.dataset.scope !== state.dialect.scope;
  if (!state.dialect.snippets.includes(state.tab) && state.tab !== "body") state.tab = "curl";
  loadScope();
  changed();
}

// What the key may use under this dialect: models, products (and their models) or deployments.
async function loadScope() {
  const load = ++state.scopeLoads;
  document.body.dataset.listing = "loading";
  try {
    await listScope(load);
  } finally {
    if (load === state.scopeLoads) document.body.dataset.listing = "loaded";
  }
}

async function listScope(load) {
  const d = state.dialect;
  $("scope-error").replaceChildren();
  const fail = (got) => load === state.scopeLoads && $("scope-error").replaceChildren(errorView(got.error));
  if (d.scope === "model") {
    const got = await getJSON(d.id === "deepinfra" ? "/v1/openai/models" : "/v1/models");
    if (!got.ok) return fail(got);
    fillSelect($("model"), got.body.data.map((m) => [m.id, `${m.id} (${m.context_length} tokens)`]));
  } else if (d.scope === "product") {
    const got = await getJSON("/1/ai");
    if (!got.ok) return fail(got);
    $("products").replaceChildren(...got.body.data.map((p) => el("option", { value: p.id }, `${p.name || "product"} (${p.models.join(", ")})`)));
    keepOrFirst($("product"), got.body.data.map((p) => String(p.id)), DEFAULT_PRODUCT);
    await loadProductModels();
  } else {
    const got = await getJSON("/v4/model-deployments?limit=1000", "x-api-key");
    if (!got.ok) return fail(got);
    state.deployments = got.body.items;
    $("deployments").replaceChildren(...state.deployments.map((i) => el("option", { value: i.id }, i.model_instance_id)));
    keepOrFirst($("deployment"), state.deployments.map((i) => i.id), DEFAULT_DEPLOYMENT);
    showDeploymentModel();
  }
  if (load === state.scopeLoads) changed();
}

async function loadProductModels() {
  const product = $("product").value.trim();
  if (!product) return;
  const got = await getJSON(`/1/ai/${encodeURIComponent(product)}/openai/models`);
  if (!got.ok) {
    $("scope-error").replaceChildren(errorView(got.error));
    fillSelect($("product-model"), []);
    return;
  }
  $("scope-error").replaceChildren();
  const models = got.body.data.map((m) => [m.id, m.id]);
  fillSelect($("product-model"), state.dialect.wire === "legacy" ? [["", "(the product's default)"], ...models] : models);
  changed();
}

// A listed id stays; another key's id gives way to this key's first one. With nothing listed
// (open mode), any id runs, so the one typed stays, or the pages' own example fills in.
function keepOrFirst(input, listed, example) {
  const value = input.value.trim();
  if (listed.length && !listed.includes(value)) input.value = listed[0];
  else if (!value) input.value = example;
}

function showDeploymentModel() {
  const item = state.deployments.find((i) => i.id === $("deployment").value.trim());
  $("deployment-model").textContent = item ? `Serves ${item.model_instance_id}.` : "Not listed: open mode runs it on the default model.";
}

function fillSelect(select, options) {
  const previous = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (options.some(([value]) => value === previous)) select.value = previous;
}

function scope() {
  const d = state.dialect;
  if (d.scope === "model") return { model: $("model").value };
  if (d.scope === "product") return { product: $("product").value.trim(), model: $("product-model").value };
  return { deployment: $("deployment").value.trim() };
}

// The request Send would post now: {req, errors}. The body puts the conversation first, then
// the parameters that are set, in the panel's order.
export function buildRequest(prompt) {
  const d = state.dialect;
  const where = scope();
  const continuing = !prompt.trim() && chat.continues();  // after tool results: no new user message
  const conversation = { system: $("system").value.trim(), turns: chat.history(), prompt: continuing ? null : prompt };
  const body = chat.wire(d.wire).conversation(conversation, where);
  const { values, errors } = state.panels[d.wire].panel.read();
  for (const [path, value] of values) setPath(body, path, value);
  if (d.scope !== "model" && !where[d.scope]) errors.unshift(`choose a ${d.scope}`);
  const path = d.path.replace("{product}", encodeURIComponent(where.product || ""))
    .replace("{deployment}", encodeURIComponent(where.deployment || ""));
  const headers = credentials.account ? { "x-selected-account-id": credentials.account } : {};
  const req = { dialect: d.id, wire: d.wire, origin: location.origin, url: location.origin + path, path, auth: d.auth,
    keyed: Boolean(credentials.key), headers, body };
  return { req, errors };
}

let pending = false;
function changed() {
  state.lastSent = null;
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; renderCode(); });
}

function renderCode() {
  if (!state.dialect) return;
  const tabs = [...state.dialect.snippets, "body"];
  $("code-tabs").replaceChildren(...tabs.map((name) => el("button", {
    type: "button", role: "tab", id: `tab-${name}`, "aria-selected": String(name === state.tab),
    tabindex: name === state.tab ? "0" : "-1", dataset: { tab: name },
    onclick: () => { state.tab = name; renderCode(); $(`tab-${name}`).focus(); },
  }, name === "body" ? "JSON body" : SNIPPETS[name].label)));
  $("code").setAttribute("aria-labelledby", `tab-${state.tab}`);
  let req = state.lastSent?.req;
  if (req) {
    $("code-note").textContent = `The request sent at ${state.lastSent.at}; the key is read from $CHATFORGE_API_KEY.`;
  } else {
    const built = buildRequest($("composer").value);
    req = built.req;
    $("code-note").textContent = built.errors.length ? `Not ready: ${built.errors.join("; ")}.`
      : "The request Send will post (preview); the key is read from $CHATFORGE_API_KEY.";
  }
  $("code").textContent = state.tab === "body" ? toJSON(req.body, 2) : SNIPPETS[state.tab].make(req);
}

function showStats(outcome, requestId, cost) {
  const set = (name, text) => { document.querySelector(`[data-stat="${name}"]`).textContent = text; };
  const u = outcome?.usage;
  const streamed = outcome && outcome.firstTokenAt !== null && outcome.streamed;
  set("ttft", streamed ? `${Math.round(outcome.firstTokenAt - outcome.startedAt)} ms` : outcome ? "— (not streamed)" : "—");
  let speed = "—";
  if (outcome && u && u.completion > 1 && streamed && outcome.lastTokenAt > outcome.firstTokenAt) {
    speed = `${((u.completion - 1) / ((outcome.lastTokenAt - outcome.firstTokenAt) / 1000)).toFixed(1)}`;
  } else if (outcome && u && outcome.endedAt) {
    speed = `${(u.completion / ((outcome.endedAt - outcome.startedAt) / 1000)).toFixed(1)} (overall)`;
  }
  set("speed", speed);
  set("finish", outcome ? outcome.choices.map((c) => c?.finish || "—").join(", ") || "—" : "—");
  set("prompt", u ? String(u.prompt) : "—");
  set("completion", u ? String(u.completion) : "—");
  set("cost", cost ?? "—");
  set("request-id", requestId || "—");
}

const chat = new Chat({
  transcript: $("transcript"),
  empty: $("empty-transcript"),
  status: $("status"),
  errorBox: $("error"),
  build: () => buildRequest($("composer").value),
  sent(req) {
    state.lastSent = { req, at: new Date().toLocaleTimeString() };
    renderCode();
  },
  finished(outcome, requestId) {
    if (!outcome) return showStats(null, requestId, "—");
    const fromResponse = outcome?.usage?.cost;
    showStats(outcome, requestId, fromResponse !== undefined && fromResponse !== null ? formatCost(fromResponse) : "…");
    if ((fromResponse === undefined || fromResponse === null) && requestId) meteredCost(outcome, requestId);
  },
  composer: $("composer"),
  changed,
});

// The dialects without a cost in their usage (Infomaniak legacy, EGP): the request's usage row.
async function meteredCost(outcome, requestId) {
  for (let attempt = 0; attempt < 20; attempt++) {
    const got = await getJSON(`/v1/usage/requests/${encodeURIComponent(requestId)}`);
    if (got.ok) return showStats(outcome, requestId, `${formatCost(got.body.estimated_cost)} (usage row)`);
    if (got.status !== 404) break;
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  showStats(outcome, requestId, "— (no usage row)");
}

async function init() {
  state.spec = await (await fetch("/playground/static/dialects.json")).json();
  const select = $("dialect");
  select.replaceChildren(...Object.entries(state.spec.dialects).map(([id, d]) => el("option", { value: id }, d.label)));
  select.value = state.spec.dialects[sessionStorage.getItem("chatforge.dialect")] ? sessionStorage.getItem("chatforge.dialect") : "openai";
  select.addEventListener("change", () => selectDialect(select.value));
  bindCredentials($("key"), $("account"), $("key-toggle"), () => { loadScope(); changed(); });
  $("connection").addEventListener("submit", (event) => event.preventDefault());
  $("product").addEventListener("change", loadProductModels);
  $("deployment").addEventListener("change", () => { showDeploymentModel(); changed(); });
  for (const id of ["model", "product-model", "system", "composer", "product", "deployment"]) $(id).addEventListener("input", changed);
  $("copy").addEventListener("click", async () => {
    await copyText($("code").textContent);
    $("copy-status").textContent = "Copied.";
    setTimeout(() => { $("copy-status").textContent = ""; }, 2000);
  });
  $("code-tabs").addEventListener("keydown", (event) => {
    const tabs = [...$("code-tabs").children];
    const at = tabs.indexOf(document.activeElement);
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (at < 0 || !step) return;
    tabs[(at + step + tabs.length) % tabs.length].click();
  });
  selectDialect(select.value);
  document.body.dataset.ready = "true";
}

init();
