//! Every version a workflow ever had, read from its document's own changes.
//!
//! Each apply puts one value at [`DEFINITION_KEY`], and Automerge keeps every change: each put
//! names the values it replaced (its predecessors, the values that stood at the key for its
//! writer). The document therefore already holds the whole history and who replaced what, so
//! nothing is written twice, and every replica that holds the same changes reads the same
//! history. Two writes neither of which replaced the other, directly or through later ones,
//! were made concurrently (two nodes applied while apart).

use std::collections::{BTreeSet, HashMap};

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{AutoCommit, ChangeHash, ScalarValue};

use super::{DEFINITION_KEY, WorkflowDoc};

/// One value ever written at a workflow's definition key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionWrite {
    /// The change that wrote it.
    pub change: ChangeHash,
    /// The change's own time, milliseconds since the epoch (0 in simulation); versions carry a
    /// signed time of their own, which is what to show.
    pub time_ms: i64,
    /// The definition, or why it cannot be read.
    pub definition: Result<WorkflowDoc, String>,
    /// The writes it replaced, as indices into [`DefinitionHistory::writes`].
    pub replaces: Vec<usize>,
}

impl DefinitionWrite {
    /// The version number, 0 for an unreadable value.
    pub fn version(&self) -> u64 {
        self.definition.as_ref().map_or(0, |d| d.version)
    }
}

/// Every write of a workflow's definition, in causal order: a write comes after every write
/// it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefinitionHistory {
    /// The writes, oldest first.
    pub writes: Vec<DefinitionWrite>,
}

/// A definition write while its predecessors are still op ids.
struct Found {
    op: OpId,
    pred: Vec<OpId>,
    write: DefinitionWrite,
}

impl DefinitionHistory {
    /// Reads the history of a workflow document. Definitions in the layout before they were
    /// atomic (every field a key of the root) have no history of their own: the first write
    /// in the current layout is the first version shown.
    pub fn read(doc: &mut AutoCommit) -> DefinitionHistory {
        let id: String =
            autosurgeon::hydrate_prop(&*doc, automerge::ROOT, "id").unwrap_or_default();
        let mut found = Vec::new();
        for change in doc.get_changes(&[]) {
            let decoded = change.decode();
            for (offset, op) in decoded.operations.iter().enumerate() {
                let at_definition = matches!(&op.key, Key::Map(key) if key == DEFINITION_KEY);
                if op.obj != ObjectId::Root || !at_definition {
                    continue;
                }
                let definition = match &op.action {
                    OpType::Put(ScalarValue::Str(text)) => WorkflowDoc::decode(&id, text),
                    OpType::Put(other) => {
                        Err(format!("the definition is a {other:?}, not a JSON text"))
                    }
                    OpType::Make(kind) => Err(format!(
                        "the definition is a {kind:?} object, not a JSON text"
                    )),
                    // A deletion or a counter writes no version.
                    _ => continue,
                };
                found.push(Found {
                    op: OpId::new(decoded.start_op.get() + offset as u64, &decoded.actor_id),
                    pred: op.pred.iter().cloned().collect(),
                    write: DefinitionWrite {
                        change: change.hash(),
                        time_ms: decoded.time,
                        definition,
                        replaces: Vec::new(),
                    },
                });
            }
        }
        // Automerge hands changes out in an order where dependencies come first; the
        // predecessors are resolved after the walk all the same, so that the order is the only
        // thing that assumption decides.
        let index: HashMap<OpId, usize> = found
            .iter()
            .enumerate()
            .map(|(i, f)| (f.op.clone(), i))
            .collect();
        let writes = found
            .into_iter()
            .map(|f| DefinitionWrite {
                replaces: f
                    .pred
                    .iter()
                    .filter_map(|p| index.get(p).copied())
                    .collect(),
                ..f.write
            })
            .collect();
        DefinitionHistory { writes }
    }

    /// The writes that stand now: those nothing replaced.
    pub fn standing(&self) -> Vec<usize> {
        let replaced: BTreeSet<usize> = self
            .writes
            .iter()
            .flat_map(|w| w.replaces.iter().copied())
            .collect();
        (0..self.writes.len())
            .filter(|i| !replaced.contains(i))
            .collect()
    }

    /// Every write that `write` replaced, directly or through others.
    pub fn ancestors(&self, write: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo = self.writes[write].replaces.clone();
        while let Some(next) = todo.pop() {
            if seen.insert(next) {
                todo.extend(&self.writes[next].replaces);
            }
        }
        seen
    }

    /// Every write that replaced `write`, directly or through others.
    pub fn descendants(&self, write: usize) -> BTreeSet<usize> {
        let mut replaced_by = vec![Vec::new(); self.writes.len()];
        for (i, w) in self.writes.iter().enumerate() {
            for &r in &w.replaces {
                replaced_by[r].push(i);
            }
        }
        let mut seen = BTreeSet::new();
        let mut todo = replaced_by[write].clone();
        while let Some(next) = todo.pop() {
            if seen.insert(next) {
                todo.extend(&replaced_by[next]);
            }
        }
        seen
    }

