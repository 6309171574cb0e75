//! Admission: the mesh certificate authority, node certificates, and the TLS configurations
//! that make QUIC connections mutually authenticated.
//!
//! A mesh is defined by its CA, an ed25519 key. The mesh id is derived from the first CA's
//! public key and named in every CA certificate of the mesh (`rhizome mesh <id>`): a CA that
//! replaces it (a rotation) keeps the mesh id. What a node trusts is the bundle of CA
//! certificates in its `ca.crt`, grown only by CAs that a CA it trusts endorsed. A node certificate
//! carries the node's own ed25519 identity key; the node id is read from that key, never from a
//! name in the certificate. Both sides of a connection present certificates and verify the
//! other's against the mesh CA, and refuse revoked node ids.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// The name every node certificate carries and every client asks for. Peers are identified by
/// their key, not by a host name, so one constant name serves all of them.
pub const MESH_SERVER_NAME: &str = "node.rhizome.invalid";

/// The ALPN protocol of mesh connections.
pub const ALPN: &[u8] = b"rhizome/1";

/// The certificate extension that carries a node's mesh role (a DER UTF8String, `member` or
/// `control`). An OID of the UUID arc 2.25, private to Rhizome; the extension is not
/// critical, so other TLS stacks accept the certificate and ignore it.
pub const ROLE_EXTENSION_OID: &[u64] = &[2, 25, 14_563_408_301_565_202_769];

/// How long a node certificate is valid unless configured otherwise; nodes renew theirs well
/// before the end.
pub const DEFAULT_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

/// What a node may do in its mesh, as its certificate says; only the CA can grant it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeRole {
    /// Takes part: writes its own registry entry and results, aggregates when elected.
    Member,
    /// Also changes what runs where: workflows, rollouts, releases (the cloud, admin machines).
    Control,
}

