//! Configuration: `rhizome.toml` in the data dir, overridden by `RHIZOME_<SECTION>_<KEY>`
//! environment variables, overridden by command-line flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The file name of the configuration inside the data dir.
pub const CONFIG_FILE: &str = "rhizome.toml";
/// The file name of the store inside the data dir.
pub const STORE_FILE: &str = "store.redb";
/// The file name of the node's secret key inside the data dir.
pub const KEY_FILE: &str = "node.key";
/// The node's certificate, issued by the mesh CA.
pub const CERT_FILE: &str = "node.crt";
/// The mesh CA's certificate.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA's key inside a mesh directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The running node's HTTP address, written at start and removed at shutdown.
pub const HTTP_ADDR_FILE: &str = "node.http";
/// The running node's API token for writes, readable by its owner only.
pub const API_TOKEN_FILE: &str = "api.token";
/// Where a node that started its own mesh keeps that mesh's CA.
pub const OWN_MESH_DIR: &str = "mesh";

/// The whole configuration. `Default` is the development configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub store: StoreSection,
    pub network: NetworkSection,
    pub sync: SyncSection,
    pub security: SecuritySection,
    pub health: HealthSection,
    pub alerts: AlertsSection,
    pub export: ExportSection,
    pub artifacts: ArtifactsSection,
}

/// `[artifacts]`: the files this node holds by content (see `crate::fleet::artifacts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsSection {
    /// What `rhizome artifact gc` brings the held chunks under by evicting the least
    /// recently used artifacts (`10GB`, `500MB`); empty: no cap.
    pub cache_size: String,
}

impl Default for ArtifactsSection {
    fn default() -> Self {
        ArtifactsSection {
            cache_size: "10GB".into(),
        }
    }
}

/// `[alerts]`: rules over the node's figures, checks and runs, and how often they are
/// evaluated. Fleet-wide rules come from the mesh (`rhizome alerts apply`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// How often the rules are evaluated.
    pub interval: String,
    /// `[[alerts.rules]]`: `name`, `when` (`cpu_usage > 90% for 5m`), `actions`, `command`,
    /// `webhook`, `severity`. Left out of a written file while empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::ops::alerts::RuleConfig>,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            interval: "5s".into(),
            rules: Vec::new(),
        }
    }
}

impl AlertsSection {
    /// How often rules are evaluated, and the rules of this file, checked.
    pub fn rules(&self) -> Result<(std::time::Duration, Vec<crate::ops::alerts::rules::Rule>)> {
        let interval =
            parse_duration(&self.interval).context("alerts.interval (RHIZOME_ALERTS_INTERVAL)")?;
        if interval < std::time::Duration::from_millis(100) {
            bail!("alerts.interval must be at least 100ms");
        }
        let rules = crate::ops::alerts::rules::check_all(
            &self.rules,
            &crate::ops::alerts::rules::Origin::Config,
        )
        .context("[[alerts.rules]]")?;
        Ok((interval, rules))
    }
}

/// `[health]`: the resource monitor, and checks of the operator's own beside the built-in ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// How often the resource monitor samples the host (CPU, memory, disk, network,
    /// temperature, battery); it keeps the last hour at this resolution and the day in 5-minute
    /// steps.
    pub monitor_interval: String,
    /// `[[health.checks]]`: each a `command` or an `http` probe, with `interval` and `timeout`.
    /// Left out of a written file while empty, so that checks can be appended to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::ops::health::CheckConfig>,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            monitor_interval: "5s".into(),
            checks: Vec::new(),
        }
    }
}