    /// The writes made concurrently with `write`: neither replaced the other.
    pub fn concurrent_with(&self, write: usize) -> Vec<usize> {
        let ancestors = self.ancestors(write);
        let descendants = self.descendants(write);
        (0..self.writes.len())
            .filter(|&i| i != write && !ancestors.contains(&i) && !descendants.contains(&i))
            .collect()
    }

    /// How many writes precede each one on its longest chain of replacements: every write
    /// is deeper than what it replaced.
    pub fn depths(&self) -> Vec<usize> {
        let mut depth: Vec<Option<usize>> = vec![None; self.writes.len()];
        for start in 0..self.writes.len() {
            // Iterative, since a history may be long: resolve predecessors before the write.
            let mut stack = vec![start];
            while let Some(&top) = stack.last() {
                if depth[top].is_some() {
                    stack.pop();
                    continue;
                }
                let pending: Vec<usize> = self.writes[top]
                    .replaces
                    .iter()
                    .copied()
                    .filter(|&r| depth[r].is_none())
                    .collect();
                if pending.is_empty() {
                    let deepest = self.writes[top]
                        .replaces
                        .iter()
                        .filter_map(|&r| depth[r])
                        .max();
                    depth[top] = Some(deepest.map_or(0, |d| d + 1));
                    stack.pop();
                } else {
                    stack.extend(pending);
                }
            }
        }
        depth.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// The writes newest first: deeper before shallower, then by version number, time and
    /// writer, the order in which every replica lists the same history.
    pub fn newest_first(&self) -> Vec<usize> {
        let depths = self.depths();
        let key = |i: usize| {
            let w = &self.writes[i];
            let (ms, by) = match &w.definition {
                Ok(d) => (d.updated_ms, d.updated_by.as_str()),
                Err(_) => (w.time_ms, ""),
            };
            (depths[i], w.version(), ms, by, w.change)
        };
        let mut order: Vec<usize> = (0..self.writes.len()).collect();
        order.sort_by(|&a, &b| key(b).cmp(&key(a)));
        order
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use automerge::{ActorId, ROOT, ReadDoc};
    use proptest::prelude::*;

    use super::*;
    use crate::docs::{ConflictPolicy, StepDef, genesis_doc, reconcile};
    use crate::names::DocName;

    fn version(writer: &str, number: u64, description: &str) -> WorkflowDoc {
        WorkflowDoc {
            id: "w".into(),
            version: number,
            description: description.into(),
            trigger: "manual".into(),
            steps: BTreeMap::from([("a".into(), StepDef::default())]),
            max_concurrent: 1,
            conflict: ConflictPolicy::LastWrite,
            updated_by: writer.into(),
            updated_ms: number as i64,
            ..WorkflowDoc::default()
        }
    }

    fn write(doc: &mut AutoCommit, v: &WorkflowDoc) {
        reconcile(&DocName::workflow("w").unwrap(), doc, v).unwrap();
        doc.commit();
    }

    fn descriptions(history: &DefinitionHistory, writes: &[usize]) -> Vec<String> {
        writes
            .iter()
            .map(|&i| {
                history.writes[i]
                    .definition
                    .as_ref()
                    .unwrap()
                    .description
                    .clone()
            })
            .collect()
    }

    #[test]
    fn a_line_of_applies_and_a_concurrent_pair_resolved_by_a_third() {
        let name = DocName::workflow("w").unwrap();
        let mut a = genesis_doc::<WorkflowDoc>(&name)
            .unwrap()
            .with_actor(ActorId::from(b"a".as_slice()));
        write(&mut a, &version("a", 1, "one"));
        write(&mut a, &version("a", 2, "two"));
        let mut b = a.fork().with_actor(ActorId::from(b"b".as_slice()));
        write(&mut a, &version("a", 3, "three from a"));
        write(&mut b, &version("b", 3, "three from b"));
        a.merge(&mut b).unwrap();
        let history = DefinitionHistory::read(&mut a);
        assert_eq!(history.writes.len(), 4);
        assert_eq!(
            descriptions(&history, &history.standing()),
            ["three from a", "three from b"]
        );
        assert_eq!(a.get_all(ROOT, DEFINITION_KEY).unwrap().len(), 2);
        let order = history.newest_first();
        assert_eq!(
            descriptions(&history, &order),
            ["three from b", "three from a", "two", "one"]
        );
        let (from_b, from_a) = (order[0], order[1]);
        assert_eq!(history.concurrent_with(from_a), [from_b]);
        assert!(history.concurrent_with(order[2]).is_empty());

        write(&mut a, &version("a", 4, "four"));
        let history = DefinitionHistory::read(&mut a);
        let order = history.newest_first();
        let four = &history.writes[order[0]];
        assert_eq!(four.replaces.len(), 2, "four replaced both threes");
        assert_eq!(history.ancestors(order[0]).len(), 4);
        assert_eq!(history.standing(), [order[0]]);
        assert_eq!(history.depths()[order[0]], 3);
    }

    #[test]
    fn unreadable_values_are_in_the_history_with_a_reason() {
        use automerge::transaction::Transactable;
        let name = DocName::workflow("w").unwrap();
        let mut doc = genesis_doc::<WorkflowDoc>(&name).unwrap();
        write(&mut doc, &version("a", 1, "one"));
        doc.put(ROOT, DEFINITION_KEY, "not json").unwrap();
        doc.commit();
        write(&mut doc, &version("a", 2, "two"));
        let history = DefinitionHistory::read(&mut doc);
        assert_eq!(history.writes.len(), 3);
        let reason = history.writes[1].definition.as_ref().unwrap_err();
        assert!(reason.contains("not a workflow definition"), "{reason}");
        assert_eq!(history.writes[2].replaces, [1]);
    }

    /// One step of a random scenario: replica `who` applies a version, or merges another's
    /// document into its own.
    #[derive(Debug, Clone)]
    enum Step {
        Apply { who: usize },
        Merge { who: usize, from: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (0..3usize).prop_map(|who| Step::Apply { who }),
            1 => (0..3usize, 0..3usize).prop_map(|(who, from)| Step::Merge { who, from }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the interleaving of applies and merges, the history holds every apply once,
        /// the writes that stand are the values at the key, and two writes are concurrent
        /// exactly when neither writer had seen the other's when writing.
        #[test]
        fn history_matches_what_each_writer_saw(steps in prop::collection::vec(step(), 1..40)) {
            let name = DocName::workflow("w").unwrap();
            let genesis = genesis_doc::<WorkflowDoc>(&name).unwrap();
            let mut replicas: Vec<AutoCommit> = (0..3u8)
                .map(|i| genesis.clone().with_actor(ActorId::from(vec![b'r', i])))
                .collect();
            // The applies each replica has seen, by description.
            let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 3];
            // What each apply's writer had seen when writing.
            let mut knew: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (n, step) in steps.iter().enumerate() {
                match *step {
                    Step::Apply { who } => {
                        let description = format!("apply {n} by {who}");
                        let standing = crate::docs::hydrate::<crate::docs::WorkflowVersions>(
                            &name, &replicas[who]).unwrap();
                        let number = standing.versions.iter().map(|v| v.version).max()
                            .unwrap_or(0) + 1;
                        write(&mut replicas[who], &version(&format!("r{who}"), number, &description));
                        knew.insert(description.clone(), seen[who].clone());
                        seen[who].insert(description);
                    }
                    Step::Merge { who, from } if who != from => {
                        let mut other = replicas[from].clone();
                        replicas[who].merge(&mut other).unwrap();
                        let theirs = seen[from].clone();
                        seen[who].extend(theirs);
                    }
                    Step::Merge { .. } => {}
                }
            }
            let mut all = replicas[0].clone();
            for other in &mut replicas[1..] {
                all.merge(other).unwrap();
            }
            let history = DefinitionHistory::read(&mut all);
            let written: Vec<String> = history.writes.iter()
                .map(|w| w.definition.as_ref().unwrap().description.clone()).collect();
            prop_assert_eq!(written.iter().cloned().collect::<BTreeSet<_>>(),
                knew.keys().cloned().collect::<BTreeSet<_>>());
            prop_assert_eq!(written.len(), knew.len());
            let mut at_key: Vec<String> = all.get_all(ROOT, DEFINITION_KEY).unwrap().into_iter()
                .map(|(v, _)| {
                    let text = v.into_scalar().unwrap().into_string().unwrap();
                    serde_json::from_str::<WorkflowDoc>(&text).unwrap().description
                })
                .collect();
            at_key.sort();
            let mut standing = descriptions(&history, &history.standing());
            standing.sort();
            prop_assert_eq!(standing, at_key);
            for i in 0..history.writes.len() {
                let concurrent: BTreeSet<String> =
                    descriptions(&history, &history.concurrent_with(i)).into_iter().collect();
                let expected: BTreeSet<String> = knew.iter()
                    .filter(|(other, saw)| **other != written[i]
                        && !saw.contains(&written[i]) && !knew[&written[i]].contains(*other))
                    .map(|(other, _)| other.clone())
                    .collect();
                prop_assert_eq!(concurrent, expected, "write {}", written[i]);
            }
            // Newest first never lists a write before one that replaced it.
            let order = history.newest_first();
            for (pos, &i) in order.iter().enumerate() {
                for &later in &order[pos + 1..] {
                    prop_assert!(!history.ancestors(later).contains(&i));
                }
            }
        }
    }
}