impl NodeRole {
    /// The role as certificates and the command line name it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Member => "member",
            NodeRole::Control => "control",
        }
    }

    /// Reads a role name.
    pub fn parse(text: &str) -> Option<NodeRole> {
        match text {
            "member" => Some(NodeRole::Member),
            "control" => Some(NodeRole::Control),
            _ => None,
        }
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node certificate says beyond the node's key: its role and until when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The node id, from the certificate's key.
    pub node_id: String,
    /// `Member` for a certificate without the role extension (issued before roles existed).
    pub role: NodeRole,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// Reads a node certificate (DER): its node id, role and validity.
pub fn cert_info(cert: &CertificateDer<'_>) -> Result<CertInfo, IdentityError> {
    let invalid = |reason: String| IdentityError::Invalid {
        what: "node certificate",
        reason,
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| invalid(format!("it does not parse as X.509: {e}")))?;
    let oid = x509_parser::oid_registry::Oid::from(ROLE_EXTENSION_OID)
        .map_err(|_| invalid("the role extension's OID".into()))?;
    let mut role = NodeRole::Member;
    for ext in parsed.extensions().iter().filter(|e| e.oid == oid) {
        let name = der_utf8_string(ext.value)
            .ok_or_else(|| invalid("its role extension is not a UTF8String".into()))?;
        role = NodeRole::parse(name)
            .ok_or_else(|| invalid(format!("its role `{name}` is not member or control")))?;
    }
    let validity = parsed.validity();
    Ok(CertInfo {
        node_id: node_id_of(cert)?,
        role,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// The text of a DER UTF8String that fills `der` exactly; `None` for anything else.
pub fn der_utf8_string(der: &[u8]) -> Option<&str> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = match first {
        0..=0x7f => (usize::from(first), rest),
        // DER takes the shortest length form: a long form for less than 128 is not DER.
        0x81 => {
            let (&len, body) = rest.split_first()?;
            if len < 0x80 {
                return None;
            }
            (usize::from(len), body)
        }
        _ => return None,
    };
    if body.len() != len {
        return None;
    }
    std::str::from_utf8(body).ok()
}

/// A DER UTF8String of `text` (at most 255 bytes).
fn der_utf8(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut der = vec![0x0c];
    if bytes.len() < 0x80 {
        der.push(bytes.len() as u8);
    } else {
        der.push(0x81);
        der.push(u8::try_from(bytes.len()).expect("role names are short"));
    }
    der.extend_from_slice(bytes);
    der
}

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410); the key's 32 bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER prefix of an ed25519 PKCS#8 v1 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Errors of admission.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A key or certificate could not be parsed.
    #[error("{what} is not valid: {reason}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A node id from an ed25519 public key: the first 16 bytes, hex.
pub fn node_id_from_public_key(key: &[u8; 32]) -> String {
    key[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The node id a certificate belongs to, read from its ed25519 public key.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let der = cert.as_ref();
    let mut found = der
        .windows(ED25519_SPKI_PREFIX.len())
        .enumerate()
        .filter(|(_, w)| *w == ED25519_SPKI_PREFIX);
    let invalid = |reason: &str| IdentityError::Invalid {
        what: "peer certificate",
        reason: reason.into(),
    };
    let (at, _) = found
        .next()
        .ok_or_else(|| invalid("it carries no ed25519 public key"))?;
    if found.next().is_some() {
        return Err(invalid("it carries more than one ed25519 public key"));
    }
    let start = at + ED25519_SPKI_PREFIX.len();
    let key: [u8; 32] = der
        .get(start..start + 32)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| invalid("its public key is truncated"))?;
    Ok(node_id_from_public_key(&key))
}

/// The mesh id named by the CA certificates of a bundle (PEM): every one must name the same.
pub fn mesh_id_of_ca(cert_pem: &str) -> Result<String, IdentityError> {
    let mut named: Option<String> = None;
    for cert in parse_pem_certs(cert_pem, "mesh CA certificate")? {
        let id = mesh_id_named_by(&cert)?;
        match &named {
            Some(first) if *first != id => {
                return Err(IdentityError::Invalid {
                    what: "mesh CA certificates",
                    reason: format!("they name two meshes, {first} and {id}"),
                });
            }
            Some(_) => {}
            None => named = Some(id),
        }
    }
    named.ok_or_else(|| IdentityError::Invalid {
        what: "mesh CA certificate",
        reason: "there is none".into(),
    })
}

/// The mesh id a CA certificate names in its common name (`rhizome mesh <id>`).
fn mesh_id_named_by(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let invalid = |reason: &str| IdentityError::Invalid {
        what: "mesh CA certificate",
        reason: reason.into(),
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| invalid("it does not parse"))?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| invalid("it has no common name"))?;
    let id = name
        .strip_prefix("rhizome mesh ")
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid("its common name is not `rhizome mesh <id>`"))?;
    Ok(id.to_owned())
}

/// Every certificate of a PEM bundle, in order; at least one.
pub fn parse_pem_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Invalid {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Invalid {
            what,
            reason: "it holds no certificate".into(),
        });
    }
    Ok(certs)
}

/// The ed25519 public key a certificate carries.
pub fn public_key_of_der(cert: &CertificateDer<'_>) -> Result<[u8; 32], IdentityError> {
    let der = cert.as_ref();
    let at = der
        .windows(ED25519_SPKI_PREFIX.len())
        .position(|w| w == ED25519_SPKI_PREFIX)
        .ok_or_else(|| IdentityError::Invalid {
            what: "node certificate",
            reason: "it carries no ed25519 public key".into(),
        })?;
    let start = at + ED25519_SPKI_PREFIX.len();
    der.get(start..start + 32)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| IdentityError::Invalid {
            what: "node certificate",
            reason: "its public key is truncated".into(),
        })
}

/// The ed25519 public key a certificate (PEM) carries.
fn public_key_of(cert_pem: &str, what: &'static str) -> Result<[u8; 32], IdentityError> {
    public_key_of_der_as(&parse_pem_cert(cert_pem, what)?, what)
}

