// privrec dashboard: plain JavaScript over the /v1 API; every number comes from the ledger.
"use strict";

const state = { key: sessionStorage.getItem("privrec-key") || "", me: null, loaded: {}, datasets: [] };
const $ = (id) => document.getElementById(id);
const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
const utc = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–");
const PLOT = { displaylogo: false, responsive: true };

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, opts.headers || {});
  const res = await fetch(path, Object.assign({}, opts, { headers }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.error && body.error.message) || res.statusText);
    err.status = res.status; err.body = body;
    throw err;
  }
  return body;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fillTable(id, rows, render) {
  const tbody = $(id).querySelector("tbody");
  tbody.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    render(tr, r);
    tbody.appendChild(tr);
  }
}

function label(b) { return b.scope === "dataset" ? b.dataset : `${b.dataset} · ${b.scope} ${b.scope_value}`; }
// plotly.js reads its text as pseudo-HTML (<a href>, <b>, <span style>, <br>): a name set in the
// ledger or a model file would become a link or markup in the charts. Names reach plotly escaped
// (it decodes &lt; &gt; &amp; back to the characters and shows them as text).
const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const plotLabel = (b) => esc(label(b));

// plotly.js (basic bundle, 1.2 MB) is compiled once the page has loaded, not before the page can be
// used: signing in and the first API calls overlap with it; the charts are drawn when both are ready.
let plotlyPromise = null;
function loadPlotly() {
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      if (window.Plotly) { resolve(window.Plotly); return; }
      const s = document.createElement("script");
      s.src = "/dashboard/static/plotly-basic.min.js";
      s.onload = () => resolve(window.Plotly);
      s.onerror = () => { plotlyPromise = null; reject(new Error("could not load the chart library")); };
      document.head.appendChild(s);
    });
  }
  return plotlyPromise;
}

// ------------------------------------------------------------------ budgets
async function loadBudgets() {
  // the budgets (with their spend curves), the recent charges and the chart library, together
  const [data, ch] = await Promise.all([api("/v1/budgets?series=true"), api("/v1/charges?limit=15")]);
  const bs = data.budgets;
  fillTable("charge-table", ch.charges, (tr, c) => {
    cell(tr, c.id); cell(tr, utc(c.created_at)); cell(tr, c.dataset); cell(tr, c.actor);
    cell(tr, c.purpose); cell(tr, c.kind); cell(tr, c.status); cell(tr, fmt(c.epsilon), "num");
  });
  fillTable("budget-table", bs, (tr, b) => {
    tr.dataset.budget = label(b);
    cell(tr, b.dataset); cell(tr, b.scope === "dataset" ? "whole dataset" : `${b.scope} ${b.scope_value}`);
    cell(tr, fmt(b.epsilon), "num cap"); cell(tr, b.delta.toExponential(1), "num");
    cell(tr, fmt(b.composed_epsilon), "num spent"); cell(tr, fmt(b.naive_epsilon), "num naive");
    cell(tr, fmt(b.remaining_epsilon), "num remaining");
    cell(tr, `${b.committed} committed, ${b.reserved} reserved`, "num");
  });
  await loadPlotly();
  const names = bs.map(plotLabel);
  const pct = (v, b) => (100 * v) / b.epsilon;
  Plotly.react("budget-chart", [
    { type: "bar", name: "spent ε (composed)", x: names, y: bs.map((b) => pct(b.composed_epsilon, b)),
      customdata: bs.map((b) => b.composed_epsilon), marker: { color: "#1d3557" },
      text: bs.map((b) => `${fmt(b.composed_epsilon, 3)} of ${fmt(b.epsilon, 2)}`), textposition: "inside",
      hovertemplate: "spent ε = %{customdata:.4f} (%{y:.1f}% of the cap)<extra></extra>" },
    { type: "bar", name: "remaining ε", x: names, y: bs.map((b) => pct(b.remaining_epsilon, b)),
      customdata: bs.map((b) => b.remaining_epsilon), marker: { color: "#a8dadc" },
      hovertemplate: "remaining ε = %{customdata:.4f}<extra></extra>" },
    { type: "scatter", mode: "markers+text", name: "naive Σε (not used; past the top: beyond the cap)", x: names,
      y: bs.map((b) => Math.min(pct(b.naive_epsilon, b), 103)),
      text: bs.map((b) => (b.naive_epsilon > b.epsilon ? `Σ ${fmt(b.naive_epsilon / b.epsilon, 1)}× cap` : "")),
      textposition: "top center", customdata: bs.map((b) => b.naive_epsilon),
      marker: { symbol: "diamond", size: 12, color: "#e63946" },
      hovertemplate: "naive Σε = %{customdata:.4f}<extra></extra>" },
  ], { barmode: "stack", title: { text: "Budgets: share of each cap spent (composed ε), naive sum beside" },
       margin: { t: 70, b: 110 }, yaxis: { title: { text: "% of the budget's ε cap" }, range: [0, 112] },
       xaxis: { automargin: true }, legend: { orientation: "h", x: 0, y: 1.12 } }, PLOT);
  const traces = [];
  const colours = ["#1d3557", "#e76f51", "#2a9d8f", "#8e44ad", "#e9c46a", "#264653"];
  bs.forEach((b, i) => {
    if (!b.series || !b.series.length) return;
    const x = b.series.map((p) => new Date(p.t * 1000).toISOString());
    const color = colours[i % colours.length];
    traces.push({ type: "scatter", mode: "lines+markers", name: `${plotLabel(b)}: composed`, x, y: b.series.map((p) => p.composed), line: { color } });
    traces.push({ type: "scatter", mode: "lines", name: `${plotLabel(b)}: naive Σ`, x, y: b.series.map((p) => p.naive), line: { color, dash: "dot" } });
  });
  Plotly.react("budget-time", traces, { title: { text: "Spent ε over time: composed (solid) vs naive sum (dotted)" },
    margin: { t: 40, b: 60 }, yaxis: { title: { text: "ε" } }, legend: { orientation: "h", y: -0.25 } }, PLOT);
  document.body.dataset.budgetsRendered = String(Number(document.body.dataset.budgetsRendered || 0) + 1);
}

