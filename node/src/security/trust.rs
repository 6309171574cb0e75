//! Which mesh CAs a node trusts, and CA rotation.
//!
//! A node's `ca.crt` is a bundle: the mesh's first CA, and every CA added since. A CA is added
//! by a record in the `mesh` document (`cas/<fingerprint>`) signed by a CA the node already
//! trusts, so a node that trusts the old CA learns the new one from any peer, and nothing else:
//! a member writing a record of its own gains nothing. The CA holder rotates in two steps:
//! `mesh rotate-ca` makes a new CA (same mesh id), endorses it with the old one and issues from
//! it; every node then trusts both, and renews its certificate from the new CA at once. Once
//! every node's registry entry names the new CA, `mesh rotate-ca --finish` retires the old one
//! (a record signed by the new CA): nodes stop admitting certificates of it at the handshake.
//!
//! A retired CA still verifies what was signed while it was in use (workflow versions,
//! revocations, settings): those are facts of the mesh's history, and a node that joins later
//! must be able to check them. Rotation is for replacing a CA on schedule or on suspicion; a CA
//! key known to be stolen calls for a new mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use crdt_store::{CaRecord, MeshRegistry};
use mesh::net::enrolment::fingerprint;
use mesh::net::identity::{MeshCa, mesh_id_of_ca, parse_pem_certs, verify_ca_signature};
use serde::{Deserialize, Serialize};

/// The CA bundles a running node works with, shared by everything that checks signatures or
/// builds TLS configurations, and updated as CA records arrive.
#[derive(Debug, Clone)]
pub struct Trust(Arc<RwLock<TrustState>>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TrustState {
    /// Every CA of the mesh this node knows (`ca.crt`): checks signatures.
    all: String,
    /// The CAs not retired: admit certificates at the handshake.
    admits: String,
    /// Fingerprint of the CA that issues now.
    current: String,
    /// Cross certificates to present after the node's own while more than one CA admits.
    cross: String,
}

impl Trust {
    /// Trust in the CAs of `bundle` (a node's `ca.crt`), none retired, the last one current.
    pub fn from_bundle(bundle: &str) -> Result<Trust> {
        let cas = split(bundle)?;
        let current = cas
            .last()
            .map(|(fp, _)| fp.clone())
            .context("the CA bundle is empty")?;
        Ok(Trust(Arc::new(RwLock::new(TrustState {
            all: bundle.to_owned(),
            admits: bundle.to_owned(),
            current,
            cross: String::new(),
        }))))
    }

    /// Trust in no CA: nothing verifies (tests of what does not need it).
    pub fn empty() -> Trust {
        Trust(Arc::new(RwLock::new(TrustState::default())))
    }

    /// Every CA this node knows, PEM: what signatures are checked against.
    pub fn all(&self) -> String {
        self.0.read().expect("trust").all.clone()
    }

    /// The CAs whose certificates are admitted at the handshake, PEM.
    pub fn admits(&self) -> String {
        self.0.read().expect("trust").admits.clone()
    }

    /// Fingerprint of the CA that issues certificates now.
    pub fn current(&self) -> String {
        self.0.read().expect("trust").current.clone()
    }

    /// Cross certificates the node presents after its own, PEM (empty but during a rotation).
    pub fn cross(&self) -> String {
        self.0.read().expect("trust").cross.clone()
    }

    /// The node's credentials with certificate `cert_pem`: admitting the CAs that admit, and
    /// presenting the cross certificates of a rotation.
    pub fn credentials(
        &self,
        cert_pem: &str,
        secret: [u8; 32],
    ) -> Result<mesh::net::identity::NodeCredentials> {
        Ok(
            mesh::net::identity::NodeCredentials::new(cert_pem, &self.admits(), secret)?
                .with_intermediates(&self.cross())?,
        )
    }

    /// Takes what an evaluation found; whether anything changed.
    pub fn set(&self, view: &TrustView) -> bool {
        let next = TrustState {
            all: view.all(),
            admits: view.admits(),
            current: view.current.clone(),
            cross: view.cross.clone(),
        };
        let mut state = self.0.write().expect("trust");
        let changed = *state != next;
        *state = next;
        changed
    }
}

/// What a registry's CA records amount to for a node that trusts a bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustView {
    /// Every CA known, by fingerprint, in the order learnt: the bundle's, then those added.
    pub cas: Vec<(String, String)>,
    /// Fingerprints of the retired ones.
    pub retired: BTreeSet<String>,
    /// Fingerprint of the CA that issues now: the last added of those not retired.
    pub current: String,
    /// Cross certificates of the CAs not retired, while more than one admits, PEM.
    pub cross: String,
    /// Records ignored, by fingerprint, with why.
    pub ignored: BTreeMap<String, String>,
}

