//! Admission: the mesh certificate authority, node certificates, and the TLS configurations
//! that make QUIC connections mutually authenticated.
//!
//! A mesh is defined by its CA, an ed25519 key. The mesh id is derived from the CA's public key,
//! so a node cannot claim to belong to a mesh whose CA did not sign it. A node certificate
//! carries the node's own ed25519 identity key; the node id is read from that key, never from a
//! name in the certificate. Both sides of a connection present certificates and verify the
//! other's against the mesh CA, and refuse revoked node ids.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// The name every node certificate carries and every client asks for. Peers are identified by
/// their key, not by a host name, so one constant name serves all of them.
pub const MESH_SERVER_NAME: &str = "node.rhizome.invalid";

/// The ALPN protocol of mesh connections.
pub const ALPN: &[u8] = b"rhizome/1";

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

/// The mesh id named by a CA certificate (PEM): derived from the CA's public key.
pub fn mesh_id_of_ca(cert_pem: &str) -> Result<String, IdentityError> {
    let cert = parse_pem_cert(cert_pem, "mesh CA certificate")?;
    let der = cert.as_ref();
    let at = der
        .windows(ED25519_SPKI_PREFIX.len())
        .position(|w| w == ED25519_SPKI_PREFIX)
        .ok_or_else(|| IdentityError::Invalid {
            what: "mesh CA certificate",
            reason: "it carries no ed25519 public key".into(),
        })?;
    let start = at + ED25519_SPKI_PREFIX.len();
    let key = der
        .get(start..start + 32)
        .ok_or_else(|| IdentityError::Invalid {
            what: "mesh CA certificate",
            reason: "its public key is truncated".into(),
        })?;
    Ok(mesh_id_of_key(key))
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
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| IdentityError::Invalid {
            what: "new CA key",
            reason: e.to_string(),
        })?;
        let mesh_id = mesh_id_of_key(key.public_key_raw());
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
        let mesh_id = mesh_id_of_key(key.public_key_raw());
        let cert = parse_pem_cert(cert_pem, "CA certificate")?;
        if !cert.as_ref().windows(32).any(|w| w == key.public_key_raw()) {
            return Err(IdentityError::Invalid {
                what: "CA certificate",
                reason: "it does not belong to the CA key".into(),
            });
        }
        Ok(MeshCa {
            key,
            cert_pem: cert_pem.to_owned(),
            mesh_id,
        })
    }

    /// The mesh id: derived from the CA's public key.
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

    /// Issues a certificate for a node's ed25519 identity key (its 32-byte public key).
    pub fn issue(&self, node_public_key: &[u8; 32]) -> Result<String, IdentityError> {
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
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
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

fn parse_pem_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, IdentityError> {
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
    /// The mesh CA certificate.
    pub ca: CertificateDer<'static>,
}

impl NodeCredentials {
    /// Reads credentials from PEM certificates and the node's 32-byte secret seed.
    pub fn new(cert_pem: &str, ca_pem: &str, secret: [u8; 32]) -> Result<Self, IdentityError> {
        let cert = parse_pem_cert(cert_pem, "node certificate")?;
        let ca = parse_pem_cert(ca_pem, "mesh CA certificate")?;
        Ok(NodeCredentials { cert, secret, ca })
    }

    /// The node id the certificate was issued to.
    pub fn node_id(&self) -> Result<String, IdentityError> {
        node_id_of(&self.cert)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&self.secret);
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, IdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The TLS configuration for accepting connections: a client certificate from this mesh
    /// is required, and revoked node ids are refused.
    pub fn server_config(
        &self,
        revoked: Revocations,
    ) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(MeshClientVerifier { inner, revoked }))
            .with_single_cert(vec![self.cert.clone()], self.key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
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
            .with_client_auth_cert(vec![self.cert.clone()], self.key())?;
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
    fn issued_certificates_name_the_node_by_its_key() {
        let ca = MeshCa::create().unwrap();
        let (secret, public) = node_key(7);
        let cert = ca.issue(&public).unwrap();
        let creds = NodeCredentials::new(&cert, ca.cert_pem(), secret).unwrap();
        assert_eq!(creds.node_id().unwrap(), node_id_from_public_key(&public));
        creds.server_config(Revocations::default()).unwrap();
        creds.client_config(Revocations::default()).unwrap();
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
