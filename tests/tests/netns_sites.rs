//! Two sites and a cloud, with real packets between network namespaces (lab:
//! tests/src/netns.rs):
//!
//! ```text
//!   site a: switch "a", 10.78.1.0/24           site b: switch "b", 10.78.2.0/24
//!   a0 .1  a1 .2  a2 .3                         b0 .1  b1 .2  b2 .3
//!        \   |   /                                   \   |   /
//!        [switch a] ---- .254  router  .254 ---- [switch b]
//!                               | .1
//!                           [switch c] 10.78.0.0/24
//!                               | .2
//!                             cloud
//! ```
//!
//! Every host is a namespace of its own (`Lab::two_sites_and_a_cloud`). Edge nodes run
//! `--mdns-interface eth0 --peer 10.78.0.2:4860`; the cloud runs `--role cloud --no-mdns`. The
//! router forwards between the sites and the cloud only and routes no multicast, so mDNS stays
//! within a site and the cloud is reached by address, as over the internet.
//!
//! Site a has a configured zone (`--zone site-a`); site b none, so it gets the automatic zone of
//! its LAN, `lan-10.78.2.0-24`. Every edge is tagged `sensor` and runs a workflow applied on the
//! cloud every 200 ms. Checked: one aggregator per site (every member's chain agrees) and the
//! cloud at the root; each site sees only itself and the cloud; every edge's runs reach the
//! cloud's fleet view; a kill -9 of site a's aggregator makes the site re-elect and its runs
//! keep arriving; the cloud cut off (cable unplugged), killed with SIGKILL and restarted while
//! cut off, then plugged back: once the runs stop, the cloud counts every run that every edge
//! recorded. Timings are printed, never asserted. Needs root and iproute2; skipped otherwise.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rhizome_e2e::netns::{Cable, Host, Lab, start_node};
use rhizome_e2e::process::{
    LogsOnPanic, Running, agreed_aggregator, apply_on, doc_names, init, init_in, ok, own_runs,
    run_on, status,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::probe;
use serde_json::Value;

const EDGES_PER_SITE: usize = 3;
const SITE_B_ZONE: &str = "lan-10.78.2.0-24";

/// The cloud's fleet view: `(runs over every zone, runs per zone, nodes that ran something)`.
fn fleet(cloud: &Running) -> (u64, Vec<(String, u64)>, usize) {
    let out = run_on(cloud, &["status", "--fleet", "--json"]);
    if !out.status.success() {
        return (0, Vec::new(), 0);
    }
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    let zones = view["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| {
            let runs = z["workflows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["runs"].as_u64().unwrap())
                .sum();
            (z["zone"].as_str().unwrap().to_owned(), runs)
        })
        .collect();
    (
        view["runs"].as_u64().unwrap(),
        zones,
        view["nodes"].as_u64().unwrap() as usize,
    )
}

fn zone_runs(cloud: &Running, zone: &str) -> u64 {
    fleet(cloud)
        .1
        .iter()
        .filter(|(z, _)| z == zone)
        .map(|(_, runs)| runs)
        .sum()
}

/// Ids of a node's connected peers; empty while it cannot answer.
fn connected_ids(node: &Running) -> BTreeSet<String> {
    let out = run_on(node, &["peers", "--json"]);
    if !out.status.success() {
        return BTreeSet::new();
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "connected")
        .filter_map(|p| p["node_id"].as_str().map(str::to_owned))
        .collect()
}

struct Edge {
    host: Host,
    cable: Cable,
    dir: PathBuf,
    id: String,
    node: Option<Running>,
}

impl Edge {
    fn start(&mut self, cloud: &str) {
        self.node = Some(start_node(
            &self.host,
            Some(&self.cable),
            &self.dir,
            &[cloud],
            &[],
        ));
    }

    fn running(&self) -> &Running {
        self.node.as_ref().expect("the edge runs")
    }
}

struct Site {
    zone: &'static str,
    edges: Vec<Edge>,
}

impl Site {
    fn ids(&self) -> BTreeSet<String> {
        self.edges.iter().map(|e| e.id.clone()).collect()
    }

    /// The site's aggregator, if every running member names the same one under the cloud.
    fn agreed_aggregator(&self, cloud_id: &str) -> Option<String> {
        let running = self.edges.iter().filter_map(|e| e.node.as_ref());
        let ids: Vec<String> = self.ids().into_iter().collect();
        agreed_aggregator(running, self.zone, &ids, cloud_id)
    }
}

/// Runs of `probe` that an edge recorded itself.
fn edge_runs(edge: &Edge) -> u64 {
    own_runs(edge.running(), "probe", &edge.id)
}

#[test]
fn two_sites_and_a_cloud_elect_forward_re_elect_and_lose_nothing() {
    let Some(mut lab) = Lab::new() else { return };
    let net = lab.two_sites_and_a_cloud(EDGES_PER_SITE);
    let cloud_host = net.cloud.clone();
    let cloud_cable = net.cloud_cable.clone();
    let cloud_addr = cloud_cable.quic();

    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    init(&cloud_dir, "cloud", None);
    let mesh = cloud_dir.join("mesh");
    let mut sites = Vec::new();
    for ((name, zone), site_net) in [("a", "site-a"), ("b", SITE_B_ZONE)]
        .into_iter()
        .zip(&net.sites)
    {
        let mut edges = Vec::new();
        for (i, (host, cable)) in site_net.hosts.iter().zip(&site_net.cables).enumerate() {
            let dir = tmp.path().join(format!("{name}{i}"));
            let mut extra = vec!["--tag", "sensor"];
            if name == "a" {
                extra.extend(["--zone", zone]);
            }
            init_in(&dir, &format!("{name}{i}"), Some(&mesh), &extra);
            if name == "b" && i == 0 {
                // An alert rule over a flag file, for the time from a condition on an edge to
                // the alert at the cloud (rules evaluated at the default interval).
                let config = dir.join("rhizome.toml");
                let mut text = std::fs::read_to_string(&config).unwrap();
                text.push_str(&format!(
                    "\n[[alerts.rules]]\nname = \"flag\"\nwhen = \"check:flag\"\n\n\
                     [[health.checks]]\nname = \"flag\"\ncommand = \"test ! -e {}\"\n\
                     interval = \"1s\"\n",
                    tmp.path().join("flag").display()
                ));
                std::fs::write(&config, text).unwrap();
            }
            edges.push(Edge {
                host: host.clone(),
                cable: cable.clone(),
                dir,
                id: String::new(),
                node: None,
            });
        }
        sites.push(Site { zone, edges });
    }
    let mut all_dirs: Vec<PathBuf> = vec![cloud_dir.clone()];
    all_dirs.extend(
        sites
            .iter()
            .flat_map(|s| s.edges.iter().map(|e| e.dir.clone())),
    );
    let _logs = LogsOnPanic(all_dirs);

    let started = Instant::now();
    let mut cloud = start_node(&cloud_host, None, &cloud_dir, &[], &["--role", "cloud"]);
    let cloud_id = status(&cloud)["node_id"].as_str().unwrap().to_owned();
    for site in &mut sites {
        for edge in &mut site.edges {
            edge.start(&cloud_addr);
            edge.id = status(edge.running())["node_id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    }

    // One aggregator per site, agreed by every member, under the cloud.
    let mut aggregators = Vec::new();
    let took = wait_until("both sites elected", Duration::from_secs(20), || {
        aggregators = sites
            .iter()
            .filter_map(|s| s.agreed_aggregator(&cloud_id))
            .collect();
        aggregators.len() == 2
    });
    eprintln!(
        "netns sites: both sites elected an aggregator under the cloud {took:?} after the edges \
         started ({:?} after the cloud)",
        started.elapsed()
    );
    let cloud_status = status(&cloud);
    assert_eq!(cloud_status["zone"], "");
    assert_eq!(
        cloud_status["hierarchy"]["aggregates"],
        serde_json::json!([""])
    );
    // Each site sees its own members and the cloud, never the other site.
    for (s, site) in sites.iter().enumerate() {
        let mut expected = site.ids();
        expected.insert(cloud_id.clone());
        for edge in &site.edges {
            wait_until("a site member's peers", Duration::from_secs(10), || {
                let mut seen = connected_ids(edge.running());
                seen.insert(edge.id.clone());
                seen == expected
            });
        }
        let other = &sites[1 - s];
        let cloud_peers = connected_ids(&cloud);
        assert!(other.ids().is_subset(&cloud_peers), "{cloud_peers:?}");
    }

    // Applied on the cloud, which the target does not select: every edge runs it.
    apply_on(&cloud, &probe("{every: 200ms}"));
    let took = wait_until(
        "every edge's runs reach the cloud",
        Duration::from_secs(30),
        || fleet(&cloud).2 == 2 * EDGES_PER_SITE,
    );
    eprintln!("netns sites: runs of all six edges were in the cloud's fleet view after {took:?}");

    // An alert raised on b0 reaches the cloud across the router, and resolves there.
    let b0 = &sites[1].edges[0];
    let alert_at_cloud = |state: &str| {
        let view = ok(run_on(&cloud, &["alerts", "--fleet", "--json"]));
        view["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["node"] == b0.id.as_str() && a["rule"] == "flag" && a["state"] == state)
    };
    std::fs::write(tmp.path().join("flag"), "").unwrap();
    let took = wait_until("b0's alert at the cloud", Duration::from_secs(30), || {
        alert_at_cloud("firing")
    });
    eprintln!("netns sites: a condition on b0 to its alert at the cloud: {took:?}");
    std::fs::remove_file(tmp.path().join("flag")).unwrap();
    let took = wait_until(
        "b0's alert resolved at the cloud",
        Duration::from_secs(30),
        || alert_at_cloud("resolved"),
    );
    eprintln!("netns sites: the condition gone to the alert resolved at the cloud: {took:?}");
    let zones: BTreeSet<String> = fleet(&cloud).1.into_iter().map(|(z, _)| z).collect();
    assert_eq!(
        zones,
        BTreeSet::from(["site-a".to_owned(), SITE_B_ZONE.to_owned()])
    );
    // The cloud holds the sites' rollups, not the edges' raw results.
    let docs = ok(run_on(&cloud, &["doc", "list", "--json"]));
    let names = doc_names(&docs);
    assert!(names.iter().any(|n| n.starts_with("rollup/")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("results/")),
        "{names:?}"
    );

    // kill -9 site a's aggregator: the site re-elects and its runs keep reaching the cloud.
    let dead = sites[0]
        .edges
        .iter()
        .position(|e| e.id == aggregators[0])
        .unwrap();
    let killed = Instant::now();
    sites[0].edges[dead].node.take().unwrap().kill();
    let mut successor = String::new();
    wait_until(
        "site a re-elected",
        Duration::from_secs(15),
        || match sites[0].agreed_aggregator(&cloud_id) {
            Some(a) if a != aggregators[0] => {
                successor = a;
                true
            }
            _ => false,
        },
    );
    eprintln!(
        "netns sites: kill -9 of site a's aggregator -> new chain seen by both survivors after \
         {:?} (loss detection included)",
        killed.elapsed()
    );
    let before = zone_runs(&cloud, "site-a");
    let took = wait_until(
        "site a's runs keep reaching the cloud",
        Duration::from_secs(20),
        || zone_runs(&cloud, "site-a") > before + 5,
    );
    eprintln!("netns sites: site a's runs reached the cloud again {took:?} after the re-election");
    sites[0].edges[dead].start(&cloud_addr);

    // The cloud is cut off, killed while cut off, restarted and plugged back in.
    lab.set_plugged(&cloud_cable, false);
    let cut = Instant::now();
    wait_until(
        "the sites notice the cloud is gone",
        Duration::from_secs(10),
        || {
            sites.iter().all(|s| {
                s.edges
                    .iter()
                    .all(|e| !connected_ids(e.running()).contains(&cloud_id))
            })
        },
    );
    eprintln!(
        "netns sites: every edge noticed the cloud cut off after {:?}",
        cut.elapsed()
    );
    let held: u64 = sites.iter().flat_map(|s| &s.edges).map(edge_runs).sum();
    cloud.kill();
    cloud = start_node(&cloud_host, None, &cloud_dir, &[], &["--role", "cloud"]);
    wait_until("the edges go on running", Duration::from_secs(10), || {
        sites
            .iter()
            .flat_map(|s| &s.edges)
            .map(edge_runs)
            .sum::<u64>()
            > held + 10
    });
    lab.set_plugged(&cloud_cable, true);
    let plugged = Instant::now();
    wait_until(
        "both sites back under the cloud",
        Duration::from_secs(20),
        || {
            sites
                .iter()
                .all(|s| s.agreed_aggregator(&cloud_id).is_some())
        },
    );
    eprintln!(
        "netns sites: both sites under the cloud again {:?} after it was plugged back in",
        plugged.elapsed()
    );

    // The runs stop; the cloud counts every run recorded on every edge.
    apply_on(&cloud, &probe("manual"));
    let took = wait_until(
        "the cloud counts every recorded run",
        Duration::from_secs(40),
        || {
            let recorded: u64 = sites.iter().flat_map(|s| &s.edges).map(edge_runs).sum();
            let (runs, _, nodes) = fleet(&cloud);
            recorded > held && runs == recorded && nodes == 2 * EDGES_PER_SITE
        },
    );
    let (runs, per_zone, _) = fleet(&cloud);
    eprintln!(
        "netns sites: after the runs stopped the cloud counted all {runs} runs ({per_zone:?}) \
         {took:?} later; site a is aggregated by {successor:.12}"
    );
}
