// Edit → visible at a second client, through one server: client A changes a workflow document,
// client B (a second Repo on a socket of its own) sees the change. Against a Rhizome node A
// holds an admin token and B a monitor token (bench/amrepo-endpoint.sh); against server.mjs
// both are plain clients.
//
// Each edit is a whole new definition, as clients write workflows: A reads the definition it
// holds, sets a marker as its description and the next version number, and writes it as one
// ImmutableString under `definition`. The lag runs from just before A's `handle.change` to the
// `change` event in which B's definition carries the marker; both repos live in this process,
// so one clock times both ends (and this process's event loop is part of every figure, on
// either server).
//
// Edits go to DOCS documents in turn, PACE_MS apart, each once B saw the previous one and A
// and B hold the same heads (on a node, its signed version of A's edit), so that every edit
// starts from what both hold. automerge-repo syncs a changed document at most once every
// 100 ms (DocSynchronizer's syncDebounceRate, in the client as in the JavaScript server): a
// document is edited every DOCS × PACE_MS ms, which must exceed twice that, so that the
// throttle never holds an edit back and the figures are the servers'.
//
// Where each edit's time goes, from two more timestamps: when A's repo hands the edit's sync
// message to its WebSocket adapter, and when the message that made B see it reached B's
// adapter. `a_ms` is A's change and sync message, `server_ms` from A's adapter to B's (the
// server, both sockets and loopback), `b_ms` B's decoding and applying until its `change`
// event.
//
// Usage: node lag.mjs A_URL B_URL URLS_FILE EDITS PACE_MS DOCS
// Prints one JSON line: {"lags_ms", "a_ms", "server_ms", "b_ms", "not_seen", "series_ms"}.

import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

const THROTTLE_MS = 100;
const PATIENCE_MS = 5000;

const [aUrl, bUrl, urlsFile] = process.argv.slice(2, 5);
const [edits, pace, docs] = process.argv.slice(5, 8).map(Number);
if (!aUrl || !bUrl || !urlsFile || !(edits > 0) || !(pace >= 0) || !(docs > 0)) {
  console.error("usage: node lag.mjs A_URL B_URL URLS_FILE EDITS PACE_MS DOCS");
  process.exit(2);
}
const entries = JSON.parse(readFileSync(urlsFile, "utf8")).slice(0, docs);
if (entries.length * pace <= 2 * THROTTLE_MS) {
  console.error(
    `${entries.length} documents ${pace} ms apart: each is edited every ` +
      `${entries.length * pace} ms, within automerge-repo's sync throttle (${THROTTLE_MS} ms)`,
  );
  process.exit(2);
}

const same = (a, b) => a.length === b.length && a.every((h) => b.includes(h));
const heads = (handle) => A.getHeads(handle.doc());

/** The definition a handle holds, parsed; null when it holds none. */
function definitionOf(handle) {
  const text = handle.doc()?.definition;
  if (text === undefined) return null;
  try {
    return JSON.parse(String(text));
  } catch {
    return null;
  }
}

/**
 * Resolves with the time at which `test(handle)` first held, looked at on each of the handle's
 * changes (now, if it holds already); null after `ms`.
 */
function when(handle, test, ms = PATIENCE_MS) {
  if (test(handle)) return Promise.resolve(performance.now());
  return new Promise((resolve) => {
    const done = (at) => {
      clearTimeout(timer);
      handle.off("change", check);
      resolve(at);
    };
    const check = () => {
      if (test(handle)) done(performance.now());
    };
    const timer = setTimeout(() => done(null), ms);
    handle.on("change", check);
  });
}

/** Waits until A and B hold the same heads of a document; false after PATIENCE_MS. */
async function converged(a, b) {
  const deadline = performance.now() + PATIENCE_MS;
  while (!same(heads(a), heads(b))) {
    if (performance.now() > deadline) return false;
    await sleep(1);
  }
  return true;
}

const adapterA = new WebSocketClientAdapter(aUrl);
const adapterB = new WebSocketClientAdapter(bUrl);
// The edited document, and when A's adapter was given its first sync message since the edit.
let watching = null;
let sentAt = null;
const sendA = adapterA.send.bind(adapterA);
adapterA.send = (message) => {
  if (sentAt === null && message.type === "sync" && message.documentId === watching) {
    sentAt = performance.now();
  }
  return sendA(message);
};
// A message is decoded and applied in the adapter's handler, so the latest arrival when B sees
// the edit is the message that carried it.
let arrivedAt = null;
const receiveB = adapterB.receiveMessage.bind(adapterB);
adapterB.receiveMessage = (data) => {
  arrivedAt = performance.now();
  return receiveB(data);
};
const repoA = new Repo({ network: [adapterA] });
const repoB = new Repo({ network: [adapterB] });
const handlesA = await Promise.all(entries.map((e) => repoA.find(e.url)));
const handlesB = await Promise.all(entries.map((e) => repoB.find(e.url)));
for (let i = 0; i < entries.length; i++) {
  const has = (h) => same(heads(h), entries[i].heads);
  if ((await when(handlesA[i], has)) === null || (await when(handlesB[i], has)) === null) {
    console.error(`document ${entries[i].url} did not reach both clients`);
    process.exit(1);
  }
}
// Past the throttle of the syncs the fetch started.
await sleep(4 * THROTTLE_MS);

const lags = [];
const stages = { a_ms: [], server_ms: [], b_ms: [] };
let missedInARow = 0;
const t0 = performance.now();
for (let k = 0; k < edits; k++) {
  const i = k % entries.length;
  const a = handlesA[i];
  const b = handlesB[i];
  const marker = `lag edit ${k}`;
  const definition = definitionOf(a);
  definition.description = marker;
  definition.version = Number(definition.version) + 1;
  const text = JSON.stringify(definition);
  let carriedAt = null;
  const seen = when(b, (h) => {
    if (definitionOf(h)?.description !== marker) return false;
    carriedAt = arrivedAt;
    return true;
  });
  watching = a.documentId;
  sentAt = null;
  const at = performance.now();
  a.change((d) => {
    d.definition = new A.ImmutableString(text);
  });
  const seenAt = await seen;
  if (seenAt === null) {
    missedInARow += 1;
    if (missedInARow === 3) {
      console.error(`three edits in a row not seen by B (the last: ${marker}); giving up`);
      break;
    }
  } else {
    lags.push(seenAt - at);
    missedInARow = 0;
    if (sentAt !== null && carriedAt !== null && carriedAt >= sentAt) {
      stages.a_ms.push(sentAt - at);
      stages.server_ms.push(carriedAt - sentAt);
      stages.b_ms.push(seenAt - carriedAt);
    }
  }
  await converged(a, b);
  const next = t0 + pace * (k + 1);
  const wait = next - performance.now();
  if (wait > 0) await sleep(wait);
}
const seriesMs = performance.now() - t0;
console.log(
  JSON.stringify({ lags_ms: lags, ...stages, not_seen: edits - lags.length, series_ms: seriesMs }),
);
await Promise.all([repoA.shutdown(), repoB.shutdown()]);
process.exit(0);
