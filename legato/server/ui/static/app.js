// Legato operator page: polls /ui/api/* once a second and redraws. No framework, no network
// beyond this server. The API key (if any) stays in this tab's sessionStorage and goes out as
// `Authorization: Bearer <key>` on the data requests only.
"use strict";

const POLL_MS = 1000;
const STATE_COLOURS = {
  running: "#2563eb", ok: "#16a34a", failed: "#dc2626", exhausted: "#d97706", idle: "#9ca3af",
};
let timer = null;
let needKey = false; // the form is open because the server answered 401

function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fmtNum(n, digits = 0) {
  if (n === null || n === undefined) return "–";
  if (n === Infinity || n === "Infinity") return "never";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}
function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}
function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s === Infinity || s === "Infinity") return "never";
  if (s < 0) return "due";
  return s < 60 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}
function bar(fraction, cls) {
  const f = Math.max(0, Math.min(1, fraction || 0));
  return el("div", { class: "bar " + (cls || "") }, el("span", { style: `width:${(100 * f).toFixed(1)}%` }));
}
function stateClass(state) {
  if (state.startsWith("parked")) return "parked";
  if (state.startsWith("tool")) return "tool";
  if (state.includes("client")) return "client";
  return state.split(" ")[0];
}

async function api(path) {
  const key = sessionStorage.getItem("legato-key");
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) {
    needKey = true;
    showKeyForm("This server needs an API key.");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || response.statusText);
  }
  return response.json();
}

function showKeyForm(message) {
  $("#key-form").hidden = false;
  $("#key-error").textContent = message || "";
}

// --- overview --------------------------------------------------------------------------------

function renderReplicas(replicas) {
  const box = $("#replicas");
  box.replaceChildren(...replicas.map((r) => {
    const tiers = r.tiers.map((t) => {
      let fraction = 0, label = "";
      if (t.tier === "device") {
        fraction = r.total_blocks ? t.blocks / r.total_blocks : 0;
        label = `${fmtNum(t.blocks)} / ${fmtNum(r.total_blocks)} blocks`;
      } else if (t.tier === "host") {
        fraction = t.capacity_bytes ? t.bytes_used / t.capacity_bytes : 0;
        label = `${fmtNum(t.blocks)} blocks, ${bytes(t.bytes_used)}`;
      } else {
        fraction = 0;
        label = `${fmtNum(t.offloaded_blocks)} blocks written`;
      }
      return [el("span", {}, t.tier), bar(fraction, t.tier), el("span", { class: "muted" }, label)];
    }).flat();
    const spec = r.spec_acceptance === null ? [] :
      [el("span", {}, "speculation accepted ", el("b", {}, pct(r.spec_acceptance)))];
    return el("div", { class: "replica", "data-replica": r.replica },
      el("h3", {}, `replica ${r.replica} `, el("span", { class: "muted" }, r.model)),
      el("div", { class: "stats" },
        el("span", {}, "running ", el("b", { class: "running" }, fmtNum(r.running))),
        el("span", {}, "waiting ", el("b", { class: "waiting" }, fmtNum(r.waiting))),
        el("span", {}, "held by policy ", el("b", {}, fmtNum(r.held_by_policy))),
        el("span", {}, "prefix hit ", el("b", { class: "hit" }, pct(r.prefix_hit_rate))),
        el("span", {}, "busy ", el("b", { class: "busy" }, pct(r.busy_fraction))),
        ...spec),
      el("div", { class: "kv" }, ...tiers),
      r.tiers.length > 1 ? el("div", { class: "muted" },
        `tier fetches: ${fmtNum(r.load_choices)} loaded, ${fmtNum(r.recompute_choices)} recomputed (cheaper)`) : "");
  }));
}

function renderTenants(t) {
  $("#jain").textContent = t.jain_index === null ? "" :
    `Jain index ${t.jain_index.toFixed(3)} over ${t.active_tenants} active tenant(s), last ${t.window_s} s`;
  $("#tenants tbody").replaceChildren(...t.rows.map((r) => el("tr", { "data-tenant": r.name },
    el("td", {}, r.name),
    el("td", {}, fmtNum(r.weight, 2)),
    el("td", { class: "share" }, bar(r.share, "share"),
      el("span", { class: "share-value" }, pct(r.share)),
      r.entitled_share === null ? "" : el("span", { class: "muted" }, ` (entitled ${pct(r.entitled_share)})`)),
    el("td", {}, fmtNum(r.tokens_window)),
    el("td", {}, `${r.runs} / ${r.max_concurrent_runs}`),
    el("td", {}, r.tokens_per_minute === null ? "none" : `${fmtNum(r.tokens_window)} / ${fmtNum(r.tokens_per_minute)}`),
    el("td", {}, fmtNum(r.rejected_429)))));
}

