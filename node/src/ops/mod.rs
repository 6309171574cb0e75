//! Keeping a node healthy and seen: what it has to offer ([`resources`]: CPUs, memory, free
//! disk, power), whether its writes can be durable ([`durability`]: the free-space watermark,
//! the store's faults), its checks ([`health`]: what `/health` reports), the host's figures
//! over time ([`monitor`]), its Prometheus metrics ([`metrics`]) and the alerts raised on them
//! ([`alerts`]).

pub mod alerts;
pub mod durability;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod resources;
