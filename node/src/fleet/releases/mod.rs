//! Releases of the `rhizome` binary, rolled out over the fleet like a workflow version.
//!
//! `release publish` adds the binary as an artifact and signs a [`Release`] record into the
//! registry on a control node; `release rollout` signs it again with a staged-rollout plan.
//! Every node reads the records, keeps only those whose signature verifies against the mesh CA
//! and whose signer holds the `control` role, and decides the rollout in effect with the same
//! pure function as workflow rollouts ([`crdt_store::docs::rollout::decide`]): plan version 1
//! is "runs this release", 0 "runs what it ran before". A node admitted to it fetches the
//! artifact, checks its SHA-256 against the signed record, and swaps binaries
//! ([`swap`]): the new one is tried beside the installed one and becomes the installed one
//! only once it came up healthy. What a node runs is the SHA-256 of its own executable, never a
//! version string it could claim.

pub mod agent;
pub mod swap;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use crdt_store::docs::release::{REPORT_KEY, Release, control_key, is_control_key, valid_version};
use crdt_store::docs::rollout::{
    self as core, Action, Control, Decision, Gate, Plan, Report, Status,
};
use crdt_store::{DocName, MeshRegistry, Store};
use serde::{Deserialize, Serialize};

use crate::run::rollout::StageArgs;
use crate::run::workflow::Writer;

/// How long a new binary has to come up healthy, unless the rollout says otherwise.
pub const DEFAULT_TRIAL_MS: u64 = 60_000;

/// What `release rollout` does where its flags are silent: the stages of a workflow rollout,
/// a gate of health over time alone (a binary has no runs of its own to count).
pub fn default_plan() -> Plan {
    Plan {
        gate: Gate {
            min_runs: 0,
            min_success_pct: 95,
            soak_ms: 30_000,
            alerts: crdt_store::docs::rollout::AlertGate::Off,
        },
        ..crate::run::rollout::default_plan()
    }
}

fn control_signer(
    writer: &Writer,
    what: &str,
) -> Result<std::sync::Arc<mesh::net::identity::NodeCredentials>> {
    if !writer.control {
        bail!(
            "this node's certificate does not hold the `control` role: releases are {what} on \
             a control node (the cloud peer, the node that created the mesh), and every node \
             ignores a release signed elsewhere"
        );
    }
    writer
        .signer
        .clone()
        .context("this node has no credentials to sign with")
}

fn sign(release: &mut Release, writer: &Writer, signer: &mesh::net::identity::NodeCredentials) {
    release.author_cert = signer.cert_pem();
    release.signature = String::new();
    release.signature = signer.sign(&release.signed_text(&writer.mesh_id));
}

fn write(store: &mut Store, release: &Release) -> Result<()> {
    let text = serde_json::to_string(release)?;
    let version = release.version.clone();
    store.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.releases.insert(version.clone(), text.clone());
    })?;
    Ok(())
}

/// `release publish`: the record of a binary already added as artifact `artifact` (whose
/// manifest gives its SHA-256 and size), signed by this control node.
pub fn publish(
    store: &mut Store,
    version: &str,
    artifact: &crate::fleet::artifacts::store::Manifest,
    artifact_id: &str,
    writer: &Writer,
) -> Result<Release> {
    let signer = control_signer(writer, "published")?;
    if !valid_version(version) {
        bail!("--version {version:?}: a release version reads X.Y.Z, like 0.2.0 or 1.4.0-rc.1");
    }
    let registry = store.registry()?;
    let (known, _) = verified(&registry, &writer.mesh_id, &writer.trust.all());
    if let Some(existing) = known.get(version) {
        if existing.sha256 == artifact.sha256 {
            return Ok(existing.clone());
        }
        bail!(
            "release {version} is published already, as another binary (sha256 {}); a release \
             is never replaced: publish this one under a new version",
            existing.sha256
        );
    }
    let mut release = Release {
        version: version.to_owned(),
        artifact: artifact_id.to_owned(),
        sha256: artifact.sha256.clone(),
        size: artifact.size,
        published_by: writer.node.clone(),
        published_ms: crate::node::now_ms(),
        ..Release::default()
    };
    sign(&mut release, writer, &signer);
    write(store, &release)?;
    Ok(release)
}

/// What `release rollout` sends to the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRequest {
    pub version: String,
    pub stages: StageArgs,
    /// How long a node gives the new binary to come up healthy (`90s`, `2m`).
    pub trial: Option<String>,
}