/// The ed25519 public key a certificate (DER) carries.
fn public_key_of_der_as(
    cert: &CertificateDer<'_>,
    what: &'static str,
) -> Result<[u8; 32], IdentityError> {
    let der = cert.as_ref();
    let at = der
        .windows(ED25519_SPKI_PREFIX.len())
        .position(|w| w == ED25519_SPKI_PREFIX)
        .ok_or_else(|| IdentityError::Invalid {
            what,
            reason: "it carries no ed25519 public key".into(),
        })?;
    let start = at + ED25519_SPKI_PREFIX.len();
    der.get(start..start + 32)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| IdentityError::Invalid {
            what,
            reason: "its public key is truncated".into(),
        })
}

/// A certificate as PEM text.
pub fn pem_of(cert: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.as_ref().to_vec()))
}

/// Checks that `cert_pem` was issued by the mesh CA (`ca_cert_pem`) and that `signature` (hex)
/// is its key's over `text`; what the certificate says (node, role, validity) for the caller to
/// judge.
pub fn verify_node_signature(
    ca_cert_pem: &str,
    cert_pem: &str,
    text: &str,
    signature: &str,
) -> Result<CertInfo, IdentityError> {
    let invalid = |reason: &str| IdentityError::Invalid {
        what: "signed content",
        reason: reason.into(),
    };
    let info = verify_issued_by(ca_cert_pem, cert_pem)?;
    let key = public_key_of(cert_pem, "signer's certificate")?;
    let signature = decode_hex(signature).ok_or_else(|| invalid("the signature is not hex"))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(text.as_bytes(), &signature)
        .map_err(|_| invalid("the signature is not the certificate key's over this content"))?;
    Ok(info)
}

/// Checks that `cert_pem` was issued by the mesh CA (`ca_cert_pem`); what it says.
pub fn verify_issued_by(ca_cert_pem: &str, cert_pem: &str) -> Result<CertInfo, IdentityError> {
    let invalid = |reason: &str| IdentityError::Invalid {
        what: "node certificate",
        reason: reason.into(),
    };
    let cert = parse_pem_cert(cert_pem, "node certificate")?;
    issuer_of(ca_cert_pem, &cert)?
        .ok_or_else(|| invalid("the signer's certificate was not issued by this mesh's CA"))?;
    cert_info(&cert)
}

/// The certificate (PEM) of the CA of `bundle` that issued `cert`, if one did.
pub fn issuer_of(bundle: &str, cert: &CertificateDer<'_>) -> Result<Option<String>, IdentityError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| IdentityError::Invalid {
            what: "node certificate",
            reason: "it does not parse".into(),
        })?;
    for ca in parse_pem_certs(bundle, "mesh CA certificate")? {
        let Ok((_, ca_parsed)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
            continue;
        };
        if parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .is_ok()
        {
            return Ok(Some(pem_of(&ca)));
        }
    }
    Ok(None)
}

