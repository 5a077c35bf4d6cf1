// trainyard dashboard: plain JavaScript, no framework, nothing loaded from elsewhere.
// Every value from the API is put in the page as text (never as HTML). Live updates come over
// the gateway's SSE streams, read with fetch() so that the token travels in a header.
"use strict";

const API = "/api/v1/training";
const TOKEN_KEY = "trainyard-token";
const ROLES = ["viewer", "operator", "admin"];
let me = { name: "", role: "viewer" };
let leaving = [];  // what the current page must stop when another one opens (streams, timers)

// ---- small helpers ------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const main = () => document.getElementById("main");
function ago(ts) {
  if (!ts) return "";
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 60 ? `${s | 0}s` : s < 3600 ? `${(s / 60) | 0}m` : s < 86400 ? `${(s / 3600).toFixed(1)}h` : `${(s / 86400).toFixed(1)}d`;
}
function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  return s < 60 ? `${s}s` : s < 3600 ? `${(s / 60) | 0}m ${s % 60}s` : `${(s / 3600) | 0}h ${((s % 3600) / 60) | 0}m`;
}
const badge = (status) => h("span", { class: `badge s-${status}`, "data-status": status }, status);
function bar(percent) {
  const p = Math.max(0, Math.min(100, percent || 0));
  const fill = h("i");
  fill.style.width = `${p}%`;  // through the CSSOM: the page's CSP allows no inline style attribute
  return h("span", { class: "bar", title: percent === null || percent === undefined ? "" : `${p.toFixed(1)}%` }, fill);
}
const allowed = (role) => ROLES.indexOf(me.role) >= ROLES.indexOf(role);
function debounce(fn, ms) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

// ---- the token ----------------------------------------------------------------------------------
// `trainyard up` prints /ui/#token=...: the fragment never reaches a server or its logs. It is
// kept for this browser session only and removed from the address bar at once.
function takeTokenFromFragment() {
  const m = location.hash.match(/^#token=([^&]*)(?:&(.*))?$/);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search + "#" + (m[2] || "/jobs"));
}
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

class ApiError extends Error {}

async function api(path, options = {}) {
  const r = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
    ...options, headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (r.status === 401) { showLogin("That token was not accepted."); throw new ApiError("unauthorized"); }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError((body && body.detail) || (body && body.message) || `HTTP ${r.status}`);
  return body;
}

// Server-sent events over fetch (EventSource cannot send the token in a header). Reconnects
// with Last-Event-ID until the stream says `end` or the page is left.
function stream(path, onEvent) {
  const ctl = new AbortController();
  leaving.push(() => ctl.abort());
  (async () => {
    let lastId = null;
    while (!ctl.signal.aborted) {
      try {
        const headers = { Authorization: `Bearer ${token()}` };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const r = await fetch(`${API}/${path}`, { headers, signal: ctl.signal });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let event = "message", data = [], id = null;
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
              else if (line.startsWith("id:")) id = line.slice(3).trim();
            }
            if (id !== null) lastId = id;
            if (!data.length) continue;
            onEvent(event, data.join("\n"));
            if (event === "end") { ctl.abort(); return; }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      await sleep(2000);
    }
  })();
}

// ---- charts ------------------------------------------------------------------------------------
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];

function smooth(ys, weight) {  // TensorBoard's exponential moving average
  if (!weight) return ys;
  let last = null;
  return ys.map((y) => (last = last === null ? y : last * weight + (1 - weight) * y));
}

