//! A peer that lies about artifact chunks: a member of the mesh with a valid certificate (the
//! mesh CA issued it) wins its zone's election, so an edge asks it first for every blob, and it
//! answers each request with bytes that are not the blob. The edge refuses every one of them,
//! fetches from the cloud instead, and writes out exactly the file that was added.

use std::net::SocketAddr;
use std::time::Duration;

use mesh::net::driver::{MeshConfig, MeshEvent};
use mesh::net::identity::{NodeCredentials, Revocations, mesh_id_of_ca};
use mesh::proto::membership::Timing;
use mesh::proto::wire::{Capabilities, Message, Power, Role};
use rand::{Rng, SeedableRng};
use rhizome_e2e::process::{
    LogsOnPanic, add_artifact, chain, init, init_in, ok, run_on, start_with, status, stop,
};
use rhizome_e2e::wait_until;

fn hex_seed(text: &str) -> [u8; 32] {
    let text = text.trim();
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    seed
}

/// Starts the liar: a mesh member of zone `site-a` with the strongest capabilities (so it is
/// elected), which answers every blob request with garbage of the same length class.
fn start_liar(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    peers: Vec<String>,
) -> (String, String, tokio::task::JoinHandle<u64>) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let credentials = NodeCredentials::new(
        &read("node.crt"),
        &read("ca.crt"),
        hex_seed(&read("node.key")),
    )
    .unwrap();
    let node_id = credentials.node_id().unwrap();
    let config = MeshConfig {
        credentials,
        revoked: Revocations::default(),
        mesh_id: mesh_id_of_ca(&read("ca.crt")).unwrap(),
        zone: "site-a".into(),
        role: Role::Edge,
        capabilities: Capabilities {
            power: Power::Mains,
            cpus: 1024,
            memory_mb: 1 << 30,
            disk_free_mb: 1 << 30,
        },
        listen: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        bootstrap: peers,
        discovery: None,
        timing: Timing::default(),
        seed: 7,
        enrolment: None,
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let task = runtime.spawn(async move {
        let (mesh, mut events) = mesh::net::driver::spawn(config).await.unwrap();
        let _ = addr_tx.send(mesh.local_addr().to_string());
        let mut lies = 0u64;
        while let Some(event) = events.recv().await {
            if let MeshEvent::Received(peer, Message::ChunkWant { hash, .. }) = event {
                lies += 1;
                let _ = mesh
                    .send(
                        &peer,
                        Message::ChunkData {
                            hash,
                            bytes: vec![0xa5; 4096].into(),
                        },
                    )
                    .await;
            }
        }
        lies
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (node_id, addr, task)
}

#[test]
fn blobs_from_a_lying_peer_are_refused_and_fetched_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (c_dir, e_dir, l_dir) = (
        tmp.path().join("cloud"),
        tmp.path().join("edge"),
        tmp.path().join("liar"),
    );
    let _logs = LogsOnPanic(vec![c_dir.clone(), e_dir.clone()]);
    init(&c_dir, "cloud", None);
    let mesh_dir = c_dir.join("mesh");
    init_in(&e_dir, "edge", Some(&mesh_dir), &["--zone", "site-a"]);
    init_in(&l_dir, "liar", Some(&mesh_dir), &["--zone", "site-a"]);
    ok(rhizome_e2e::process::run(
        &e_dir,
        &["config", "set", "node.power", "battery"],
    ));
    let cloud = start_with(&c_dir, &[], &["--role", "cloud"]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (liar_id, liar_addr, liar) = start_liar(&runtime, &l_dir, vec![cloud.quic.clone()]);
    // The liar is established as site-a's aggregator before the edge arrives.
    std::thread::sleep(Duration::from_secs(4));
    let edge = start_with(&e_dir, &[&cloud.quic, &liar_addr], &[]);
    wait_until(
        "the liar aggregates site-a for the edge",
        Duration::from_secs(20),
        || chain(&status(&edge)).first().map(|(_, a)| a.clone()) == Some(liar_id.clone()),
    );

    let mut data = vec![0u8; 3 * 1024 * 1024];
    rand::rngs::StdRng::seed_from_u64(11).fill(&mut data[..]);
    let file = tmp.path().join("model.bin");
    std::fs::write(&file, &data).unwrap();
    let added = add_artifact(&cloud, &file, None);
    let id = added["id"].as_str().unwrap().to_owned();
    let out = tmp.path().join("out.bin");
    ok(run_on(
        &edge,
        &[
            "artifact",
            "fetch",
            &id,
            "--output",
            out.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let moved = ok(run_on(&edge, &["artifact", "list", "--json"]))["transfer"].clone();
    let refused = moved["blobs_refused"].as_u64().unwrap();
    let chunks = added["chunks"].as_u64().unwrap();
    eprintln!("the edge refused {refused} blobs from the liar; {chunks} chunks + the manifest");
    assert!(refused >= 1, "{moved}");
    assert_eq!(
        moved["blobs_received"].as_u64().unwrap(),
        chunks + 1,
        "{moved}"
    );
    let shown = ok(run_on(&edge, &["artifact", "show", &id, "--json"]));
    assert_eq!(shown["missing_chunks"], 0, "{shown}");

    stop(edge);
    stop(cloud);
    liar.abort();
    runtime.shutdown_timeout(Duration::from_secs(1));
}