impl TrustView {
    /// Every CA known, as a PEM bundle.
    pub fn all(&self) -> String {
        self.cas.iter().map(|(_, pem)| pem.as_str()).collect()
    }

    /// The CAs not retired, as a PEM bundle.
    pub fn admits(&self) -> String {
        self.cas
            .iter()
            .filter(|(fp, _)| !self.retired.contains(fp))
            .map(|(_, pem)| pem.as_str())
            .collect()
    }

    /// Whether the CA with this fingerprint is known.
    pub fn knows(&self, fp: &str) -> bool {
        self.cas.iter().any(|(known, _)| known == fp)
    }
}

/// The certificates of a bundle with their fingerprints, each as its own PEM.
fn split(bundle: &str) -> Result<Vec<(String, String)>> {
    parse_pem_certs(bundle, "mesh CA certificate")?
        .iter()
        .map(|der| {
            let pem = mesh::net::identity::pem_of(der);
            Ok((fingerprint(&pem)?, pem))
        })
        .collect()
}

/// Reads the CA records of `registry` for a node of `mesh_id` that trusts `bundle`: a record
/// counts once a CA already trusted signed it, so trust grows only along endorsements.
pub fn evaluate(registry: &MeshRegistry, mesh_id: &str, bundle: &str) -> Result<TrustView> {
    let mut view = TrustView {
        cas: split(bundle)?,
        ..TrustView::default()
    };
    let valid = |view: &TrustView, fp: &str, record: &CaRecord| {
        !record.signature.is_empty()
            && verify_ca_signature(
                &view.all(),
                &record.signed_text(mesh_id, fp),
                &record.signature,
            )
    };
    // Endorsements may chain (a CA endorsed by one that was itself endorsed): go round until
    // nothing more is learnt.
    loop {
        let mut learnt = false;
        for (fp, record) in &registry.cas {
            if view.knows(fp) || !valid(&view, fp, record) {
                continue;
            }
            if fingerprint(&record.cert_pem).ok().as_deref() != Some(fp.as_str()) {
                view.ignored.insert(
                    fp.clone(),
                    "its certificate does not have this fingerprint".into(),
                );
                continue;
            }
            if mesh_id_of_ca(&record.cert_pem).ok().as_deref() != Some(mesh_id) {
                view.ignored
                    .insert(fp.clone(), "its certificate is of another mesh".into());
                continue;
            }
            view.cas.push((fp.clone(), record.cert_pem.clone()));
            learnt = true;
        }
        if !learnt {
            break;
        }
    }
    for (fp, record) in &registry.cas {
        if !view.knows(fp) {
            view.ignored.entry(fp.clone()).or_insert_with(|| {
                "not signed by a CA this node trusts (written by a member, or endorsed by a CA \
                 it never learnt)"
                    .into()
            });
        } else if record.retired_ms > 0 {
            if valid(&view, fp, record) {
                view.retired.insert(fp.clone());
            } else {
                view.ignored.insert(
                    fp.clone(),
                    "its retirement is not signed by a CA of the mesh".into(),
                );
            }
        }
    }
    // A mesh always admits some CA: retiring them all would cut every node off.
    if view.cas.iter().all(|(fp, _)| view.retired.contains(fp)) {
        for fp in std::mem::take(&mut view.retired) {
            view.ignored
                .insert(fp, "retiring it would leave the mesh without a CA".into());
        }
    }
    view.current = view
        .cas
        .iter()
        .enumerate()
        .filter(|(_, (fp, _))| !view.retired.contains(fp))
        .max_by_key(|(order, (fp, _))| (registry.cas.get(fp).map_or(0, |r| r.added_ms), *order))
        .map(|(_, (fp, _))| fp.clone())
        .unwrap_or_default();
    let admitting = view.cas.len() - view.retired.len();
    if admitting > 1 {
        view.cross = registry
            .cas
            .iter()
            .filter(|(fp, r)| {
                view.knows(fp) && !view.retired.contains(*fp) && !r.cross_pem.is_empty()
            })
            .filter(|(_, r)| parse_pem_certs(&r.cross_pem, "cross certificate").is_ok())
            .map(|(_, r)| r.cross_pem.as_str())
            .collect();
    }
    Ok(view)
}

