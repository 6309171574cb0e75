//! What a store counts about itself, for the node's metrics: commit latencies, the lag of
//! synced changes, refusals and maintenance. Plain numbers in the store, read when scraped,
//! so that counting costs an addition and takes no lock.

use std::collections::BTreeMap;
use std::time::Duration;

/// Bucket bounds (seconds) of commit latencies: from a page-cache commit to a slow fsync.
pub const COMMIT_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Bucket bounds (seconds) of sync lag: from a LAN round trip to a node back from a long
/// partition.
pub const LAG_BOUNDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
];

/// A histogram with fixed bucket bounds, as Prometheus exposes one.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts one observation.
    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Counts one duration, in seconds.
    pub fn observe_duration(&mut self, took: Duration) {
        self.observe(took.as_secs_f64());
    }

    /// The bucket bounds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Observations at or below each bound, then the total (`+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect()
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// A store's own counts since it was opened.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreMetrics {
    /// Commits made durable before they returned (results appended, flushes, local writes).
    pub durable_commit_seconds: Histogram,
    /// Commits that wait for a later flush (folding results, applying sync).
    pub deferred_commit_seconds: Histogram,
    /// From a change's commit on its writer to its application here, for changes that carry a
    /// time (the writer's clock: skew shows here).
    pub sync_lag_seconds: Histogram,
    /// Writes refused, by reason (`low_space`, `recovering`).
    pub refused: BTreeMap<&'static str, u64>,
    /// Commits that failed under the store (a full or failing disk).
    pub failures: u64,
    /// Reopens after a failure.
    pub reopens: u64,
    /// Documents compacted.
    pub compactions: u64,
    /// Result windows retired.
    pub windows_retired: u64,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            durable_commit_seconds: Histogram::new(COMMIT_BOUNDS),
            deferred_commit_seconds: Histogram::new(COMMIT_BOUNDS),
            sync_lag_seconds: Histogram::new(LAG_BOUNDS),
            refused: BTreeMap::new(),
            failures: 0,
            reopens: 0,
            compactions: 0,
            windows_retired: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![2, 3, 4]);
        assert_eq!(h.count(), 4);
        assert!((h.sum() - 6.0).abs() < 1e-9);
    }
}
