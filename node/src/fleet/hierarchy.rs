//! The node's place in the zone hierarchy: its zone (configured, or derived from the LAN it
//! sits on), its role, and the view that `GET /hierarchy` answers and `rhizome status` prints.
//!
//! # The zone when none is configured
//! - a cloud node sits in the root zone;
//! - an edge node whose mDNS is confined to loopback (`--mdns-interface lo`) is in zone `lan`;
//! - any other edge node is in the zone of its LAN segment, `lan-<network>-<prefix>` (e.g.
//!   `lan-192.168.1.0-24`), from the IPv4 network of the interface mDNS announces on: the
//!   interface named by `--mdns-interface` if one is, else the interface of the default IPv4
//!   route, else the first interface (by name) with a non-loopback IPv4 address;
//! - with no such interface, `lan`.
//!
//! Nodes on one segment therefore share a zone without configuration, and two sites get two
//! zones. A configured `zone = "/"` is the root zone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use mesh::proto::election::{Hierarchy, check_zone};
use mesh::proto::sync::SharePolicy;
use mesh::proto::wire::{Capabilities, Role};
use serde::{Deserialize, Serialize};

/// Where Linux lists its IPv4 routes.
const ROUTES_FILE: &str = "/proc/net/route";

/// The zone when the configuration names none and mDNS stays on loopback or no LAN is found.
pub const FALLBACK_ZONE: &str = "lan";

/// `edge` or `cloud`.
pub fn parse_role(text: &str) -> Result<Role> {
    match text {
        "edge" => Ok(Role::Edge),
        "cloud" => Ok(Role::Cloud),
        other => bail!("node.role is `{other}`: use edge or cloud"),
    }
}

/// Checks a configured zone: empty (automatic), `/` (the root) or a zone path.
pub fn check_configured_zone(zone: &str) -> Result<()> {
    if zone.is_empty() || zone == "/" {
        return Ok(());
    }
    check_zone(zone)?;
    Ok(())
}

/// The zone a node runs in: the configured one, or the automatic rule of the module
/// documentation. `mdns_interfaces` are the interfaces mDNS is limited to (empty: all).
pub fn effective_zone(
    configured: &str,
    role: Role,
    mdns_loopback_only: bool,
    mdns_interfaces: &[String],
) -> Result<String> {
    check_configured_zone(configured)?;
    if configured == "/" {
        return Ok(String::new());
    }
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    if role == Role::Cloud {
        return Ok(String::new());
    }
    if mdns_loopback_only {
        return Ok(FALLBACK_ZONE.to_owned());
    }
    let interfaces: Vec<(String, Ipv4Addr, u8)> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) if !v4.ip.is_loopback() => Some((i.name, v4.ip, v4.prefixlen)),
            _ => None,
        })
        .collect();
    let routes = std::fs::read_to_string(ROUTES_FILE).unwrap_or_default();
    Ok(lan_zone(
        &interfaces,
        default_route_interface(&routes).as_deref(),
        mdns_interfaces,
    ))
}

/// The LAN rule over the interfaces' IPv4 addresses `(name, address, prefix length)`.
pub fn lan_zone(
    interfaces: &[(String, Ipv4Addr, u8)],
    default_route: Option<&str>,
    mdns_interfaces: &[String],
) -> String {
    let by_name = |name: &str| interfaces.iter().find(|(n, _, _)| n == name);
    let chosen = if !mdns_interfaces.is_empty() {
        mdns_interfaces.iter().find_map(|n| by_name(n))
    } else {
        default_route.and_then(by_name).or_else(|| {
            let mut sorted: Vec<_> = interfaces.iter().collect();
            sorted.sort();
            sorted.first().copied()
        })
    };
    match chosen {
        Some((_, ip, prefix)) => {
            let prefix = (*prefix).min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let network = Ipv4Addr::from(u32::from(*ip) & mask);
            format!("lan-{network}-{prefix}")
        }
        None => FALLBACK_ZONE.to_owned(),
    }
}

