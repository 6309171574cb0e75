//! The HTTP API over TLS 1.3, served with the node's own mesh certificate: a client verifies it
//! against the mesh CA (`ca.crt`) under the name every node certificate carries
//! (`node.rhizome.invalid`), so no other certificate authority is involved. The certificate is
//! read again whenever the node renews it. Handshakes run apart from the accept loop, so a
//! slow or silent client holds up no one else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::config::DataDir;
use crate::security::trust::Trust;

/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// Accepts TLS connections to the API.
#[allow(missing_debug_implementations)]
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (the node is stopping): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serves TLS on `listener` with the certificate of the node in `dir`.
pub fn listen(
    listener: TcpListener,
    dir: DataDir,
    secret: [u8; 32],
    trust: Trust,
) -> Result<TlsListener> {
    let local = listener.local_addr()?;
    let resolver = Arc::new(NodeCertificate {
        dir,
        secret,
        trust,
        loaded: Mutex::new(None),
    });
    // Fails early (a missing or unreadable certificate) rather than at the first client.
    resolver.load()?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, incoming) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    let accepting = tokio::spawn(async move {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Small frames (sync messages, WebSocket pings) must not wait for Nagle's timer.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, from)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "an API TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "an API TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener {
        incoming,
        local,
        accepting,
    })
}

/// The node's certificate, read again when the file changes (a renewal).
#[derive(Debug)]
struct NodeCertificate {
    dir: DataDir,
    secret: [u8; 32],
    trust: Trust,
    loaded: Mutex<Option<(String, Arc<rustls::sign::CertifiedKey>)>>,
}

impl NodeCertificate {
    fn load(&self) -> Result<Arc<rustls::sign::CertifiedKey>> {
        let pem = std::fs::read_to_string(self.dir.cert())?;
        let mut loaded = self.loaded.lock().expect("api certificate");
        if let Some((held, key)) = loaded.as_ref()
            && *held == pem
        {
            return Ok(key.clone());
        }
        let key = self.trust.credentials(&pem, self.secret)?.certified_key()?;
        *loaded = Some((pem, key.clone()));
        Ok(key)
    }
}

impl rustls::server::ResolvesServerCert for NodeCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        match self.load() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read this node's certificate for the API");
                None
            }
        }
    }
}

/// A client configuration that trusts the API of a node of this mesh: its certificate verified
/// against `ca_pem` (the mesh CAs).
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in mesh::net::identity::parse_pem_certs(ca_pem, "mesh CA certificate")? {
        roots.add(ca)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
