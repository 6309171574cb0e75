//! Mutual TLS over real QUIC sockets on loopback: members of one mesh connect and learn each
//! other's node id; a node of another mesh and a revoked node are refused in the handshake.
#![cfg(feature = "net")]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh::net::identity::{
    MESH_SERVER_NAME, MeshCa, NodeCredentials, NodeRole, Revocations, node_id_from_public_key,
    node_id_of,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use ring::signature::KeyPair as _;

fn member(ca: &MeshCa, seed: u8) -> (NodeCredentials, String) {
    let secret = [seed; 32];
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&secret).unwrap();
    let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
    let cert = ca.issue(&public, NodeRole::Member).unwrap();
    (
        NodeCredentials::new(&cert, ca.cert_pem(), secret).unwrap(),
        node_id_from_public_key(&public),
    )
}

fn endpoint(creds: &NodeCredentials, revoked: Revocations) -> quinn::Endpoint {
    let server = QuicServerConfig::try_from(creds.server_config(revoked.clone()).unwrap()).unwrap();
    let client = QuicClientConfig::try_from(creds.client_config(revoked).unwrap()).unwrap();
    let mut endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
    endpoint
}

/// Dials `server` from `client`; returns the node id each side authenticated, or the error.
async fn handshake(
    client: &quinn::Endpoint,
    server: &quinn::Endpoint,
) -> Result<(String, String), String> {
    let addr = server.local_addr().unwrap();
    let accept = async {
        let incoming = server.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        peer_id(&conn)
    };
    let dial = async {
        let conn = client
            .connect(addr, MESH_SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let id = peer_id(&conn)?;
        // Keep the connection open until the server side has finished its checks.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, String>(id)
    };
    let (accepted, dialled) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(accept, dial)
    })
    .await
    .map_err(|_| "handshake timed out".to_string())?;
    Ok((dialled?, accepted?))
}

fn peer_id(conn: &quinn::Connection) -> Result<String, String> {
    let identity = conn.peer_identity().ok_or("no peer identity")?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "unexpected identity type")?;
    node_id_of(&certs[0]).map_err(|e| e.to_string())
}

#[tokio::test]
async fn members_connect_and_know_each_other() {
    let ca = MeshCa::create().unwrap();
    let (a, a_id) = member(&ca, 1);
    let (b, b_id) = member(&ca, 2);
    let ea = endpoint(&a, Revocations::default());
    let eb = endpoint(&b, Revocations::default());
    let (seen_by_a, seen_by_b) = handshake(&ea, &eb).await.unwrap();
    assert_eq!(seen_by_a, b_id);
    assert_eq!(seen_by_b, a_id);
}

#[tokio::test]
async fn a_node_of_another_mesh_is_refused_both_ways() {
    let ours = MeshCa::create().unwrap();
    let theirs = MeshCa::create().unwrap();
    let (a, _) = member(&ours, 1);
    let (stranger, _) = member(&theirs, 3);
    let ea = endpoint(&a, Revocations::default());
    let es = endpoint(&stranger, Revocations::default());
    let err = handshake(&es, &ea).await.unwrap_err();
    assert!(!err.is_empty());
    let err = handshake(&ea, &es).await.unwrap_err();
    assert!(!err.is_empty());
}

#[tokio::test]
async fn a_revoked_node_is_refused() {
    let ca = MeshCa::create().unwrap();
    let (a, _) = member(&ca, 1);
    let (b, b_id) = member(&ca, 2);
    let revoked = Revocations::default();
    let ea = endpoint(&a, revoked.clone());
    let eb = endpoint(&b, Revocations::default());
    handshake(&eb, &ea).await.unwrap();
    revoked.set([b_id]);
    let err = handshake(&eb, &ea).await.unwrap_err();
    assert!(!err.is_empty());
    let err = handshake(&ea, &eb).await.unwrap_err();
    assert!(err.contains("revoked"), "{err}");
}
