//! Certificates expire (`security.cert_lifetime`, 90 days by default) and renew themselves:
//! once less than `security.renew_before` is left, a node asks the node that holds the CA for
//! a new certificate for its key and role, over a connection on which it presents the one it
//! has (`mesh::net::enrolment::renew`). The node that holds the CA renews its own without the
//! network. A renewed certificate is written beside the old one and renamed over it, then used
//! for every handshake from then on; connections that are up keep going. A node that stays
//! offline past its certificate's end is refused at every handshake and joins again with a
//! token.
//!
//! A node also renews, at once, when its certificate is not of the mesh's current CA (after
//! `mesh rotate-ca`), and then names the new CA in its registry entry, which tells the CA
//! holder when the rotation can be finished.
//!
//! Which node holds the CA: the one whose registry entry lists the capability `enrols` (it
//! writes that itself). A member claiming it falsely gains nothing: the renewing node checks
//! that what it gets is a certificate of its mesh's CA for its own key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crdt_store::{DocName, MeshRegistry, StoreHandle};
use mesh::net::driver::MeshHandle;
use mesh::net::identity::{CertInfo, NodeCredentials, Revocations};

use crate::config::DataDir;
use crate::security::enrolment::{EnrolRequest, Issuer, JoinAnswer};

/// The capability the node that holds the CA lists in its registry entry.
pub const ENROLS: &str = "enrols";

/// The longest wait between two looks at the certificate, and between tries while renewal
/// fails.
const LOOK_AT_MOST_EVERY: Duration = Duration::from_secs(3600);
/// The first wait after a failed renewal; doubled per failure.
const RETRY_FIRST: Duration = Duration::from_secs(5);

/// Where renewal stands, for `/health` and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewalState {
    /// Unix seconds at which the certificate in use ends.
    pub not_after: i64,
    /// Why the last try failed, while renewal is due and failing.
    pub failing: Option<String>,
}