/// The interface of the default IPv4 route in `/proc/net/route` text.
fn default_route_interface(routes: &str) -> Option<String> {
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000")
            .then(|| fields[0].to_owned())
    })
}

/// What `GET /hierarchy` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HierarchyView {
    pub node_id: String,
    /// This node's zone (`""` is the root).
    pub zone: String,
    /// `edge` or `cloud`.
    pub role: String,
    pub capabilities: CapabilitiesView,
    /// From this node's zone up to the root.
    pub chain: Vec<ChainLink>,
    /// The zones this node aggregates.
    pub aggregates: Vec<String>,
    /// Zones below this node's that are split: more than one of their members claims to
    /// aggregate them (each reaches this node, not the others). This node takes every
    /// claimant's rollups, so the fleet view covers both halves.
    #[serde(default)]
    pub split: Vec<SplitZone>,
}

/// A zone whose members cannot reach each other, with each side's aggregator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitZone {
    pub zone: String,
    /// The claimants, by node id, with their names where known.
    pub aggregators: Vec<ChainLink>,
}

/// One level of the aggregator chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainLink {
    pub zone: String,
    /// The aggregator's node id, if known.
    pub aggregator: Option<String>,
    /// Its name, from the mesh document, if known.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapabilitiesView {
    pub power: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub disk_free_mb: u64,
}

impl HierarchyView {
    pub fn new(
        node_id: &str,
        role: Role,
        caps: &Capabilities,
        hierarchy: Hierarchy,
        name_of: impl Fn(&str) -> Option<String>,
    ) -> HierarchyView {
        HierarchyView {
            node_id: node_id.to_owned(),
            zone: hierarchy.zone,
            role: role.to_string(),
            capabilities: CapabilitiesView {
                power: caps.power.to_string(),
                cpus: caps.cpus,
                memory_mb: caps.memory_mb,
                disk_free_mb: caps.disk_free_mb,
            },
            chain: hierarchy
                .chain
                .into_iter()
                .map(|(zone, aggregator)| ChainLink {
                    name: aggregator.as_deref().and_then(&name_of),
                    zone,
                    aggregator,
                })
                .collect(),
            aggregates: hierarchy.aggregates,
            split: hierarchy
                .split
                .into_iter()
                .map(|(zone, claimants)| SplitZone {
                    aggregators: claimants
                        .into_iter()
                        .map(|id| ChainLink {
                            name: name_of(&id),
                            zone: zone.clone(),
                            aggregator: Some(id),
                        })
                        .collect(),
                    zone,
                })
                .collect(),
        }
    }
}

/// Marks the zones of a fleet view whose rollups no longer reach this node: those neither it
/// nor a zone above them that it aggregates (a former aggregator keeps what it held). A cloud
/// peer takes every rollup whoever aggregates: nothing is stale there.
pub fn mark_stale_zones(
    view: &mut crdt_store::FleetView,
    aggregates: &[String],
    role: mesh::proto::wire::Role,
) {
    for zone in &mut view.zones {
        zone.stale = role != mesh::proto::wire::Role::Cloud
            && !aggregates
                .iter()
                .any(|a| crate::run::workflow::zone_contains(a, &zone.zone));
    }
}

/// Marks the zones of a fleet view that are split, with the aggregator of each part.
pub fn mark_split_zones(view: &mut crdt_store::FleetView, split: &[(String, Vec<String>)]) {
    for zone in &mut view.zones {
        zone.split = split
            .iter()
            .find(|(z, _)| *z == zone.zone)
            .map(|(_, claimants)| claimants.clone())
            .unwrap_or_default();
    }
}