/// A record of `ca_pem` (with its cross certificate, if any), signed by `signer` (a CA the
/// nodes trust).
pub fn record(
    signer: &MeshCa,
    ca_pem: &str,
    cross_pem: &str,
    added_ms: i64,
    retired_ms: i64,
) -> Result<(String, CaRecord)> {
    let fp = fingerprint(ca_pem)?;
    let mut record = CaRecord {
        cert_pem: ca_pem.to_owned(),
        added_ms,
        retired_ms,
        cross_pem: cross_pem.to_owned(),
        signature: String::new(),
    };
    record.signature = signer.sign(&record.signed_text(signer.mesh_id(), &fp))?;
    Ok((fp, record))
}

/// Writes a node's CA bundle durably: aside, then renamed over `ca.crt`.
pub fn write_bundle(path: &Path, bundle: &str) -> Result<()> {
    let aside = path.with_extension("crt.new");
    std::fs::write(&aside, bundle)
        .and_then(|()| std::fs::File::open(&aside)?.sync_all())
        .with_context(|| format!("cannot write {}", aside.display()))?;
    std::fs::rename(&aside, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Fingerprint of the CA of `bundle` that issued the certificate `cert_pem`, if one did.
pub fn issuer_fingerprint(bundle: &str, cert_pem: &str) -> Option<String> {
    let cert = mesh::net::identity::parse_pem_cert(cert_pem, "node certificate").ok()?;
    let issuer = mesh::net::identity::issuer_of(bundle, &cert).ok()??;
    fingerprint(&issuer).ok()
}

/// Reads the CA records of `registry` into `trust`, writing CAs learnt to the node's `ca.crt`
/// (which then holds every CA the node knows); what they amount to.
pub fn update(
    trust: &Trust,
    registry: &MeshRegistry,
    mesh_id: &str,
    dir: &crate::config::DataDir,
) -> Result<TrustView> {
    let view = evaluate(registry, mesh_id, &trust.all())?;
    let before = split(&trust.all())?.len();
    if view.cas.len() > before {
        write_bundle(&dir.ca_cert(), &view.all())?;
    }
    trust.set(&view);
    Ok(view)
}

/// What [`follow`] works with.
#[allow(missing_debug_implementations)]
pub struct Follow {
    pub changes: tokio::sync::watch::Receiver<u64>,
    pub store: crdt_store::StoreHandle,
    pub mesh: mesh::net::driver::MeshHandle,
    pub dir: crate::config::DataDir,
    pub mesh_id: String,
    pub secret: [u8; 32],
    pub trust: Trust,
    /// Rung when the current CA changes, so that the node renews from it at once.
    pub renew_now: Arc<tokio::sync::Notify>,
    pub audit: Arc<crate::security::audit::Audit>,
}

/// Keeps the node's trust in step with the CA records of the `mesh` document: a CA added is
/// trusted (and written to `ca.crt`), a CA retired is no longer admitted at the handshake, and
/// the node renews its certificate from the current CA.
pub async fn follow(mut follow: Follow) {
    use crate::security::audit::Kind;
    let mut ignored: BTreeMap<String, String> = BTreeMap::new();
    let mut seen = follow.trust.current();
    while follow.changes.changed().await.is_ok() {
        let registry = match follow
            .store
            .call(|s| s.read::<MeshRegistry>(&crdt_store::DocName::Mesh))
            .recv()
            .await
        {
            Ok(registry) => registry,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mesh document for its CAs");
                continue;
            }
        };
        let before = (follow.trust.all(), follow.trust.admits());
        let view = match update(&follow.trust, &registry, &follow.mesh_id, &follow.dir) {
            Ok(view) => view,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot take in the mesh's CAs");
                continue;
            }
        };
        for (fp, why) in &view.ignored {
            if ignored.get(fp) != Some(why) {
                tracing::warn!(ca = %fp, why = %why, "a CA record is ignored");
                follow.audit.record(
                    Kind::DecisionIgnored,
                    fp.clone(),
                    format!("a CA record: {why}"),
                );
            }
        }
        ignored = view.ignored.clone();
        if (follow.trust.all(), follow.trust.admits()) == before {
            continue;
        }
        tracing::warn!(
            current = %view.current,
            known = view.cas.len(),
            retired = view.retired.len(),
            "the mesh's CAs changed"
        );
        follow.audit.record(
            Kind::CaChanged,
            view.current.clone(),
            format!(
                "{} CA(s) known, {} retired; current {}",
                view.cas.len(),
                view.retired.len(),
                &view.current[..16.min(view.current.len())]
            ),
        );
        let credentials = std::fs::read_to_string(follow.dir.cert())
            .map_err(anyhow::Error::from)
            .and_then(|cert| follow.trust.credentials(&cert, follow.secret));
        match credentials {
            Ok(credentials) => {
                if let Err(e) = follow.mesh.set_credentials(credentials).await {
                    tracing::error!(error = %e, "cannot hand the mesh its new CAs");
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read this node's certificate")
            }
        }
        if view.current != seen {
            // The renewal renews from the new CA; on the CA holder the issuer takes it up from
            // its directory when it first issues (`Issuer::catch_up`).
            seen = view.current.clone();
            follow.renew_now.notify_one();
        }
    }
}

/// Where a CA rotation stands, as `mesh rotate-ca` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationView {
    /// Fingerprint of the CA that issues now.
    pub current: String,
    /// Fingerprints of the CAs still admitted beside it.
    pub previous: Vec<String>,
    /// Fingerprints retired by this step.
    pub retired: Vec<String>,
    /// Nodes whose registry entry does not name the current CA yet: name by node id.
    pub waiting_for: BTreeMap<String, String>,
}

