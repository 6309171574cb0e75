//! What the store's benchmarks share: reading their settings from the environment.

/// A count from the environment (`_` allowed as a digit separator), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        Err(_) => default,
    }
}

/// A comma-separated list of counts from the environment, or `default`.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a list of counts"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}