impl HealthSection {
    /// The resource monitor's settings.
    pub fn monitor(&self) -> Result<crate::ops::monitor::MonitorConfig> {
        let interval = parse_duration(&self.monitor_interval)
            .context("health.monitor_interval (RHIZOME_HEALTH_MONITOR_INTERVAL)")?;
        if interval < std::time::Duration::from_millis(100) {
            bail!("health.monitor_interval must be at least 100ms");
        }
        Ok(crate::ops::monitor::MonitorConfig {
            interval,
            ..crate::ops::monitor::MonitorConfig::default()
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// How long the node certificates this node issues are valid (on the node that holds the
    /// mesh CA, and for `init --mesh DIR`).
    pub cert_lifetime: String,
    /// A node asks the node that holds the CA for a new certificate once less than this is
    /// left of its own.
    pub renew_before: String,
}

impl Default for SecuritySection {
    fn default() -> Self {
        SecuritySection {
            cert_lifetime: "90d".into(),
            renew_before: "30d".into(),
        }
    }
}

impl SecuritySection {
    /// `cert_lifetime` and `renew_before`, checked.
    pub fn lifetimes(&self) -> Result<(std::time::Duration, std::time::Duration)> {
        let lifetime = parse_duration(&self.cert_lifetime).context("security.cert_lifetime")?;
        let renew = parse_duration(&self.renew_before).context("security.renew_before")?;
        if renew >= lifetime {
            bail!(
                "security.renew_before ({}) must be shorter than security.cert_lifetime ({})",
                self.renew_before,
                self.cert_lifetime
            );
        }
        Ok((lifetime, renew))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Human-readable node name.
    pub name: String,
    /// Zone path, e.g. `site-a/line-3`; `/` is the root zone; empty derives it from the LAN
    /// (see `hierarchy.rs`).
    pub zone: String,
    /// Tags matched by workflow selectors.
    pub tags: Vec<String>,
    /// `edge` or `cloud`; the cloud ranks first in every election it takes part in.
    pub role: String,
    /// Power source: `auto` (detected), `mains`, `battery` or `unknown`.
    pub power: String,
    /// Logical CPUs to announce; 0 detects them.
    pub cpus: u32,
    /// Total memory to announce (`16GiB`); empty detects it.
    pub memory: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: String::new(),
            zone: String::new(),
            tags: Vec::new(),
            role: "edge".into(),
            power: "auto".into(),
            cpus: 0,
            memory: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Length of one results window, e.g. `1h`.
    pub results_window: String,
    /// Retire result windows older than this (`7d`); empty keeps them forever.
    pub retention_max_age: String,
    /// Retire the oldest windows when they take more than this (`2GiB`); empty means no cap.
    pub retention_max_size: String,
    /// Incremental chunks a document may gather before it is compacted into a snapshot.
    pub compact_after_chunks: usize,
    /// Free space to keep on the data dir's filesystem (`5%`, `256MiB`, `0` for none; by
    /// default the smaller of 5% and 256 MiB). Below it, windows the aggregator chain already
    /// holds are retired first, then runs and writes are refused and `/health` is degraded.
    #[serde(deserialize_with = "string_or_number")]
    pub min_free: String,
    /// Seal documents, the result log and sync states on disk with the store key (from
    /// `RHIZOME_STORE_KEY`, the systemd credential `rhizome-store-key`, or `key_file`).
    pub encryption: bool,
    /// Where the store key is (64 hex digits, mode 0600); empty: `<data-dir>/store.key`.
    pub key_file: String,
}

/// A size written as a string (`256MiB`) or, as an environment variable often is, a number.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::Text(text) => text,
        Either::Number(n) => n.to_string(),
    })
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            results_window: "1h".into(),
            retention_max_age: "30d".into(),
            retention_max_size: "1GiB".into(),
            compact_after_chunks: 64,
            min_free: "default".into(),
            encryption: false,
            key_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// QUIC listen address.
    pub listen: String,
    /// Local HTTP API address.
    pub http: String,
    /// Peers dialled by address (`host:port`), e.g. the cloud.
    pub peers: Vec<String>,
    /// mDNS interfaces: empty for all, `["lo"]` for loopback only; `mdns = false` turns it off.
    pub mdns_interfaces: Vec<String>,
    /// Whether mDNS discovery runs.
    pub mdns: bool,
    /// Serve the HTTP API over TLS with the node's own certificate (needed to bind it to a
    /// non-loopback address without `--http-insecure`).
    pub http_tls: bool,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            listen: "0.0.0.0:4860".into(),
            http: "127.0.0.1:4861".into(),
            peers: Vec::new(),
            mdns_interfaces: Vec::new(),
            mdns: true,
            http_tls: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    /// Where this node's raw results go: `aggregator` (its zone's; the cloud gets rollups) or
    /// `cloud` (straight to the root zone's aggregator, for small fleets that want every record
    /// centrally).
    pub results_to: String,
    /// Cap on replication traffic, per second over all peers (`1MB`); empty for none.
    pub max_rate: String,
}

impl SyncSection {
    /// Whether raw results go to the root's aggregator (`cloud`) rather than the zone's.
    pub fn results_to_cloud(&self) -> Result<bool> {
        match self.results_to.as_str() {
            "aggregator" => Ok(false),
            "cloud" => Ok(true),
            other => bail!("sync.results_to: `{other}` is neither `aggregator` nor `cloud`"),
        }
    }

