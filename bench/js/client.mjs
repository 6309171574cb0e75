// The client of the JavaScript side: a fresh automerge-repo Repo with nodefs storage that
// connects to server.mjs over WebSocket and fetches every document the server holds, as a fresh
// Rhizome node fetches them from its peer. Timing starts before the connection is opened and ends
// when every document has the server's heads.
//
// Usage: node client.mjs PORT STORAGE_DIR URLS_FILE
// Prints one JSON line: {"ms", "docs", "complete"}.

import { readFileSync } from "node:fs";
import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";

const [port, storageDir, urlsFile] = process.argv.slice(2, 5);
if (!port || !storageDir || !urlsFile) {
  console.error("usage: node client.mjs PORT STORAGE_DIR URLS_FILE");
  process.exit(2);
}
const entries = JSON.parse(readFileSync(urlsFile, "utf8"));
const same = (a, b) => a.length === b.length && a.every((h) => b.includes(h));

const t0 = performance.now();
const repo = new Repo({
  storage: new NodeFSStorageAdapter(storageDir),
  network: [new WebSocketClientAdapter(`ws://127.0.0.1:${port}`)],
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
await repo.flush();
const flushedMs = performance.now() - t0;
console.log(
  JSON.stringify({
    ms,
    flushed_ms: flushedMs,
    docs: entries.length,
    complete: complete.every(Boolean),
  }),
);
await repo.shutdown();
process.exit(0);
