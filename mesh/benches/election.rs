//! Re-election after an aggregator loss, inside the protocol core: how long the step that takes
//! in the loss (`PeerDown`) and names the new aggregator takes at one member, for zones of
//! various sizes, flat and under a cloud root. The network adds its delivery time on top; the
//! driver reports the new chain in the same actor step (see `mesh/tests/hierarchy.rs`).
//!
//! A plain `main`, so that one run prints every figure: `cargo bench -p mesh --bench election`.
//! `RHIZOME_BENCH_REPEATS` sets the steps timed per size [2000].

use std::hint::black_box;
use std::time::{Duration, Instant};

use mesh::proto::election::{Election, ElectionTiming, InEvent};
use mesh::proto::wire::{Capabilities, Claim, Power, Role, Status};

fn caps(cpus: u32, disk_free_mb: u64) -> Capabilities {
    Capabilities {
        power: Power::Mains,
        cpus,
        memory_mb: 8_000,
        disk_free_mb,
    }
}

/// A settled member of `zone` (under `site/`), with `size - 1` live peers; peer `n0000` is the
/// established aggregator of the zone and of `site`, and a cloud peer aggregates the root.
fn member(size: usize) -> Election {
    let zone = "site/line";
    let now = Duration::from_secs(3600);
    let mut me = Election::new(
        "zzzz".into(),
        zone.into(),
        Role::Edge,
        caps(2, 1_000),
        ElectionTiming::default(),
        Duration::ZERO,
    )
    .unwrap();
    let cloud = "cloud".to_owned();
    let chain = |agg: &str| {
        vec![
            (zone.to_owned(), Some(agg.to_owned())),
            ("site".to_owned(), Some(agg.to_owned())),
            (String::new(), Some(cloud.clone())),
        ]
    };
    me.handle(InEvent::PeerUp(cloud.clone()), now);
    me.handle(
        InEvent::Status {
            from: cloud.clone(),
            status: Status {
                zone: String::new(),
                role: Role::Cloud,
                caps: caps(8, 100_000),
                uptime_s: 3600,
                aggregates: vec![Claim {
                    zone: String::new(),
                    established: true,
                }],
                chain: vec![(String::new(), Some(cloud.clone()))],
            },
        },
        now,
    );
    for i in 0..size - 1 {
        let id = format!("n{i:04}");
        let aggregates = if i == 0 {
            vec![
                Claim {
                    zone: zone.into(),
                    established: true,
                },
                Claim {
                    zone: "site".into(),
                    established: true,
                },
            ]
        } else {
            Vec::new()
        };
        me.handle(InEvent::PeerUp(id.clone()), now);
        me.handle(
            InEvent::Status {
                from: id,
                status: Status {
                    zone: zone.into(),
                    role: Role::Edge,
                    caps: caps(4, 1_000 + i as u64 * 37),
                    uptime_s: 3600,
                    aggregates,
                    chain: chain("n0000"),
                },
            },
            now,
        );
    }
    me.drain();
    assert_eq!(me.aggregator_of(zone).as_deref(), Some("n0000"));
    me
}

fn main() {
    let repeats: usize = std::env::var("RHIZOME_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    println!("members  median step  p99 step    (PeerDown of the aggregator -> new chain)");
    for size in [10, 100, 500, 2000] {
        let settled = member(size);
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let mut e = black_box(settled.clone());
            let start = Instant::now();
            e.handle(InEvent::PeerDown("n0000".into()), Duration::from_secs(3601));
            let elapsed = start.elapsed();
            assert_ne!(e.aggregator_of("site/line").as_deref(), Some("n0000"));
            black_box(e.drain());
            times.push(elapsed);
        }
        times.sort();
        println!(
            "{size:>7}  {:>11.1?}  {:>9.1?}",
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
    }
}
