// An automerge-repo client (Node.js, @automerge/automerge-repo-network-websocket) that the
// end-to-end tests drive: one JSON command per line on stdin, one JSON answer per line on
// stdout. The repo keeps no storage: what it holds lives as long as the process.
//
//   {"op":"connect","url":"ws://HOST:PORT/automerge?token=T"}
//   {"op":"find","url":"automerge:...","timeout_ms":N}     -> {"ok","doc"} or {"ok":false,"error"}
//   {"op":"get","url":...}                                  -> {"ok","doc"}
//   {"op":"change","url":...,"key":K,"value":V,"immutable":B} -> {"ok","heads"}
//   {"op":"wait","url":...,"key":K,"contains":S,"timeout_ms":N} -> {"ok","ms"}
//   {"op":"exit"}

import { createInterface } from "node:readline";
import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

let repo = null;
const handles = new Map();

// Automerge's uint and int values read as BigInt, which JSON has no words for.
const plain = (_, v) => (typeof v === "bigint" ? v.toString() : v);
const answer = (value) => process.stdout.write(JSON.stringify(value, plain) + "\n");

const withTimeout = (promise, ms, what) =>
  Promise.race([
    promise,
    new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms),
    ),
  ]);

async function handleOf(url) {
  if (!handles.has(url)) handles.set(url, await repo.find(url));
  return handles.get(url);
}

const commands = {
  async connect({ url }) {
    repo = new Repo({ network: [new WebSocketClientAdapter(url, 1000)] });
    return { ok: true, peer_id: repo.peerId };
  },
  async find({ url, timeout_ms = 10000 }) {
    const t0 = performance.now();
    try {
      const handle = await withTimeout(repo.find(url), timeout_ms, "find");
      handles.set(url, handle);
      return { ok: true, doc: handle.doc(), ms: performance.now() - t0 };
    } catch (e) {
      return { ok: false, error: String(e.message ?? e), ms: performance.now() - t0 };
    }
  },
  async get({ url }) {
    const handle = await handleOf(url);
    return { ok: true, doc: handle.doc(), heads: A.getHeads(handle.doc()) };
  },
  async change({ url, key, value, immutable = false }) {
    const handle = await handleOf(url);
    handle.change((d) => {
      d[key] = immutable ? new A.ImmutableString(value) : value;
    });
    return { ok: true, heads: A.getHeads(handle.doc()) };
  },
  async wait({ url, key, contains, timeout_ms = 10000 }) {
    const handle = await handleOf(url);
    const t0 = performance.now();
    const has = () => String(handle.doc()?.[key] ?? "").includes(contains);
    if (has()) return { ok: true, ms: 0 };
    try {
      await withTimeout(
        new Promise((resolve) => {
          const check = () => {
            if (has()) {
              handle.off("change", check);
              resolve();
            }
          };
          handle.on("change", check);
        }),
        timeout_ms,
        "wait",
      );
      return { ok: true, ms: performance.now() - t0 };
    } catch (e) {
      return { ok: false, error: String(e.message ?? e), doc: handle.doc() };
    }
  },
  async exit() {
    answer({ ok: true });
    process.exit(0);
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let command;
  try {
    command = JSON.parse(line);
  } catch (e) {
    answer({ ok: false, error: `not JSON: ${e.message}` });
    continue;
  }
  const run = commands[command.op];
  if (!run) {
    answer({ ok: false, error: `unknown op ${command.op}` });
    continue;
  }
  try {
    answer(await run(command));
  } catch (e) {
    answer({ ok: false, error: String(e.stack ?? e) });
  }
}
process.exit(0);
