//! LAN discovery over mDNS: each node announces `_rhizome._udp.local.` with its node id, mesh id
//! and wire version in TXT records, and reports the nodes of its own mesh that it sees.
//!
//! mdns-sd joins multicast on every interface unless told otherwise; [`Interfaces`] limits it,
//! and tests and the demo keep it on loopback. Failure detection does not rely on mDNS (a killed
//! node's records live for two minutes): the membership state machine decides liveness from
//! traffic and only learns addresses here.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

use crate::proto::wire::WIRE_VERSION;

/// The mDNS service type of Rhizome nodes.
pub const SERVICE_TYPE: &str = "_rhizome._udp.local.";

/// Discovery events buffered for the driver; beyond this, events wait in mdns-sd's own queue.
pub const DISCOVERY_EVENTS_CAP: usize = 256;

/// Which interfaces mDNS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interfaces {
    /// 127.0.0.0/8 only: nodes on one host, tests, the demo.
    Loopback,
    /// These interfaces by name (e.g. `eth0`).
    Named(Vec<String>),
    /// Every interface.
    All,
}

/// What to announce and where.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The mesh id; nodes of other meshes are ignored.
    pub mesh_id: String,
    /// This node's id; its own announcement is ignored.
    pub node_id: String,
    /// The UDP port this node's QUIC endpoint listens on.
    pub port: u16,
    /// Where mDNS runs.
    pub interfaces: Interfaces,
    /// The addresses to announce; empty lets mdns-sd announce those of the enabled interfaces.
    pub addresses: Vec<IpAddr>,
}

/// A node of this mesh seen on the LAN, or leaving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A node announced itself at this address.
    Found {
        /// Its node id.
        node: String,
        /// Where its QUIC endpoint listens.
        addr: SocketAddr,
    },
    /// A node said goodbye.
    Left {
        /// Its node id.
        node: String,
    },
}

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The mDNS daemon failed.
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// A running discovery. Dropping it without [`Discovery::shutdown`] skips the goodbye.
pub struct Discovery {
    daemon: ServiceDaemon,
    fullname: String,
    config: DiscoveryConfig,
    events: mpsc::Sender<DiscoveryEvent>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts announcing and browsing. Must run inside a tokio runtime.
    pub fn start(
        config: DiscoveryConfig,
    ) -> Result<(Discovery, mpsc::Receiver<DiscoveryEvent>), DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        match &config.interfaces {
            Interfaces::All => {}
            Interfaces::Loopback => {
                daemon.disable_interface(IfKind::All)?;
                daemon.enable_interface(IfKind::LoopbackV4)?;
            }
            Interfaces::Named(names) => {
                daemon.disable_interface(IfKind::All)?;
                for name in names {
                    daemon.enable_interface(IfKind::Name(name.clone()))?;
                }
            }
        }
        let instance = format!("rhizome-{}", config.node_id);
        let host = format!("{instance}.local.");
        let properties = [
            ("node", config.node_id.as_str()),
            ("mesh", config.mesh_id.as_str()),
            ("proto", &WIRE_VERSION.to_string()),
        ];
        let info = if config.addresses.is_empty() {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                "",
                config.port,
                &properties[..],
            )?
            .enable_addr_auto()
        } else {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                &config.addresses[..],
                config.port,
                &properties[..],
            )?
        };
        let fullname = info.get_fullname().to_owned();
        daemon.register(info)?;
        let (events, receiver) = mpsc::channel(DISCOVERY_EVENTS_CAP);
        let discovery = Discovery {
            daemon,
            fullname,
            config,
            events,
        };
        discovery.browse()?;
        Ok((discovery, receiver))
    }

    /// Browses again, so that mdns-sd's growing back-off does not delay finding nodes after a
    /// partition heals.
    pub fn rebrowse(&self) -> Result<(), DiscoveryError> {
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        self.browse()
    }

    fn browse(&self) -> Result<(), DiscoveryError> {
        let browse = self.daemon.browse(SERVICE_TYPE)?;
        let events = self.events.clone();
        let mesh_id = self.config.mesh_id.clone();
        let me = self.config.node_id.clone();
        let loopback_only = self.config.interfaces == Interfaces::Loopback;
        tokio::spawn(async move {
            while let Ok(event) = browse.recv_async().await {
                let out = match event {
                    ServiceEvent::ServiceResolved(service) => {
                        let props = service.get_properties();
                        let node = props.get_property_val_str("node").unwrap_or_default();
                        let mesh = props.get_property_val_str("mesh").unwrap_or_default();
                        let proto = props.get_property_val_str("proto").unwrap_or_default();
                        if node.is_empty() || node == me || mesh != mesh_id {
                            continue;
                        }
                        if proto != WIRE_VERSION.to_string() {
                            tracing::warn!(
                                node,
                                proto,
                                "ignoring a node that speaks another wire version"
                            );
                            continue;
                        }
                        let mut addrs: Vec<IpAddr> = service
                            .get_addresses_v4()
                            .into_iter()
                            .map(IpAddr::V4)
                            .filter(|ip| !loopback_only || ip.is_loopback())
                            .collect();
                        addrs.sort();
                        let Some(ip) = addrs.first() else { continue };
                        DiscoveryEvent::Found {
                            node: node.to_owned(),
                            addr: SocketAddr::new(*ip, service.get_port()),
                        }
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) => {
                        match fullname
                            .strip_prefix("rhizome-")
                            .and_then(|rest| rest.split('.').next())
                        {
                            Some(node) if node != me => DiscoveryEvent::Left {
                                node: node.to_owned(),
                            },
                            _ => continue,
                        }
                    }
                    ServiceEvent::SearchStopped(_) => break,
                    _ => continue,
                };
                if events.send(out).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// Says goodbye (so peers notice at once) and stops the daemon.
    pub async fn shutdown(self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), done.recv_async()).await;
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), done.recv_async()).await;
        }
    }
}
