// One run of the JavaScript side: starts server.mjs with DOCS documents of CHANGES changes,
// then client.mjs against it, and prints one JSON line with the client's timing, the server's
// byte counts and the raw change bytes. Both processes run on loopback; their storage lives in
// a temporary directory removed afterwards.
//
// Usage: node run.mjs DOCS CHANGES

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const [docs, changes] = process.argv.slice(2, 4);
if (!docs || !changes) {
  console.error("usage: node run.mjs DOCS CHANGES");
  process.exit(2);
}
const work = mkdtempSync(join(process.env.RHIZOME_BENCH_DIR ?? tmpdir(), "automerge-repo-"));

/** Resolves with the first line a child prints on stdout. */
function firstLine(child, what) {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => resolve(JSON.parse(line)));
    child.once("exit", (code) => reject(new Error(`${what} exited with ${code} before answering`)));
  });
}

try {
  const urls = join(work, "urls.json");
  const server = spawn(
    process.execPath,
    [join(here, "server.mjs"), docs, changes, join(work, "server"), urls],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const ready = await firstLine(server, "server.mjs");
  const client = spawn(
    process.execPath,
    [join(here, "client.mjs"), String(ready.port), join(work, "client"), urls],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  const fetched = await firstLine(client, "client.mjs");
  await new Promise((resolve) => client.once("exit", resolve));
  const statsLine = firstLine(server, "server.mjs");
  server.stdin.write("stats\n");
  const stats = await statsLine;
  await new Promise((resolve) => server.once("exit", resolve));
  console.log(JSON.stringify({ docs: Number(docs), changes: Number(changes), ...ready, ...fetched, ...stats }));
} finally {
  rmSync(work, { recursive: true, force: true });
}