/// Whether `signature` (hex) is that of a mesh CA of `ca_cert_pem` (a bundle) over `text`.
pub fn verify_ca_signature(ca_cert_pem: &str, text: &str, signature: &str) -> bool {
    let Some(signature) = decode_hex(signature) else {
        return false;
    };
    let Ok(cas) = parse_pem_certs(ca_cert_pem, "mesh CA certificate") else {
        return false;
    };
    cas.iter().any(|ca| {
        public_key_of_der_as(ca, "mesh CA certificate").is_ok_and(|key| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                .verify(text.as_bytes(), &signature)
                .is_ok()
        })
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A mesh's certificate authority.
#[derive(Debug)]
pub struct MeshCa {
    key: KeyPair,
    cert_pem: String,
    mesh_id: String,
}

impl MeshCa {
    /// Creates a new mesh: a fresh CA key and its self-signed certificate.
    pub fn create() -> Result<MeshCa, IdentityError> {
        MeshCa::create_with(None)
    }

    /// A new CA for the existing mesh `mesh_id`: a fresh key whose certificate names the same
    /// mesh, to replace this mesh's CA (a rotation).
    pub fn create_for(mesh_id: &str) -> Result<MeshCa, IdentityError> {
        MeshCa::create_with(Some(mesh_id))
    }

    fn create_with(mesh_id: Option<&str>) -> Result<MeshCa, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| IdentityError::Invalid {
            what: "new CA key",
            reason: e.to_string(),
        })?;
        let mesh_id = mesh_id.map_or_else(|| mesh_id_of_key(key.public_key_raw()), str::to_owned);
        let cert = ca_params(&mesh_id)
            .self_signed(&key)
            .map_err(|e| IdentityError::Invalid {
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        Ok(MeshCa {
            key,
            cert_pem: cert.pem(),
            mesh_id,
        })
    }

    /// Loads a CA from its key and certificate (PEM).
    pub fn load(key_pem: &str, cert_pem: &str) -> Result<MeshCa, IdentityError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::Invalid {
            what: "CA key",
            reason: e.to_string(),
        })?;
        let cert = parse_pem_cert(cert_pem, "CA certificate")?;
        if !cert.as_ref().windows(32).any(|w| w == key.public_key_raw()) {
            return Err(IdentityError::Invalid {
                what: "CA certificate",
                reason: "it does not belong to the CA key".into(),
            });
        }
        let mesh_id = mesh_id_named_by(&cert)?;
        Ok(MeshCa {
            key,
            cert_pem: cert_pem.to_owned(),
            mesh_id,
        })
    }

    /// The mesh id: derived from the public key of the mesh's first CA.
    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM (PKCS#8). Keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `other`'s key as a CA of this mesh, signed by this CA (a cross
    /// certificate): presented beside a node certificate of `other`, it lets a node that still
    /// trusts only this CA admit it, which is what lets a node that was offline through a CA
    /// rotation back in to learn of it.
    pub fn cross_sign(&self, other: &MeshCa) -> Result<String, IdentityError> {
        let issuer = Issuer::new(ca_params(&self.mesh_id), &self.key);
        ca_params(&self.mesh_id)
            .signed_by(&other.key, &issuer)
            .map(|cert| cert.pem())
            .map_err(|e| IdentityError::Invalid {
                what: "cross certificate",
                reason: e.to_string(),
            })
    }

    /// Signs a decision only the CA may take (a revocation, say): hex ed25519 signature,
    /// checked by every node with [`verify_ca_signature`].
    pub fn sign(&self, text: &str) -> Result<String, IdentityError> {
        use rcgen::SigningKey as _;
        let signature = self
            .key
            .sign(text.as_bytes())
            .map_err(|e| IdentityError::Invalid {
                what: "CA signature",
                reason: e.to_string(),
            })?;
        Ok(signature.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Issues a certificate for a node's ed25519 identity key (its 32-byte public key), with
    /// its mesh role, valid for [`DEFAULT_CERT_LIFETIME`].
    pub fn issue(
        &self,
        node_public_key: &[u8; 32],
        role: NodeRole,
    ) -> Result<String, IdentityError> {
        self.issue_for(node_public_key, role, DEFAULT_CERT_LIFETIME)
    }

    /// As [`MeshCa::issue`], valid from an hour ago (clocks differ) for `lifetime`.
    pub fn issue_for(
        &self,
        node_public_key: &[u8; 32],
        role: NodeRole,
        lifetime: std::time::Duration,
    ) -> Result<String, IdentityError> {
        let node_id = node_id_from_public_key(node_public_key);
        let mut params =
            CertificateParams::new(vec![MESH_SERVER_NAME.to_owned()]).map_err(|e| {
                IdentityError::Invalid {
                    what: "node certificate",
                    reason: e.to_string(),
                }
            })?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("rhizome node {node_id}"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now
            + time::Duration::try_from(lifetime).map_err(|e| IdentityError::Invalid {
                what: "certificate lifetime",
                reason: e.to_string(),
            })?;
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            ROLE_EXTENSION_OID,
            der_utf8(role.as_str()),
        )];
        let issuer = Issuer::new(ca_params(&self.mesh_id), &self.key);
        let public = NodePublicKey(spki_of(node_public_key));
        let cert = params
            .signed_by(&public, &issuer)
            .map_err(|e| IdentityError::Invalid {
                what: "node certificate",
                reason: e.to_string(),
            })?;
        Ok(cert.pem())
    }
}

struct NodePublicKey(Vec<u8>);

impl rcgen::PublicKeyData for NodePublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0[ED25519_SPKI_PREFIX.len()..]
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ED25519
    }
}