/// `release rollout`: release `version` signed again with its rollout plan, which makes it the
/// release rollout in effect.
pub fn start_rollout(
    store: &mut Store,
    request: &RolloutRequest,
    writer: &Writer,
) -> Result<Release> {
    let signer = control_signer(writer, "rolled out")?;
    let registry = store.registry()?;
    let (known, _) = verified(&registry, &writer.mesh_id, &writer.trust.all());
    let Some(mut release) = known.get(&request.version).cloned() else {
        bail!(
            "no release {} is published (published: {}); `rhizome release publish BINARY \
             --version {}` first",
            request.version,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            },
            request.version
        );
    };
    let mut plan = request.stages.plan_over(Some(&default_plan()))?;
    plan.id = release.rollout_id();
    plan.version = 1;
    plan.baseline = 0;
    release.trial_ms = match &request.trial {
        Some(t) => crate::config::parse_duration(t)
            .context("--trial")?
            .as_millis() as u64,
        None => DEFAULT_TRIAL_MS,
    };
    release.rollout = Some(plan);
    release.rollout_ms = crate::node::now_ms();
    sign(&mut release, writer, &signer);
    write(store, &release)?;
    Ok(release)
}

/// The releases whose records verify, by version, and why the others are ignored.
pub fn verified(
    registry: &MeshRegistry,
    mesh_id: &str,
    trust_pem: &str,
) -> (BTreeMap<String, Release>, Vec<String>) {
    let mut good = BTreeMap::new();
    let mut ignored = Vec::new();
    for (version, text) in registry.releases.iter().filter(|(k, _)| !is_control_key(k)) {
        match check(version, text, mesh_id, trust_pem) {
            Ok(release) => {
                good.insert(version.clone(), release);
            }
            Err(e) => ignored.push(format!("release {version}: {e:#}")),
        }
    }
    (good, ignored)
}

fn check(version: &str, text: &str, mesh_id: &str, trust_pem: &str) -> Result<Release> {
    let release: Release = serde_json::from_str(text).context("it is not a release record")?;
    if release.signature.is_empty() || release.author_cert.is_empty() {
        bail!("it is not signed");
    }
    let signer = mesh::net::identity::verify_node_signature(
        trust_pem,
        &release.author_cert,
        &release.signed_text(mesh_id),
        &release.signature,
    )
    .context("its signature does not verify")?;
    if signer.role != mesh::net::identity::NodeRole::Control {
        bail!(
            "its signer, node {}, does not hold the `control` role",
            signer.node_id
        );
    }
    if release.version != version {
        bail!(
            "it is filed as {version} but names itself {}",
            release.version
        );
    }
    if release
        .rollout
        .as_ref()
        .is_some_and(|p| p.id != release.rollout_id())
    {
        bail!("its rollout is named for another release");
    }
    Ok(release)
}

/// The release rollout in effect: of the verified releases with a plan, the one started last.
pub fn in_effect(releases: &BTreeMap<String, Release>) -> Option<&Release> {
    releases
        .values()
        .filter(|r| r.rollout.is_some())
        .max_by(|a, b| {
            a.rollout_ms
                .cmp(&b.rollout_ms)
                .then(a.version.cmp(&b.version))
        })
}

/// What every node decides the release rollout from, as this node holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Facts {
    pub release: Release,
    pub plan: Plan,
    /// Pauses, resumes and aborts that verify.
    pub controls: Vec<Control>,
    /// Controls that do not, with the reason.
    pub ignored: Vec<String>,
    pub targets: BTreeSet<String>,
    pub reports: BTreeMap<String, Report>,
    pub decision: Decision,
}

/// Release records as checked, kept by their text: a running node looks at the registry at
/// every change of it, and a record's signature is verified once, not at every look.
#[derive(Debug, Default)]
pub struct VerifiedReleases {
    /// The CAs the records were checked against: when they change, everything is checked again.
    trust_pem: String,
    /// By version: the record's text, and the release when it verified.
    records: BTreeMap<String, (String, Option<Release>)>,
}

impl VerifiedReleases {
    /// The releases of `registry` whose records verify, checking only records not seen before.
    pub fn update(
        &mut self,
        registry: &MeshRegistry,
        mesh_id: &str,
        trust_pem: &str,
    ) -> BTreeMap<String, Release> {
        if self.trust_pem != trust_pem {
            self.trust_pem = trust_pem.to_owned();
            self.records.clear();
        }
        self.records
            .retain(|version, _| registry.releases.contains_key(version));
        for (version, text) in registry.releases.iter().filter(|(k, _)| !is_control_key(k)) {
            if self
                .records
                .get(version)
                .is_some_and(|(seen, _)| seen == text)
            {
                continue;
            }
            let release = check(version, text, mesh_id, trust_pem).ok();
            self.records
                .insert(version.clone(), (text.clone(), release));
        }
        self.records
            .iter()
            .filter_map(|(version, (_, release))| Some((version.clone(), release.clone()?)))
            .collect()
    }
}

