// tidal dashboard: polls the admin API with the admin key and draws what it answers.
// Vanilla JS, no build step. Data goes into the page through textContent only, never as HTML.
"use strict";

const POLL_MS = 1500;
const USAGE_EVERY = 2; // polls (3 s): the usage report sums every activation, so it is asked less often
const KEY_SLOT = "tidal.adminKey"; // sessionStorage: gone when the tab closes

const state = {
  key: sessionStorage.getItem(KEY_SLOT),
  selected: null, // function name shown in the detail panel
  openActivation: null, // activation whose logs are shown
  polls: 0,
  costs: null, // function -> cost, or "n/a" when the usage API is missing
  timer: null,
  generation: 0, // a poll loop of an older generation stops: one loop runs at a time
};

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${state.key}` } });
  if (response.status === 401 || response.status === 403) throw new Unauthorized(`${response.status}`);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const message = body.error ? `${body.error.type}: ${body.error.message}` : response.statusText;
    const error = new Error(`${path}: ${response.status} ${message}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// -- login ---------------------------------------------------------------------------------------

function showLogin(message) {
  clearTimeout(state.timer);
  state.generation += 1;
  state.key = null;
  sessionStorage.removeItem(KEY_SLOT);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("key").focus();
}

async function login(event) {
  event.preventDefault();
  state.key = $("key").value.trim();
  try {
    await api("/v1/functions");
  } catch (error) {
    const why = error instanceof Unauthorized ? `the gateway refused that key (${error.message})` : error.message;
    showLogin(why);
    return;
  }
  sessionStorage.setItem(KEY_SLOT, state.key);
  $("key").value = "";
  start();
}

function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  $("no-charts").hidden = chartsAvailable();
  state.polls = 0;
  refreshNow();
}

function chartsAvailable() {
  return typeof window.Plotly !== "undefined";
}

// -- polling -------------------------------------------------------------------------------------

function refreshNow() {
  clearTimeout(state.timer);
  state.generation += 1;
  poll(state.generation);
}

async function poll(generation) {
  try {
    const listing = await api("/v1/functions");
    const names = listing.functions.map((f) => f.name);
    if (state.polls % USAGE_EVERY === 0) state.costs = await costs();
    renderFunctions(listing.functions);
    if (!names.includes(state.selected)) state.selected = names.length ? names[0] : null;
    // Shown before the charts are drawn: plotly sizes a chart by its container, 0 wide while hidden.
    $("detail").hidden = !state.selected;
    if (state.selected) await renderDetail(state.selected, generation);
    $("fetch-error").textContent = "";
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("the gateway no longer accepts this key");
    $("fetch-error").textContent = `refresh failed: ${error.message}`;
  }
  if (generation !== state.generation) return;
  state.polls += 1;
  state.timer = setTimeout(() => poll(generation), POLL_MS);
}

async function costs() {
  try {
    const usage = await api("/v1/usage?by=function");
    return Object.fromEntries((usage.rows || []).map((row) => [row.key, row.cost]));
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    return "n/a"; // no usage API on this gateway (404) or it failed: the rest of the page goes on
  }
}

function costOf(name) {
  if (state.costs === null || state.costs === "n/a") return "n/a";
  const cost = state.costs[name];
  return typeof cost === "number" ? `$${cost.toFixed(cost < 0.01 ? 8 : 4)}` : "$0";
}

// -- functions table -----------------------------------------------------------------------------

