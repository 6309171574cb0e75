// The web view: reads the node's API with the token kept in this tab's session storage and
// redraws when the node's event stream says something changed. Everything shown is built with
// DOM nodes and textContent: names and outputs come from the fleet, never as markup.
"use strict";

const TOKEN_KEY = "rhizome-token";
const RECENT_RUNS_MS = 60 * 60 * 1000;
const RUNS_SHOWN = 15;
const SERIES = ["#0969da", "#cf222e", "#1a7f37", "#8250df"];

let token = null;
let session = null;
let events = null;
let drawing = false;
let again = false;

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function badge(state, text) {
  return h("span", { class: `badge ${state}` }, text ?? state);
}

function ago(ms) {
  if (ms === undefined || ms === null || ms <= 0) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function table(headers, rows) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows),
  );
}

// replaceChildren writes `null` as text: leave out what is not there.
function present(...nodes) {
  return nodes.filter((n) => n !== null && n !== undefined);
}

function short(id) {
  return id ? id.slice(0, 12) : "";
}

// ---------- the API ----------

class Refused extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` },
  });
  const text = await response.text();
  if (response.status === 401) throw new Refused(text);
  if (!response.ok) throw new Error(`${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// What a read that fails shows instead of stopping the whole page.
async function maybe(path) {
  try {
    return await api(path);
  } catch (e) {
    if (e instanceof Refused) throw e;
    return { error: String(e.message || e) };
  }
}

// ---------- plots (hand-made SVG) ----------

// series: [{ name, points: [[x, y], ...], marks?: [[x, y], ...] }]
function plot(title, series, unit = "") {
  const W = 300, H = 100, PAD = 18;
  const all = series.flatMap((s) => s.points);
  const points = all.length;
  const figure = h("figure", {});
  const root = svg("svg", {
    class: "plot",
    viewBox: `0 0 ${W} ${H}`,
    preserveAspectRatio: "none",
    "data-points": points,
    "data-title": title,
  });
  if (points > 0) {
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const X = (x) => PAD + ((x - x0) / Math.max(1, x1 - x0)) * (W - 2 * PAD);
    const Y = (y) => H - PAD / 2 - ((y - y0) / (y1 - y0)) * (H - PAD);
    series.forEach((s, i) => {
      const color = SERIES[i % SERIES.length];
      const line = s.points.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
      root.append(svg("polyline", { points: line, stroke: color }));
      if (s.points.length === 1) {
        const [x, y] = s.points[0];
        root.append(svg("circle", { cx: X(x), cy: Y(y), r: 2, fill: color }));
      }
      for (const [x, y] of s.marks || []) {
        root.append(svg("circle", { cx: X(x), cy: Y(y), r: 3, fill: "#cf222e", class: "mark" }));
      }
    });
    root.append(svg("text", { x: 2, y: 9 }, `${+y1.toFixed(2)}${unit}`));
    root.append(svg("text", { x: 2, y: H - 2 }, `${+y0.toFixed(2)}${unit}`));
  } else {
    root.append(svg("text", { x: W / 2 - 20, y: H / 2 }, "no data yet"));
  }
  const legend = series.length > 1 ? ` (${series.map((s) => s.name).join(", ")})` : "";
  figure.append(root, h("figcaption", {}, title + legend));
  return figure;
}

// ---------- sections ----------

function drawFleet(registry, peers, hierarchy, fleet) {
  const body = document.querySelector("#fleet .body");
  const nodes = registry?.content?.nodes || {};
  const revoked = registry?.content?.revoked || {};
  const byPeer = new Map((Array.isArray(peers) ? peers : []).map((p) => [p.node_id, p]));
  const aggregatorOf = new Map((hierarchy?.chain || []).map((c) => [c.zone, c]));
  const zones = new Map();
  for (const [id, entry] of Object.entries(nodes)) {
    const zone = entry.zone || "";
    if (!zones.has(zone)) zones.set(zone, []);
    zones.get(zone).push([id, entry]);
  }
  const rows = [];
  for (const zone of [...zones.keys()].sort()) {
    for (const [id, entry] of zones.get(zone).sort((a, b) => a[1].name.localeCompare(b[1].name))) {
      const r = revoked[id];
      const peer = byPeer.get(id);
      let state, since;
      if (r && !r.withdrawn) {
        state = "revoked";
        since = `since ${new Date(r.revoked_ms).toLocaleString()}`;
      } else if (id === session.node_id) {
        state = "up";
        since = "this node";
      } else if (peer) {
        state = peer.state === "connected" ? "up" : "down";
        since = state === "up" ? "connected" : `down since ${ago(Date.now() - peer.silent_ms)}`;
      } else {
        state = "unknown";
        since = "not a peer of this node";
      }
      const aggregator = aggregatorOf.get(zone);
      const vitals = entry.vitals;
      const seen = Math.max(entry.updated_ms || 0, vitals?.at_ms || 0);
      rows.push(
        h(
          "tr",
          { "data-node": id, "data-state": state },
          h("td", {}, entry.name, " ", h("span", { class: "muted" }, `${short(id)}${entry.role ? ` · ${entry.role}` : ""}`)),
          h("td", {}, zone || "(root)"),
          h("td", {}, badge(state), " ", h("span", { class: "muted" }, since)),
          h("td", {}, aggregator ? aggregator.name || short(aggregator.aggregator) : "—"),
          h("td", {}, vitals ? `${vitals.cpu_percent}% cpu, ${vitals.memory_used_percent}% mem, ${vitals.disk_free_percent}% disk free` : "—"),
          h("td", {}, ago(seen)),
        ),
      );
    }
  }
  const summary = fleet && !fleet.error
    ? h("p", { class: "muted" }, `${fleet.runs} runs, ${fleet.failures} failed, from ${fleet.nodes} nodes in ${fleet.zones.length} zones (rollups held here)`)
    : null;
  body.replaceChildren(
    ...present(summary, table(["node", "zone", "state", "aggregator", "vitals", "last update"], rows)),
  );
}

function drawAlerts(alerts) {
  const body = document.querySelector("#alerts .body");
  const list = alerts?.alerts || [];
  if (alerts?.error) return body.replaceChildren(h("p", { class: "error" }, alerts.error));
  if (list.length === 0) {
    return body.replaceChildren(h("p", { class: "muted" }, `No alerts (${(alerts?.rules || []).length} rules in force).`));
  }
  const rows = list
    .slice()
    .sort((a, b) => (a.state === b.state ? b.fired_ms - a.fired_ms : a.state === "firing" ? -1 : 1))
    .map((a) =>
      h(
        "tr",
        { "data-alert": a.rule, "data-state": a.state },
        h("td", {}, badge(a.state)),
        h("td", {}, a.rule),
        h("td", {}, a.node_name || short(a.node)),
        h("td", {}, a.condition),
        h("td", {}, a.value),
        h("td", {}, ago(a.fired_ms)),
      ),
    );
  body.replaceChildren(table(["state", "rule", "node", "condition", "value", "fired"], rows));
}

// The first number in a run's output (the demo's `value`), and whether it was flagged.
function reading(output) {
  let parsed;
  try {
    parsed = JSON.parse(output);
  } catch {
    return null;
  }
  const flat = Array.isArray(parsed) ? parsed[parsed.length - 1] : parsed;
  if (typeof flat === "number") return { value: flat, flagged: false };
  if (!flat || typeof flat !== "object") return null;
  const key = ["value", "score", "z"].find((k) => typeof flat[k] === "number")
    ?? Object.keys(flat).find((k) => typeof flat[k] === "number");
  if (key === undefined) return null;
  const flagged = Object.entries(flat).some(([k, v]) => v === true && /anomal|alert|flag/i.test(k));
  return { value: flat[key], flagged };
}

function runsPerMinute(runs, failed) {
  const buckets = new Map();
  for (const r of runs) {
    if (failed && r.status === "succeeded") continue;
    const minute = Math.floor(r.finished_ms / 60000) * 60000;
    buckets.set(minute, (buckets.get(minute) || 0) + 1);
  }
  return [...buckets.entries()].sort((a, b) => a[0] - b[0]);
}

// Which version each node ran last, as "version 2 on alpha, bravo; version 1 on charlie".
function versionsRunning(runs, registry) {
  const latest = new Map();
  for (const r of runs) {
    const seen = latest.get(r.node);
    if (!seen || seen.finished_ms < r.finished_ms) latest.set(r.node, r);
  }
  const byVersion = new Map();
  for (const [node, r] of latest) {
    const name = registry?.content?.nodes?.[node]?.name || short(node);
    if (!byVersion.has(r.workflow_version)) byVersion.set(r.workflow_version, []);
    byVersion.get(r.workflow_version).push(name);
  }
  return [...byVersion.entries()]
    .sort((a, b) => b[0] - a[0])
    .map(([v, names]) => `version ${v} on ${names.sort().join(", ")}`)
    .join("; ");
}

// A staged rollout in words: "rollout probe@2: running, stage 1 of 2 · bravo active, charlie pending".
function rolloutLine(rollout) {
  if (!rollout || rollout.error) return null;
  const st = rollout.status || {};
  const stages = (rollout.stage_sizes || []).length;
  const where =
    st.state === "running" ? `running, stage ${st.stage + 1} of ${stages}`
    : st.state === "paused" ? `paused at stage ${st.stage + 1} of ${stages}`
    : st.state === "aborted" ? `aborted: ${st.reason}`
    : st.state;
  const nodes = (rollout.nodes || [])
    .map((n) => `${n.name || short(n.node)} ${n.report ? n.report.state : "no report"}`)
    .join(", ");
  return h(
    "p",
    { class: "muted", "data-rollout": rollout.rollout },
    `rollout ${rollout.rollout} (version ${rollout.version} from ${rollout.baseline}): ${where}`,
    nodes ? ` · ${nodes}` : "",
  );
}

function drawWorkflows(workflows, results, fleet, registry, rollouts) {
  const body = document.querySelector("#workflows .body");
  if (workflows?.error) return body.replaceChildren(h("p", { class: "error" }, workflows.error));
  const runs = Array.isArray(results) ? results : [];
  const operator = session.role === "operator" || session.role === "admin";
  const parts = [];
  for (const w of workflows || []) {
    const mine = runs.filter((r) => r.workflow === w.id).sort((a, b) => a.finished_ms - b.finished_ms);
    const durations = mine.map((r) => [r.finished_ms, r.finished_ms - r.started_ms]);
    const readings = mine
      .map((r) => [r.finished_ms, reading(r.output)])
      .filter(([, v]) => v);
    const rollup = (fleet?.zones || []).flatMap((z) => z.workflows.filter((v) => v.workflow === w.id));
    const fleetRuns = rollup.reduce((n, v) => n + v.runs, 0);
    const fleetFailures = rollup.reduce((n, v) => n + v.failures, 0);
    const target = w.target || {};
    const where = [...(target.nodes || []), ...(target.tags || []).map((t) => `tag ${t}`), ...(target.zones || []).map((z) => `zone ${z}`)];
    const actions = operator
      ? h("button", {
          "data-action": "run",
          onclick: async () => {
            if (!confirm(`Run ${w.id} now on ${session.node}?`)) return;
            try {
              const started = await api(`/run/${encodeURIComponent(w.id)}`, {
                method: "POST",
                headers: { "Content-Type": "application/json" },
                body: "{}",
              });
              flash(`started ${started.run_id}`);
            } catch (e) {
              flash(String(e.message || e), true);
            }
          },
        }, "Run now")
      : null;
    parts.push(
      h(
        "div",
        { "data-workflow": w.id },
        h("h3", {}, `${w.id} `, h("span", { class: "muted" }, `version ${w.version}, ${w.trigger || "manual"}, on ${where.length ? where.join(", ") : "every node"}`), " ", actions),
        w.description ? h("p", { class: "muted" }, w.description) : null,
        h("p", { class: "muted" }, `${mine.length} runs here in the last hour; ${fleetRuns} runs (${fleetFailures} failed) in the rollups held here`),
        mine.length ? h("p", { class: "muted", "data-versions": "" }, `running: ${versionsRunning(mine, registry)}`) : null,
        rolloutLine(rollouts?.[w.id]),
        h(
          "div",
          { class: "plots" },
          plot("runs per minute (failed in red)", [
            { name: "runs", points: runsPerMinute(mine, false) },
            { name: "failed", points: runsPerMinute(mine, true) },
          ]),
          plot("run duration", [{ name: "ms", points: durations }], " ms"),
          readings.length
            ? plot("output value (anomalies marked)", [
                {
                  name: "value",
                  points: readings.map(([x, v]) => [x, v.value]),
                  marks: readings.filter(([, v]) => v.flagged).map(([x, v]) => [x, v.value]),
                },
              ])
            : null,
        ),
        table(
          ["run", "node", "status", "duration", "finished"],
          mine
            .slice(-RUNS_SHOWN)
            .reverse()
            .map((r) =>
              h(
                "tr",
                { "data-run": r.run_id },
                h("td", {}, r.run_id),
                h("td", {}, short(r.node)),
                h("td", {}, badge(r.status)),
                h("td", {}, `${r.finished_ms - r.started_ms} ms`),
                h("td", {}, ago(r.finished_ms)),
              ),
            ),
        ),
      ),
    );
  }
  body.replaceChildren(...(parts.length ? parts : [h("p", { class: "muted" }, "No workflows.")]));
}

function drawNode(health, resources, peers) {
  const body = document.querySelector("#node .body");
  const recent = [...(resources?.recent || []), ...(resources?.latest ? [resources.latest] : [])];
  const series = (f) => recent.filter((s) => typeof f(s) === "number").map((s) => [s.at_ms, f(s)]);
  const pct = (a, b) => (b ? (100 * a) / b : null);
  const operator = session.role === "operator" || session.role === "admin";
  const checks = (health?.checks || []).map((c) =>
    h("tr", {}, h("td", {}, c.name), h("td", {}, badge(c.status)), h("td", {}, c.reason || "")),
  );
  const peerRows = (Array.isArray(peers) ? peers : []).map((p) =>
    h(
      "tr",
      { "data-peer": p.node_id },
      h("td", {}, p.name || short(p.node_id)),
      h("td", {}, badge(p.state)),
      h("td", {}, p.addr || ""),
      h("td", {}, p.sync ? (p.sync.pending.length ? `${p.sync.pending.length} of ${p.sync.shared} pending` : `in sync (${p.sync.shared})`) : "—"),
    ),
  );
  body.replaceChildren(...present(
    h(
      "p",
      {},
      `${health?.name} (${short(health?.node_id)}), ${health?.role}, zone ${health?.zone || "(root)"}, version ${health?.version}, up ${Math.round((health?.uptime_ms || 0) / 1000)} s `,
      operator
        ? h("button", {
            "data-action": "sync",
            onclick: async () => {
              if (!confirm("Sync with every peer now?")) return;
              try {
                const report = await api("/sync", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
                flash(report.converged ? "in sync with every peer" : "not in sync yet", !report.converged);
              } catch (e) {
                flash(String(e.message || e), true);
              }
            },
          }, "Sync now")
        : null,
    ),
    (health?.problems || []).length ? h("p", { class: "error" }, health.problems.join("; ")) : null,
    h(
      "div",
      { class: "plots" },
      plot("CPU", [{ name: "cpu", points: series((s) => s.cpu_percent) }], "%"),
      plot("memory used", [{ name: "memory", points: series((s) => pct(s.memory_used_bytes, s.memory_total_bytes)) }], "%"),
      plot("disk free (data dir)", [{ name: "disk", points: series((s) => pct(s.disk_free_bytes, s.disk_total_bytes)) }], "%"),
      plot("network", [
        { name: "received/s", points: series((s) => s.net_received_per_sec) },
        { name: "sent/s", points: series((s) => s.net_sent_per_sec) },
      ], " B/s"),
    ),
    h("h3", {}, "Health checks"),
    table(["check", "status", "why"], checks),
    h("h3", {}, "Peers"),
    peerRows.length ? table(["peer", "state", "address", "sync"], peerRows) : h("p", { class: "muted" }, "No peers."),
  ));
}

// ---------- the page ----------

function flash(text, bad = false) {
  const live = document.getElementById("live");
  live.textContent = text;
  live.className = bad ? "error" : "muted";
}

async function draw() {
  if (drawing) {
    again = true;
    return;
  }
  drawing = true;
  try {
    const since = Date.now() - RECENT_RUNS_MS;
    const [health, registry, peers, hierarchy, fleet, alerts, workflows, results, resources] = await Promise.all([
      fetch("/health").then((r) => r.json()).catch(() => null),
      maybe("/doc?id=mesh"),
      maybe("/peers"),
      maybe("/hierarchy"),
      maybe("/fleet"),
      maybe("/alerts?fleet=true"),
      maybe("/workflows"),
      maybe(`/results?since_ms=${since}`),
      maybe("/resources"),
    ]);
    if (health) {
      document.getElementById("node-name").textContent = `· ${health.name}`;
      const status = document.getElementById("status");
      status.textContent = health.status;
      status.className = `badge ${health.status}`;
    }
    drawFleet(registry, peers, hierarchy, fleet);
    drawAlerts(alerts);
    // Workflows whose version in effect is rolled out in stages: where each rollout stands.
    const staged = Array.isArray(workflows)
      ? workflows.filter((w) => w.rollout)
      : [];
    const rollouts = Object.fromEntries(
      await Promise.all(staged.map(async (w) => [w.id, await maybe(`/rollouts/${encodeURIComponent(w.id)}`)])),
    );
    drawWorkflows(workflows, results, fleet, registry, rollouts);
    drawNode(health, resources, peers);
    document.body.dataset.drawn = String(Date.now());
    // For measuring: how long the first whole view took from the start of navigation.
    document.body.dataset.firstDrawnMs ??= String(Math.round(performance.now()));
  } catch (e) {
    if (e instanceof Refused) return logout(`The token was refused: ${e.message}`);
    flash(String(e.message || e), true);
  } finally {
    drawing = false;
    if (again) {
      again = false;
      draw();
    }
  }
}

function listen() {
  if (events) events.close();
  events = new EventSource(`/events?token=${encodeURIComponent(token)}`);
  events.addEventListener("change", draw);
  events.addEventListener("tick", draw);
  events.addEventListener("open", () => flash("live"));
  events.addEventListener("error", () => flash("reconnecting to the node…", true));
}

function logout(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  if (events) events.close();
  document.getElementById("view").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("who").replaceChildren();
  document.getElementById("login-error").textContent = why || "";
}

async function login(candidate) {
  token = candidate;
  try {
    session = await api("/session");
  } catch (e) {
    return logout(e instanceof Refused ? `The token was refused: ${e.message}` : String(e.message || e));
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("login").hidden = true;
  document.getElementById("view").hidden = false;
  document.getElementById("who").replaceChildren(
    `${session.name} (${session.role})`,
    h("button", { onclick: () => logout() }, "Log out"),
  );
  await draw();
  listen();
}

// A fault of the page is shown on it, not only in a console nobody opens on a kiosk.
window.addEventListener("error", (e) => flash(`page error: ${e.message}`, true));
window.addEventListener("unhandledrejection", (e) => flash(`page error: ${e.reason}`, true));

document.getElementById("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  login(document.getElementById("token").value.trim());
});

// `/?token=…` logs in directly (links, kiosk screens); the token leaves the address bar at once.
const fromUrl = new URLSearchParams(location.search).get("token");
if (fromUrl) history.replaceState(null, "", location.pathname);
const saved = fromUrl || sessionStorage.getItem(TOKEN_KEY);
if (saved) login(saved);
else logout();