    /// The cap on replication traffic, bytes per second; `None` without one.
    pub fn max_rate(&self) -> Result<Option<u64>> {
        match self.max_rate.as_str() {
            "" => Ok(None),
            rate => parse_size(rate)
                .map(Some)
                .with_context(|| format!("sync.max_rate `{rate}`")),
        }
    }
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection {
            results_to: "aggregator".into(),
            max_rate: String::new(),
        }
    }
}

/// `[export]`: copying what the node holds into PostgreSQL (see `crate::export`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// A PostgreSQL connection string (`postgres://user:pass@host:5432/db` or
    /// `host=... user=... dbname=...`); empty turns the export off. The password is better
    /// given by `RHIZOME_EXPORT_POSTGRES` than written here.
    pub postgres: String,
    /// The schema the tables live in; created and migrated by the node.
    pub schema: String,
    /// Rows per statement; a transaction holds whole documents, about this many rows.
    pub batch: usize,
    /// How often the node looks for documents that changed since they were exported.
    pub interval: String,
    /// Longest wait for the database to answer one transaction; past it the connection is
    /// dropped and made again (a network cut leaves a connection silent, not broken).
    pub timeout: String,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection {
            postgres: String::new(),
            schema: "rhizome".into(),
            batch: 1000,
            interval: "2s".into(),
            timeout: "2m".into(),
        }
    }
}

impl ExportSection {
    /// The export's settings, checked; `None` when it is off.
    pub fn settings(&self) -> Result<Option<crate::export::Settings>> {
        crate::export::Settings::from_section(self)
    }
}

const SECTIONS: &[&str] = &[
    "node",
    "store",
    "network",
    "sync",
    "security",
    "health",
    "alerts",
    "export",
    "artifacts",
];

/// Environment variables that carry secrets rather than configuration.
pub const SECRET_VARIABLES: &[&str] = &["RHIZOME_STORE_KEY", "RHIZOME_JOIN_TOKEN"];

impl Config {
    /// Loads `rhizome.toml` from `path` (defaults if it does not exist), then applies `RHIZOME_*`
    /// environment variables from `env`.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
        let mut table = match std::fs::read_to_string(path) {
            Ok(text) => text
                .parse::<toml::Table>()
                .with_context(|| format!("{} is not valid TOML", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (var, value) in env {
            // Secrets travel by environment but are no configuration keys.
            if SECRET_VARIABLES.contains(&var.as_str()) {
                continue;
            }
            let Some(rest) = var.strip_prefix("RHIZOME_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            if !SECTIONS.contains(&section) {
                continue;
            }
            let value = parse_env_value(&value);
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(key.to_owned(), value);
                }
                _ => bail!("{}: `{section}` must be a table", path.display()),
            }
        }
        Config::from_table(
            table,
            &format!("{} or RHIZOME_* environment variables", path.display()),
        )
    }

