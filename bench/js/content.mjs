// The documents both sides of bench/sync.sh write, in the shape of a Rhizome workflow document
// (crdt-store's WorkflowDoc): the genesis content, then edits of two fields. Strings are
// immutable scalars, as autosurgeon writes a Rust String.

import * as A from "@automerge/automerge";

const s = (text) => new A.ImmutableString(text);

/** The first change of document `i`. */
export function genesis(i) {
  return {
    id: s(`bench-${String(i).padStart(4, "0")}`),
    version: 0,
    description: s(""),
    trigger: s(""),
    target: { nodes: [], tags: [], zones: [] },
    steps: {},
    timeout_ms: 0,
    max_concurrent: 0,
    updated_by: s(""),
    updated_ms: 0,
  };
}

/** Edit `j` (from 1) of document `i`. */
export function edit(d, i, j) {
  d.description = s(`edit ${j} of document ${i}`);
  d.version = j;
}

/**
 * A workflow document as a Rhizome node stores it (crdt-store's WorkflowDoc since definitions
 * are atomic): the genesis names the workflow, every version is one JSON text under
 * `definition`, written whole.
 */
export function workflowGenesis(id) {
  return { id: s(id) };
}

/**
 * Version `j` of workflow `id` (document `i`): `template` (a definition as a node stores it,
 * signed) with this id, version and description, a fresh time and a signature of the same
 * length, so that each version is as large, and compresses as well, as the node's.
 */
export function workflowVersion(template, id, i, j) {
  const bytes = crypto.getRandomValues(new Uint8Array(template.signature.length / 2));
  const signature = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return {
    ...template,
    id,
    version: j,
    description: `edit ${j} of document ${i}`,
    updated_ms: Date.now(),
    signature,
  };
}
