// Loads a node's web view in headless Chromium over the DevTools protocol and prints one JSON
// line: bytes over the wire for the first view, time from navigation to the fleet table drawn
// with every node, how long one redraw takes, and the time from a store change (the page's
// `change` event) to the page redrawn. Used by bench/web-view.sh.
//
// Usage: node bench/web/load.mjs URL NODES
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

// The WebSocket client the tests' automerge-repo packages bring (tests/js).
const require = createRequire(new URL("../../tests/js/package.json", import.meta.url));
const WebSocket = require("ws");

const [url, nodes] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "web-view-"));
const chromium = spawn("chromium", [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--remote-debugging-port=0", `--user-data-dir=${profile}`, "--window-size=1200,2400", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });
const port = await new Promise((resolve) => {
  let text = "";
  chromium.stderr.on("data", (chunk) => {
    text += chunk;
    const m = /DevTools listening on ws:\/\/[^:]+:(\d+)\//.exec(text);
    if (m) resolve(m[1]);
  });
});
let targets = [];
while (!targets.some((t) => t.type === "page")) {
  targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
}
const ws = new WebSocket(targets.find((t) => t.type === "page").webSocketDebuggerUrl);
await new Promise((r) => ws.on("open", r));
let id = 0;
const waiting = new Map();
ws.on("message", (m) => {
  const msg = JSON.parse(m);
  if (waiting.has(msg.id)) {
    waiting.get(msg.id)(msg.result);
    waiting.delete(msg.id);
  }
});
const call = (method, params = {}) =>
  new Promise((r) => {
    waiting.set(++id, r);
    ws.send(JSON.stringify({ id, method, params }));
  });
const evaluate = async (expression) =>
  (await call("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true })).result.value;

await call("Network.enable");
await call("Network.setCacheDisabled", { cacheDisabled: true });
const t0 = Date.now();
await call("Page.navigate", { url });
let drawnMs = null;
while (drawnMs === null) {
  const rows = await evaluate("document.querySelectorAll('#fleet tr[data-node]').length").catch(() => 0);
  if (rows >= Number(nodes)) drawnMs = Date.now() - t0;
  else if (Date.now() - t0 > 60000) throw new Error(`only ${rows} of ${nodes} nodes drawn after 60 s`);
  else await new Promise((r) => setTimeout(r, 10));
}
const bytes = await evaluate(
  "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')).reduce((n, e) => n + (e.transferSize || 0), 0)",
);
// One redraw: all nine reads and the rebuild of every section.
const redraws = [];
for (let i = 0; i < 10; i++) {
  // A redraw asked for while one runs only marks another as due: wait for the page to rest.
  redraws.push(await evaluate(`(async () => {
    while (drawing) await new Promise((r) => setTimeout(r, 5));
    const t = performance.now(); await draw(); return performance.now() - t; })()`));
}
// A change in the store to the page redrawn: the time between the event and the redraw's end.
await evaluate(`window.lags = []; const source = new EventSource('/events?token=' + encodeURIComponent(sessionStorage.getItem('rhizome-token')));
  source.addEventListener('change', () => { const at = performance.now(); const before = document.body.dataset.drawn;
    const poll = () => document.body.dataset.drawn !== before ? window.lags.push(performance.now() - at) : setTimeout(poll, 5); poll(); }); true`);
await new Promise((r) => setTimeout(r, 20000));
const lags = (await evaluate("window.lags")).sort((a, b) => a - b);
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(JSON.stringify({
  nodes: Number(nodes),
  first_load_bytes: bytes,
  fleet_drawn_ms: drawnMs,
  redraw_ms_median: Math.round(median(redraws)),
  redraw_ms_max: Math.round(Math.max(...redraws)),
  change_to_redrawn_ms_median: lags.length ? Math.round(median(lags)) : null,
  change_to_redrawn_ms_max: lags.length ? Math.round(lags[lags.length - 1]) : null,
  changes_seen: lags.length,
}));
ws.close();
const exited = new Promise((r) => chromium.on("exit", r));
chromium.kill();
await exited;
rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
process.exit(0);
