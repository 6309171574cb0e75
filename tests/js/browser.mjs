// automerge-repo in a browser page, for the web view's test: bundled by the test with esbuild
// (`--conditions=webpack` picks Automerge's build with its WebAssembly inlined, so the page
// loads one file). The page calls these through `window.rhizome`.
import { ImmutableString, getHeads } from "@automerge/automerge";
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

let repo = null;
const handles = new Map();

async function handleOf(url) {
  if (!handles.has(url)) handles.set(url, await repo.find(url));
  return handles.get(url);
}

window.rhizome = {
  connect(wsUrl) {
    repo = new Repo({ network: [new WebSocketClientAdapter(wsUrl, 1000)] });
    return repo.peerId;
  },
  async read(url, key) {
    const handle = await handleOf(url);
    return String(handle.doc()[key]);
  },
  async write(url, key, value) {
    const handle = await handleOf(url);
    handle.change((d) => {
      d[key] = new ImmutableString(value);
    });
    return getHeads(handle.doc());
  },
};