/// The CA records `mesh rotate-ca` writes, and the state it leaves the CA's directory in.
/// A rotation is resumable: the new CA is made as `ca-next.*` first, announced (endorsed by
/// the old one, which stays on disk as `ca-<fingerprint>.*`), and only then moved in place.
pub mod holder {
    use super::*;
    use crate::config::{CA_CERT_FILE, CA_KEY_FILE};

    const NEXT_KEY: &str = "ca-next.key";
    const NEXT_CERT: &str = "ca-next.crt";

    fn retired_key(fp: &str) -> String {
        format!("ca-{}.key", &fp[..16])
    }

    fn retired_cert(fp: &str) -> String {
        format!("ca-{}.crt", &fp[..16])
    }

    /// Every CA certificate the CA directory `dir` holds: those of a rotation (kept after it,
    /// for the signatures they made) first, the current one last. What a node made from this
    /// directory trusts.
    pub fn bundle(dir: &Path) -> Result<String> {
        let mut earlier: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ca-") && n.ends_with(".crt") && n != NEXT_CERT)
            })
            .collect();
        earlier.sort();
        let mut bundle = String::new();
        for path in earlier.iter().chain([&dir.join(CA_CERT_FILE)]) {
            bundle.push_str(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
        }
        Ok(bundle)
    }

    /// Starts (or resumes) a rotation in the CA directory `dir`: the records to store (the old
    /// CA's own, and the new one endorsed by it), with the new CA in place once they are.
    /// `stored` stores them (in the running node, or the store directly) before the files move.
    pub fn start(
        dir: &Path,
        now_ms: i64,
        stored: impl FnOnce(BTreeMap<String, CaRecord>) -> Result<()>,
    ) -> Result<MeshCa> {
        // Cut short while the files moved: the records are stored, only the moves are left.
        if !dir.join(CA_KEY_FILE).exists() && dir.join(NEXT_KEY).exists() {
            complete_moves(dir)?;
            return crate::mesh_admin::load_ca(dir);
        }
        let old = crate::mesh_admin::load_ca(dir)?;
        let next = if dir.join(NEXT_KEY).exists() {
            MeshCa::load(
                &std::fs::read_to_string(dir.join(NEXT_KEY))?,
                &std::fs::read_to_string(dir.join(NEXT_CERT))?,
            )
            .with_context(|| format!("the new CA in {}", dir.display()))?
        } else {
            let next = MeshCa::create_for(old.mesh_id())?;
            crate::identity::write_private(&dir.join(NEXT_KEY), &next.key_pem())?;
            std::fs::write(dir.join(NEXT_CERT), next.cert_pem())
                .and_then(|()| std::fs::File::open(dir.join(NEXT_CERT))?.sync_all())
                .with_context(|| format!("cannot write {}", dir.join(NEXT_CERT).display()))?;
            next
        };
        if next.mesh_id() != old.mesh_id() {
            bail!(
                "the new CA in {} is of mesh {}, not {}",
                dir.display(),
                next.mesh_id(),
                old.mesh_id()
            );
        }
        let mut records = BTreeMap::new();
        let (fp, own) = record(&old, old.cert_pem(), "", 0, 0)?;
        records.insert(fp.clone(), own);
        let cross = old.cross_sign(&next)?;
        let (next_fp, endorsed) = record(&old, next.cert_pem(), &cross, now_ms, 0)?;
        records.insert(next_fp, endorsed);
        stored(records)?;
        // The old CA's key stays on disk until the rotation is finished: a rotation cut short
        // is resumed with it.
        std::fs::rename(dir.join(CA_KEY_FILE), dir.join(retired_key(&fp)))
            .with_context(|| format!("cannot move {CA_KEY_FILE} in {}", dir.display()))?;
        complete_moves(dir)?;
        Ok(next)
    }

    /// Puts the new CA in place once its records are stored: the old certificate aside, the
    /// new key and certificate where the CA is loaded from. Run again after a kill, it does
    /// what is left.
    fn complete_moves(dir: &Path) -> Result<()> {
        let move_to = |from: &str, to: &str| {
            std::fs::rename(dir.join(from), dir.join(to))
                .with_context(|| format!("cannot move {from} to {to} in {}", dir.display()))
        };
        if dir.join(CA_CERT_FILE).exists() && dir.join(NEXT_CERT).exists() {
            let old = std::fs::read_to_string(dir.join(CA_CERT_FILE))?;
            move_to(CA_CERT_FILE, &retired_cert(&fingerprint(&old)?))?;
        }
        if dir.join(NEXT_KEY).exists() {
            move_to(NEXT_KEY, CA_KEY_FILE)?;
        }
        if dir.join(NEXT_CERT).exists() {
            move_to(NEXT_CERT, CA_CERT_FILE)?;
        }
        if let Ok(handle) = std::fs::File::open(dir) {
            let _ = handle.sync_all();
        }
        Ok(())
    }

    /// Retires every CA but the current one of `dir` once every node in `registry` (but the
    /// revoked) names it, or regardless with `force`: the records to store, signed by the
    /// current CA. The old CA keys are deleted once stored.
    pub fn finish(
        dir: &Path,
        registry: &MeshRegistry,
        view: &TrustView,
        revoked: &BTreeSet<String>,
        force: bool,
        now_ms: i64,
        stored: impl FnOnce(BTreeMap<String, CaRecord>) -> Result<()>,
    ) -> Result<RotationView> {
        let current = crate::mesh_admin::load_ca(dir)?;
        let current_fp = fingerprint(current.cert_pem())?;
        if !view.knows(&current_fp) {
            bail!(
                "the CA in {} ({}) is not announced to the mesh yet: run `rhizome mesh \
                 rotate-ca` first",
                dir.display(),
                &current_fp[..16]
            );
        }
        let waiting_for = waiting(registry, &current_fp, revoked);
        let previous: Vec<String> = view
            .cas
            .iter()
            .filter(|(fp, _)| *fp != current_fp && !view.retired.contains(fp))
            .map(|(fp, _)| fp.clone())
            .collect();
        if !waiting_for.is_empty() && !force {
            bail!(
                "{} node(s) still hold a certificate of an older CA: {}. They renew from the \
                 new CA once they are online; retiring the old CA now (--force) leaves them \
                 refused at every handshake until they join again with a token",
                waiting_for.len(),
                waiting_for
                    .iter()
                    .map(|(id, name)| format!("{name} ({})", &id[..12.min(id.len())]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut records = BTreeMap::new();
        for (fp, pem) in view.cas.iter().filter(|(fp, _)| previous.contains(fp)) {
            let added = registry.cas.get(fp).map_or(0, |r| r.added_ms);
            let (fp, retired) = record(&current, pem, "", added, now_ms)?;
            records.insert(fp, retired);
        }
        stored(records)?;
        // A retired CA signs nothing more: its key goes. Its certificate stays, for the
        // signatures it made and for the nodes made from this directory later.
        for fp in &previous {
            let path = dir.join(retired_key(fp));
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(RotationView {
            current: current_fp,
            previous: Vec::new(),
            retired: previous,
            waiting_for,
        })
    }

    /// Nodes of `registry` (but the revoked) whose entry does not name CA `current`.
    pub fn waiting(
        registry: &MeshRegistry,
        current: &str,
        revoked: &BTreeSet<String>,
    ) -> BTreeMap<String, String> {
        registry
            .nodes
            .iter()
            .filter(|(id, entry)| entry.ca != current && !revoked.contains(*id))
            .map(|(id, entry)| (id.clone(), entry.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_grows_only_along_endorsements_and_retirements_need_a_trusted_signature() {
        let old = MeshCa::create().unwrap();
        let new = MeshCa::create_for(old.mesh_id()).unwrap();
        let stranger = MeshCa::create().unwrap();
        let mesh_id = old.mesh_id().to_owned();
        let mut registry = MeshRegistry::default();
        let start = evaluate(&registry, &mesh_id, old.cert_pem()).unwrap();
        assert_eq!(start.cas.len(), 1);
        assert_eq!(start.current, fingerprint(old.cert_pem()).unwrap());

        // A record signed by another mesh's CA, or by the new CA itself, teaches nothing.
        let (fp, forged) = record(&new, new.cert_pem(), "", 10, 0).unwrap();
        registry.cas.insert(fp.clone(), forged);
        let view = evaluate(&registry, &mesh_id, old.cert_pem()).unwrap();
        assert!(!view.knows(&fp) && view.ignored.contains_key(&fp));
        let (_, by_stranger) = record(&stranger, new.cert_pem(), "", 10, 0).unwrap();
        registry.cas.insert(fp.clone(), by_stranger);
        assert!(
            !evaluate(&registry, &mesh_id, old.cert_pem())
                .unwrap()
                .knows(&fp)
        );

        // Endorsed by the old CA: trusted, and current.
        let (_, endorsed) = record(&old, new.cert_pem(), "", 10, 0).unwrap();
        registry.cas.insert(fp.clone(), endorsed);
        let view = evaluate(&registry, &mesh_id, old.cert_pem()).unwrap();
        assert!(view.knows(&fp));
        assert_eq!(view.current, fp);
        assert_eq!(parse_pem_certs(&view.admits(), "x").unwrap().len(), 2);
        assert_eq!(mesh_id_of_ca(&view.all()).unwrap(), mesh_id);

        // The old one retired by the new one: no longer admitted, still known.
        let old_fp = fingerprint(old.cert_pem()).unwrap();
        let (_, retired) = record(&new, old.cert_pem(), "", 0, 20).unwrap();
        registry.cas.insert(old_fp.clone(), retired);
        let view = evaluate(&registry, &mesh_id, old.cert_pem()).unwrap();
        assert!(view.retired.contains(&old_fp));
        assert_eq!(parse_pem_certs(&view.admits(), "x").unwrap().len(), 1);
        assert_eq!(parse_pem_certs(&view.all(), "x").unwrap().len(), 2);

        // Retiring every CA is ignored.
        let (_, all_gone) = record(&new, new.cert_pem(), "", 10, 30).unwrap();
        registry.cas.insert(fp.clone(), all_gone);
        let view = evaluate(&registry, &mesh_id, old.cert_pem()).unwrap();
        assert!(view.retired.is_empty(), "{view:?}");
    }
}