    /// The configuration a table of `rhizome.toml`'s shape gives, checked as at start; `origin`
    /// says where it came from in errors.
    pub fn from_table(table: toml::Table, origin: &str) -> Result<Config> {
        // An empty name in the file or the environment is a mistake, not a request for the
        // default (which `init` fills in only when no name is given at all).
        if let Some(name) = table
            .get("node")
            .and_then(|node| node.get("name"))
            .and_then(toml::Value::as_str)
        {
            check_node_name(name)
                .with_context(|| format!("node.name (RHIZOME_NODE_NAME) in {origin}"))?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("invalid configuration in {origin}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that are parsed on use, so mistakes surface at startup (and before
    /// `config set` writes them).
    pub fn validate(&self) -> Result<()> {
        let net = &self.network;
        for (key, addr, example) in [
            ("network.listen", &net.listen, "0.0.0.0:4860"),
            ("network.http", &net.http, "127.0.0.1:4861"),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                bail!("{key}: `{addr}` is not an address like {example}");
            }
        }
        for peer in &net.peers {
            let port = peer
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
                bail!("network.peers: `{peer}` is not `host:port`, such as cloud.example.net:4860");
            }
        }
        self.sync.results_to_cloud()?;
        self.sync.max_rate()?;
        crate::fleet::hierarchy::check_configured_zone(&self.node.zone)
            .context("node.zone (RHIZOME_NODE_ZONE, --zone)")?;
        crate::fleet::hierarchy::parse_role(&self.node.role)?;
        crate::ops::resources::parse_power(&self.node.power)?;
        if !self.node.memory.is_empty() {
            parse_size(&self.node.memory).context("node.memory (RHIZOME_NODE_MEMORY)")?;
        }
        let window = parse_duration(&self.store.results_window)
            .context("store.results_window (RHIZOME_STORE_RESULTS_WINDOW)")?;
        if window.as_secs() < 60 || window.as_secs() % 60 != 0 {
            bail!(
                "store.results_window must be a whole number of minutes, at least 1m (got `{}`)",
                self.store.results_window
            );
        }
        if !self.store.retention_max_age.is_empty() {
            parse_duration(&self.store.retention_max_age)
                .context("store.retention_max_age (RHIZOME_STORE_RETENTION_MAX_AGE)")?;
        }
        if !self.store.retention_max_size.is_empty() {
            parse_size(&self.store.retention_max_size)
                .context("store.retention_max_size (RHIZOME_STORE_RETENTION_MAX_SIZE)")?;
        }
        self.min_free()?;
        self.artifact_cache_cap()?;
        self.security.lifetimes()?;
        self.health.monitor()?;
        self.alerts.rules()?;
        self.export.settings()?;
        let mut names = std::collections::BTreeSet::new();
        for check in &self.health.checks {
            check.validate().context("[[health.checks]]")?;
            if !names.insert(&check.name) {
                bail!("[[health.checks]]: two checks are named `{}`", check.name);
            }
        }
        Ok(())
    }

    /// Writes the configuration as `rhizome.toml`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("encoding configuration")?;
        let header = "# Rhizome node configuration. Environment variables RHIZOME_<SECTION>_<KEY>\n\
                      # override these values, and command-line flags override both.\n\n";
        std::fs::write(path, format!("{header}{text}"))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The free-space watermark of the data dir's filesystem.
    /// `artifacts.cache_size` in bytes; `None` when it is empty (no cap).
    pub fn artifact_cache_cap(&self) -> Result<Option<u64>> {
        let text = self.artifacts.cache_size.trim();
        if text.is_empty() {
            return Ok(None);
        }
        parse_size(text)
            .map(Some)
            .context("artifacts.cache_size (RHIZOME_ARTIFACTS_CACHE_SIZE)")
    }

    pub fn min_free(&self) -> Result<crdt_store::headroom::MinFree> {
        self.store
            .min_free
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))
            .context("store.min_free (RHIZOME_STORE_MIN_FREE)")
    }

    /// The store settings in the form the store takes.
    pub fn store_config(&self, mesh_id: &str, node_id: &str) -> Result<crdt_store::StoreConfig> {
        let mut config = crdt_store::StoreConfig::new(mesh_id, node_id);
        config.results_window_minutes = (parse_duration(&self.store.results_window)?.as_secs()
            / 60)
            .try_into()
            .context("store.results_window is too long")?;
        config.compact_after_chunks = self.store.compact_after_chunks.max(1);
        config.min_free = self.min_free()?;
        config.retention = crdt_store::RetentionPolicy {
            max_age_ms: if self.store.retention_max_age.is_empty() {
                None
            } else {
                Some(parse_duration(&self.store.retention_max_age)?.as_millis() as i64)
            },
            max_bytes: if self.store.retention_max_size.is_empty() {
                None
            } else {
                Some(parse_size(&self.store.retention_max_size)?)
            },
        };
        Ok(config)
    }
}

/// An environment value is read as a TOML value when it is one (`42`, `true`, `["a", "b"]`),
/// and as a string otherwise.
fn parse_env_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

/// Longest node name, in bytes.
pub const MAX_NODE_NAME: usize = 253;

/// Checks a node name: what operators and target selectors (`nodes:`) know the node by, so it
/// must say something.
pub fn check_node_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        bail!("the node name is empty: give one, such as `press-7`");
    }
    if name.len() > MAX_NODE_NAME {
        bail!(
            "the node name is {} bytes long, more than the limit of {MAX_NODE_NAME}",
            name.len()
        );
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        bail!(
            "the node name `{}` holds the control character {c:?}",
            name.escape_debug()
        );
    }
    Ok(())
}

/// Parses `250ms`, `30s`, `5m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().with_context(|| {
        format!("`{text}` is not a duration (examples: 250ms, 30s, 5m, 2h, 7d)")
    })?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        other => bail!("`{text}`: unknown duration unit `{other}` (use ms, s, m, h or d)"),
    };
    Ok(std::time::Duration::from_millis(ms))
}

