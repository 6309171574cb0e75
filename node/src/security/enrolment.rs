//! One-time join tokens, and the node side of enrolment: a node that holds the mesh CA (the one
//! that created the mesh) issues a certificate to a machine that presents a valid token, for
//! the machine's own key; the machine never sees the CA key (`mesh::net::enrolment` carries
//! the exchange, and checks the node against the CA fingerprint in the token).
//!
//! A join token is `rzj_<CA fingerprint>_<id>_<secret>`: the fingerprint is the SHA-256 of the
//! CA certificate (64 hex), the id names the token's record (8 hex), the secret is 32 random
//! bytes (64 hex). The issuing node keeps each token's record in `<data-dir>/join-tokens.json`
//! (mode 0600) with the SHA-256 of the secret, never the secret; a token works once, until it
//! expires or is withdrawn, and a refusal says which of those it was.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use mesh::net::identity::{MeshCa, NodeRole};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file of a node's join tokens.
pub const JOIN_TOKENS_FILE: &str = "join-tokens.json";

/// A join token as the issuing node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub id: String,
    /// The mesh role the joining node's certificate gets.
    pub role: String,
    /// The zone the joining node is put in; empty: its own choice.
    #[serde(default)]
    pub zone: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// When it was used, and by which node.
    #[serde(default)]
    pub used_ms: Option<i64>,
    #[serde(default)]
    pub used_by: Option<String>,
    /// When it was withdrawn.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    pub secret_sha256: String,
}

/// What a machine asks the node that holds the CA for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnrolRequest {
    /// A first certificate, with a join token.
    Join(JoinRequest),
    /// A new certificate for the key and role of the one presented on the connection.
    Renew,
}

/// What the joining machine sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token_id: String,
    pub secret: String,
    /// The machine's ed25519 public key, hex: the certificate is issued for it.
    pub public_key: String,
    /// The name it will go by, for the issuer's log.
    pub name: String,
}

/// What the issuing node answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinAnswer {
    /// The certificate for the machine's key, the CA certificate, the role and the zone the
    /// token gave.
    Issued {
        cert_pem: String,
        ca_pem: String,
        role: String,
        zone: String,
    },
    /// Why not, in a sentence.
    Refused { reason: String },
}

/// A join token, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

