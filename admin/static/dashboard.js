// The Sidecache dashboard: reads the admin JSON API with the operator's bearer token.
//
// DATA LAYER. Each endpoint has one `load*`/action function below that maps its JSON into the
// page's view model; adapt a shape there and nothing else changes. The shapes follow
// admin/models.py (alternative key names in brackets are accepted too):
//
// GET  /api/admin/dashboard/overview?window=24h
//   {"requests": 1234, "hits": 800, "hit_rate": 0.648, "cost_usd": 12.34, "saved_usd": 5.67,
//    "prompt_tokens": 9000, "completion_tokens": 800, "cached_tokens": 4000,
//    "cache_write_tokens": 100, "reasoning_tokens": 300, …}
//   [hit_rate missing → hits / requests; cost_usd: cost; saved_usd: savings_usd, saved;
//    a token kind missing → 0]
// GET  /api/admin/dashboard/costs?window=24h&bucket=hour&group_by=model   (bucket=day for 7d/30d)
//   {"series": [{"bucket": "2026-11-24T10:00:00Z", "group": "gpt-4o-mini", "requests": 3,
//                "cost_usd": 1.5, "saved_usd": 0.5}, …], …}
//   [series: buckets, points, or a bare list; bucket: start, time, ts;
//    rows sharing a bucket (one per group) are summed into one point]
// GET  /api/admin/dashboard/costs?window=24h&bucket=day&group_by=request_type
//   the same rows, also with the token kinds of overview; summed per group (endpoint)
// GET  /api/admin/dashboard/cache?window=24h
//   {"by_endpoint": [{"key": "chat.completions", "requests": 10, "hits": 6,
//                     "hit_rate": 0.6, "saved_usd": 0.1}],
//    "by_persona":  [{"dimension": "tone", "value": "formal", "requests": 4, "hits": 2,
//                     "hit_rate": 0.5}], …}
//    "semantic": {"enabled": true, "hits": 3, "saved_usd": 0.02, "exact_hits": 9,
//                 "exact_saved_usd": 0.05, "similarity": [{"lower": 0.9, "upper": 0.95,
//                 "hits": 2}, …]}, …}
//   [key: endpoint, name; lists may be maps {name: {hit_rate} | number}; semantic missing →
//    no semantic figures]
// GET  /api/admin/dashboard/circuits
//   {"upstream": "closed", "circuits": [{"name": "upstream", "state": "open", "failures": 5,
//     "last_failure": {"at": "2026-11-24T10:00:00Z", "error": "timeout"} | null,
//     "opened_at": "2026-11-24T10:00:00Z" | null, "opened_count": 1}]}
//   [circuits: breakers, a bare list, or a map {name: {state, …}}; last_failure: a string]
// POST /api/admin/dashboard/circuits/reset      body {"breaker": name}; answer ignored, the
//   page reloads /circuits afterwards.
// POST /api/admin/dashboard/cache/invalidate    body {"selectors": [{…}, …]} → any JSON,
//   shown as is. A selector is {"tenant"|"user_id"|"model"|"endpoint": str,
//   "persona": {dimension: value}} (fields ANDed) or {"all": true} (docs/design.md §3).
// Errors: {"error": {"message": …}} with a 4xx/5xx status.

import { barChart, lineChart } from "./charts.js";

const API = "/api/admin/dashboard";
const TOKEN_KEY = "sidecache.adminToken";

// ---- data layer ---------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function call(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json().catch(() => null);
  if (!response.ok) {
    const message = json?.error?.message ?? `${response.status} ${response.statusText}`;
    throw new ApiFailure(message, response.status);
  }
  return json;
}

function pick(obj, ...keys) {
  for (const key of keys) if (obj?.[key] !== undefined && obj[key] !== null) return obj[key];
  return undefined;
}

function number(obj, ...keys) {
  const value = Number(pick(obj, ...keys));
  return Number.isFinite(value) ? value : 0;
}

// A list of rows from a list, or from a map {name: row | number} (name goes into `nameKey`).
function rows(value, nameKey) {
  if (Array.isArray(value)) return value;
  if (value == null || typeof value !== "object") return [];
  return Object.entries(value).map(([name, row]) =>
    typeof row === "object" && row !== null ? { [nameKey]: name, ...row }
      : { [nameKey]: name, hit_rate: row });
}

function hitRate(row) {
  const rate = pick(row, "hit_rate", "rate");
  if (rate !== undefined) return Number(rate) || 0;
  const requests = number(row, "requests", "total");
  return requests > 0 ? number(row, "hits") / requests : 0;
}