fn spki_of(key: &[u8; 32]) -> Vec<u8> {
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(key);
    spki
}

fn mesh_id_of_key(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CA's parameters, rebuilt identically from the mesh id whenever the CA signs.
fn ca_params(mesh_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("rhizome mesh {mesh_id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(4000, 1, 1);
    params
}

/// A certificate from its PEM text.
pub fn parse_pem_cert(
    pem: &str,
    what: &'static str,
) -> Result<CertificateDer<'static>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::Invalid {
        what,
        reason: e.to_string(),
    })
}

/// Node ids refused at the handshake; shared with whoever updates it from the `mesh` document.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<BTreeSet<String>>>);

impl Revocations {
    /// Replaces the revoked set.
    pub fn set(&self, ids: impl IntoIterator<Item = String>) {
        *self.0.write().expect("revocations lock") = ids.into_iter().collect();
    }

    /// Whether a node id is revoked.
    pub fn contains(&self, node_id: &str) -> bool {
        self.0.read().expect("revocations lock").contains(node_id)
    }

    /// The revoked ids now.
    pub fn snapshot(&self) -> std::collections::BTreeSet<String> {
        self.0.read().expect("revocations lock").clone()
    }
}

/// What a node needs to take part in its mesh.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// The node's certificate, issued by the mesh CA.
    pub cert: CertificateDer<'static>,
    /// The node's ed25519 secret key seed.
    secret: [u8; 32],
    /// The mesh CA certificates whose node certificates this node accepts (more than one
    /// while a CA rotation is under way).
    pub cas: Vec<CertificateDer<'static>>,
    /// Certificates presented after the node's own: cross certificates of a CA rotation.
    pub intermediates: Vec<CertificateDer<'static>>,
}

impl NodeCredentials {
    /// Reads credentials from PEM certificates (the CAs as a bundle) and the node's 32-byte
    /// secret seed.
    pub fn new(cert_pem: &str, ca_pem: &str, secret: [u8; 32]) -> Result<Self, IdentityError> {
        let cert = parse_pem_cert(cert_pem, "node certificate")?;
        let cas = parse_pem_certs(ca_pem, "mesh CA certificate")?;
        Ok(NodeCredentials {
            cert,
            secret,
            cas,
            intermediates: Vec::new(),
        })
    }

    /// The same credentials, presenting the certificates of `pem` (a bundle; may be empty)
    /// after the node's own.
    pub fn with_intermediates(mut self, pem: &str) -> Result<Self, IdentityError> {
        self.intermediates = if pem.trim().is_empty() {
            Vec::new()
        } else {
            parse_pem_certs(pem, "cross certificate")?
        };
        Ok(self)
    }

