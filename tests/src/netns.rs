//! A lab of Linux network namespaces for tests with real packets between nodes: hosts (one
//! namespace each), switches (a bridge in a namespace of its own), cables (veth pairs), a
//! router, and faults (a cable unplugged at the switch, random loss with nft).
//!
//! Every namespace, interface and address lives inside the lab and is deleted when the lab is
//! dropped; nothing is configured in the test's own namespace and no packet leaves the lab.
//! Needs root and iproute2 ([`Lab::new`] says why it cannot run otherwise); loss needs nft.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::Running;

/// A network namespace of the lab with a switch: a bridge `br0` that its cables plug into.
#[derive(Debug, Clone)]
pub struct Switch {
    /// The namespace's name.
    pub ns: String,
}

/// A network namespace of the lab for one host (a node, a router).
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub ns: String,
}

/// A cable from a host's interface to a switch port.
#[derive(Debug, Clone)]
pub struct Cable {
    /// The host's interface (e.g. `eth0`).
    pub interface: String,
    /// The host's address on it, without the prefix length.
    pub ip: String,
    /// The switch's namespace.
    switch_ns: String,
    /// The switch port's interface.
    port: String,
}

/// A switch and the hosts plugged into it, one cable each.
#[derive(Debug, Clone)]
pub struct Lan {
    pub switch: Switch,
    pub hosts: Vec<Host>,
    /// `cables[i]` plugs `hosts[i]` in.
    pub cables: Vec<Cable>,
}

/// The UDP port nodes of the lab listen on for QUIC (each host has addresses of its own).
pub const QUIC_PORT: u16 = 4860;

impl Cable {
    /// The QUIC address of a node started with [`start_node`] on this cable's host.
    pub fn quic(&self) -> String {
        format!("{}:{QUIC_PORT}", self.ip)
    }
}

/// Starts `rhizome start` on `host`: QUIC on [`QUIC_PORT`] of every address, mDNS only on
/// `mdns` (the interface of a cable; `None`: no mDNS), the local API on the host's loopback.
pub fn start_node(
    host: &Host,
    mdns: Option<&Cable>,
    dir: &Path,
    peers: &[&str],
    extra: &[&str],
) -> Running {
    crate::process::start_in(
        &host.ns,
        dir,
        &format!("0.0.0.0:{QUIC_PORT}"),
        mdns.map(|c| c.interface.as_str()),
        peers,
        extra,
    )
}

/// Network namespaces made by this test process and deleted when it drops.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    /// Namespaces in creation order.
    namespaces: Vec<String>,
}