// ------------------------------------------------------------------ queries (analysts)
async function setupQueries() {
  const data = await api("/v1/datasets");
  state.datasets = data.datasets.filter((d) => d.registered);
  const sel = $("q-dataset");
  sel.replaceChildren();
  for (const d of state.datasets) {
    const o = document.createElement("option"); o.value = d.name; o.textContent = d.name; sel.appendChild(o);
  }
  onKind();
  $("query-panel").hidden = state.datasets.length === 0;
}

function onKind() {
  const kind = $("q-kind").value;
  document.querySelector(".q-k").hidden = kind !== "top-k";
  document.querySelector(".q-items").hidden = !(kind === "item-counts" || kind === "cooccurrence");
  document.querySelector(".q-column").hidden = kind !== "segment-counts";
  const d = state.datasets.find((x) => x.name === $("q-dataset").value);
  const col = $("q-column");
  col.replaceChildren();
  for (const c of Object.keys((d && d.segment_columns) || {})) {
    const o = document.createElement("option"); o.value = c; o.textContent = c; col.appendChild(o);
  }
}

function newIdempotencyKey() {
  const a = new Uint8Array(16); crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function renderAnswer(ans) {
  const box = $("query-result");
  box.replaceChildren();
  const p = document.createElement("p");
  const priv = ans.privacy;
  p.textContent = `Answer (charge #${ans.charge.id}${ans.charge.replayed ? ", replayed" : ""}): ` +
    `Gaussian noise σ = ${fmt(priv.noise_std, 2)} on each count (ε = ${priv.epsilon}, δ = ${priv.delta.toExponential(1)}, ` +
    `L2 sensitivity ${fmt(priv.sensitivity_l2, 3)}: ${priv.contribution_bound}).`;
  box.appendChild(p);
  const rows = ans.items || ans.counts || ans.pairs || ans.segments || [];
  const t = document.createElement("table"); t.className = "grid"; t.id = "answer-table";
  for (const r of rows.slice(0, 50)) {
    const tr = document.createElement("tr");
    cell(tr, r.item !== undefined ? r.item : r.value !== undefined ? r.value : r.items.join(" & "));
    cell(tr, fmt(r.count, 2), "num");
    t.appendChild(tr);
  }
  box.appendChild(t);
  box.hidden = false;
}

async function runQuery(ev) {
  ev.preventDefault();
  const kind = $("q-kind").value;
  const body = { epsilon: Number($("q-epsilon").value) };
  if (kind === "top-k") body.k = Number($("q-k").value);
  if (kind === "item-counts" || kind === "cooccurrence") {
    body.items = $("q-items").value.split(",").map((s) => s.trim()).filter(Boolean);
  }
  if (kind === "segment-counts") body.column = $("q-column").value;
  if ($("q-purpose").value.trim()) body.purpose = $("q-purpose").value.trim();
  $("query-error").hidden = true;
  try {
    const ans = await api(`/v1/datasets/${encodeURIComponent($("q-dataset").value)}/queries/${kind}`, {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "Idempotency-Key": newIdempotencyKey() },
    });
    renderAnswer(ans);
  } catch (err) {
    const e = (err.body && err.body.error) || {};
    let text = err.message;
    if (e.code === "budget_exceeded") {
      text = `Refused — budget exceeded: ${e.scope} has ε = ${fmt(e.remaining_epsilon)} remaining ` +
        `of ${fmt(e.cap_epsilon)}; this question needs ε = ${fmt(e.requested_epsilon)}. Nothing was spent.`;
    }
    $("query-error").textContent = text;
    $("query-error").hidden = false;
    $("query-result").hidden = true;
  }
  await loadBudgets();
}