    /// The node's certificate with its key, for a TLS server of the node's own (its HTTP API).
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, IdentityError> {
        let provider = rustls::crypto::ring::default_provider();
        let key = provider.key_provider.load_private_key(self.key())?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(self.chain(), key)))
    }

    /// The node's certificate and what it presents after it.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.cert.clone())
            .chain(self.intermediates.iter().cloned())
            .collect()
    }

    /// The node id the certificate was issued to.
    pub fn node_id(&self) -> Result<String, IdentityError> {
        node_id_of(&self.cert)
    }

    /// What the node's own certificate says: role and validity.
    pub fn info(&self) -> Result<CertInfo, IdentityError> {
        cert_info(&self.cert)
    }

    /// Signs `text` with the node's identity key: hex ed25519, checked with
    /// [`verify_node_signature`] against the node's certificate.
    pub fn sign(&self, text: &str) -> String {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.secret)
            .expect("a 32-byte seed is an ed25519 key");
        pair.sign(text.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The node's certificate, PEM, to travel with what it signs.
    pub fn cert_pem(&self) -> String {
        pem_of(&self.cert)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&self.secret);
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, IdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.cas {
            roots.add(ca.clone())?;
        }
        Ok(Arc::new(roots))
    }

    /// The TLS configuration for accepting connections: a client certificate from this mesh
    /// is required, and revoked node ids are refused.
    pub fn server_config(
        &self,
        revoked: Revocations,
    ) -> Result<rustls::ServerConfig, IdentityError> {
        self.server_config_with(revoked, false)
    }

    /// As [`NodeCredentials::server_config`], also serving enrolment when `enrolment` is set:
    /// a client may then connect without a certificate, for [`super::enrolment::JOIN_ALPN`]
    /// only (the driver closes a certificate-less connection that asks for anything else), and
    /// the node sends the CA certificate with its own, for the joining side to check against
    /// its token's fingerprint.
    pub fn server_config_with(
        &self,
        revoked: Revocations,
        enrolment: bool,
    ) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        );
        if enrolment {
            builder = builder.allow_unauthenticated();
        }
        let inner = builder
            .build()
            .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
        // A joining machine finds, among the CAs sent, the one its token names.
        let chain = if enrolment {
            self.chain()
                .into_iter()
                .chain(self.cas.iter().cloned())
                .collect()
        } else {
            self.chain()
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(MeshClientVerifier { inner, revoked }))
            .with_single_cert(chain, self.key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        if enrolment {
            config
                .alpn_protocols
                .push(super::enrolment::JOIN_ALPN.to_vec());
        }
        // A resumed session skips certificate verification, so a node revoked after its first
        // connection could come back on a ticket: no tickets, no session cache.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(config)
    }

    /// The TLS configuration for dialling: the peer must present a certificate of this mesh
    /// and must not be revoked; this node presents its own.
    pub fn client_config(
        &self,
        revoked: Revocations,
    ) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MeshServerVerifier { inner, revoked }))
            .with_client_auth_cert(self.chain(), self.key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

fn check_revoked(cert: &CertificateDer<'_>, revoked: &Revocations) -> Result<(), rustls::Error> {
    let node = node_id_of(cert).map_err(|e| rustls::Error::General(e.to_string()))?;
    if revoked.contains(&node) {
        return Err(rustls::Error::General(format!("node {node} is revoked")));
    }
    Ok(())
}

#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    revoked: Revocations,
}

impl rustls::server::danger::ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_revoked(end_entity, &self.revoked)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct MeshServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    revoked: Revocations,
}