/// Parses `512`, `10KB`, `10KiB`, `5MB`, `1GiB` (case-insensitive) into bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a size (examples: 500MB, 2GiB)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => bail!("`{text}`: unknown size unit `{other}` (use B, KB, KiB, MB, MiB, GB, GiB)"),
    };
    n.checked_mul(factor)
        .with_context(|| format!("`{text}` is too large"))
}

/// The paths of a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: PathBuf) -> DataDir {
        DataDir { root }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn store(&self) -> PathBuf {
        self.root.join(STORE_FILE)
    }
    /// Artifacts' chunks and manifests (see `crate::fleet::artifacts::store`).
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join(CERT_FILE)
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join(CA_CERT_FILE)
    }
    pub fn http_addr(&self) -> PathBuf {
        self.root.join(HTTP_ADDR_FILE)
    }
    /// API tokens this node accepts (hashed), beside the local credential.
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens.json")
    }

    pub fn api_token(&self) -> PathBuf {
        self.root.join(API_TOKEN_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &path,
            "[node]\nname = \"a\"\nzone = \"site-a\"\n[store]\nresults_window = \"10m\"\n",
        )
        .unwrap();
        let config = Config::load(
            &path,
            env(&[
                ("RHIZOME_NODE_NAME", "b"),
                ("RHIZOME_NODE_TAGS", "[\"x\", \"y\"]"),
                ("RHIZOME_DATA_DIR", "/elsewhere"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(config.node.name, "b");
        assert_eq!(config.node.zone, "site-a");
        assert_eq!(config.node.tags, vec!["x", "y"]);
        assert_eq!(config.store.results_window, "10m");
        assert_eq!(config.network, NetworkSection::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "[node]\nnmae = \"a\"\n").unwrap();
        let err = format!("{:#}", Config::load(&path, env(&[])).unwrap_err());
        assert!(err.contains("nmae"), "{err}");
        std::fs::write(&path, "").unwrap();
        let err = format!(
            "{:#}",
            Config::load(
                &path,
                env(&[("RHIZOME_STORE_RETENTION_MAX_AGE", "7 weeks")])
            )
            .unwrap_err()
        );
        assert!(err.contains("RHIZOME_STORE_RETENTION_MAX_AGE"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(&path, env(&[("RHIZOME_STORE_RESULTS_WINDOW", "90s")])).unwrap_err()
        );
        assert!(err.contains("whole number of minutes"), "{err}");
        for (var, value, named) in [
            ("RHIZOME_NODE_ZONE", "site-a/", "node.zone"),
            ("RHIZOME_NODE_ROLE", "fog", "node.role"),
            ("RHIZOME_NODE_POWER", "solar", "node.power"),
            ("RHIZOME_NODE_MEMORY", "lots", "node.memory"),
        ] {
            let err = format!(
                "{:#}",
                Config::load(&path, env(&[(var, value)])).unwrap_err()
            );
            assert!(err.contains(named) && err.contains(value), "{err}");
        }
        let config = Config::load(
            &path,
            env(&[("RHIZOME_NODE_ROLE", "cloud"), ("RHIZOME_NODE_CPUS", "16")]),
        )
        .unwrap();
        assert_eq!((config.node.role.as_str(), config.node.cpus), ("cloud", 16));
    }

    #[test]
    fn empty_node_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "[node]\nname = \"\"\n").unwrap();
        let err = format!("{:#}", Config::load(&path, env(&[])).unwrap_err());
        assert!(err.contains("node.name") && err.contains("empty"), "{err}");
        std::fs::write(&path, "").unwrap();
        let err = format!(
            "{:#}",
            Config::load(&path, env(&[("RHIZOME_NODE_NAME", "  ")])).unwrap_err()
        );
        assert!(
            err.contains("RHIZOME_NODE_NAME") && err.contains("empty"),
            "{err}"
        );
        // No name at all is fine: `init` picks the host name.
        assert_eq!(Config::load(&path, env(&[])).unwrap().node.name, "");
        assert!(check_node_name("press-7").is_ok());
        assert!(check_node_name("a\nb").is_err());
        assert!(check_node_name(&"n".repeat(MAX_NODE_NAME + 1)).is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86_400);
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("5mb").unwrap(), 5_000_000);
        assert!(parse_size("5 parsecs").is_err());
    }
}