function renderPrograms(p) {
  const counts = Object.entries(p.by_state).map(([k, v]) => `${v} ${k}`).join(", ");
  $("#program-counts").textContent = `${p.total} live` + (counts ? ` — ${counts}` : "") +
    (p.rows.length < p.total ? ` (first ${p.rows.length} shown)` : "");
  $("#programs tbody").replaceChildren(...p.rows.map((r) => {
    const row = el("tr", { class: "link", "data-run": r.id, "data-state": r.state },
      el("td", {}, r.name),
      el("td", {}, r.kind),
      el("td", {}, r.tenant),
      el("td", {}, el("span", { class: "state " + stateClass(r.state) }, r.state + (r.pinned ? " · pinned" : ""))),
      el("td", {}, r.replica === null ? "–" : r.replica),
      el("td", {}, r.resident_tokens === null ? "–" : fmtNum(r.resident_tokens) + " tok"),
      el("td", {}, r.never_reused ? "never" : secs(r.next_use_in_s)),
      el("td", {}, fmtNum(r.attained_tokens) + " tok"),
      el("td", {}, secs(r.age_s)));
    row.addEventListener("click", () => { location.hash = "#/runs/" + encodeURIComponent(r.id); });
    return row;
  }));
}

function decisionItem(d) {
  const when = new Date(d.at * 1000).toLocaleTimeString();
  const who = d.run_id ? ` ${d.run_id}` : "";
  return el("li", { "data-kind": d.kind }, el("span", { class: "muted" }, when + " "),
    el("span", { class: "kind" }, d.kind), who,
    d.replica === null || d.replica === undefined ? "" : ` → replica ${d.replica}`,
    d.detail ? ` (${d.detail})` : "", el("span", { class: "muted" }, d.reason ? ` — ${d.reason}` : ""));
}

function renderDecisions(d) {
  if (!d.available) {
    $("#decision-counts").textContent = "passthrough: the engine batches on its own, no policy decides";
    $("#decisions").replaceChildren();
    return;
  }
  $("#decision-counts").textContent = Object.entries(d.counts).map(([k, v]) => `${k} ${v}`).join(" · ");
  $("#decisions").replaceChildren(...d.entries.map(decisionItem));
}

async function refreshOverview() {
  const s = await api("/ui/api/snapshot");
  $("#policy").textContent = "policy " + s.policy;
  $("#viewer").textContent = "viewing as " + s.viewer.label;
  renderReplicas(s.replicas);
  renderTenants(s.tenants);
  renderPrograms(s.programs);
  renderDecisions(s.decisions);
}

// --- one program -----------------------------------------------------------------------------

function layout(graph) {
  // Layers by breadth-first distance from the entry; unreachable nodes go last.
  const depth = {};
  const next = {};
  for (const e of graph.edges) (next[e.source] = next[e.source] || []).push(e.target);
  const queue = graph.entry ? [graph.entry] : [];
  if (graph.entry) depth[graph.entry] = 0;
  while (queue.length) {
    const n = queue.shift();
    for (const m of next[n] || []) if (!(m in depth)) { depth[m] = depth[n] + 1; queue.push(m); }
  }
  const maxDepth = Math.max(0, ...Object.values(depth));
  const layers = [];
  for (const node of graph.nodes) {
    const d = node.name in depth ? depth[node.name] : maxDepth + 1;
    (layers[d] = layers[d] || []).push(node.name);
  }
  const pos = {};
  const W = 150, H = 36, GX = 60, GY = 26;
  layers.forEach((names, d) => names.forEach((name, i) => {
    pos[name] = { x: 20 + d * (W + GX), y: 40 + i * (H + GY), w: W, h: H };
  }));
  pos.__end__ = { x: 20 + (layers.length) * (W + GX), y: 40, w: 60, h: H };
  const width = 20 + (layers.length + 1) * (W + GX);
  const height = 60 + Math.max(1, ...layers.map((l) => (l || []).length)) * (H + GY);
  return { pos, width, height };
}

