//! The mesh driver with real QUIC sockets on loopback: nodes connect by address or by mDNS,
//! deliver messages, notice departures, and survive a peer that sends garbage.
#![cfg(feature = "net")]

use std::sync::Arc;
use std::time::Duration;

use mesh::net::discovery::Interfaces;
use mesh::net::driver::{MeshConfig, MeshEvent, MeshHandle, spawn};
use mesh::net::identity::{MESH_SERVER_NAME, MeshCa, NodeCredentials, NodeRole, Revocations};
use mesh::proto::membership::{PeerState, Timing};
use mesh::proto::wire::{Capabilities, Message, Power, Role};
use ring::signature::KeyPair as _;
use tokio::sync::mpsc::Receiver;

fn credentials(ca: &MeshCa, seed: u8) -> NodeCredentials {
    let secret = [seed; 32];
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&secret).unwrap();
    let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
    NodeCredentials::new(
        &ca.issue(&public, NodeRole::Member).unwrap(),
        ca.cert_pem(),
        secret,
    )
    .unwrap()
}

fn config(
    ca: &MeshCa,
    seed: u8,
    bootstrap: Vec<String>,
    discovery: Option<Interfaces>,
) -> MeshConfig {
    MeshConfig {
        credentials: credentials(ca, seed),
        revoked: Revocations::default(),
        mesh_id: ca.mesh_id().to_owned(),
        zone: "test".into(),
        role: Role::Edge,
        capabilities: Capabilities {
            power: Power::Mains,
            cpus: 2,
            memory_mb: 4096,
            disk_free_mb: 10_000,
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap,
        discovery,
        timing: Timing::default(),
        seed: u64::from(seed),
        enrolment: None,
    }
}

async fn wait_connected(handle: &MeshHandle, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let peers = handle.peers().await.unwrap();
        if peers
            .iter()
            .filter(|p| p.state == PeerState::Connected)
            .count()
            >= count
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not connected: {peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(
    events: &mut Receiver<MeshEvent>,
    want: impl Fn(&MeshEvent) -> bool,
) -> MeshEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if want(&e) => return e,
            Ok(Some(_)) => continue,
            other => panic!("event not seen: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_connect_by_address_and_exchange_messages() {
    let ca = MeshCa::create().unwrap();
    let (a, mut a_events) = spawn(config(&ca, 1, vec![], None)).await.unwrap();
    let a_addr = a.local_addr().to_string();
    let (b, _b_events) = spawn(config(&ca, 2, vec![a_addr.clone()], None))
        .await
        .unwrap();
    let (c, _c_events) = spawn(config(
        &ca,
        3,
        vec![a_addr, b.local_addr().to_string()],
        None,
    ))
    .await
    .unwrap();
    wait_connected(&a, 2).await;
    wait_connected(&b, 2).await;
    wait_connected(&c, 2).await;

    let b_id = credentials(&ca, 2).node_id().unwrap();
    let c_id = credentials(&ca, 3).node_id().unwrap();
    let a_id = credentials(&ca, 1).node_id().unwrap();
    b.send(&a_id, sync_message(b"automerge bytes"))
        .await
        .unwrap();
    let got = wait_for(&mut a_events, |e| matches!(e, MeshEvent::Received(..))).await;
    assert_eq!(
        got,
        MeshEvent::Received(b_id, sync_message(b"automerge bytes"))
    );

    // A graceful stop is noticed at once through the goodbye.
    c.shutdown().await;
    let down = wait_for(&mut a_events, |e| matches!(e, MeshEvent::PeerDown(..))).await;
    assert!(matches!(down, MeshEvent::PeerDown(n, _) if n == c_id));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_by_mdns_alone() {
    let ca = MeshCa::create().unwrap();
    let (a, _ae) = spawn(config(&ca, 1, vec![], Some(Interfaces::Loopback)))
        .await
        .unwrap();
    let (b, _be) = spawn(config(&ca, 2, vec![], Some(Interfaces::Loopback)))
        .await
        .unwrap();
    wait_connected(&a, 1).await;
    wait_connected(&b, 1).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A member that sends garbage after its hello loses its connection; the node keeps serving
/// its other peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let ca = MeshCa::create().unwrap();
    let ((a, mut a_events), (b, _be)) = two_connected(&ca).await;

    let rogue = Rogue::new(&ca);
    for garbage in [
        vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5],
        vec![0xff; 8],
        {
            // A frame of the wrong wire version.
            let mut f = Message::Heartbeat { seq: 1 }.to_frame();
            f[4] = 99;
            f
        },
    ] {
        let (conn, mut send, recv) = rogue.admitted(&a).await;
        send.write_all(&garbage).await.unwrap();
        let text = closed(conn, recv).await;
        assert!(text.contains("protocol error"), "{text}");
    }
    // Still serving b.
    let a_id = credentials(&ca, 1).node_id().unwrap();
    b.send(&a_id, sync_message(&[1, 2, 3])).await.unwrap();
    wait_for(
        &mut a_events,
        |e| matches!(e, MeshEvent::Received(_, Message::Sync { payload, .. }) if payload == &vec![1, 2, 3]),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_arrive_whole_on_the_bulk_stream_and_anything_else_there_closes_the_connection() {
    let ca = MeshCa::create().unwrap();
    let ((a, mut a_events), (b, _be)) = two_connected(&ca).await;

    // Blobs of several sizes, one after another on b's bulk stream, each whole and in order
    // (the largest spans many QUIC packets and reads).
    let a_id = credentials(&ca, 1).node_id().unwrap();
    let b_id = credentials(&ca, 2).node_id().unwrap();
    let outbox = b.bulk_outbox(&a_id).await.unwrap().expect("connected");
    let blobs: Vec<Message> = [0usize, 1, 70_000, 1 << 20]
        .iter()
        .enumerate()
        .map(|(i, &len)| Message::ChunkData {
            hash: [i as u8; 32],
            bytes: (0..len).map(|j| (j * 7 + i) as u8).collect(),
        })
        .collect();
    for blob in &blobs {
        outbox.send(blob.clone()).await.unwrap();
    }
    for blob in &blobs {
        let got = wait_for(&mut a_events, |e| matches!(e, MeshEvent::Received(..))).await;
        assert_eq!(got, MeshEvent::Received(b_id.clone(), blob.clone()));
    }

    // A member that puts another kind of frame on a bulk stream is closed with a reason.
    let (conn, _send, recv) = Rogue::new(&ca).admitted(&a).await;
    let mut bulk = conn.open_uni().await.unwrap();
    let mut not_a_blob = Message::Heartbeat { seq: 1 }.to_frame();
    not_a_blob.resize(mesh::proto::wire::CHUNK_DATA_HEAD, 0);
    bulk.write_all(&not_a_blob).await.unwrap();
    let text = closed(conn, recv).await;
    assert!(text.contains("only blobs go"), "{text}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Nodes 1 and 2 of `ca`, the second dialling the first, once both see the connection.
async fn two_connected(
    ca: &MeshCa,
) -> (
    (MeshHandle, Receiver<MeshEvent>),
    (MeshHandle, Receiver<MeshEvent>),
) {
    let (a, a_events) = spawn(config(ca, 1, vec![], None)).await.unwrap();
    let (b, b_events) = spawn(config(ca, 2, vec![a.local_addr().to_string()], None))
        .await
        .unwrap();
    wait_connected(&a, 1).await;
    wait_connected(&b, 1).await;
    ((a, a_events), (b, b_events))
}

/// A member of the mesh that speaks QUIC by hand, to send what no node would.
struct Rogue {
    endpoint: quinn::Endpoint,
    mesh_id: String,
    node_id: String,
}

impl Rogue {
    fn new(ca: &MeshCa) -> Rogue {
        let credentials = credentials(ca, 9);
        let client = quinn::crypto::rustls::QuicClientConfig::try_from(
            credentials.client_config(Revocations::default()).unwrap(),
        )
        .unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
        Rogue {
            endpoint,
            mesh_id: ca.mesh_id().into(),
            node_id: credentials.node_id().unwrap(),
        }
    }

    /// A connection to `node` on which its hello was sent: the control stream's two halves.
    async fn admitted(
        &self,
        node: &MeshHandle,
    ) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
        let conn = self
            .endpoint
            .connect(node.local_addr(), MESH_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let hello = Message::Hello(mesh::proto::wire::Hello {
            mesh_id: self.mesh_id.clone(),
            node_id: self.node_id.clone(),
            role: Role::Edge,
            zone: "x".into(),
            listen_port: 0,
        });
        send.write_all(&hello.to_frame()).await.unwrap();
        (conn, send, recv)
    }
}

/// Why the node closed `conn`, once it has.
async fn closed(conn: quinn::Connection, mut recv: quinn::RecvStream) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while let Ok(Some(_)) = recv.read(&mut buf).await {}
        conn.closed().await
    })
    .await
    .expect("the node closes a connection that sends what it must not")
    .to_string()
}

fn sync_message(payload: &[u8]) -> Message {
    Message::Sync {
        doc: [7; 16],
        name: None,
        payload: payload.to_vec(),
    }
}