export async function loadOverview(span) {
  const json = await call(`/overview?window=${encodeURIComponent(span)}`);
  return {
    requests: number(json, "requests", "total_requests"),
    hitRate: hitRate(json),
    cost: number(json, "cost_usd", "cost"),
    saved: number(json, "saved_usd", "savings_usd", "saved"),
    tokens: tokenKinds(json),
  };
}

// The token kinds of an overview or costs row (README, "The ledger").
function tokenKinds(row) {
  return {
    input: number(row, "prompt_tokens"), output: number(row, "completion_tokens"),
    cached: number(row, "cached_tokens"), cacheWrite: number(row, "cache_write_tokens"),
    reasoning: number(row, "reasoning_tokens"),
  };
}

export async function loadEndpoints(span) {
  const json = await call(
    `/costs?window=${encodeURIComponent(span)}&bucket=day&group_by=request_type`);
  const list = Array.isArray(json) ? json : pick(json, "series", "buckets", "points") ?? [];
  const byEndpoint = new Map();
  for (const row of list) {
    const name = String(pick(row, "group", "request_type", "endpoint") ?? "?");
    const sum = byEndpoint.get(name) ?? { name, requests: 0, cost: 0, saved: 0,
      tokens: tokenKinds({}) };
    sum.requests += number(row, "requests");
    sum.cost += number(row, "cost_usd", "cost");
    sum.saved += number(row, "saved_usd", "savings_usd", "saved");
    for (const [kind, count] of Object.entries(tokenKinds(row))) sum.tokens[kind] += count;
    byEndpoint.set(name, sum);
  }
  return [...byEndpoint.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
}

export async function loadCosts(span) {
  const bucket = span === "7d" || span === "30d" ? "day" : "hour";
  const json = await call(
    `/costs?window=${encodeURIComponent(span)}&bucket=${bucket}&group_by=model`);
  const list = Array.isArray(json) ? json : pick(json, "series", "buckets", "points") ?? [];
  const byTime = new Map();
  for (const row of list) {
    const at = String(pick(row, "bucket", "start", "time", "ts") ?? "");
    const point = byTime.get(at) ?? { at, cost: 0, saved: 0 };
    point.cost += number(row, "cost_usd", "cost");
    point.saved += number(row, "saved_usd", "savings_usd", "saved");
    byTime.set(at, point);
  }
  return [...byTime.values()].sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
}

export async function loadCache(span) {
  const json = await call(`/cache?window=${encodeURIComponent(span)}`);
  const endpoints = rows(pick(json, "by_endpoint", "endpoints"), "key").map((row) => ({
    label: String(pick(row, "key", "endpoint", "name") ?? "?"), value: hitRate(row),
  }));
  const persona = rows(pick(json, "by_persona", "by_persona_dimension", "persona"), "dimension")
    .map((row) => {
      const dimension = String(pick(row, "dimension", "name") ?? "?");
      const value = pick(row, "value");
      const label = value === undefined ? dimension : `${dimension}=${value}`;
      return { label, value: hitRate(row) };
    });
  const semantic = pick(json, "semantic") ?? {};
  const buckets = Array.isArray(semantic.similarity) ? semantic.similarity : [];
  const semanticHits = number(semantic, "hits");
  const similarity = buckets
    .filter((b) => number(b, "hits") > 0)
    .map((b) => ({
      label: `${Number(b.lower).toFixed(2)}–${Number(b.upper).toFixed(2)} (${number(b, "hits")})`,
      value: semanticHits ? number(b, "hits") / semanticHits : 0,
    }));
  return {
    endpoints, persona, similarity,
    exactHits: number(semantic, "exact_hits"), exactSaved: number(semantic, "exact_saved_usd"),
    semanticHits, semanticSaved: number(semantic, "saved_usd"),
  };
}

function failureText(failure) {
  if (failure == null) return "";
  if (typeof failure !== "object") return String(failure);
  return [pick(failure, "at"), pick(failure, "error")].filter((x) => x !== undefined).join(" ");
}

export async function loadCircuits() {
  const json = await call("/circuits");
  const list = Array.isArray(json) ? json : pick(json, "circuits", "breakers") ?? json;
  return rows(list, "name").map((row) => ({
    name: String(pick(row, "name", "breaker") ?? "?"),
    state: String(pick(row, "state") ?? "unknown"),
    failures: number(row, "failures", "fail_counter"),
    lastFailure: failureText(pick(row, "last_failure")),
    openedAt: String(pick(row, "opened_at") ?? ""),
  }));
}

// GET  /api/admin/dashboard/upstreams
//   {"upstreams": [{"name", "host", "models", "state", "served", "share", "retries"}],
//    "fallbacks": [{"from", "to", "count"}], "retries": n, "fallbacks_total": n}
export async function loadUpstreams() {
  const json = await call("/upstreams");
  return {
    upstreams: rows(pick(json, "upstreams") ?? [], "name").map((row) => ({
      name: String(pick(row, "name") ?? "?"),
      host: String(pick(row, "host") ?? ""),
      state: String(pick(row, "state") ?? "unknown"),
      served: number(row, "served"),
      share: number(row, "share"),
      retries: number(row, "retries"),
    })),
    fallbacks: rows(pick(json, "fallbacks") ?? [], "from").map((row) => ({
      from: String(pick(row, "from") ?? "?"),
      to: String(pick(row, "to") ?? "?"),
      count: number(row, "count"),
      })),
    };
}

// GET /api/admin/dashboard/rate-limits
//   {"tenants": [{"tenant", "requests": {limit, used, remaining, reset_ms} | null, "tokens": …}],
//    "budget_downgrades": 3, …}
export async function loadRateLimits() {
  const json = await call("/rate-limits");
  const use = (u) => (u ? `${count.format(number(u, "used"))} / ${count.format(number(u, "limit"))}`
    : "—");
  return {
    downgrades: number(json, "budget_downgrades"),
    tenants: (pick(json, "tenants") ?? []).map((t) => ({
      tenant: String(pick(t, "tenant") ?? "?"),
      requests: use(t.requests),
      tokens: use(t.tokens),
      reset: `${(Math.max(number(t.requests, "reset_ms"), number(t.tokens, "reset_ms")) / 1000)
        .toFixed(1)} s`,
    })),
  };
}

export async function resetBreaker(name) {
  await call("/circuits/reset", { method: "POST", body: { breaker: name } });
}

export async function invalidate(selectors) {
  return call("/cache/invalidate", { method: "POST", body: { selectors } });
}

// ---- rendering ----------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const count = new Intl.NumberFormat("en-US");
const cents = new Intl.NumberFormat("en-US", {
  style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 4,
});
// Cached calls cost fractions of a cent: show those with three significant digits.
const tiny = new Intl.NumberFormat("en-US", {
  style: "currency", currency: "USD", maximumSignificantDigits: 3,
});
const usd = { format: (v) => (v !== 0 && Math.abs(v) < 0.01 ? tiny : cents).format(v) };
const percent = (v) => `${(v * 100).toFixed(1)}%`;
const shortTime = (at) => (at.length >= 16 && at[10] === "T" ? at.slice(5, 16).replace("T", " ") : at);

function showError(message) {
  $("error").textContent = message;
  $("error").classList.toggle("hidden", !message);
}

function renderOverview(view) {
  $("fig-requests").textContent = count.format(view.requests);
  $("fig-hit-rate").textContent = percent(view.hitRate);
  $("fig-cost").textContent = usd.format(view.cost);
  $("fig-saved").textContent = usd.format(view.saved);
  $("fig-tokens-input").textContent = count.format(view.tokens.input);
  $("fig-tokens-cached").textContent = count.format(view.tokens.cached);
  $("fig-tokens-cache-write").textContent = count.format(view.tokens.cacheWrite);
  $("fig-tokens-output").textContent = count.format(view.tokens.output);
  $("fig-tokens-reasoning").textContent = count.format(view.tokens.reasoning);
}

function renderEndpoints(endpoints) {
  $("endpoints").tBodies[0].replaceChildren(...endpoints.map((e) => {
    const tr = document.createElement("tr");
    tr.dataset.endpoint = e.name;
    const t = e.tokens;
    tr.append(cell(e.name), cell(count.format(e.requests), "number"),
      cell(usd.format(e.cost), "number"), cell(usd.format(e.saved), "number"),
      ...[t.input, t.cached, t.cacheWrite, t.output, t.reasoning]
        .map((n) => cell(count.format(n), "number")));
    return tr;
  }));
}

function renderCosts(points) {
  lineChart($("chart-costs"), {
    labels: points.map((p) => shortTime(p.at)),
    series: [
      { name: "cost", cls: "cost", values: points.map((p) => p.cost) },
      { name: "saved", cls: "saved", values: points.map((p) => p.saved) },
    ],
  }, (v) => usd.format(v));
}

function renderCache(view) {
  barChart($("chart-endpoints"), view.endpoints, percent);
  barChart($("chart-persona"), view.persona, percent);
  $("fig-exact-hits").textContent = count.format(view.exactHits);
  $("fig-exact-saved").textContent = usd.format(view.exactSaved);
  $("fig-semantic-hits").textContent = count.format(view.semanticHits);
  $("fig-semantic-saved").textContent = usd.format(view.semanticSaved);
  barChart($("chart-similarity"), view.similarity, percent);
}

function cell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderBreakers(breakers) {
  $("breakers").tBodies[0].replaceChildren(...breakers.map((b) => {
    const tr = document.createElement("tr");
    tr.dataset.breaker = b.name;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "reset";
    button.dataset.breaker = b.name;
    button.textContent = "Reset";
    const action = document.createElement("td");
    action.append(button);
    tr.append(cell(b.name), cell(b.state, `state state-${b.state.replace(/[^a-z_-]/gi, "")}`),
      cell(String(b.failures)), cell(b.lastFailure), cell(b.openedAt), action);
    return tr;
  }));
}

function renderUpstreams({ upstreams, fallbacks }) {
  $("upstreams").tBodies[0].replaceChildren(...upstreams.map((u) => {
    const tr = document.createElement("tr");
    tr.dataset.upstream = u.name;
    tr.append(cell(u.name), cell(u.host),
      cell(u.state, `state state-${u.state.replace(/[^a-z_-]/gi, "")}`),
      cell(String(u.served)), cell(`${(u.share * 100).toFixed(1)} %`), cell(String(u.retries)));
    return tr;
  }));
  $("fallbacks").textContent = fallbacks.length === 0 ? "No fallbacks since start-up."
    : "Fallbacks: " + fallbacks.map((f) => `${f.from} → ${f.to}: ${f.count}`).join(", ");
}

function renderRateLimits(view) {
  $("fig-downgrades").textContent = count.format(view.downgrades);
  $("rate-limits").tBodies[0].replaceChildren(...view.tenants.map((t) => {
    const tr = document.createElement("tr");
    tr.append(cell(t.tenant), cell(t.requests), cell(t.tokens), cell(t.reset));
    return tr;
  }));
}

// ---- wiring -------------------------------------------------------------------------------

function signedIn(yes) {
  $("login").classList.toggle("hidden", yes);
  $("dashboard").classList.toggle("hidden", !yes);
  $("window-form").classList.toggle("hidden", !yes);
}

function failed(error) {
  showError(error.message);
  if (error.status === 401 || error.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    signedIn(false);
  }
}

async function refresh() {
  showError("");
  const span = $("window").value;
  const results = await Promise.allSettled([
    loadOverview(span).then(renderOverview),
    loadCosts(span).then(renderCosts),
    loadEndpoints(span).then(renderEndpoints),
    loadCache(span).then(renderCache),
    loadCircuits().then(renderBreakers),
    loadUpstreams().then(renderUpstreams),
    loadRateLimits().then(renderRateLimits),
  ]);
  const failure = results.find((r) => r.status === "rejected");
  if (failure) failed(failure.reason);
}

const pending = [];

function selectorFromForm(form) {
  const data = new FormData(form);
  if (data.get("all") === "on") return { all: true };
  const selector = {};
  for (const field of ["tenant", "user_id", "model", "endpoint"]) {
    const value = String(data.get(field) ?? "").trim();
    if (value) selector[field] = value;
  }
  const dim = String(data.get("persona_dim") ?? "");
  const value = String(data.get("persona_value") ?? "").trim();
  if (dim && value) selector.persona = { [dim]: value };
  return Object.keys(selector).length > 0 ? selector : null;
}

function renderPending() {
  $("selectors").replaceChildren(...pending.map((s) => {
    const li = document.createElement("li");
    li.textContent = JSON.stringify(s);
    return li;
  }));
}

async function onInvalidate(form) {
  showError("");
  const current = selectorFromForm(form);
  const selectors = current ? [...pending, current] : [...pending];
  if (selectors.length === 0) {
    showError("Fill in at least one field, or tick Everything.");
    return;
  }
  try {
    const answer = await invalidate(selectors);
    $("invalidate-result").textContent = JSON.stringify(answer, null, 2);
    $("invalidate-result").classList.remove("hidden");
    pending.length = 0;
    form.reset();
    renderPending();
  } catch (error) {
    failed(error);
  }
}

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    signedIn(true);
    refresh();
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    signedIn(false);
  });
  $("refresh").addEventListener("click", refresh);
  $("window").addEventListener("change", refresh);
  $("breakers").addEventListener("click", async (event) => {
    const button = event.target.closest("button.reset");
    if (!button) return;
    showError("");
    try {
      await resetBreaker(button.dataset.breaker);
      renderBreakers(await loadCircuits());
    } catch (error) {
      failed(error);
    }
  });
  const form = $("invalidate-form");
  $("add-selector").addEventListener("click", () => {
    const selector = selectorFromForm(form);
    if (selector) pending.push(selector);
    form.reset();
    renderPending();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onInvalidate(form);
  });
  if (sessionStorage.getItem(TOKEN_KEY)) {
    signedIn(true);
    refresh();
  }
}

wire();