/// Everything the renewal task needs.
#[allow(missing_debug_implementations)]
pub struct Renewal {
    pub dir: DataDir,
    pub secret: [u8; 32],
    pub mesh: MeshHandle,
    pub store: StoreHandle,
    pub revoked: Revocations,
    /// On the node that holds the CA.
    pub issuer: Option<Arc<Issuer>>,
    pub renew_before: Duration,
    pub state: Arc<Mutex<RenewalState>>,
    pub audit: Arc<crate::security::audit::Audit>,
    /// The mesh's CAs: which one is current, which ones admit.
    pub trust: crate::security::trust::Trust,
    /// Rung when the current CA changes.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Renewal {
    fn credentials(&self) -> Result<NodeCredentials> {
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))
        };
        self.trust.credentials(&read(self.dir.cert())?, self.secret)
    }

    /// Whether the node's certificate is of a CA other than the mesh's current one.
    fn of_an_older_ca(&self) -> bool {
        let current = self.trust.current();
        let Ok(cert) = std::fs::read_to_string(self.dir.cert()) else {
            return false;
        };
        !current.is_empty()
            && crate::security::trust::issuer_fingerprint(&self.trust.all(), &cert).as_deref()
                != Some(current.as_str())
    }

    /// Runs until the node stops: renews the certificate whenever it is due.
    pub async fn run(self) {
        let mut retry = RETRY_FIRST;
        loop {
            let info = match self.credentials().and_then(|c| Ok(c.info()?)) {
                Ok(info) => info,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read this node's certificate");
                    tokio::time::sleep(LOOK_AT_MOST_EVERY).await;
                    continue;
                }
            };
            let now = now_secs();
            let left = Duration::from_secs(u64::try_from(info.not_after - now).unwrap_or(0));
            self.state.lock().expect("renewal state").not_after = info.not_after;
            if left > self.renew_before && !self.of_an_older_ca() {
                self.state.lock().expect("renewal state").failing = None;
                retry = RETRY_FIRST;
                tokio::select! {
                    () = tokio::time::sleep((left - self.renew_before).min(LOOK_AT_MOST_EVERY)) => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }
            match self.renew(&info).await {
                Ok(renewed) => {
                    tracing::info!(
                        until = %crdt_store::format_timestamp(renewed.not_after * 1000),
                        "renewed this node's certificate"
                    );
                    self.audit.record(
                        crate::security::audit::Kind::Renewed,
                        renewed.node_id.clone(),
                        format!(
                            "this node's certificate, now until {}",
                            crdt_store::format_timestamp(renewed.not_after * 1000)
                        ),
                    );
                    {
                        let mut state = self.state.lock().expect("renewal state");
                        state.not_after = renewed.not_after;
                        state.failing = None;
                    }
                    retry = RETRY_FIRST;
                    self.name_the_ca(&renewed.node_id).await;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::warn!(
                        error = %why,
                        expires = %crdt_store::format_timestamp(info.not_after * 1000),
                        "renewing this node's certificate failed; trying again"
                    );
                    self.state.lock().expect("renewal state").failing = Some(why);
                    tokio::select! {
                        () = tokio::time::sleep(retry.min(left.max(Duration::from_secs(1)))) => {}
                        () = self.wake.notified() => {}
                    }
                    retry = (retry * 2).min(LOOK_AT_MOST_EVERY);
                }
            }
        }
    }

    /// Gets a new certificate, writes it, and has the mesh use it.
    async fn renew(&self, info: &CertInfo) -> Result<CertInfo> {
        let current = self.credentials()?;
        let key = mesh::net::identity::public_key_of_der(&current.cert)?;
        let ca_pem = self.trust.admits();
        let cert_pem = match &self.issuer {
            Some(issuer) => issuer.renew_own(&key, info.role)?,
            None => self.ask_the_ca_holder(&current).await?,
        };
        let renewed = mesh::net::identity::verify_issued_by(&ca_pem, &cert_pem)
            .context("the renewed certificate")?;
        if renewed.node_id != info.node_id {
            bail!("the renewed certificate is for another node");
        }
        // Taking a certificate of an older CA would make the next look renew again at once.
        let current = self.trust.current();
        let issued_by = crate::security::trust::issuer_fingerprint(&self.trust.all(), &cert_pem);
        if !current.is_empty() && issued_by.as_deref() != Some(current.as_str()) {
            bail!(
                "the renewed certificate is of CA {}, not of the mesh's current CA {}",
                issued_by
                    .as_deref()
                    .map_or("(unknown)", |fp| &fp[..16.min(fp.len())]),
                &current[..16.min(current.len())]
            );
        }
        let aside = self.dir.cert().with_extension("crt.new");
        std::fs::write(&aside, &cert_pem)
            .and_then(|()| std::fs::File::open(&aside)?.sync_all())
            .with_context(|| format!("cannot write {}", aside.display()))?;
        std::fs::rename(&aside, self.dir.cert())
            .with_context(|| format!("cannot replace {}", self.dir.cert().display()))?;
        self.mesh.set_credentials(self.credentials()?).await?;
        Ok(renewed)
    }

    /// Writes the CA of the node's certificate in use into its registry entry, for the CA holder
    /// to see when every node holds one of the current CA.
    async fn name_the_ca(&self, node: &str) {
        let Ok(cert) = std::fs::read_to_string(self.dir.cert()) else {
            return;
        };
        let Some(ca) = crate::security::trust::issuer_fingerprint(&self.trust.all(), &cert) else {
            return;
        };
        let node = node.to_owned();
        let written = self
            .store
            .call(move |s| {
                s.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                    if let Some(entry) = m.nodes.get(&node).cloned()
                        && entry.ca != ca
                    {
                        m.write_entry(&node, crdt_store::NodeEntry { ca, ..entry }, now_ms());
                    }
                })
            })
            .recv()
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot name the new CA in this node's registry entry");
        }
    }

    /// Asks each node that lists `enrols` in the registry, until one answers.
    async fn ask_the_ca_holder(&self, current: &NodeCredentials) -> Result<String> {
        let registry: MeshRegistry = self
            .store
            .call(|s| s.read::<MeshRegistry>(&DocName::Mesh))
            .recv()
            .await?;
        let addresses: Vec<String> = registry
            .nodes
            .values()
            .filter(|e| e.capabilities.iter().any(|c| c == ENROLS))
            .flat_map(|e| e.addresses.clone())
            .collect();
        if addresses.is_empty() {
            bail!("no node in the registry holds the mesh CA (lists `{ENROLS}`)");
        }
        let request = serde_json::to_vec(&EnrolRequest::Renew)?;
        let mut tried = Vec::new();
        for addr in addresses {
            match mesh::net::enrolment::renew(&addr, current, self.revoked.clone(), &request).await
            {
                Ok(answer) => match serde_json::from_slice::<JoinAnswer>(&answer) {
                    Ok(JoinAnswer::Issued { cert_pem, .. }) => return Ok(cert_pem),
                    Ok(JoinAnswer::Refused { reason }) => tried.push(format!("{addr}: {reason}")),
                    Err(e) => tried.push(format!("{addr}: an answer that does not decode: {e}")),
                },
                Err(e) => tried.push(e.to_string()),
            }
        }
        bail!("{}", tried.join("; "))
    }
}

fn now_secs() -> i64 {
    crate::node::now_ms() / 1000
}

fn now_ms() -> i64 {
    crate::node::now_ms()
}