/// Labs made by this process, so that tests running as threads of one process get distinct
/// names.
static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A new, empty lab; `None` (with a message on stderr saying why) when this process cannot
    /// make network namespaces: not root, or no iproute2.
    pub fn new() -> Option<Lab> {
        #[allow(unsafe_code)]
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let ip = Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !root || !ip {
            eprintln!(
                "skipped: network namespaces need root and iproute2 (root: {root}, ip: {ip})"
            );
            return None;
        }
        Some(Lab {
            tag: format!(
                "{}-{}",
                std::process::id(),
                LABS.fetch_add(1, Ordering::Relaxed)
            ),
            namespaces: Vec::new(),
        })
    }

    /// Whether `nft` can install rules in the lab's namespaces (for [`Lab::lossy`]); says why
    /// not on stderr.
    pub fn has_nft() -> bool {
        let ok = Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("skipped: random loss needs nft (Debian package nftables; scripts/setup.sh)");
        }
        ok
    }

    fn namespace(&mut self, name: &str) -> String {
        let ns = format!("rz-{}-{name}", self.tag);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&ns, &["link", "set", "lo", "up"]);
        ns
    }

    /// A switch: a namespace holding bridge `br0`.
    pub fn switch(&mut self, name: &str) -> Switch {
        let ns = self.namespace(name);
        ip(&ns, &["link", "add", "br0", "type", "bridge"]);
        ip(&ns, &["link", "set", "br0", "up"]);
        Switch { ns }
    }

    /// A LAN: switch `name` and hosts `<name>0`, `<name>1`, ..., each plugged in by its `eth0`
    /// with address `<prefix>.<i + 1>/24` (`prefix` is three octets, e.g. `10.77.0`). `name` is
    /// at most 12 bytes (the switch ports are named after the hosts).
    pub fn lan(&mut self, name: &str, prefix: &str, hosts: usize) -> Lan {
        let switch = self.switch(name);
        let mut lan = Lan {
            switch,
            hosts: Vec::new(),
            cables: Vec::new(),
        };
        for i in 0..hosts {
            let host = self.host(&format!("{name}{i}"));
            let cable = self.plug(
                &host,
                "eth0",
                &format!("{prefix}.{}/24", i + 1),
                &lan.switch,
                &format!("{name}{i}"),
            );
            lan.hosts.push(host);
            lan.cables.push(cable);
        }
        lan
    }

    /// A host: a namespace with only loopback, up.
    pub fn host(&mut self, name: &str) -> Host {
        Host {
            ns: self.namespace(name),
        }
    }

    /// Plugs `host` into `switch`: interface `interface` on the host with address `cidr`
    /// (`10.77.0.1/24`), port `port` on the switch (names of at most 15 bytes, unique in
    /// their namespace).
    pub fn plug(
        &mut self,
        host: &Host,
        interface: &str,
        cidr: &str,
        switch: &Switch,
        port: &str,
    ) -> Cable {
        // Both ends are created directly in their namespaces: nothing appears in ours.
        sh(&[
            "ip", "link", "add", "name", interface, "netns", &host.ns, "type", "veth", "peer",
            "name", port, "netns", &switch.ns,
        ]);
        ip(&switch.ns, &["link", "set", port, "master", "br0"]);
        ip(&switch.ns, &["link", "set", port, "up"]);
        ip(&host.ns, &["addr", "add", cidr, "dev", interface]);
        ip(&host.ns, &["link", "set", interface, "up"]);
        Cable {
            interface: interface.to_owned(),
            ip: cidr.split('/').next().unwrap_or(cidr).to_owned(),
            switch_ns: switch.ns.clone(),
            port: port.to_owned(),
        }
    }

    /// Makes `host` forward IPv4 between its interfaces (its namespace's own setting).
    pub fn forward(&self, host: &Host) {
        // /proc/sys/net belongs to the namespace of the process that opens it.
        sh(&[
            "ip",
            "netns",
            "exec",
            &host.ns,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]);
    }

    /// Runs `ip -n <host> <args>` (routes, rules), panicking with ip's message if it fails.
    pub fn ip(&self, host: &Host, args: &[&str]) {
        ip(&host.ns, args);
    }

    /// Plugs the cable in or out at the switch port: the host sees its link stay up but no
    /// packet passes either way.
    pub fn set_plugged(&self, cable: &Cable, plugged: bool) {
        ip(
            &cable.switch_ns,
            &[
                "link",
                "set",
                &cable.port,
                if plugged { "up" } else { "down" },
            ],
        );
    }

    /// Isolates the cable's switch port (or ends that): isolated ports pass no frame to each
    /// other, unicast or multicast, while each still reaches every port that is not isolated.
    /// Hosts on isolated ports are a site split in two that both reach the uplink.
    pub fn set_isolated(&self, cable: &Cable, isolated: bool) {
        let out = Command::new("ip")
            .args(["netns", "exec", &cable.switch_ns, "bridge", "link", "set"])
            .args([
                "dev",
                &cable.port,
                "isolated",
                if isolated { "on" } else { "off" },
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bridge link set isolated: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drops `percent` % of the frames, chosen at random, in each direction on `cable` (nft
    /// `numgen` in the switch's bridge), until [`Lab::lossless`]. The host sees nothing but
    /// missing packets, as with a bad cable.
    pub fn lossy(&self, cable: &Cable, percent: u8) {
        let rules = format!(
            "table bridge {table} {{
               chain forward {{
                 type filter hook forward priority 0; policy accept;
                 iifname \"{port}\" numgen random mod 100 < {percent} counter drop
                 oifname \"{port}\" numgen random mod 100 < {percent} counter drop
               }}
             }}",
            table = loss_table(cable),
            port = cable.port
        );
        nft_load(&cable.switch_ns, &rules);
    }

    /// Frames dropped so far on `cable` by [`Lab::lossy`].
    pub fn dropped(&self, cable: &Cable) -> u64 {
        nft_counted(&cable.switch_ns, &loss_table(cable))
    }

    /// Makes `switch` drop every multicast frame between its ports, as many site networks
    /// do: mDNS announcements and queries never arrive; unicast (ARP's broadcasts included)
    /// passes.
    pub fn drop_multicast(&self, switch: &Switch) {
        nft_load(
            &switch.ns,
            "table bridge no_multicast {
               chain forward {
                 type filter hook forward priority 0; policy accept;
                 meta pkttype multicast counter drop
               }
             }",
        );
    }

    /// Multicast frames `switch` dropped so far ([`Lab::drop_multicast`]).
    pub fn multicast_dropped(&self, switch: &Switch) -> u64 {
        nft_counted(&switch.ns, "no_multicast")
    }

    /// Ends the loss of [`Lab::lossy`] on `cable`.
    pub fn lossless(&self, cable: &Cable) {
        let table = loss_table(cable);
        sh(&[
            "ip",
            "netns",
            "exec",
            &cable.switch_ns,
            "nft",
            "delete",
            "table",
            "bridge",
            &table,
        ]);
    }
}