impl JoinToken {
    /// Reads a token as `mesh token create` printed it.
    pub fn parse(text: &str) -> Result<JoinToken> {
        let bad = || {
            anyhow::anyhow!(
                "not a join token: one looks like rzj_<64 hex>_<8 hex>_<64 hex>, as printed by \
                 `rhizome mesh token create` on the node that holds the mesh CA"
            )
        };
        let rest = text.trim().strip_prefix("rzj_").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('_').collect();
        let [fingerprint, id, secret] = parts.as_slice() else {
            return Err(bad());
        };
        let hex_of = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex_of(fingerprint, 64) && hex_of(id, 8) && hex_of(secret, 64)) {
            return Err(bad());
        }
        Ok(JoinToken {
            ca_fingerprint: fingerprint.to_ascii_lowercase(),
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }
}

fn load(path: &Path) -> Result<Vec<JoinTokenRecord>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a join token list", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Written aside and renamed into place: a crash leaves the old list or the new one, and a
/// token marked used is durable before its certificate goes out.
fn save(path: &Path, records: &[JoinTokenRecord]) -> Result<()> {
    let aside = path.with_extension("json.new");
    let _ = std::fs::remove_file(&aside);
    crate::identity::write_private(&aside, &serde_json::to_string_pretty(records)?)?;
    std::fs::File::open(&aside)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot make {} durable", aside.display()))?;
    std::fs::rename(&aside, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The token list of a data dir.
pub fn list(data_dir: &Path) -> Result<Vec<JoinTokenRecord>> {
    load(&data_dir.join(JOIN_TOKENS_FILE))
}

/// Makes a token on the node that holds the CA; returns it (to be shown once) and its record.
pub fn create(
    data_dir: &Path,
    ca: &MeshCa,
    role: NodeRole,
    zone: &str,
    ttl: std::time::Duration,
    now_ms: i64,
) -> Result<(String, JoinTokenRecord)> {
    if !zone.is_empty() {
        mesh::proto::election::check_zone(zone).with_context(|| format!("--zone {zone}"))?;
    }
    let path = data_dir.join(JOIN_TOKENS_FILE);
    let mut records = load(&path)?;
    let id = loop {
        let id = hex::encode(rand::random::<[u8; 4]>());
        if !records.iter().any(|r| r.id == id) {
            break id;
        }
    };
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let record = JoinTokenRecord {
        id: id.clone(),
        role: role.as_str().to_owned(),
        zone: zone.to_owned(),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl.as_millis() as i64),
        used_ms: None,
        used_by: None,
        revoked_ms: None,
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
    };
    records.push(record.clone());
    save(&path, &records)?;
    let fingerprint = mesh::net::enrolment::fingerprint(ca.cert_pem())?;
    Ok((format!("rzj_{fingerprint}_{id}_{secret}"), record))
}

/// Withdraws a token that has not been used.
pub fn revoke(data_dir: &Path, id: &str, now_ms: i64) -> Result<JoinTokenRecord> {
    let path = data_dir.join(JOIN_TOKENS_FILE);
    let mut records = load(&path)?;
    let Some(record) = records.iter_mut().find(|r| r.id == id) else {
        bail!("no join token {id} here (see `rhizome mesh token list`)");
    };
    if let Some(at) = record.revoked_ms {
        bail!("join token {id} was withdrawn already, at {}", stamp(at));
    }
    if let Some(at) = record.used_ms {
        bail!(
            "join token {id} was used at {} (by node {}): revoke that node with \
             `rhizome mesh revoke` instead",
            stamp(at),
            record.used_by.as_deref().unwrap_or("?")
        );
    }
    record.revoked_ms = Some(now_ms);
    let done = record.clone();
    save(&path, &records)?;
    Ok(done)
}

fn stamp(ms: i64) -> String {
    crdt_store::format_timestamp(ms)
}

/// The enrolment service of a node that holds the mesh CA (in `<data-dir>/mesh`); `None` for
/// any other node.
pub fn issuer(
    node: &crate::node::Node,
    audit: Arc<crate::security::audit::Audit>,
) -> Result<Option<Arc<Issuer>>> {
    let mesh_dir = node.dir.root.join(crate::config::OWN_MESH_DIR);
    if !mesh_dir.join(crate::config::CA_KEY_FILE).exists() {
        return Ok(None);
    }
    let ca = crate::mesh_admin::load_ca(&mesh_dir)?;
    let (lifetime, _) = node.config.security.lifetimes()?;
    let mut issuer = Issuer::new(ca, &node.dir.root, lifetime, audit);
    issuer.trust = Some(node.trust.clone());
    issuer.ca_dir = Some(mesh_dir);
    Ok(Some(Arc::new(issuer)))
}

/// Checks tokens and issues certificates.
#[derive(Debug)]
pub struct Issuer {
    /// The CA it issues with: the current one of the mesh, reloaded after a rotation.
    ca: std::sync::RwLock<MeshCa>,
    /// Where the CA is kept, to reload it from.
    ca_dir: Option<PathBuf>,
    /// The CAs the node trusts, sent to a joining machine (which trusts them all from then on).
    trust: Option<crate::security::trust::Trust>,
    tokens: PathBuf,
    /// How long the certificates it issues are valid.
    lifetime: std::time::Duration,
    /// One request at a time reads and writes the token list.
    lock: Mutex<()>,
    audit: Arc<crate::security::audit::Audit>,
}

impl Issuer {
    /// An issuer with `ca`, checking the join tokens kept in `data_dir`, issuing certificates
    /// valid for `lifetime`.
    pub fn new(
        ca: MeshCa,
        data_dir: &Path,
        lifetime: std::time::Duration,
        audit: Arc<crate::security::audit::Audit>,
    ) -> Issuer {
        Issuer {
            ca: std::sync::RwLock::new(ca),
            ca_dir: None,
            trust: None,
            tokens: data_dir.join(JOIN_TOKENS_FILE),
            lifetime,
            lock: Mutex::new(()),
            audit,
        }
    }

    fn answer(
        &self,
        request: &[u8],
        from: SocketAddr,
        peer: Option<&mesh::net::identity::CertificateDer<'_>>,
    ) -> JoinAnswer {
        let refused = |reason: String| {
            tracing::warn!(%from, %reason, "refused an enrolment request");
            self.audit.record(
                crate::security::audit::Kind::EnrolmentRefused,
                from.to_string(),
                reason.clone(),
            );
            JoinAnswer::Refused { reason }
        };
        let request = match serde_json::from_slice::<EnrolRequest>(request) {
            Ok(EnrolRequest::Join(request)) => request,
            Ok(EnrolRequest::Renew) => return self.renew(peer, from),
            Err(e) => return refused(format!("the request is not a join request: {e}")),
        };
        let Some(public_key) = hex::decode(&request.public_key)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
        else {
            return refused("the public key is not 32 bytes of hex".into());
        };
        let _held = self.lock.lock().expect("join token lock");
        let mut records = match load(&self.tokens) {
            Ok(r) => r,
            Err(e) => return refused(format!("this node cannot read its join tokens: {e:#}")),
        };
        let now = crate::node::now_ms();
        let hash = hex::encode(Sha256::digest(request.secret.as_bytes()));
        let Some(record) = records
            .iter_mut()
            .find(|r| r.id == request.token_id && r.secret_sha256 == hash)
        else {
            return refused(format!(
                "join token {} is not one this node issued (or its secret is wrong)",
                request.token_id
            ));
        };
        if let Some(at) = record.revoked_ms {
            return refused(format!(
                "join token {} was withdrawn at {}",
                record.id,
                stamp(at)
            ));
        }
        if let Some(at) = record.used_ms {
            return refused(format!(
                "join token {} was used already, at {} by node {}",
                record.id,
                stamp(at),
                record.used_by.as_deref().unwrap_or("?")
            ));
        }
        if record.expires_ms <= now {
            return refused(format!(
                "join token {} expired at {}",
                record.id,
                stamp(record.expires_ms)
            ));
        }
        let role = NodeRole::parse(&record.role).unwrap_or(NodeRole::Member);
        // A joining node may get a certificate of a CA still admitted; it renews from the
        // current one once it runs.
        let _ = self.catch_up();
        let cert = match self.ca().issue_for(&public_key, role, self.lifetime) {
            Ok(c) => c,
            Err(e) => return refused(format!("issuing the certificate failed: {e}")),
        };
        let node = mesh::net::identity::node_id_from_public_key(&public_key);
        record.used_ms = Some(now);
        record.used_by = Some(node.clone());
        let zone = record.zone.clone();
        // Durable before the certificate leaves: a token can never be used twice.
        if let Err(e) = save(&self.tokens, &records) {
            return refused(format!("this node cannot record the token as used: {e:#}"));
        }
        tracing::warn!(%from, %node, name = %request.name, %role, "issued a certificate to a joining node");
        self.audit.record(
            crate::security::audit::Kind::Joined,
            node.clone(),
            format!(
                "{} from {from} with join token {}, role {role}",
                request.name, request.token_id
            ),
        );
        JoinAnswer::Issued {
            cert_pem: cert,
            ca_pem: self.bundle(),
            role: role.as_str().to_owned(),
            zone,
        }
    }
}

impl Issuer {
    /// A new certificate for the node that presented `peer` on the connection: its key, its
    /// role, a fresh validity. The TLS handshake has checked the certificate (of this CA, valid
    /// now, not revoked); an expired one cannot renew, and joins again with a token.
    fn renew(
        &self,
        peer: Option<&mesh::net::identity::CertificateDer<'_>>,
        from: SocketAddr,
    ) -> JoinAnswer {
        let refused = |reason: String| {
            tracing::warn!(%from, %reason, "refused a renewal");
            self.audit.record(
                crate::security::audit::Kind::EnrolmentRefused,
                from.to_string(),
                format!("renewal: {reason}"),
            );
            JoinAnswer::Refused { reason }
        };
        let Some(peer) = peer else {
            return refused("a renewal needs the node's current certificate".into());
        };
        let info = match mesh::net::identity::cert_info(peer) {
            Ok(info) => info,
            Err(e) => return refused(format!("its certificate: {e}")),
        };
        let key = match mesh::net::identity::public_key_of_der(peer) {
            Ok(key) => key,
            Err(e) => return refused(format!("its certificate: {e}")),
        };
        if let Err(behind) = self.catch_up() {
            return refused(behind);
        }
        match self.ca().issue_for(&key, info.role, self.lifetime) {
            Ok(cert) => {
                self.audit.record(
                    crate::security::audit::Kind::Renewed,
                    info.node_id.clone(),
                    format!("issued from {from}, role {}", info.role),
                );
                JoinAnswer::Issued {
                    cert_pem: cert,
                    ca_pem: self.bundle(),
                    role: info.role.as_str().to_owned(),
                    zone: String::new(),
                }
            }
            Err(e) => refused(format!("issuing the certificate failed: {e}")),
        }
    }

    /// A new certificate for this node itself, which holds the CA: no network needed.
    pub fn renew_own(&self, public_key: &[u8; 32], role: NodeRole) -> Result<String> {
        self.catch_up().map_err(anyhow::Error::msg)?;
        Ok(self.ca().issue_for(public_key, role, self.lifetime)?)
    }

    /// Issues from the mesh's current CA from here on, if the CA directory holds it; an error
    /// naming it while it does not. `mesh rotate-ca` announces the new CA before it moves its
    /// files into place, so a renewal can arrive between the two; issuing from the old CA then
    /// would hand out a certificate that has to be renewed again at once, without end.
    fn catch_up(&self) -> std::result::Result<(), String> {
        let Some(current) = self.trust.as_ref().map(|t| t.current()) else {
            return Ok(());
        };
        if current.is_empty() || self.issues_from(&current) {
            return Ok(());
        }
        match self.reload(&current) {
            Ok(true) => {
                tracing::warn!(ca = %current, "issuing from the mesh's new CA");
                Ok(())
            }
            // Mid-move the directory briefly lacks a file: the refusal says enough.
            Ok(false) | Err(_) => Err(format!(
                "this node does not hold the mesh's current CA {} yet (a rotation is moving it \
                 into place); try again shortly",
                &current[..16.min(current.len())]
            )),
        }
    }

    fn issues_from(&self, fingerprint: &str) -> bool {
        mesh::net::enrolment::fingerprint(self.ca().cert_pem()).is_ok_and(|fp| fp == fingerprint)
    }

    fn ca(&self) -> std::sync::RwLockReadGuard<'_, MeshCa> {
        self.ca.read().expect("issuer CA")
    }

    /// The CA certificates a new certificate is sent with: every CA the node trusts.
    fn bundle(&self) -> String {
        self.trust
            .as_ref()
            .map(|t| t.all())
            .filter(|all| !all.is_empty())
            .unwrap_or_else(|| self.ca().cert_pem().to_owned())
    }

    /// Issues from the CA now kept in its directory, when that is the one with fingerprint
    /// `current` (after `mesh rotate-ca`); whether it changed.
    fn reload(&self, current: &str) -> Result<bool> {
        let Some(dir) = &self.ca_dir else {
            return Ok(false);
        };
        if self.issues_from(current) {
            return Ok(false);
        }
        let ca = crate::mesh_admin::load_ca(dir)?;
        if mesh::net::enrolment::fingerprint(ca.cert_pem())? != current {
            return Ok(false);
        }
        *self.ca.write().expect("issuer CA") = ca;
        Ok(true)
    }
}

impl mesh::net::enrolment::Enrolment for Issuer {
    fn enrol(
        &self,
        request: &[u8],
        from: SocketAddr,
        peer: Option<&mesh::net::identity::CertificateDer<'_>>,
    ) -> Vec<u8> {
        serde_json::to_vec(&self.answer(request, from, peer)).expect("an answer encodes")
    }
}

/// Asks the node at `addr` for a certificate for `public_key` with `token`; the certificate,
/// the CA certificate, the role and the zone.
pub fn join(
    addr: &str,
    token: &JoinToken,
    public_key: &[u8; 32],
    name: &str,
) -> Result<(String, String, String, String)> {
    let request = serde_json::to_vec(&EnrolRequest::Join(JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        public_key: hex::encode(public_key),
        name: name.to_owned(),
    }))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime
        .block_on(mesh::net::enrolment::request(
            addr,
            &token.ca_fingerprint,
            &request,
        ))
        .context("joining")?;
    check_answer(&answer, addr, token, public_key)
}