/// The facts of the release rollout in effect among the verified `releases`, if there is one.
/// Every node of the mesh is a target: each runs the same binary.
pub fn facts(
    registry: &MeshRegistry,
    releases: &BTreeMap<String, Release>,
    mesh_id: &str,
    trust_pem: &str,
) -> Option<Facts> {
    let release = in_effect(releases)?.clone();
    let plan = release.rollout.clone()?;
    let prefix = control_key(&plan.id, "");
    let mut controls = Vec::new();
    let mut ignored = Vec::new();
    for (key, text) in registry.releases.range(prefix.clone()..) {
        let Some(id) = key.strip_prefix(&prefix) else {
            break;
        };
        match crate::run::rollout::obey(REPORT_KEY, id, text, &plan.id, mesh_id, trust_pem) {
            Ok(Some(control)) => controls.push(control),
            Ok(None) => {}
            Err(e) => ignored.push(format!("control {id}: {e:#}")),
        }
    }
    let targets: BTreeSet<String> = registry.nodes.keys().cloned().collect();
    let reports: BTreeMap<String, Report> = registry
        .nodes
        .iter()
        .filter_map(|(id, entry)| {
            let report: Report = serde_json::from_str(entry.rollouts.get(REPORT_KEY)?).ok()?;
            (report.rollout == plan.id).then(|| (id.clone(), report))
        })
        .collect();
    let decision = core::decide(&plan, &controls, &targets, &reports);
    Some(Facts {
        release,
        plan,
        controls,
        ignored,
        targets,
        reports,
        decision,
    })
}

/// `release pause|resume|abort`: a control of the release rollout in effect, signed by this
/// control node and kept in the registry, which every node obeys once it verifies. Decided
/// like a workflow rollout's: an abort is final, and a pause holds until a resume that saw it.
pub fn control(
    store: &mut Store,
    version: &str,
    action: Action,
    writer: &Writer,
) -> Result<Control> {
    let signer = control_signer(writer, "paused, resumed and aborted")?;
    let registry = store.registry()?;
    let trust = writer.trust.all();
    let (releases, _) = verified(&registry, &writer.mesh_id, &trust);
    let Some(facts) = facts(&registry, &releases, &writer.mesh_id, &trust) else {
        bail!("no release is rolling out (`rhizome release rollout VERSION` starts one)");
    };
    if facts.release.version != version {
        bail!(
            "the release rolling out is {}, not {version}: only the rollout in effect is \
             paused, resumed or aborted",
            facts.release.version
        );
    }
    if let Status::Aborted { reason } = &facts.decision.status {
        bail!(
            "the rollout of release {} is aborted already ({reason})",
            facts.release.version
        );
    }
    let (control, text) = crate::run::rollout::sign_control(
        action,
        &facts.plan,
        &facts.decision.status,
        &facts.controls,
        REPORT_KEY,
        writer,
        &signer,
    )?;
    let key = control_key(&facts.plan.id, &control.id);
    store.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
        m.releases.insert(key.clone(), text.clone());
    })?;
    Ok(control)
}

/// `release status`: the releases published and where the one rolling out stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseStatus {
    pub published: Vec<Published>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    /// Records that do not verify (ignored), with the reason.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub artifact: String,
    pub published_by: String,
    pub published_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    pub version: String,
    pub status: Status,
    pub stage_sizes: Vec<usize>,
    pub trial_ms: u64,
    pub nodes: Vec<NodeRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub node: String,
    pub name: String,
    pub stage: usize,
    pub admitted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

pub fn status(registry: &MeshRegistry, mesh_id: &str, trust_pem: &str) -> ReleaseStatus {
    let (releases, ignored) = verified(registry, mesh_id, trust_pem);
    let published = releases
        .values()
        .map(|r| Published {
            version: r.version.clone(),
            sha256: r.sha256.clone(),
            size: r.size,
            artifact: r.artifact.clone(),
            published_by: r.published_by.clone(),
            published_ms: r.published_ms,
        })
        .collect();
    let facts = facts(registry, &releases, mesh_id, trust_pem);
    let ignored = ignored
        .into_iter()
        .chain(facts.iter().flat_map(|f| f.ignored.clone()))
        .collect();
    let rollout = facts.map(|f| RolloutView {
        version: f.release.version.clone(),
        stage_sizes: core::stage_sizes(&f.plan, f.targets.len()),
        trial_ms: f.release.trial_ms,
        nodes: f
            .decision
            .order
            .iter()
            .map(|(node, stage)| NodeRow {
                node: node.clone(),
                name: registry
                    .nodes
                    .get(node)
                    .map(|e| e.name.clone())
                    .unwrap_or_default(),
                stage: *stage,
                admitted: f.decision.admitted.contains(node),
                report: f.reports.get(node).cloned(),
            })
            .collect(),
        status: f.decision.status,
    });
    ReleaseStatus {
        published,
        rollout,
        ignored,
    }
}