function drawChart(canvas, series, { logY = false, xLabel = "step", xRange = null } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || 600, H = canvas.clientHeight || 260;
  canvas.width = W * ratio; canvas.height = H * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  const pts = series.flatMap((s) => s.xs.map((x, i) => [x, s.ys[i]])).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0));
  canvas.dataset.points = String(pts.length);
  if (!pts.length) { g.fillStyle = "#6b7580"; g.fillText("no points yet", 12, 20); return; }
  const fy = logY ? Math.log10 : (y) => y;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => fy(p[1]))), Math.max(...pts.map((p) => fy(p[1])))];
  if (xRange) [x0, x1] = xRange;
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const L = 56, R = 12, T = 10, B = 26;
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (fy(y) - y0) / (y1 - y0)) * (H - T - B);
  g.strokeStyle = "#e5e7eb"; g.fillStyle = "#6b7580"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + ((y1 - y0) * i) / 4, y = T + (1 - i / 4) * (H - T - B);
    g.beginPath(); g.moveTo(L, y); g.lineTo(W - R, y); g.stroke();
    const label = logY ? Number(10 ** yv).toPrecision(2) : Number(yv.toPrecision(3));
    g.fillText(String(label), 4, y + 4);
    const xv = x0 + ((x1 - x0) * i) / 4;
    g.fillText(String(Math.round(xv * 100) / 100), px(xv) - 10, H - 8);
  }
  g.fillText(xLabel, W - R - 30, H - 8);
  series.forEach((s, k) => {
    g.strokeStyle = s.color || COLORS[k % COLORS.length]; g.lineWidth = 1.6; g.beginPath();
    let started = false;
    s.xs.forEach((x, i) => {
      const y = s.ys[i];
      if (!Number.isFinite(y) || (logY && y <= 0)) return;
      if (started) g.lineTo(px(x), py(y)); else { g.moveTo(px(x), py(y)); started = true; }
    });
    g.stroke();
    if (s.xs.length <= 60) {  // few points: each one shown, so that a single sample is seen too
      g.fillStyle = g.strokeStyle;
      s.xs.forEach((x, i) => { if (Number.isFinite(s.ys[i])) { g.beginPath(); g.arc(px(x), py(s.ys[i]), 2.5, 0, 7); g.fill(); } });
    }
    g.fillStyle = g.strokeStyle; g.fillText(s.label, L + 8 + k * 120, T + 12);
  });
}

// Fetch the series of `names` (or all) of a job, downsampled to about the chart's width.
async function metricSeries(jobId, { names = null, attempt = "all", by = "step", width = 800 } = {}) {
  const q = new URLSearchParams({ format: "columns", fields: "attempt,step,epoch,value", attempt, type: by,
                                  downsample: String(Math.max(100, Math.min(4000, Math.round(width)))), limit: "1000000" });
  if (names) q.set("name", names.join(","));
  const body = await api(`jobs/${encodeURIComponent(jobId)}/metrics?${q}`);
  return body.series || {};
}

function seriesByAttempt(columns, by) {
  const out = new Map();
  const xs = columns[by] || columns.step || [];
  (columns.value || []).forEach((y, i) => {
    const a = columns.attempt ? columns.attempt[i] : 1;
    if (!out.has(a)) out.set(a, { xs: [], ys: [] });
    out.get(a).xs.push(xs[i]); out.get(a).ys.push(y);
  });
  return out;
}

// ---- pages -------------------------------------------------------------------------------------
const pages = { jobs: jobsPage, job: jobPage, queue: queuePage, gpus: gpusPage, compare: comparePage };

async function route() {
  leaving.forEach((stop) => stop());
  leaving = [];
  const [, named = "jobs", ...rest] = (location.hash || "#/jobs").slice(1).split("?")[0].split("/");
  const page = named || "jobs";
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  const view = pages[page] || jobsPage;
  main().replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await view(decodeURIComponent(rest.join("/")));
  } catch (e) {
    if (!(e instanceof ApiError && e.message === "unauthorized")) main().replaceChildren(h("p", { class: "error" }, String(e.message || e)));
  }
}

function showLogin(message) {
  leaving.forEach((stop) => stop());
  leaving = [];
  sessionStorage.removeItem(TOKEN_KEY);
  const input = h("input", { type: "password", id: "token", placeholder: "API token", autocomplete: "off" });
  const form = h("form", { class: "login", onsubmit: async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    await start();
  } }, h("h1", {}, "trainyard"), h("p", {}, "Sign in with an API token (", h("code", {}, "trainyard token create"), ")."),
    message ? h("p", { class: "error" }, message) : null, input, h("button", { class: "primary", type: "submit" }, "Sign in"));
  main().replaceChildren(form);
  document.getElementById("who").textContent = "";
  input.focus();
}

