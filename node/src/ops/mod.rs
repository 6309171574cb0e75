//! Keeping a node healthy: what it has to offer ([`resources`]: CPUs, memory, free disk,
//! power) and whether its writes can be durable ([`durability`]: the free-space watermark,
//! the store's faults, `/health`).

pub mod durability;
pub mod metrics;
pub mod resources;