// ------------------------------------------------------------------ trade-off
async function loadTradeoff() {
  const [data] = await Promise.all([api("/v1/evaluations"), loadPlotly()]);
  const pts = data.points.filter((p) => p.epsilon !== null);
  const k = data.k.includes(10) ? 10 : data.k[0];
  if (!pts.length || k === undefined) {
    $("tradeoff-note").textContent = "No evaluation is recorded beside the served models yet " +
      "(write one with privrec.serve.models.record_evaluation or `privrec evaluate --json`).";
    return;
  }
  for (const metric of ["recall", "ndcg"]) {
    const traces = [];
    const kinds = [...new Set(pts.map((p) => p.kind))];
    for (const kind of kinds) {
      const ps = pts.filter((p) => p.kind === kind).sort((a, b) => a.epsilon - b.epsilon);
      traces.push({ type: "scatter", mode: "lines+markers", name: `${esc(kind)} all users`, line: { width: 3 },
        x: ps.map((p) => p.epsilon), y: ps.map((p) => (p.metrics[metric] || {})[String(k)]) });
      const groups = [...new Set(ps.flatMap((p) => p.per_group.map((g) => g.group)))].sort();
      for (const g of groups) {
        traces.push({ type: "scatter", mode: "lines+markers", name: `${esc(kind)} ${esc(g)}${g === "Q1" ? " (lightest)" : ""}`,
          line: { dash: "dot" }, x: ps.map((p) => p.epsilon),
          y: ps.map((p) => { const r = p.per_group.find((x) => x.group === g); return r ? r[`${metric}@${k}`] : null; }) });
      }
    }
    Plotly.react(`tradeoff-${metric}`, traces, { title: { text: `ε → ${metric === "recall" ? "Recall" : "NDCG"}@${k}, overall and per activity quartile` },
      xaxis: { title: { text: "ε (model guarantee)" }, type: "log" }, yaxis: { title: { text: `${metric}@${k}` } },
      margin: { t: 40 } }, PLOT);
  }
  const np = data.points.filter((p) => p.epsilon === null).map((p) => p.model);
  $("tradeoff-note").textContent = np.length ? `Non-private references (no ε): ${np.join(", ")}.` : "";
}