// Jobs: a live table, filters, search and pages.
async function jobsPage() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const state = { status: params.get("status") || "", trainer: "", user: "", q: "", offset: 0, limit: 50, picked: new Set() };
  const status = h("select", { id: "f-status", onchange: () => { state.status = status.value; state.offset = 0; load(); } },
    ["", "pending", "queued", "scheduled", "running", "stopping", "succeeded", "failed", "stopped", "lost"]
      .map((s) => h("option", { value: s, selected: s === state.status }, s || "any status")));
  const trainer = h("select", { id: "f-trainer", onchange: () => { state.trainer = trainer.value; state.offset = 0; load(); } },
    ["", "command", "hf", "swift", "diffusion-pipe"].map((t) => h("option", { value: t }, t || "any trainer")));
  const user = h("input", { id: "f-user", placeholder: "submitted by", size: 12, onchange: () => { state.user = user.value.trim(); state.offset = 0; load(); } });
  const search = h("input", { id: "f-search", placeholder: "search names", size: 18, oninput: debounce(() => { state.q = search.value.trim(); state.offset = 0; load(); }, 250) });
  const info = h("span", { class: "muted" });
  const prev = h("button", { onclick: () => { state.offset = Math.max(0, state.offset - state.limit); load(); } }, "‹ newer");
  const next = h("button", { onclick: () => { state.offset += state.limit; load(); } }, "older ›");
  const compare = h("button", { onclick: () => { location.hash = `#/compare/${[...state.picked].join(",")}`; } }, "Compare selected");
  const body = h("tbody", { id: "jobs-body" });
  main().replaceChildren(h("h1", {}, "Jobs"), h("div", { class: "toolbar" }, status, trainer, user, search, compare, prev, next, info),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ["", "job", "status", "trainer", "host / GPUs", "progress", "ETA", "submitter", "age"].map((c) => h("th", {}, c)))), body));

  async function load() {
    const q = new URLSearchParams({ limit: String(state.limit), offset: String(state.offset) });
    if (state.status) q.set("status", state.status);
    if (state.trainer) q.set("trainer", state.trainer);
    if (state.user) q.set("submitted_by", state.user);
    if (state.q) q.set("q", state.q);
    const page = await api(`jobs?${q}`);
    info.textContent = page.total ? `${state.offset + 1}–${state.offset + page.jobs.length} of ${page.total}` : "no jobs";
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + page.jobs.length >= page.total;
    body.replaceChildren(...page.jobs.map((j) => h("tr", { "data-job": j.job_id },
      h("td", {}, h("input", { type: "checkbox", checked: state.picked.has(j.job_id), onchange: (e) => { e.target.checked ? state.picked.add(j.job_id) : state.picked.delete(j.job_id); } })),
      h("td", {}, h("a", { href: `#/job/${j.job_id}` }, j.name || j.job_id), j.name ? h("div", { class: "muted" }, j.job_id) : null),
      h("td", {}, badge(j.status), j.anomaly_kinds && j.anomaly_kinds.length ? h("div", { class: "muted" }, `⚠ ${j.anomaly_kinds.join(", ")}`) : null),
      h("td", {}, j.trainer),
      h("td", {}, j.host ? `${j.host}${j.gpu_ids.length ? ` : ${j.gpu_ids.join(",")}` : ""}` : ""),
      h("td", {}, j.percent !== null && j.percent !== undefined ? [bar(j.percent), ` ${j.percent.toFixed(0)}%`] : ""),
      h("td", {}, j.status === "running" ? duration(j.eta_s) : ""),
      h("td", {}, j.submitted_by || ""),
      h("td", { title: new Date(j.submitted_s * 1000).toLocaleString() }, ago(j.submitted_s)))));
  }
  await load();
  const refresh = debounce(() => load().catch(() => {}), 500);
  stream("changes/stream", (event) => { if (event === "jobs") refresh(); });
}

