//! Real mDNS packets on loopback: two nodes of one mesh find each other, a node of another mesh
//! is ignored, and a goodbye is reported.
#![cfg(feature = "net")]

use std::time::Duration;

use mesh::net::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent, Interfaces};
use tokio::sync::mpsc::Receiver;

fn config(mesh: &str, node: &str, port: u16) -> DiscoveryConfig {
    DiscoveryConfig {
        mesh_id: mesh.into(),
        node_id: node.into(),
        port,
        interfaces: Interfaces::Loopback,
        addresses: vec!["127.0.0.1".parse().unwrap()],
    }
}

async fn next_found(rx: &mut Receiver<DiscoveryEvent>, within: Duration) -> Vec<DiscoveryEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        seen.push(event);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_mesh_find_each_other_on_loopback() {
    let mesh = format!("mesh-{}", std::process::id());
    let (a, mut a_events) = Discovery::start(config(&mesh, "node-a", 41001)).unwrap();
    let (b, mut b_events) = Discovery::start(config(&mesh, "node-b", 41002)).unwrap();
    let (stranger, _s_events) = Discovery::start(config("another-mesh", "node-s", 41003)).unwrap();

    let seen_by_a = next_found(&mut a_events, Duration::from_secs(4)).await;
    assert!(
        seen_by_a.contains(&DiscoveryEvent::Found {
            node: "node-b".into(),
            addr: "127.0.0.1:41002".parse().unwrap()
        }),
        "{seen_by_a:?}"
    );
    assert!(
        !seen_by_a
            .iter()
            .any(|e| matches!(e, DiscoveryEvent::Found { node, .. } if node != "node-b")),
        "only members of the mesh, never itself: {seen_by_a:?}"
    );
    let seen_by_b = next_found(&mut b_events, Duration::from_millis(100)).await;
    assert!(
        seen_by_b
            .iter()
            .any(|e| matches!(e, DiscoveryEvent::Found { node, .. } if node == "node-a")),
        "{seen_by_b:?}"
    );

    b.shutdown().await;
    let after = next_found(&mut a_events, Duration::from_secs(3)).await;
    assert!(
        after.contains(&DiscoveryEvent::Left {
            node: "node-b".into()
        }),
        "{after:?}"
    );
    a.shutdown().await;
    stranger.shutdown().await;
}