// ------------------------------------------------------------------ models and artifacts
async function loadModels() {
  const data = await api("/v1/models");
  const list = $("model-list");
  list.replaceChildren();
  for (const m of data.models) {
    const card = document.createElement("div"); card.className = "card"; card.dataset.model = m.id;
    const h = document.createElement("h3"); h.textContent = `${m.id} `;
    const tag = document.createElement("span"); tag.className = "tag " + (m.private ? "private" : "nonprivate");
    tag.textContent = m.private ? `(ε = ${fmt(m.guarantee.epsilon, 3)}, δ = ${m.guarantee.delta.toExponential(1)}, ${m.guarantee.unit})` : "no DP guarantee";
    h.appendChild(tag); card.appendChild(h);
    const info = document.createElement("p");
    const lin = m.lineage;
    info.textContent = `${m.kind}, ${m.n_items} items, ${m.served ? "served" : "not served"}. Lineage: ` +
      (lin.artifact_id ? `artifact #${lin.artifact_id} trained by ${lin.trained_by} on ${lin.dataset} version ${lin.dataset_version} ` +
        `(privrec ${lin.privrec_version}${lin.git_commit ? ", " + lin.git_commit.slice(0, 10) : ""}), charges ${lin.charge_ids.join(", ")}.` : lin.note + ".") +
      (m.signature ? ` Signed by ${m.signature.signer}${m.signature.verified ? " (verified)" : " (claimed, not checked)"}.` : " Not signed.");
    card.appendChild(info);
    if (m.evaluation) {
      const ev = document.createElement("p"); const e = m.evaluation; const k = e.k.includes(10) ? 10 : e.k[0];
      ev.textContent = `Evaluation (${e.protocol}, held-out users): Recall@${k} = ${fmt((e.metrics.recall || {})[k], 3)}, ` +
        `NDCG@${k} = ${fmt((e.metrics.ndcg || {})[k], 3)}; by activity quartile (Q1 lightest): ` +
        e.per_group.map((g) => `${g.group} ${fmt(g[`recall@${k}`], 3)}`).join(", ") + ".";
      card.appendChild(ev);
    }
    const pre = document.createElement("pre"); pre.textContent = m.plain_language; card.appendChild(pre);
    list.appendChild(card);
  }
  if (state.me.role === "analyst") {
    $("artifacts-note").textContent = "The full artifact list is visible to owners and auditors.";
    $("artifact-table").hidden = true;
    return;
  }
  const arts = await api("/v1/artifacts");
  fillTable("artifact-table", arts.artifacts, (tr, a) => {
    cell(tr, a.id); cell(tr, a.model_kind); cell(tr, a.dataset); cell(tr, a.dataset_version);
    cell(tr, fmt(a.epsilon, 3), "num"); cell(tr, a.delta ? a.delta.toExponential(1) : "–", "num"); cell(tr, a.unit);
    cell(tr, a.created_by); cell(tr, utc(a.created_at)); cell(tr, a.charge_ids.join(", "));
    cell(tr, a.signer ? a.signer.slice(0, 19) + "…" : "unsigned").title = a.signer || "";
    const td = cell(tr, a.file_hash.slice(0, 12) + "…"); td.title = a.plain_language || "";
  });
}

// ------------------------------------------------------------------ audit log
async function loadAudit() {
  const data = await api("/v1/audit?limit=100");
  const v = data.verification;
  const banner = $("chain-status");
  banner.className = "banner " + (v.ok ? "ok" : "bad");
  banner.textContent = (v.ok ? "✔ Chain verified: " : "✘ Chain broken: ") + v.message +
    ` (${v.rows} rows; head ${v.head_hash.slice(0, 16)}…)`;
  fillTable("audit-table", data.rows, (tr, r) => {
    cell(tr, r.seq); cell(tr, utc(r.at)); cell(tr, r.actor); cell(tr, r.action); cell(tr, r.summary);
    cell(tr, r.hash.slice(0, 12) + "…");
  });
}