// One job: status, progress, curves, logs, events, checkpoints, actions.
async function jobPage(jobId) {
  const job = await api(`jobs/${encodeURIComponent(jobId)}`);
  const ended = ["succeeded", "failed", "stopped", "lost"].includes(job.status);
  const act = (label, path, body, cls) => h("button", { class: cls || "", id: `act-${label.toLowerCase()}`, onclick: async (e) => {
    e.target.disabled = true;
    try { const r = await api(`jobs/${encodeURIComponent(jobId)}/${path}`, { method: "POST", body: JSON.stringify(body || {}) }); msg.textContent = r.message || "done"; }
    catch (err) { msg.textContent = err.message; msg.className = "error"; }
    setTimeout(route, 600);
  } }, label);
  const msg = h("span", { class: "muted", id: "act-msg" });
  const actions = h("div", { class: "toolbar", id: "actions" });
  if (allowed("operator")) {
    if (!ended) actions.append(act("Stop", "stop", {}, "danger"));
    if (ended) actions.append(act("Retry", "retry"));
    if (ended && job.checkpoints.length) actions.append(act("Resume", "resume"));
    if (ended && job.trainer === "swift" && job.checkpoints.length) actions.append(act("Export", "export"));
    actions.append(msg);
  }
  const status = h("span", { id: "job-status" }, badge(job.status));
  const progressText = h("span", { id: "progress-text", class: "muted" });
  const progressBar = h("span", { id: "progress-bar" }, bar(0));
  const kv = h("dl", { class: "kv" });
  for (const [k, v] of [["trainer", job.trainer], ["host / GPUs", job.host ? `${job.host} : ${job.gpu_ids.join(",")}` : "—"],
    ["attempt", job.attempt], ["priority", job.priority], ["submitted by", job.submitted_by || "—"],
    ["submitted", new Date(job.submitted_s * 1000).toLocaleString()], ["reason", job.reason || "—"], ["preemptions", job.preemptions || 0]]) {
    kv.append(h("dt", {}, k), h("dd", {}, String(v)));
  }

  // Curves: every metric of every attempt, downsampled to the chart's width on the server.
  const metricPick = h("select", { id: "metric" });
  const axis = h("select", { id: "axis" }, h("option", { value: "step" }, "step"), h("option", { value: "epoch" }, "epoch"));
  const smoothing = h("input", { type: "range", min: "0", max: "0.99", step: "0.01", value: "0", id: "smoothing" });
  const logScale = h("input", { type: "checkbox", id: "log-scale" });
  const canvas = h("canvas", { class: "chart", id: "chart" });
  let columns = {};
  const redraw = () => {
    const chosen = columns[metricPick.value];
    const series = chosen ? [...seriesByAttempt(chosen, axis.value)].map(([a, s]) => ({ label: `attempt ${a}`, xs: s.xs, ys: smooth(s.ys, Number(smoothing.value)) })) : [];
    drawChart(canvas, series, { logY: logScale.checked, xLabel: axis.value });
  };
  const loadMetrics = async () => {
    columns = await metricSeries(jobId, { by: axis.value, width: canvas.clientWidth || 800 });
    const names = Object.keys(columns).sort();
    const keep = metricPick.value || (names.includes("loss") ? "loss" : names[0]);
    metricPick.replaceChildren(...names.map((n) => h("option", { value: n, selected: n === keep }, n)));
    redraw();
  };
  [metricPick, smoothing, logScale].forEach((el) => el.addEventListener("input", redraw));
  axis.addEventListener("change", () => loadMetrics());

  // Logs: followed live, filtered by level and type on the server, searched here.
  const logBox = h("div", { class: "logs", id: "logs" });
  const level = h("select", { id: "log-level" }, ["", "DEBUG", "INFO", "WARNING", "ERROR"].map((l) => h("option", { value: l }, l || "any level")));
  const kind = h("select", { id: "log-type" }, ["all", "train", "eval", "system"].map((t) => h("option", { value: t }, t)));
  const find = h("input", { id: "log-search", placeholder: "search the log" });
  let lines = [];
  const showLines = () => {
    const needle = find.value.toLowerCase();
    const shown = needle ? lines.filter((l) => l.text.toLowerCase().includes(needle)) : lines;
    logBox.replaceChildren(...shown.slice(-2000).map((l) => h("div", { class: `${l.level} ${l.stream === "system" ? "sys" : ""}` }, l.text)));
    logBox.scrollTop = logBox.scrollHeight;
  };
  const showLinesSoon = debounce(showLines, 100);
  let stopLogs = null;
  const followLogs = () => {
    if (stopLogs) stopLogs();
    lines = [];
    const before = leaving.length;
    const q = new URLSearchParams({ type: kind.value });
    if (level.value) q.set("level", level.value);
    stream(`jobs/${encodeURIComponent(jobId)}/logs/stream?${q}`, (event, data) => {
      if (event !== "log") return;
      lines.push(JSON.parse(data));
      if (lines.length > 5000) lines = lines.slice(-4000);
      showLinesSoon();
    });
    stopLogs = leaving[before];
    showLines();
  };
  [level, kind].forEach((el) => el.addEventListener("change", followLogs));
  find.addEventListener("input", debounce(showLines, 150));

  const events = h("table", { id: "events" }, h("tr", {}, h("th", {}, "event"), h("th", {}, "attempt"), h("th", {}, "when")),
    job.status_history.map((e) => h("tr", {}, h("td", {}, e.status_event), h("td", {}, e.attempt), h("td", {}, new Date(e.ts_s * 1000).toLocaleTimeString()))));
  const checkpoints = job.checkpoints.length
    ? h("table", { id: "checkpoints" }, h("tr", {}, h("th", {}, "path"), h("th", {}, "step"), h("th", {}, "attempt")),
      job.checkpoints.map((c) => h("tr", {}, h("td", {}, c.path), h("td", {}, c.step ?? ""), h("td", {}, c.attempt))))
    : h("p", { class: "muted" }, "none saved yet");
  const anomalies = (job.anomalies || []).map((a) => h("p", { class: "error" }, `⚠ ${a.kind}: ${a.detail}`));

  main().replaceChildren(
    h("h1", {}, job.name || job.job_id, " ", status), h("p", { class: "muted" }, job.job_id, job.description ? ` — ${job.description}` : ""),
    actions, ...anomalies,
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Progress"), progressBar, " ", progressText, kv),
      h("div", { class: "card" }, h("h2", {}, "Curves"), h("div", { class: "toolbar" }, metricPick, axis, "smoothing", smoothing, h("label", {}, logScale, " log scale")), canvas)),
    h("h2", {}, "Log"), h("div", { class: "toolbar" }, level, kind, find), logBox,
    h("div", { class: "grid" }, h("div", {}, h("h2", {}, "Events"), events), h("div", {}, h("h2", {}, "Checkpoints"), checkpoints)));

  await loadMetrics();
  followLogs();
  const moreMetrics = debounce(() => loadMetrics().catch(() => {}), 1000);
  stream(`jobs/${encodeURIComponent(jobId)}/progress/stream`, (event, data) => {
    if (event === "progress") {
      const p = JSON.parse(data);
      progressBar.replaceChildren(bar(p.percent));
      const step = p.step !== null && p.step !== undefined ? `step ${p.step}${p.total_steps ? ` / ${p.total_steps}` : ""}` : "";
      progressText.textContent = [step, p.percent !== null && p.percent !== undefined ? `${p.percent.toFixed(1)}%` : "",
        p.eta_s ? `ETA ${duration(p.eta_s)}` : "", p.status].filter(Boolean).join(" · ");
      status.replaceChildren(badge(p.status));
      moreMetrics();
    } else if (event === "end") {
      status.replaceChildren(badge(data));
      moreMetrics();
      if (data !== job.status) setTimeout(route, 800);  // the buttons change with the status
    }
  });
}

