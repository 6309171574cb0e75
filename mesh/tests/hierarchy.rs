//! The election through the real driver on loopback: two site zones of edge nodes and a cloud
//! peer. Each site elects one aggregator, the cloud aggregates the root, and when a site's
//! aggregator shuts down the rest of the site re-elects and agrees.
#![cfg(feature = "net")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh::net::driver::{MeshConfig, MeshEvent, MeshHandle, spawn};
use mesh::net::identity::{MeshCa, NodeCredentials, NodeRole, Revocations};
use mesh::proto::election::Hierarchy;
use mesh::proto::membership::Timing;
use mesh::proto::wire::{Capabilities, Power, Role};
use ring::signature::KeyPair as _;

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

fn caps(cpus: u32) -> Capabilities {
    Capabilities {
        power: Power::Mains,
        cpus,
        memory_mb: 4096,
        disk_free_mb: 20_000,
    }
}

/// Every event a node reported, with when it arrived.
type Log = Arc<Mutex<Vec<(Instant, MeshEvent)>>>;

struct Node {
    id: String,
    handle: MeshHandle,
    log: Log,
}

async fn node(
    ca: &MeshCa,
    seed: u8,
    zone: &str,
    role: Role,
    cpus: u32,
    bootstrap: Vec<String>,
) -> Node {
    let credentials = credentials(ca, seed);
    let id = credentials.node_id().unwrap();
    let (handle, mut events) = spawn(MeshConfig {
        credentials,
        revoked: Revocations::default(),
        mesh_id: ca.mesh_id().to_owned(),
        zone: zone.into(),
        role,
        capabilities: caps(cpus),
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap,
        discovery: None,
        timing: Timing::default(),
        seed: u64::from(seed),
        enrolment: None,
    })
    .await
    .unwrap();
    let log: Log = Arc::default();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            sink.lock().unwrap().push((Instant::now(), event));
        }
    });
    Node { id, handle, log }
}

fn chain(entries: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
    entries
        .iter()
        .map(|(z, n)| ((*z).to_owned(), Some((*n).to_owned())))
        .collect()
}

async fn wait_for_chains(nodes: &[&Node], want: impl Fn(&Node, &Hierarchy) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        let mut seen = Vec::new();
        for n in nodes {
            let h = n.handle.hierarchy().await.unwrap();
            all &= want(n, &h);
            seen.push(h);
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hierarchies not as expected: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_elect_one_aggregator_each_and_re_elect_after_a_loss() {
    let ca = MeshCa::create().unwrap();
    let cloud = node(&ca, 10, "", Role::Cloud, 2, vec![]).await;
    let c = cloud.handle.local_addr().to_string();
    // site-a: a1 has the most CPUs; site-b: equal nodes (the smaller id wins).
    let a1 = node(&ca, 1, "site-a", Role::Edge, 8, vec![c.clone()]).await;
    let a1_addr = a1.handle.local_addr().to_string();
    let a2 = node(
        &ca,
        2,
        "site-a",
        Role::Edge,
        4,
        vec![c.clone(), a1_addr.clone()],
    )
    .await;
    let a2_addr = a2.handle.local_addr().to_string();
    let a3 = node(
        &ca,
        3,
        "site-a",
        Role::Edge,
        4,
        vec![c.clone(), a1_addr, a2_addr],
    )
    .await;
    let b1 = node(&ca, 4, "site-b", Role::Edge, 4, vec![c.clone()]).await;
    let b2 = node(
        &ca,
        5,
        "site-b",
        Role::Edge,
        4,
        vec![c.clone(), b1.handle.local_addr().to_string()],
    )
    .await;
    let b_agg = a_min(&b1.id, &b2.id);

    let site_a = [&a1, &a2, &a3];
    wait_for_chains(&site_a, |_, h| {
        h.chain == chain(&[("site-a", &a1.id), ("", &cloud.id)])
    })
    .await;
    wait_for_chains(&[&b1, &b2], |_, h| {
        h.chain == chain(&[("site-b", &b_agg), ("", &cloud.id)])
    })
    .await;
    wait_for_chains(&[&cloud], |_, h| {
        h.chain == chain(&[("", &cloud.id)]) && h.aggregates == vec![String::new()]
    })
    .await;
    assert_eq!(
        a1.handle.hierarchy().await.unwrap().aggregates,
        vec!["site-a".to_owned()]
    );
    assert!(a2.handle.hierarchy().await.unwrap().aggregates.is_empty());

    // The site-a aggregator goes away; a2 and a3 (equal but for their ids) re-elect.
    let next = a_min(&a2.id, &a3.id);
    let stopped = Instant::now();
    a1.handle.shutdown().await;
    wait_for_chains(&[&a2, &a3], |_, h| {
        h.chain == chain(&[("site-a", &next), ("", &cloud.id)])
    })
    .await;
    wait_for_chains(&[&cloud], |_, h| h.aggregates == vec![String::new()]).await;

    // Re-election time after the loss was detected, as each survivor saw it.
    for n in [&a2, &a3] {
        let log = n.log.lock().unwrap();
        let lost = log
            .iter()
            .find(|(_, e)| matches!(e, MeshEvent::PeerDown(p, _) if *p == a1.id))
            .map(|(at, _)| *at)
            .expect("the loss was reported");
        let elected = log
            .iter()
            .find(|(at, e)| {
                *at >= lost
                    && matches!(e, MeshEvent::Hierarchy(h) if h.chain.first().and_then(|c| c.1.as_deref()) == Some(next.as_str()))
            })
            .map(|(at, _)| *at)
            .expect("the new aggregator was reported");
        println!(
            "re-election at {}: loss detected {:?} after shutdown, new aggregator reported {:?} after detection",
            &n.id[..8],
            lost - stopped,
            elected - lost
        );
    }
    for n in [&a2, &a3, &b1, &b2, &cloud] {
        n.handle.shutdown().await;
    }
}

fn a_min(a: &str, b: &str) -> String {
    a.min(b).to_owned()
}