// ------------------------------------------------------------------ consent, deletion, retention
async function loadGovernance() {
  const data = await api("/v1/governance");
  const list = $("governance-list");
  list.replaceChildren();
  for (const d of data.datasets) {
    const card = document.createElement("div"); card.className = "card"; card.dataset.dataset = d.name;
    const h = document.createElement("h3"); h.textContent = `${d.name} — ${d.purpose} (${d.unit} unit)`; card.appendChild(h);
    const p = document.createElement("p");
    p.textContent = `Retention: ${d.retention_days ? d.retention_days + " days" : "none"}. ` +
      `Minimisation: ${d.max_interactions_per_user ? "at most " + d.max_interactions_per_user + " interactions per user" : "none"}. ` +
      `Consent required: ${d.consent_required ? "yes (" + d.consent_source + ")" : "no"}; ${d.consent_records} consent records. ` +
      `Deletion requests: ${d.deletion_requests}` +
      (d.retrain_within_days !== null && d.retrain_within_days !== undefined ? `; models must be retrained within ${d.retrain_within_days} days.` : ".") +
      ` Versions loaded: ${d.versions}.`;
    card.appendChild(p);
    if (d.latest_version) {
      const t = document.createElement("table"); t.className = "grid";
      const head = document.createElement("tr");
      for (const x of ["policy step", "users dropped", "interactions dropped", "why"]) { const th = document.createElement("th"); th.textContent = x; head.appendChild(th); }
      t.appendChild(head);
      for (const s of d.latest_version.steps) {
        const tr = document.createElement("tr");
        cell(tr, s.step); cell(tr, s.users_dropped, "num"); cell(tr, s.interactions_dropped, "num"); cell(tr, s.reason);
        t.appendChild(tr);
      }
      const cap = document.createElement("p"); cap.className = "note";
      cap.textContent = `Latest version #${d.latest_version.id} (${utc(d.latest_version.created_at)}): ` +
        `${d.latest_version.n_users} users, ${d.latest_version.interactions} interactions kept.`;
      card.appendChild(cap); card.appendChild(t);
    }
    if (d.retrains_due.length) {
      const r = document.createElement("p");
      r.textContent = "Retrains due: " + d.retrains_due.map((x) => `artifact #${x.artifact_id} by ${utc(x.due)}${x.overdue ? " (overdue)" : ""}${x.reason ? " — someone has since " + x.reason : ""}`).join("; ");
      card.appendChild(r);
    }
    list.appendChild(card);
  }
  const mon = $("monitors");
  mon.textContent = data.monitors_note || data.monitors.map((m) =>
    `${utc(m.at)} ${m.dataset} — ${m.window} (by ${m.by}, ${m.purpose}, ε = ${fmt(m.epsilon, 3)}, ${m.status})`).join("\n");
  mon.style.whiteSpace = "pre-line";
}

// ------------------------------------------------------------------ shell
const loaders = { budgets: loadBudgets, tradeoff: loadTradeoff, models: loadModels, audit: loadAudit, governance: loadGovernance };

async function show(tab) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${tab}`;
  if (!state.loaded[tab]) {
    state.loaded[tab] = true;
    try { await loaders[tab](); } catch (err) { state.loaded[tab] = false; showError(err); }
  }
  window.dispatchEvent(new Event("resize"));
}

function showError(err) { $("login-error").textContent = err.message; $("login-error").hidden = false; }

async function start() {
  $("login-error").hidden = true;
  try {
    state.me = await api("/v1/me");
  } catch (err) {
    sessionStorage.removeItem("privrec-key");
    showError(err);
    return;
  }
  sessionStorage.setItem("privrec-key", state.key);
  $("login-form").hidden = true;
  $("whoami").hidden = false;
  $("who").textContent = `${state.me.name} (${state.me.role})`;
  document.body.dataset.role = state.me.role;
  const readAll = state.me.role !== "analyst";
  for (const b of document.querySelectorAll("#tabs button")) {
    if (b.dataset.tab === "audit" || b.dataset.tab === "governance") b.hidden = !readAll;
  }
  $("tabs").hidden = false;
  $("main").hidden = false;
  if (state.me.role === "analyst") await setupQueries();
  await show("budgets");
}

$("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.key = $("key").value.trim(); start(); });
$("logout").addEventListener("click", () => { sessionStorage.removeItem("privrec-key"); location.reload(); });
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.tab));
$("q-kind").addEventListener("change", onKind);
$("q-dataset").addEventListener("change", onKind);
$("query-form").addEventListener("submit", runQuery);
window.addEventListener("load", () => setTimeout(() => loadPlotly().catch(() => {}), 0));
if (state.key) start();
