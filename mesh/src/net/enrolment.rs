//! Enrolment over the network: a machine without a certificate asks a node that holds the mesh
//! CA for one, with a one-time join token, and never sees the CA's key.
//!
//! The joining side knows the CA only by the SHA-256 fingerprint of its certificate, which the
//! token carries: it dials the node's QUIC port with the ALPN [`JOIN_ALPN`] and no certificate
//! of its own, and accepts the connection only if the node presents a certificate issued by
//! the CA with that fingerprint (the node sends the CA certificate along). No trust on first
//! use: a man in the middle with any other certificate is refused before anything is sent.
//! Then one request goes out on one stream and one answer comes back, each at most
//! [`MAX_JOIN_MESSAGE`] bytes; what they say is the business of the [`Enrolment`] the serving
//! node was given (the token check and the certificate it issues).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// The ALPN protocol of enrolment connections.
pub const JOIN_ALPN: &[u8] = b"rhizome-join/1";

/// The largest request or answer of an enrolment (a certificate and a few names fit many
/// times over).
pub const MAX_JOIN_MESSAGE: usize = 16 * 1024;

/// What the joining side's verifier says of a node whose certificate is not the token's CA's.
const NOT_THE_TOKENS_CA: &str = "not a certificate of the mesh CA the token names";

