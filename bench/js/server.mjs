// The sync server of the JavaScript side: an automerge-repo Repo with nodefs storage behind a
// WebSocket server on loopback, holding DOCS documents of CHANGES changes each, made before any
// client connects. It counts what crosses each client's socket (WebSocket message bytes and TCP
// payload bytes) and reports them when it reads "stats" on stdin.
//
// With DEFINITION_FILE (a workflow definition as a Rhizome node stores it, JSON), the documents
// are workflow documents as a node holds them (`workflowVersion` in content.mjs): what
// bench/amrepo-endpoint.sh serves from both servers.
//
// Usage: node server.mjs DOCS CHANGES STORAGE_DIR URLS_FILE [DEFINITION_FILE]
// Prints one JSON line when ready: {"port", "raw_change_bytes", "change_count", "setup_ms"}.

import { readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { WebSocketServer } from "ws";
import * as A from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";
import { genesis, edit, workflowGenesis, workflowVersion } from "./content.mjs";

const [docs, changes] = process.argv.slice(2, 4).map(Number);
const [storageDir, urlsFile, definitionFile] = process.argv.slice(4, 7);
if (!(docs > 0 && changes > 0) || !storageDir || !urlsFile) {
  console.error("usage: node server.mjs DOCS CHANGES STORAGE_DIR URLS_FILE [DEFINITION_FILE]");
  process.exit(2);
}
const definition = definitionFile ? JSON.parse(readFileSync(definitionFile, "utf8")) : null;

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
await new Promise((resolve) => wss.on("listening", resolve));
const counters = { ws_rx: 0, ws_tx: 0, ws_messages: 0, tcp_rx: 0, tcp_tx: 0, sockets: [] };
wss.on("connection", (ws) => {
  counters.sockets.push(ws._socket);
  ws.on("message", (data) => {
    counters.ws_rx += data.length;
    counters.ws_messages += 1;
  });
  const send = ws.send.bind(ws);
  ws.send = (data, ...rest) => {
    counters.ws_tx += data.byteLength ?? data.length;
    counters.ws_messages += 1;
    return send(data, ...rest);
  };
});

// The standard sync server configuration: it serves what clients ask for and announces nothing.
const repo = new Repo({
  storage: new NodeFSStorageAdapter(storageDir),
  network: [new NodeWSServerAdapter(wss)],
  sharePolicy: async () => false,
});

const t0 = performance.now();
const entries = [];
let rawChangeBytes = 0;
let changeCount = 0;
for (let i = 0; i < docs; i++) {
  let handle;
  if (definition) {
    const id = `bench-${String(i).padStart(4, "0")}`;
    handle = repo.create(workflowGenesis(id));
    for (let j = 1; j < changes; j++) {
      const text = JSON.stringify(workflowVersion(definition, id, i, j));
      handle.change((d) => {
        d.definition = new A.ImmutableString(text);
      });
    }
  } else {
    handle = repo.create(genesis(i));
    for (let j = 1; j < changes; j++) handle.change((d) => edit(d, i, j));
  }
  const all = A.getAllChanges(handle.doc());
  changeCount += all.length;
  for (const c of all) rawChangeBytes += c.length;
  entries.push({ url: handle.url, heads: A.getHeads(handle.doc()) });
}
await repo.flush();
writeFileSync(urlsFile, JSON.stringify(entries));
console.log(
  JSON.stringify({
    port: wss.address().port,
    raw_change_bytes: rawChangeBytes,
    change_count: changeCount,
    setup_ms: performance.now() - t0,
  }),
);

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() !== "stats") continue;
  let tcpRx = 0;
  let tcpTx = 0;
  for (const s of counters.sockets) {
    tcpRx += s.bytesRead;
    tcpTx += s.bytesWritten;
  }
  console.log(
    JSON.stringify({
      ws_rx: counters.ws_rx,
      ws_tx: counters.ws_tx,
      ws_messages: counters.ws_messages,
      tcp_rx: tcpRx,
      tcp_tx: tcpTx,
    }),
  );
  break;
}
await repo.shutdown();
wss.close();
process.exit(0);