/// What the node at `addr` answered a join request: a certificate for `public_key` of the CA
/// the token names, or its refusal as an error.
pub fn check_answer(
    answer: &[u8],
    addr: &str,
    token: &JoinToken,
    public_key: &[u8; 32],
) -> Result<(String, String, String, String)> {
    match serde_json::from_slice::<JoinAnswer>(answer)
        .with_context(|| format!("the node at {addr} answered something else than a join answer"))?
    {
        JoinAnswer::Issued {
            cert_pem,
            ca_pem,
            role,
            zone,
        } => {
            // The answer must be for this key, from the mesh whose CA the token names.
            let sent = mesh::net::identity::parse_pem_certs(&ca_pem, "mesh CA certificate")?;
            if !sent.iter().any(|ca| {
                mesh::net::enrolment::fingerprint(&mesh::net::identity::pem_of(ca))
                    .is_ok_and(|fp| fp == token.ca_fingerprint)
            }) {
                bail!("the node at {addr} sent CA certificates without the token's");
            }
            mesh::net::identity::mesh_id_of_ca(&ca_pem)
                .with_context(|| format!("the CA certificates the node at {addr} sent"))?;
            let cert = mesh::net::identity::verify_issued_by(&ca_pem, &cert_pem)
                .with_context(|| format!("the certificate the node at {addr} issued"))?;
            if cert.node_id != mesh::net::identity::node_id_from_public_key(public_key) {
                bail!("the node at {addr} issued a certificate for another key");
            }
            Ok((cert_pem, ca_pem, role, zone))
        }
        JoinAnswer::Refused { reason } => bail!("the node at {addr} refused: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_holder_renews_from_a_rotated_ca_only_once_its_files_are_in_place() {
        use crate::config::{CA_CERT_FILE, CA_KEY_FILE};
        use crate::security::trust::{Trust, evaluate, holder, issuer_fingerprint};
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("mesh");
        std::fs::create_dir(&ca_dir).unwrap();
        let old = MeshCa::create().unwrap();
        crate::identity::write_private(&ca_dir.join(CA_KEY_FILE), &old.key_pem()).unwrap();
        std::fs::write(ca_dir.join(CA_CERT_FILE), old.cert_pem()).unwrap();
        let trust = Trust::from_bundle(old.cert_pem()).unwrap();
        let mut issuer = Issuer::new(
            MeshCa::load(&old.key_pem(), old.cert_pem()).unwrap(),
            dir.path(),
            std::time::Duration::from_secs(3600),
            Arc::new(crate::security::audit::Audit::default()),
        );
        issuer.trust = Some(trust.clone());
        issuer.ca_dir = Some(ca_dir.clone());
        let key = [5u8; 32];
        let issued_by = |cert: &str| issuer_fingerprint(&trust.all(), cert).unwrap();
        let old_fp = mesh::net::enrolment::fingerprint(old.cert_pem()).unwrap();
        assert_eq!(
            issued_by(&issuer.renew_own(&key, NodeRole::Member).unwrap()),
            old_fp
        );

        // The new CA announced (the node trusts it as current) while its files have not moved.
        let new = holder::start(&ca_dir, 1, |records| {
            let registry = crdt_store::MeshRegistry {
                cas: records,
                ..Default::default()
            };
            trust.set(&evaluate(&registry, old.mesh_id(), old.cert_pem()).unwrap());
            let refused = issuer.renew_own(&key, NodeRole::Member).unwrap_err();
            assert!(refused.to_string().contains("current CA"), "{refused:#}");
            Ok(())
        })
        .unwrap();
        let new_fp = mesh::net::enrolment::fingerprint(new.cert_pem()).unwrap();
        assert_eq!(trust.current(), new_fp);
        assert_eq!(
            issued_by(&issuer.renew_own(&key, NodeRole::Member).unwrap()),
            new_fp
        );
    }

    #[test]
    fn tokens_work_once_until_they_expire_or_are_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::create().unwrap();
        let issuer = Issuer::new(
            MeshCa::load(&ca.key_pem(), ca.cert_pem()).unwrap(),
            dir.path(),
            std::time::Duration::from_secs(3600),
            Arc::new(crate::security::audit::Audit::default()),
        );
        let now = crate::node::now_ms();
        let hour = std::time::Duration::from_secs(3600);
        let (text, record) =
            create(dir.path(), &ca, NodeRole::Control, "site-a", hour, now).unwrap();
        let token = JoinToken::parse(&text).unwrap();
        assert_eq!(token.id, record.id);
        assert_eq!(
            token.ca_fingerprint,
            mesh::net::enrolment::fingerprint(ca.cert_pem()).unwrap()
        );
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ask = |token: &JoinToken, key: u8| {
            let request = serde_json::to_vec(&EnrolRequest::Join(JoinRequest {
                token_id: token.id.clone(),
                secret: token.secret.clone(),
                public_key: hex::encode([key; 32]),
                name: "n".into(),
            }))
            .unwrap();
            issuer.answer(&request, from, None)
        };
        let JoinAnswer::Issued { role, zone, .. } = ask(&token, 7) else {
            panic!("refused");
        };
        assert_eq!((role.as_str(), zone.as_str()), ("control", "site-a"));
        let reason = |a: JoinAnswer| match a {
            JoinAnswer::Refused { reason } => reason,
            JoinAnswer::Issued { .. } => panic!("issued"),
        };
        assert!(reason(ask(&token, 8)).contains("used already"));
        let wrong = JoinToken {
            secret: "0".repeat(64),
            ..token.clone()
        };
        assert!(reason(ask(&wrong, 9)).contains("not one this node issued"));
        let (text, _) =
            create(dir.path(), &ca, NodeRole::Member, "", hour, now - 7_200_000).unwrap();
        assert!(reason(ask(&JoinToken::parse(&text).unwrap(), 9)).contains("expired"));
        let (text, record) = create(dir.path(), &ca, NodeRole::Member, "", hour, now).unwrap();
        revoke(dir.path(), &record.id, now).unwrap();
        assert!(reason(ask(&JoinToken::parse(&text).unwrap(), 9)).contains("withdrawn"));
        assert!(JoinToken::parse("rzj_nope").is_err());
        assert!(reason(issuer.answer(b"garbage", from, None)).contains("not a join request"));
        let renew = serde_json::to_vec(&EnrolRequest::Renew).unwrap();
        assert!(reason(issuer.answer(&renew, from, None)).contains("current certificate"));
    }
}