#[cfg(test)]
mod tests {

    use mesh::net::identity::{MeshCa, NodeRole};

    use super::*;
    use crate::fleet::artifacts::store::Manifest;

    fn writer(ca: &MeshCa, seed: u8, role: NodeRole) -> Writer {
        crate::run::workflow::Writer::for_tests(ca, seed, role)
    }

    fn status_of(store: &mut Store, w: &Writer) -> (Status, Vec<String>) {
        let registry = store.registry().unwrap();
        let (releases, _) = verified(&registry, &w.mesh_id, &w.trust.all());
        let facts = facts(&registry, &releases, &w.mesh_id, &w.trust.all()).unwrap();
        (facts.decision.status, facts.ignored)
    }

    #[test]
    fn a_release_rollout_obeys_pause_resume_and_abort_signed_on_a_control_node_only() {
        let ca = MeshCa::create().unwrap();
        let cloud = writer(&ca, 1, NodeRole::Control);
        let edge = writer(&ca, 2, NodeRole::Member);
        let mut store =
            Store::open_in_memory(crdt_store::StoreConfig::new(ca.mesh_id(), &cloud.node)).unwrap();
        store
            .update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                for n in 0..4 {
                    m.nodes.insert(format!("node-{n}"), Default::default());
                }
            })
            .unwrap();
        let manifest = Manifest {
            format: 1,
            size: 10,
            sha256: "ab".repeat(32),
            chunks: Vec::new(),
        };
        publish(&mut store, "0.2.0", &manifest, &"cd".repeat(32), &cloud).unwrap();
        let err = control(&mut store, "0.2.0", Action::Pause, &cloud).unwrap_err();
        assert!(
            err.to_string().contains("no release is rolling out"),
            "{err}"
        );
        let request = RolloutRequest {
            version: "0.2.0".into(),
            stages: StageArgs::default(),
            trial: None,
        };
        start_rollout(&mut store, &request, &cloud).unwrap();
        assert_eq!(
            status_of(&mut store, &cloud).0,
            Status::Running { stage: 0 }
        );

        let err = control(&mut store, "0.3.0", Action::Pause, &cloud).unwrap_err();
        assert!(err.to_string().contains("is 0.2.0, not 0.3.0"), "{err}");
        let err = control(&mut store, "0.2.0", Action::Abort, &edge).unwrap_err();
        assert!(err.to_string().contains("`control` role"), "{err}");

        control(&mut store, "0.2.0", Action::Pause, &cloud).unwrap();
        assert_eq!(status_of(&mut store, &cloud).0, Status::Paused { stage: 0 });
        control(&mut store, "0.2.0", Action::Resume, &cloud).unwrap();
        assert_eq!(
            status_of(&mut store, &cloud).0,
            Status::Running { stage: 0 }
        );

        // A member that signs an abort anyway is ignored, with the reason, by every reader.
        let forger = Writer {
            control: true,
            ..edge
        };
        control(&mut store, "0.2.0", Action::Abort, &forger).unwrap();
        let (status, ignored) = status_of(&mut store, &cloud);
        assert_eq!(status, Status::Running { stage: 0 });
        assert!(
            ignored.len() == 1 && ignored[0].contains("does not hold the `control` role"),
            "{ignored:?}"
        );
        let shown = super::status(
            &store.registry().unwrap(),
            &cloud.mesh_id,
            &cloud.trust.all(),
        );
        assert_eq!(shown.published.len(), 1, "controls are not releases");
        assert_eq!(shown.ignored.len(), 1, "{:?}", shown.ignored);

        control(&mut store, "0.2.0", Action::Abort, &cloud).unwrap();
        assert!(matches!(
            status_of(&mut store, &cloud).0,
            Status::Aborted { .. }
        ));
        let err = control(&mut store, "0.2.0", Action::Resume, &cloud).unwrap_err();
        assert!(err.to_string().contains("aborted already"), "{err}");
    }
}