// Compare: one metric of several jobs on one chart.
async function comparePage(ids) {
  const idsInput = h("input", { id: "compare-ids", size: 70, placeholder: "job ids, comma separated", value: ids || "" });
  const metric = h("input", { id: "compare-metric", value: "loss", size: 14 });
  const canvas = h("canvas", { class: "chart", id: "compare-chart" });
  const note = h("p", { class: "muted" });
  const draw = async () => {
    const chosen = idsInput.value.split(",").map((s) => s.trim()).filter(Boolean);
    const series = [];
    for (const id of chosen) {
      const cols = (await metricSeries(id, { names: [metric.value], attempt: "all", width: canvas.clientWidth || 800 }))[metric.value];
      if (!cols) continue;
      const all = { xs: [], ys: [] };
      for (const s of seriesByAttempt(cols, "step").values()) { all.xs.push(...s.xs); all.ys.push(...s.ys); }
      series.push({ label: id.slice(-12), ...all });
    }
    note.textContent = `${series.length} of ${chosen.length} jobs have ${metric.value}`;
    drawChart(canvas, series);
  };
  main().replaceChildren(h("h1", {}, "Compare"), h("div", { class: "toolbar" }, idsInput, metric, h("button", { class: "primary", onclick: draw }, "Draw")), note, h("div", { class: "card" }, canvas));
  if (ids) await draw();
}

