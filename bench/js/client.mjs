// The client of the JavaScript side: a fresh automerge-repo Repo with nodefs storage that
// connects to server.mjs over WebSocket and fetches every document the server holds, as a fresh
// Rhizome node fetches them from its peer. Timing starts before the connection is opened and ends
// when every document has the server's heads.
//
// SERVER is server.mjs's port on loopback or a whole WebSocket URL (a Rhizome node's
// `ws://HOST:PORT/automerge?token=T`, bench/amrepo-endpoint.sh).
//
// Usage: node client.mjs SERVER STORAGE_DIR URLS_FILE
// Prints one JSON line: {"ms", "flushed_ms", "cpu_ms", "docs", "complete"}.

import { readFileSync } from "node:fs";
import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";

const [server, storageDir, urlsFile] = process.argv.slice(2, 5);
if (!server || !storageDir || !urlsFile) {
  console.error("usage: node client.mjs SERVER STORAGE_DIR URLS_FILE");
  process.exit(2);
}
const url = server.startsWith("ws") ? server : `ws://127.0.0.1:${server}`;
const entries = JSON.parse(readFileSync(urlsFile, "utf8"));
const same = (a, b) => a.length === b.length && a.every((h) => b.includes(h));

const cpu0 = process.cpuUsage();
const t0 = performance.now();
const repo = new Repo({
  storage: new NodeFSStorageAdapter(storageDir),
  network: [new WebSocketClientAdapter(url)],
});
const complete = await Promise.all(
  entries.map(async ({ url, heads }) => {
    const handle = await repo.find(url);
    if (same(A.getHeads(handle.doc()), heads)) return true;
    // Found with part of its history: wait for the rest.
    return new Promise((resolve) => {
      const check = () => {
        if (same(A.getHeads(handle.doc()), heads)) {
          handle.off("change", check);
          resolve(true);
        }
      };
      handle.on("change", check);
      check();
    });
  }),
);
const ms = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
await repo.flush();
const flushedMs = performance.now() - t0;
console.log(
  JSON.stringify({
    ms,
    flushed_ms: flushedMs,
    // The client's own CPU (user + system) until every document was complete.
    cpu_ms: (cpu.user + cpu.system) / 1000,
    docs: entries.length,
    complete: complete.every(Boolean),
  }),
);
await repo.shutdown();
process.exit(0);