/// One site of [`Lab::two_sites_and_a_cloud`]: a switch, the router's cable into it, and the
/// edge hosts plugged in.
#[derive(Debug, Clone)]
pub struct SiteNet {
    pub switch: Switch,
    /// The router's port on this site's switch: unplugged, the site loses the cloud.
    pub uplink: Cable,
    /// `hosts[i]` is plugged in by `cables[i]`, its `eth0`.
    pub hosts: Vec<Host>,
    pub cables: Vec<Cable>,
}

/// Two sites and a cloud behind a router:
///
/// ```text
///   site a: switch "a", 10.78.1.0/24           site b: switch "b", 10.78.2.0/24
///   a0 .1  a1 .2  ...                           b0 .1  b1 .2  ...
///        \   |   /                                   \   |   /
///        [switch a] ---- .254  router  .254 ---- [switch b]
///                               | .1
///                           [switch c] 10.78.0.0/24
///                               | .2
///                             cloud
/// ```
///
/// The router forwards between each site and the cloud only (ip rules prohibit site to site)
/// and routes no multicast, so mDNS stays within a site and the cloud is reached by address,
/// as over the internet. Every host has a default route through the router.
#[derive(Debug, Clone)]
pub struct TwoSites {
    /// Site a, then site b.
    pub sites: [SiteNet; 2],
    pub router: Host,
    pub cloud: Host,
    pub cloud_cable: Cable,
}

impl Lab {
    /// Builds [`TwoSites`] with `edges_per_site` hosts on each site.
    pub fn two_sites_and_a_cloud(&mut self, edges_per_site: usize) -> TwoSites {
        let router = self.host("router");
        let cloud_net = self.switch("c");
        self.plug(&router, "to-cloud", "10.78.0.1/24", &cloud_net, "router");
        let mut sites = Vec::new();
        for (name, subnet, other) in [("a", "10.78.1", "10.78.2"), ("b", "10.78.2", "10.78.1")] {
            let switch = self.switch(name);
            let to_site = format!("to-{name}");
            let uplink = self.plug(
                &router,
                &to_site,
                &format!("{subnet}.254/24"),
                &switch,
                "router",
            );
            let other_net = format!("{other}.0/24");
            self.ip(
                &router,
                &["rule", "add", "iif", &to_site, "to", &other_net, "prohibit"],
            );
            let mut site = SiteNet {
                switch,
                uplink,
                hosts: Vec::new(),
                cables: Vec::new(),
            };
            for i in 0..edges_per_site {
                let host = self.host(&format!("{name}{i}"));
                let cable = self.plug(
                    &host,
                    "eth0",
                    &format!("{subnet}.{}/24", i + 1),
                    &site.switch,
                    &format!("{name}{i}"),
                );
                self.ip(
                    &host,
                    &["route", "add", "default", "via", &format!("{subnet}.254")],
                );
                site.hosts.push(host);
                site.cables.push(cable);
            }
            sites.push(site);
        }
        self.forward(&router);
        let cloud = self.host("cloud");
        let cloud_cable = self.plug(&cloud, "eth0", "10.78.0.2/24", &cloud_net, "cloud");
        self.ip(&cloud, &["route", "add", "default", "via", "10.78.0.1"]);
        let [a, b]: [SiteNet; 2] = sites.try_into().expect("two sites");
        TwoSites {
            sites: [a, b],
            router,
            cloud,
            cloud_cable,
        }
    }

    /// Lets multicast through `switch` again after [`Lab::drop_multicast`].
    pub fn pass_multicast(&self, switch: &Switch) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &switch.ns,
            "nft",
            "delete",
            "table",
            "bridge",
            "no_multicast",
        ]);
    }
}

/// Loads nft rules into namespace `ns`, panicking with nft's message if they are refused.
fn nft_load(ns: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The packets counted by the counters of bridge table `table` in namespace `ns`.
fn nft_counted(ns: &str, table: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "bridge", table])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The nft table of a cable's loss (nft names take letters, digits and underscores).
fn loss_table(cable: &Cable) -> String {
    format!(
        "loss_{}",
        cable
            .port
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace kills no process in it: the tests' nodes are killed by their own
        // `Running` guards, which are dropped before the lab (declared after it).
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    sh(&full);
}