// GPUs and hosts: each GPU's state and job, utilisation and memory over the last hour.
async function gpusPage() {
  const hostsBox = h("div", { id: "hosts" });
  const gpusBox = h("div", { id: "gpus" });
  const util = h("canvas", { class: "chart", id: "gpu-util" });
  const mem = h("canvas", { class: "chart", id: "gpu-mem" });
  main().replaceChildren(h("h1", {}, "GPUs & hosts"), hostsBox, h("h2", {}, "GPUs"), gpusBox,
    h("div", { class: "grid" }, h("div", { class: "card" }, h("h2", {}, "Utilisation, last hour (%)"), util),
      h("div", { class: "card" }, h("h2", {}, "Memory used, last hour (MB)"), mem)));
  async function load() {
    const [hosts, gpus, history] = await Promise.all([api("hosts"), api("gpus"), api("gpus/history?window_s=3600")]);
    hostsBox.replaceChildren(h("table", {}, h("tr", {}, ["host", "status", "GPUs free / all", "running jobs", "CPU", "memory", "last heartbeat"].map((c) => h("th", {}, c))),
      hosts.map((x) => h("tr", {}, h("td", {}, x.host, x.simulated ? h("span", { class: "muted" }, " (simulated GPUs)") : ""), h("td", {}, badge(x.status)),
        h("td", {}, `${x.gpus_free} / ${x.gpus}`), h("td", {}, x.running_jobs.map((j) => h("div", {}, h("a", { href: `#/job/${j}` }, j)))),
        h("td", {}, `${Math.round(x.cpu_percent)}%`), h("td", {}, `${(x.memory_used_mb / 1024).toFixed(1)} / ${(x.memory_total_mb / 1024).toFixed(1)} GB`),
        h("td", {}, `${x.seconds_since_heartbeat.toFixed(1)}s ago`), x.note ? h("td", { class: "muted" }, x.note) : null))));
    gpusBox.replaceChildren(h("table", {}, h("tr", {}, ["host", "GPU", "name", "state", "job", "utilisation", "memory"].map((c) => h("th", {}, c))),
      gpus.gpus.map((x) => h("tr", {}, h("td", {}, x.host), h("td", {}, x.index), h("td", {}, x.name || ""), h("td", {}, badge(x.state)),
        h("td", {}, x.job_id ? h("a", { href: `#/job/${x.job_id}` }, x.job_id) : ""), h("td", {}, x.utilization_pct ?? ""),
        h("td", {}, x.memory_used_mb !== undefined ? `${x.memory_used_mb} / ${x.memory_total_mb} MB` : "")))));
    const series = (field) => history.gpus.map((s) => ({ label: `${s.host}:${s.gpu_index}`, xs: s.ts_s.map((t) => (t - Date.now() / 1000) / 60), ys: s[field] }));
    drawChart(util, series("utilization_pct"), { xLabel: "min", xRange: [-60, 0] });
    drawChart(mem, series("memory_used_mb"), { xLabel: "min", xRange: [-60, 0] });
  }
  await load();
  const refresh = debounce(() => load().catch(() => {}), 2000);
  stream("changes/stream", () => refresh());
}

// Queue: order, priority, why each job waits, estimate; pause and resume for admins.
async function queuePage() {
  const box = h("div", { id: "queue" });
  const head = h("div", { class: "toolbar" });
  main().replaceChildren(h("h1", {}, "Queue"), head, box);
  async function load() {
    const queue = await api("queue");
    const running = queue.processor_running;
    head.replaceChildren(h("span", { id: "processor" }, running ? "The queue processor is running." : "The queue processor is stopped."));
    if (allowed("admin")) {
      head.append(h("button", { id: running ? "pause" : "unpause", onclick: async () => {
        await api(`queue/processor/${running ? "stop" : "start"}`, { method: "POST" }); await load();
      } }, running ? "Pause" : "Resume"));
    }
    box.replaceChildren(queue.jobs.length ? h("table", {}, h("tr", {}, ["#", "job", "priority", "GPUs", "waiting since", "waiting because", "estimated start"].map((c) => h("th", {}, c))),
      queue.jobs.map((j) => h("tr", { "data-job": j.job_id }, h("td", {}, j.position), h("td", {}, h("a", { href: `#/job/${j.job_id}` }, j.name || j.job_id)),
        h("td", {}, j.priority), h("td", {}, j.gpus ?? ""), h("td", {}, ago(j.submitted_s)), h("td", { class: "reason" }, j.waiting_reason || ""),
        h("td", {}, j.estimated_wait_time || (j.estimated_wait_s !== null && j.estimated_wait_s !== undefined ? duration(j.estimated_wait_s) : "unknown")))))
      : h("p", { class: "muted" }, "Nothing is waiting."));
  }
  await load();
  const refresh = debounce(() => load().catch(() => {}), 500);
  stream("changes/stream", (event) => { if (event === "jobs") refresh(); });
}

async function start() {
  if (!token()) { showLogin(""); return; }
  try {
    me = await api("whoami");
  } catch (e) {
    return;  // the login form is shown
  }
  document.getElementById("who").textContent = `${me.name} (${me.role})`;
  await route();
}

takeTokenFromFragment();
window.addEventListener("hashchange", () => { takeTokenFromFragment(); route(); });
start();
