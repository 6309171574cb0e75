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