function renderGraph(graph) {
  const box = $("#graph");
  if (!graph) { box.replaceChildren(el("p", { class: "muted" }, "A proxy program declares no graph.")); return; }
  const { pos, width, height } = layout(graph);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#6b7280" }))));
  for (const e of graph.edges) {
    const a = pos[e.source], b = pos[e.target] || pos.__end__;
    if (!a) continue;
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    const back = x2 <= x1;
    const d = back
      ? `M${a.x + a.w / 2},${a.y} C${a.x + a.w / 2},${a.y - 30} ${b.x + b.w / 2},${b.y - 30} ${b.x + b.w / 2},${b.y}`
      : `M${x1},${y1} C${x1 + 30},${y1} ${x2 - 30},${y2} ${x2},${y2}`;
    root.append(svg("path", { d, class: "edge" + (e.conditional ? " conditional" : ""), "marker-end": "url(#arrow)" }));
  }
  const states = graph.states || {};
  for (const n of graph.nodes) {
    const p = pos[n.name];
    const state = states[n.name] || "idle";
    root.append(svg("g", { class: "node", "data-node": n.name, "data-state": state },
      svg("rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: 6, fill: STATE_COLOURS[state] || STATE_COLOURS.idle }),
      svg("text", { x: p.x + 8, y: p.y + 22 }, `${n.name} (${n.kind})`)));
  }
  if (graph.edges.some((e) => e.target === "__end__")) {
    const p = pos.__end__;
    root.append(svg("g", { class: "end" }, svg("rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: 18, fill: "#111827" }),
      svg("text", { x: p.x + 14, y: p.y + 22, fill: "#fff" }, "end")));
  }
  const legend = svg("g", { class: "legend" });
  Object.entries(STATE_COLOURS).forEach(([name, colour], i) => {
    legend.append(svg("rect", { x: 20 + i * 90, y: 8, width: 12, height: 12, fill: colour }),
      svg("text", { x: 36 + i * 90, y: 18 }, name));
  });
  root.append(legend);
  box.replaceChildren(root);
}

async function refreshRun(id) {
  const r = await api("/ui/api/runs/" + encodeURIComponent(id));
  $("#run-title").textContent = `${r.name} — ${r.id}`;
  $("#run-status").replaceChildren(el("span", { class: "state " + stateClass(r.status) }, r.status),
    r.error ? el("span", { class: "error" }, " " + r.error) : "",
    r.calls !== undefined ? ` ${r.calls} calls` : "");
  renderGraph(r.graph);
  const tokens = $("#tokens");
  if (tokens.textContent !== r.tokens) { tokens.textContent = r.tokens; tokens.scrollTop = tokens.scrollHeight; }
  $("#journal tbody").replaceChildren(...r.steps.map((s) => el("tr", {},
    el("td", {}, s.index), el("td", {}, s.node), el("td", {}, s.status), el("td", {}, s.next || ""),
    el("td", {}, s.finished_at && s.started_at ? secs(s.finished_at - s.started_at) : ""))));
  $("#events").replaceChildren(...r.events.map((e) => el("li", {},
    el("span", { class: "kind" }, e.kind), e.node ? ` ${e.node}` : "",
    el("span", { class: "muted" }, " " + JSON.stringify(e.data).slice(0, 160)))));
  $("#run-decisions").replaceChildren(...r.decisions.map(decisionItem));
}

// --- routing and polling ---------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/runs\/(.+)$/);
  $("#overview").hidden = !!m;
  $("#run").hidden = !m;
  return m ? () => refreshRun(decodeURIComponent(m[1])) : refreshOverview;
}

async function tick() {
  clearTimeout(timer);
  try {
    await route()();
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("#updated").dataset.at = String(Date.now());
    if (needKey) { needKey = false; $("#key-form").hidden = true; $("#key-error").textContent = ""; }
  } catch (err) {
    if (err.message !== "unauthorized") $("#updated").textContent = "error: " + err.message;
  }
  timer = setTimeout(tick, POLL_MS);
}

$("#key-button").addEventListener("click", () => showKeyForm(""));
$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#key-input").value.trim();
  if (key) sessionStorage.setItem("legato-key", key); else sessionStorage.removeItem("legato-key");
  $("#key-error").textContent = "";
  $("#key-form").hidden = true;
  tick();
});
window.addEventListener("hashchange", tick);
tick();