impl rustls::client::danger::ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // Peers are dialled by address; whatever name the caller used, the certificate must be
        // one of this mesh's node certificates.
        let name = ServerName::try_from(MESH_SERVER_NAME).expect("a valid DNS name");
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        check_revoked(end_entity, &self.revoked)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_key(seed: u8) -> ([u8; 32], [u8; 32]) {
        let secret = [seed; 32];
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&secret).unwrap();
        use ring::signature::KeyPair as _;
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        (secret, public)
    }

    #[test]
    fn issued_certificates_name_the_node_by_its_key_and_carry_its_role() {
        let ca = MeshCa::create().unwrap();
        let (secret, public) = node_key(7);
        let cert = ca.issue(&public, NodeRole::Member).unwrap();
        let creds = NodeCredentials::new(&cert, ca.cert_pem(), secret).unwrap();
        assert_eq!(creds.node_id().unwrap(), node_id_from_public_key(&public));
        let info = creds.info().unwrap();
        assert_eq!(info.node_id, node_id_from_public_key(&public));
        assert_eq!(info.role, NodeRole::Member);
        assert!(info.not_after > info.not_before);
        let control = ca.issue(&public, NodeRole::Control).unwrap();
        let creds = NodeCredentials::new(&control, ca.cert_pem(), secret).unwrap();
        assert_eq!(creds.info().unwrap().role, NodeRole::Control);
        creds.server_config(Revocations::default()).unwrap();
        creds.client_config(Revocations::default()).unwrap();
    }

    #[test]
    fn only_the_ca_signs_what_nodes_accept_as_its_decision() {
        let ca = MeshCa::create().unwrap();
        let other = MeshCa::create().unwrap();
        let signature = ca.sign("revoke n1").unwrap();
        assert!(verify_ca_signature(ca.cert_pem(), "revoke n1", &signature));
        assert!(!verify_ca_signature(ca.cert_pem(), "revoke n2", &signature));
        assert!(!verify_ca_signature(
            other.cert_pem(),
            "revoke n1",
            &signature
        ));
        let forged = other.sign("revoke n1").unwrap();
        assert!(!verify_ca_signature(ca.cert_pem(), "revoke n1", &forged));
        for garbage in ["", "zz", "0", &signature[..10]] {
            assert!(!verify_ca_signature(ca.cert_pem(), "revoke n1", garbage));
        }
    }

    #[test]
    fn node_signatures_verify_only_with_a_certificate_of_this_mesh() {
        let ca = MeshCa::create().unwrap();
        let (secret, public) = node_key(3);
        let creds = NodeCredentials::new(
            &ca.issue(&public, NodeRole::Control).unwrap(),
            ca.cert_pem(),
            secret,
        )
        .unwrap();
        let signature = creds.sign("version 7");
        let cert = creds.cert_pem();
        let info = verify_node_signature(ca.cert_pem(), &cert, "version 7", &signature).unwrap();
        assert_eq!(info.role, NodeRole::Control);
        assert_eq!(info.node_id, node_id_from_public_key(&public));
        let refused = |r: Result<CertInfo, IdentityError>| r.unwrap_err().to_string();
        let text = refused(verify_node_signature(
            ca.cert_pem(),
            &cert,
            "version 8",
            &signature,
        ));
        assert!(text.contains("not the certificate key's"), "{text}");
        // The same key with a certificate of another mesh.
        let other = MeshCa::create().unwrap();
        let foreign = other.issue(&public, NodeRole::Control).unwrap();
        let text = refused(verify_node_signature(
            ca.cert_pem(),
            &foreign,
            "version 7",
            &signature,
        ));
        assert!(text.contains("not issued by this mesh"), "{text}");
        assert!(verify_node_signature(ca.cert_pem(), "junk", "version 7", &signature).is_err());
        assert!(verify_node_signature(ca.cert_pem(), &cert, "version 7", "zz").is_err());
    }

    #[test]
    fn a_ca_reloads_with_the_same_mesh_id() {
        let ca = MeshCa::create().unwrap();
        let again = MeshCa::load(&ca.key_pem(), ca.cert_pem()).unwrap();
        assert_eq!(again.mesh_id(), ca.mesh_id());
        assert_eq!(mesh_id_of_ca(ca.cert_pem()).unwrap(), ca.mesh_id());
        let other = MeshCa::create().unwrap();
        assert_ne!(other.mesh_id(), ca.mesh_id());
        let err = MeshCa::load(&other.key_pem(), ca.cert_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = MeshCa::load("garbage", ca.cert_pem()).unwrap_err();
        assert!(err.to_string().contains("CA key"), "{err}");
    }
}

#[cfg(test)]
mod der_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn utf8_strings_encode_and_decode(text in "\\PC{0,200}") {
            prop_assume!(text.len() <= 255);
            let der = der_utf8(&text);
            prop_assert_eq!(der_utf8_string(&der), Some(text.as_str()));
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            head in proptest::sample::select(vec![vec![0x0c_u8, 0x05], vec![0x0c, 0x81, 0x05], vec![0x0c, 0x81, 0x90]]),
        ) {
            let bytes: Vec<u8> = head.into_iter().chain(bytes).collect();
            if let Some(text) = der_utf8_string(&bytes) {
                prop_assert_eq!(der_utf8(text), bytes);
            }
        }
    }
}