/// How long a joining machine waits for the node at each step.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What answers enrolment requests on a node that holds the mesh CA.
pub trait Enrolment: Send + Sync + std::fmt::Debug {
    /// The answer to one request from the machine at `from`, which presented `peer` (a
    /// certificate of this mesh, verified and not revoked, when it renews one; `None` when it
    /// joins with a token). Called off the async executor: it may write files.
    fn enrol(&self, request: &[u8], from: SocketAddr, peer: Option<&CertificateDer<'_>>)
    -> Vec<u8>;
}

/// Why an enrolment did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The address does not resolve or cannot be reached.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The node answered with a certificate that is not of the CA the token names: another
    /// mesh, or someone in between.
    #[error(
        "the node at {addr} does not hold a certificate of the mesh CA this token names \
         (fingerprint {fingerprint}): another mesh, or someone in between; nothing was sent"
    )]
    WrongCa {
        /// The address dialled.
        addr: String,
        /// The fingerprint from the token.
        fingerprint: String,
    },
    /// The handshake failed otherwise: the node does not serve enrolment (only the node that
    /// holds the mesh CA does), or it refused.
    #[error(
        "the node at {addr} did not take the enrolment (only the node that holds the mesh CA \
         serves it): {reason}"
    )]
    NotServed {
        /// The address dialled.
        addr: String,
        /// The handshake's error.
        reason: String,
    },
    /// The exchange broke off.
    #[error("the enrolment with {addr} broke off: {reason}")]
    Broken {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// The SHA-256 fingerprint (hex) of a certificate (PEM) as join tokens carry it.
pub fn fingerprint(cert_pem: &str) -> Result<String, super::identity::IdentityError> {
    let der = super::identity::parse_pem_cert(cert_pem, "mesh CA certificate")?;
    Ok(fingerprint_der(der.as_ref()))
}

fn fingerprint_der(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves one enrolment connection: one request, one answer.
pub(crate) async fn serve(connection: quinn::Connection, enrolment: Arc<dyn Enrolment>) {
    let from = connection.remote_address();
    let peer: Option<CertificateDer<'static>> = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned());
    let exchange = async {
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        let request = recv
            .read_to_end(MAX_JOIN_MESSAGE)
            .await
            .map_err(|e| e.to_string())?;
        let answer =
            tokio::task::spawn_blocking(move || enrolment.enrol(&request, from, peer.as_ref()))
                .await
                .map_err(|e| e.to_string())?;
        send.write_all(&answer).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // The joining side closes once it has read the answer.
        let _ = tokio::time::timeout(JOIN_TIMEOUT, connection.closed()).await;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(JOIN_TIMEOUT * 2, exchange).await {
        Ok(Ok(())) => tracing::info!(%from, "served an enrolment request"),
        Ok(Err(e)) => tracing::info!(%from, error = %e, "an enrolment request broke off"),
        Err(_) => tracing::info!(%from, "an enrolment request timed out"),
    }
    connection.close(0u32.into(), b"done");
}

/// Sends `request` to the node at `addr`, which must present a certificate issued by the CA
/// whose certificate has SHA-256 `ca_fingerprint`; its answer.
pub async fn request(
    addr: &str,
    ca_fingerprint: &str,
    request: &[u8],
) -> Result<Vec<u8>, EnrolError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(CaByFingerprint {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EnrolError::Broken {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    match exchange(addr, tls, request).await {
        Err(EnrolError::NotServed { reason, .. }) if reason.contains(NOT_THE_TOKENS_CA) => {
            Err(EnrolError::WrongCa {
                addr: addr.to_owned(),
                fingerprint: ca_fingerprint.to_owned(),
            })
        }
        other => other,
    }
}

/// Renews a node's certificate: sends `request` to the node at `addr` over a connection on which
/// both sides present certificates of the mesh, as mesh connections do; the answer.
pub async fn renew(
    addr: &str,
    credentials: &super::identity::NodeCredentials,
    revoked: super::identity::Revocations,
    request: &[u8],
) -> Result<Vec<u8>, EnrolError> {
    let broken = |reason: String| EnrolError::Broken {
        addr: addr.to_owned(),
        reason,
    };
    let mut tls = credentials
        .client_config(revoked)
        .map_err(|e| broken(e.to_string()))?;
    tls.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    exchange(addr, tls, request).await
}

/// One request and one answer with the node at `addr`, under `tls`.
async fn exchange(
    addr: &str,
    tls: rustls::ClientConfig,
    request: &[u8],
) -> Result<Vec<u8>, EnrolError> {
    let unreachable = |reason: String| EnrolError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let broken = |reason: String| EnrolError::Broken {
        addr: addr.to_owned(),
        reason,
    };
    let target = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("the address does not resolve".into()))?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| unreachable(format!("no local socket: {e}")))?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| broken(e.to_string()))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connecting = endpoint
        .connect(target, super::identity::MESH_SERVER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    let connection = match tokio::time::timeout(JOIN_TIMEOUT, connecting).await {
        Err(_) => return Err(unreachable("no answer".into())),
        Ok(Err(e)) => {
            return Err(EnrolError::NotServed {
                addr: addr.to_owned(),
                reason: e.to_string(),
            });
        }
        Ok(Ok(connection)) => connection,
    };
    let talk = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(MAX_JOIN_MESSAGE)
            .await
            .map_err(|e| e.to_string())
    };
    let answer = tokio::time::timeout(JOIN_TIMEOUT, talk)
        .await
        .map_err(|_| broken("no answer in time".into()))?
        .map_err(broken)?;
    connection.close(0u32.into(), b"thanks");
    endpoint.wait_idle().await;
    Ok(answer)
}

/// Accepts a server whose certificate was issued by the CA with this fingerprint, the CA
/// certificate sent along in its chain.
#[derive(Debug)]
struct CaByFingerprint {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for CaByFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let wrong = || rustls::Error::General(NOT_THE_TOKENS_CA.into());
        let ca = intermediates
            .iter()
            .find(|c| fingerprint_der(c.as_ref()) == self.fingerprint)
            .ok_or_else(wrong)?;
        let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref()).map_err(|_| wrong())?;
        let (_, node) =
            x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|_| wrong())?;
        node.verify_signature(Some(ca.public_key()))
            .map_err(|_| wrong())?;
        let at = now.as_secs() as i64;
        if !(node.validity().not_before.timestamp() <= at
            && at <= node.validity().not_after.timestamp())
        {
            return Err(rustls::Error::General(
                "the node's certificate of the mesh CA is not valid now".into(),
            ));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