function functionState(fn) {
  const i = fn.instances;
  if (i.start_error && i.ready === 0) return "failing to start";
  if (i.starting > 0) return "starting";
  if (i.ready > 0) return i.queued > 0 ? "busy" : "ready";
  return i.desired > 0 ? "scaling up" : "scaled to zero";
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderFunctions(functions) {
  const body = $("functions").tBodies[0];
  body.replaceChildren();
  $("no-functions").hidden = functions.length > 0;
  for (const fn of functions) {
    const row = body.insertRow();
    row.dataset.function = fn.name;
    if (fn.name === state.selected) row.className = "selected";
    cell(row, fn.name, "name");
    cell(row, functionState(fn), "state");
    cell(row, fn.revision);
    cell(row, `${fn.instances.ready} / ${fn.instances.desired}`);
    cell(row, fn.instances.in_flight);
    cell(row, fn.instances.queued);
    cell(row, costOf(fn.name), "cost");
    row.addEventListener("click", () => {
      state.selected = fn.name;
      state.openActivation = null;
      $("logs").hidden = true;
      refreshNow();
    });
  }
}

// -- one function --------------------------------------------------------------------------------

async function renderDetail(name, generation) {
  const [since, step] = $("window").value.split(",");
  const path = `/v1/functions/${encodeURIComponent(name)}`;
  const [fn, series, activations] = await Promise.all([
    api(path),
    api(`${path}/series?since=${since}&step=${step}`),
    api(`${path}/activations?limit=15`),
  ]);
  if (generation !== state.generation) return; // another function was picked meanwhile
  $("detail-name").textContent = name;
  $("detail-revision").textContent = `${fn.revision} · ${fn.style}${fn.public ? " · public" : ""}`;
  $("stat-requests").textContent = series.totals.requests;
  $("stat-errors").textContent = series.totals.errors;
  $("stat-cold").textContent = series.totals.cold_starts;
  $("stat-latency").textContent = lastLatency(series);
  $("stat-instances").textContent = `${fn.instances.ready} / ${fn.instances.desired}`;
  $("stat-cost").textContent = costOf(name);
  renderTraffic(fn);
  renderRollout(fn.rollout);
  renderActivations(name, activations.activations);
  if (chartsAvailable()) drawCharts(series);
}

function lastLatency(series) {
  for (let i = series.buckets.length - 1; i >= 0; i -= 1) {
    if (series.p50_ms[i] !== null) return `${ms(series.p50_ms[i])} / ${ms(series.p99_ms[i])}`;
  }
  return "-";
}

function ms(value) {
  return value < 10 ? `${value.toFixed(2)} ms` : `${Math.round(value)} ms`;
}

function renderTraffic(fn) {
  const body = $("traffic").tBodies[0];
  body.replaceChildren();
  for (const target of fn.traffic) {
    const row = body.insertRow();
    cell(row, target.revision);
    cell(row, target.tag || "");
    cell(row, `${target.percent}%`);
    cell(row, target.ready);
    cell(row, target.in_flight);
  }
  if (fn.shadow) {
    const row = body.insertRow();
    row.className = "muted";
    cell(row, fn.shadow.revision);
    cell(row, "shadow");
    cell(row, `${fn.shadow.percent}% copied`);
    cell(row, fn.shadow.ready);
    cell(row, fn.shadow.in_flight);
  }
}

function renderRollout(rollout) {
  const text = $("rollout");
  if (!rollout) {
    text.textContent = "none running";
    return;
  }
  const percent = rollout.steps[rollout.step];
  text.textContent = `${rollout.state}: ${rollout.canary} at ${percent}% (step ${rollout.step + 1} of ` +
    `${rollout.steps.length}) over ${rollout.stable}; each step ${rollout.interval_s} s, errors at most ` +
    `${(rollout.max_error_rate * 100).toFixed(1)}%`;
}

function renderActivations(name, activations) {
  const body = $("activations").tBodies[0];
  body.replaceChildren();
  for (const activation of activations) {
    const row = body.insertRow();
    if (activation.status !== "ok") row.className = "failed";
    if (activation.id === state.openActivation) row.classList.add("selected");
    cell(row, new Date(activation.start * 1000).toLocaleTimeString());
    cell(row, activation.id);
    cell(row, activation.status + (activation.error_type ? ` (${activation.error_type})` : ""));
    cell(row, activation.duration_ms.toFixed(2));
    cell(row, activation.billed_ms);
    cell(row, activation.cold ? "cold" : "");
    cell(row, activation.revision);
    cell(row, activation.trigger);
    row.addEventListener("click", () => showLogs(activation.id));
  }
}

async function showLogs(activationId) {
  state.openActivation = activationId;
  const logs = $("logs");
  try {
    const activation = await api(`/v1/activations/${encodeURIComponent(activationId)}`);
    const error = activation.error_message ? `\n${activation.error_type}: ${activation.error_message}` : "";
    logs.textContent = `activation ${activation.id}\n${activation.logs || "(no output)"}${error}`;
  } catch (error) {
    logs.textContent = `could not load the logs: ${error.message}`;
  }
  logs.hidden = false;
}

// -- charts (plotly.js) ---------------------------------------------------------------------------

const LAYOUT = {
  margin: { l: 50, r: 20, t: 30, b: 40 },
  height: 240,
  showlegend: true,
  legend: { orientation: "h", y: -0.2 },
  xaxis: { type: "date" },
  font: { size: 11 },
};
const CONFIG = { displayModeBar: false, responsive: true };

function chart(id, title, traces, yTitle) {
  const layout = { ...LAYOUT, title: { text: title, font: { size: 13 } }, yaxis: { title: yTitle, rangemode: "tozero" } };
  window.Plotly.react($(id), traces, layout, CONFIG);
}

function drawCharts(series) {
  const x = series.buckets.map((start) => new Date(start * 1000));
  chart("chart-rps", "requests per second", [{ x, y: series.rps, type: "scatter", mode: "lines", name: "req/s", fill: "tozeroy" }], "req/s");
  chart("chart-latency", "latency of warm calls", [
    { x, y: series.p50_ms, type: "scatter", mode: "lines+markers", name: "p50", connectgaps: false },
    { x, y: series.p99_ms, type: "scatter", mode: "lines+markers", name: "p99", connectgaps: false },
  ], "ms");
  chart("chart-errors", "errors", [{ x, y: series.errors, type: "bar", name: "errors", marker: { color: "#c0392b" } }], "calls");
  const cold = series.buckets
    .map((start, i) => ({ start, count: series.cold_starts[i], ready: series.ready[i] }))
    .filter((b) => b.count > 0);
  const events = series.scaling_events;
  chart("chart-instances", "instances", [
    { x, y: series.ready, type: "scatter", mode: "lines", line: { shape: "hv" }, name: "ready" },
    { x, y: series.desired, type: "scatter", mode: "lines", line: { shape: "hv", dash: "dot" }, name: "desired" },
    {
      x: cold.map((b) => new Date(b.start * 1000)),
      y: cold.map((b) => b.ready ?? 0),
      text: cold.map((b) => `${b.count} cold start(s)`),
      type: "scatter", mode: "markers", name: "cold starts",
      marker: { symbol: "star", size: 12, color: "#e67e22" },
    },
    {
      x: events.map((e) => new Date(e.at * 1000)),
      y: events.map((e) => e.to_count),
      text: events.map((e) => `${e.from_count} → ${e.to_count}: ${e.reason}`),
      type: "scatter", mode: "markers", name: "scaling decisions",
      marker: { symbol: "triangle-up", size: 8, color: "#7f8c8d" },
    },
  ], "instances");
}

// -- wiring --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => showLogin(""));
  $("window").addEventListener("change", refreshNow);
  if (state.key) start();
  else showLogin("");
});