/// What a split zone means, in one sentence, with the aggregators named by `name_of` where it
/// knows them: for `status`, `/health` and the fleet view alike.
pub fn describe_split(
    zone: &str,
    claimants: &[String],
    name_of: impl Fn(&str) -> Option<String>,
) -> String {
    let named: Vec<String> = claimants
        .iter()
        .map(|id| match name_of(id) {
            Some(name) => format!("{name} ({})", crate::cli::output::short_id(id)),
            None => crate::cli::output::short_id(id).to_owned(),
        })
        .collect();
    format!(
        "zone {} is split: its members do not reach each other, and {} each aggregate the \
         members they reach; rollups of all of them are taken here",
        zone_label(zone),
        named.join(" and ")
    )
}

/// A zone as people read it: the root has no name of its own.
pub fn zone_label(zone: &str) -> &str {
    if zone.is_empty() { "(root)" } else { zone }
}

/// Who receives which results and rollups, from this node's view
/// ([`SharePolicy::from_view`]) with the zones of the replicated registry.
///
/// With `results_to_cloud`, results are routed as if every node were in the root zone: straight
/// to the root's aggregator (the cloud), which every node of the mesh must then agree on. Every
/// cloud peer (`clouds`, from the registry) takes the rollups, alerts and routed results the
/// root's aggregator takes: the cloud side may run on several hosts.
pub fn share_policy(
    me: &str,
    hierarchy: &Hierarchy,
    zones: &BTreeMap<String, String>,
    clouds: BTreeSet<String>,
    results_to_cloud: bool,
) -> SharePolicy {
    let mut policy = SharePolicy::from_view(me, hierarchy, zones);
    if results_to_cloud {
        for zone in policy.zone_of.values_mut() {
            zone.clear();
        }
    }
    policy.clouds = clouds;
    policy.results_to_clouds = results_to_cloud;
    policy
}

/// The cloud peers of the mesh, by their registry entries.
pub fn clouds(registry: &crdt_store::MeshRegistry) -> BTreeSet<String> {
    registry
        .nodes
        .iter()
        .filter(|(_, entry)| entry.role == mesh::proto::wire::Role::Cloud.to_string())
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ip: &str, prefix: u8) -> (String, Ipv4Addr, u8) {
        (name.into(), ip.parse().unwrap(), prefix)
    }

    #[test]
    fn the_lan_zone_comes_from_the_mdns_or_default_route_interface() {
        let ifaces = [
            iface("docker0", "172.17.0.1", 16),
            iface("eth0", "192.168.1.37", 24),
            iface("wlan0", "10.4.0.9", 20),
        ];
        assert_eq!(lan_zone(&ifaces, Some("eth0"), &[]), "lan-192.168.1.0-24");
        assert_eq!(
            lan_zone(&ifaces, Some("eth0"), &["wlan0".into()]),
            "lan-10.4.0.0-20"
        );
        assert_eq!(lan_zone(&ifaces, None, &[]), "lan-172.17.0.0-16");
        assert_eq!(lan_zone(&[], None, &[]), "lan");
        assert_eq!(lan_zone(&ifaces, None, &["nope".into()]), "lan");
        assert!(check_zone(&lan_zone(&ifaces, Some("eth0"), &[])).is_ok());
    }

    #[test]
    fn the_default_route_is_read_from_proc() {
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                      eth1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                      eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(routes).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface(""), None);
    }

    #[test]
    fn configured_zones_and_roles() {
        assert_eq!(effective_zone("/", Role::Edge, false, &[]).unwrap(), "");
        assert_eq!(
            effective_zone("site-a/line-3", Role::Cloud, false, &[]).unwrap(),
            "site-a/line-3"
        );
        assert_eq!(effective_zone("", Role::Cloud, false, &[]).unwrap(), "");
        assert_eq!(effective_zone("", Role::Edge, true, &[]).unwrap(), "lan");
        let err = effective_zone("site-a//x", Role::Edge, false, &[]).unwrap_err();
        assert!(err.to_string().contains("empty level"), "{err}");
        assert!(
            parse_role("fog")
                .unwrap_err()
                .to_string()
                .contains("node.role")
        );
    }
}
