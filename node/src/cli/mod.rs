//! Command-line options. Every root option also has an environment variable.
//!
//! The room of the command line: argument parsing (here), the commands ([`commands`]), how
//! they print ([`output`]) and how they reach a running node's API ([`client`]).

pub mod alerts;
pub mod artifact;
pub mod ca_rotation;
pub mod client;
pub mod commands;
pub mod config_cmd;
pub mod explain;
pub mod export;
pub mod install_service;
pub mod output;
pub mod release;
pub mod rollout;
pub mod store_keys;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Rhizome: a peer-to-peer mesh runtime for edge nodes.
///
/// Every node runs this binary. It keeps workflows, fleet state and run results as Automerge
/// documents in a local store (`<data-dir>/store.redb`) that survives crashes and merges
/// concurrent edits on its own.
#[derive(Debug, Parser)]
#[command(name = "rhizome", version, propagate_version = true)]
pub struct Opts {
    /// The node's data directory: identity, configuration and store.
    #[arg(
        long,
        global = true,
        env = "RHIZOME_DATA_DIR",
        default_value = "./rhizome-data"
    )]
    pub data_dir: PathBuf,

    /// More log output (-v info, -vv debug, -vvv trace). RHIZOME_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// How log lines are written: `text` for people, `json` (one object per line) for log
    /// collectors.
    #[arg(
        long,
        global = true,
        env = "RHIZOME_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"]
    )]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a node: its ed25519 identity, `rhizome.toml` and an empty store.
    ///
    /// Refuses to touch a data dir that already holds a node.
    Init(InitArgs),
    /// Join a mesh over the network with a one-time join token: create this node's identity,
    /// get a certificate for it from the node that holds the mesh CA, and set that node as a
    /// peer to dial. The CA's key never leaves its machine; the token names the CA, so a node
    /// of any other mesh (or anyone in between) is refused before anything is sent.
    Join(JoinArgs),
    /// Run the node: join the mesh, serve the local HTTP API, until SIGINT or SIGTERM.
    Start(StartArgs),
    /// Show this node: identity, mesh, whether it runs, its peers and store.
    Status {
        /// Show the fleet instead: every zone's workflows as the rollups held here describe
        /// them (on the cloud peer, the whole fleet).
        #[arg(long)]
        fleet: bool,
        /// With --fleet: only windows that ended after this (`2h`, `7d`, a date or a timestamp).
        #[arg(long, requires = "fleet")]
        since: Option<String>,
        /// Show the security events of the running node instead: joins, certificates issued and
        /// renewed, connections refused at the handshake, changes refused, API writes and
        /// refusals, revocations; counts since start and the most recent.
        #[arg(long, conflicts_with = "fleet")]
        security: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the running node's peers and their state.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare documents with connected peers now and wait until they are identical.
    ///
    /// Needs the node running. Returns when every document shared with the peers is identical
    /// on both sides; when the timeout passes first, lists what still differs and exits with 1.
    Sync(SyncArgs),
    /// Manage the mesh: its certificate authority and revocations.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Tokens for people and programs calling this node's HTTP API, with a role each:
    /// `monitor` reads, `operator` also runs workflows and asks for sync, `admin` also applies
    /// workflows. Every endpoint but `GET /health` needs one; the local CLI uses the node's own
    /// credential and needs none.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Apply, list and show workflows; their history, rollback and deletion.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Inspect and maintain the stored documents.
    #[command(subcommand)]
    Doc(DocCommand),
    /// The store's encryption: its keys, and rotating them.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Why a document is or is not in sync with a peer, or why a node is or is not connected,
    /// from what the running node holds and saw.
    #[command(subcommand)]
    Explain(explain::ExplainCommand),
    /// Alerts raised by rules over this node's figures, checks and runs: firing and recent
    /// ones, of this node or (`--fleet`, at an aggregator or the cloud) of every node below
    /// it; the rules in force; fleet-wide rules applied on a control node.
    Alerts(alerts::AlertsArgs),
    /// The export of this node's data into PostgreSQL (`[export] postgres`): where it stands.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Files this node holds by content (models, binaries): add, list, show, fetch (write
    /// out), remove, gc. Chunks are stored by hash and checked whenever they are read.
    #[command(subcommand)]
    Artifact(artifact::ArtifactCommand),
    /// Staged rollouts of a workflow's new version: start (stages, gates, abort criteria),
    /// status node by node, pause, resume, abort. Decided by every node from replicated facts.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Releases of the `rhizome` binary itself: publish one (signed, on a control node), roll
    /// it out in stages with the gates and abort criteria of workflow rollouts, and follow it.
    /// Each node tries a new binary beside the installed one and returns to it by itself when
    /// the new one does not come up healthy.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Run a workflow once on this node, record the run durably and print its record.
    Run(RunArgs),
    /// List stored run results, oldest first.
    Results(ResultsArgs),
    /// Apply the bundled sensor -> z-score -> threshold workflow, run it over a few hours of
    /// simulated readings, record every run and show them.
    ///
    /// Creates the node first if the data dir holds none. No networking.
    Demo(DemoArgs),
    /// Simulate a whole mesh in this process on virtual time: faults, invariants, a report.
    ///
    /// Same flags as the `simulator` binary. A failing run prints the command that replays it.
    Sim(simulator::cli::SimArgs),
    /// Read and change `rhizome.toml`, the node's configuration file in its data dir: every
    /// key with its value and whether the file or the defaults give it (`list`), one value
    /// (`get`), or a new value, checked as the node checks it at start and written keeping the
    /// file's comments (`set`).
    ///
    /// The node reads the file only when it starts: restart a running node to apply a change.
    /// `RHIZOME_<SECTION>_<KEY>` variables and the flags of `start` override the file.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Install the node as a systemd service: write `rhizome.service` (the hardened unit of
    /// `packaging/rhizome.service`) for a user, a binary and a data dir, create the user when
    /// missing, and print the next steps.
    ///
    /// The data dir is `--data-dir` when given, else `/var/lib/rhizome`. Calls no `systemctl`:
    /// it prints the commands that enable and start the service.
    InstallService(install_service::InstallServiceArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it, once: only its hash is kept. Takes effect at once, on a
    /// running node too.
    Create {
        /// `monitor`, `operator` or `admin`.
        #[arg(long)]
        role: String,
        /// Who or what it is for, shown by `token list`.
        #[arg(long, default_value = "unnamed")]
        name: String,
        /// How long it is valid (`12h`, `30d`); without it, until revoked.
        #[arg(long)]
        ttl: Option<String>,
        /// Print JSON (the token, its id, role and expiry).
        #[arg(long)]
        json: bool,
    },
    /// List the tokens (never their secrets): id, name, role, created, expires, revoked.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a token, by id or by name; refused from then on.
    Revoke {
        /// The token's id (from `token list`) or its name.
        token: String,
    },
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The QUIC address of the node that holds the mesh CA (`host:port`).
    #[arg(value_name = "HOST:PORT")]
    pub addr: String,
    /// The join token (`rhizome mesh token create` on that node).
    #[arg(long, env = "RHIZOME_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Human-readable node name (default: the host name).
    #[arg(long, env = "RHIZOME_NODE_NAME")]
    pub name: Option<String>,
    /// Zone path (a token may fix it).
    #[arg(long, env = "RHIZOME_NODE_ZONE")]
    pub zone: Option<String>,
    /// A tag for workflow selectors; repeat for several.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Encrypt the store (`store.encryption = true`). The key comes from `RHIZOME_STORE_KEY`
    /// or the systemd credential `rhizome-store-key` when given; otherwise a new key is
    /// written to `<data-dir>/store.key` (mode 0600).
    #[arg(long)]
    pub encrypt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Human-readable node name (default: the host name).
    #[arg(long, env = "RHIZOME_NODE_NAME")]
    pub name: Option<String>,
    /// Zone path, e.g. `site-a/line-3` (`/` is the root zone). Default: one zone per LAN
    /// segment, derived when the node starts.
    #[arg(long, env = "RHIZOME_NODE_ZONE")]
    pub zone: Option<String>,
    /// A tag for workflow selectors; repeat for several.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Join the mesh whose certificate authority is in this directory (made by
    /// `rhizome mesh create`). Without it the node starts a mesh of its own, with its CA in
    /// `<data-dir>/mesh`, which other nodes can join with `--mesh <data-dir>/mesh`.
    #[arg(long, value_name = "DIR")]
    pub mesh: Option<PathBuf>,
    /// With --mesh: give the node the `control` role, which changes what runs where
    /// (workflows). A node that starts its own mesh always has it.
    #[arg(long, requires = "mesh")]
    pub control: bool,
    /// Encrypt the store (`store.encryption = true`). The key comes from `RHIZOME_STORE_KEY`
    /// or the systemd credential `rhizome-store-key` when given; otherwise a new key is
    /// written to `<data-dir>/store.key` (mode 0600).
    #[arg(long)]
    pub encrypt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// QUIC listen address (UDP); port 0 picks a free port. Default: `network.listen`.
    #[arg(long, env = "RHIZOME_NETWORK_LISTEN")]
    pub listen: Option<String>,
    /// Local HTTP API address; port 0 picks a free port. Default: `network.http`.
    #[arg(long, env = "RHIZOME_NETWORK_HTTP")]
    pub http: Option<String>,
    /// A peer to dial by address (`host:port`), for peers mDNS cannot reach; repeat for several.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// Run mDNS only on this interface (`lo` for loopback only); repeat for several.
    #[arg(
        long = "mdns-interface",
        value_name = "NAME",
        conflicts_with = "no_mdns"
    )]
    pub mdns_interfaces: Vec<String>,
    /// No mDNS: find peers only through --peer.
    #[arg(long)]
    pub no_mdns: bool,
    /// Serve the HTTP API on a non-loopback address in plain HTTP: tokens then cross the
    /// network readable by anyone on the path. Refused without this flag (or --http-tls).
    #[arg(long, env = "RHIZOME_HTTP_INSECURE", conflicts_with = "http_tls")]
    pub http_insecure: bool,
    /// Serve the HTTP API over TLS with the node's own certificate, which clients verify with
    /// the mesh CA (`<data-dir>/ca.crt`) and the name `node.rhizome.invalid`. Default:
    /// `network.http_tls`.
    #[arg(long)]
    pub http_tls: bool,
    /// `edge` or `cloud`: a cloud node sits in the root zone (unless a zone is configured) and
    /// ranks first in aggregator elections. Default: `node.role`.
    #[arg(long, env = "RHIZOME_NODE_ROLE", value_parser = ["edge", "cloud"])]
    pub role: Option<String>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only this peer (node id or name); all connected peers when omitted.
    #[arg(long)]
    pub peer: Option<String>,
    /// How long to wait for convergence (`500ms`, `30s`, `5m`).
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Create a new mesh: a certificate authority whose key admits nodes.
    ///
    /// Keep the directory (its `ca.key`) safe: whoever holds it can admit nodes. Nodes join
    /// with `rhizome init --mesh DIR`.
    Create {
        /// Where to write `ca.key` and `ca.crt`.
        #[arg(long, default_value = "./rhizome-mesh")]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: every member refuses its connections once the `mesh` document with the
    /// revocation reaches it. Needs the mesh CA's key, which signs the decision: nodes ignore
    /// (and log) a revocation the CA did not sign.
    Revoke {
        /// The node id to revoke.
        node: String,
        /// Why, for the record.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
        /// The mesh directory holding `ca.key` (default: this data dir's own, on the node that
        /// created the mesh).
        #[arg(long, value_name = "DIR")]
        mesh: Option<PathBuf>,
    },
    /// One-time join tokens, made on the node that holds the mesh CA: `rhizome join` redeems
    /// one against that node while it runs.
    #[command(subcommand)]
    Token(JoinTokenCommand),
    /// Show the mesh-wide settings the mesh CA decided, or decide one (`set`, which needs the
    /// CA's key and signs the decision; nodes obey only settings the CA signed).
    Policy {
        #[command(subcommand)]
        change: Option<PolicyCommand>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the mesh CA with a new one (same mesh), in two steps. First (no flag): a new CA
    /// key is made, endorsed by the old CA and announced; every node trusts both from then on
    /// and renews its certificate from the new CA as soon as it is online. Then `--finish`,
    /// once every node names the new CA: the old CA is retired (refused at every handshake)
    /// and its key deleted. Needs the mesh CA's key, like `revoke`.
    RotateCa {
        /// Retire the old CA: refused while a node still holds a certificate of it, unless
        /// --force (such a node then joins again with a token).
        #[arg(long)]
        finish: bool,
        /// With --finish: retire it even though some nodes have not renewed.
        #[arg(long, requires = "finish")]
        force: bool,
        /// The mesh directory holding `ca.key` (default: this data dir's own).
        #[arg(long, value_name = "DIR")]
        mesh: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a revocation: the node is admitted again once the decision reaches the members.
    /// Needs the mesh CA's key, like `revoke`.
    Unrevoke {
        /// The node id.
        node: String,
        /// Why, for the record.
        #[arg(long, default_value = "revocation withdrawn by an operator")]
        reason: String,
        /// The mesh directory holding `ca.key` (default: this data dir's own).
        #[arg(long, value_name = "DIR")]
        mesh: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Make a join token and print it, once (only its hash is kept).
    Create {
        /// The mesh role the joining node gets: `member` or `control`.
        #[arg(long, default_value = "member")]
        role: String,
        /// Put the joining node in this zone.
        #[arg(long)]
        zone: Option<String>,
        /// How long the token is valid.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List join tokens: id, role, zone, state (valid, used and by whom, expired, withdrawn).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a join token that has not been used.
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide a setting: `members_write_workflows true|false`.
    Set {
        /// The setting.
        setting: String,
        /// Its value.
        value: String,
        /// The mesh directory holding `ca.key` (default: this data dir's own).
        #[arg(long, value_name = "DIR")]
        mesh: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Validate a workflow file (YAML) and store it as the next version of its workflow.
    ///
    /// Every problem is named: unknown agents or fields, bad durations, missing inputs, cycles.
    /// With a node running on the data dir the workflow goes through its HTTP API.
    Apply {
        /// The workflow file.
        file: PathBuf,
        /// Print the stored workflow as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the running node runs now: each workflow's version in use here, whether it targets
    /// this node, runs in flight and queued, why it cannot run, and a newer version waiting
    /// for its artifacts to be fetched (the version in use runs until they are here).
    Schedule {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the workflows this node knows, with the version in effect here.
    ///
    /// Deleted workflows are left out unless `--all` is given.
    List {
        /// Also list deleted workflows (state `deleted`).
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one workflow: the version in effect here, its steps, and what stands in its way
    /// (competing versions, a failed validation, a deletion: by whom and when).
    Show {
        /// The workflow id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every version ever applied to a workflow, newest first.
    ///
    /// Each line gives the version number, its author (node id and name), when it was
    /// written, and what changed against the version it replaced ("trigger every 1s → every
    /// 5s; step `read` config changed", "rolled back to v2", "deleted"). Versions applied
    /// concurrently on nodes that were apart are marked as such. The history is read from the
    /// workflow document's own changes, the same on every node that holds them.
    History {
        /// The workflow id.
        id: String,
        /// List at most this many versions, the newest.
        #[arg(long, default_value_t = crate::run::history::DEFAULT_HISTORY_LIMIT)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version's definition current again.
    ///
    /// Writes that definition as a new version (one more than the highest), so that every
    /// node's versions keep going up; it is validated, signed and permitted as `workflow
    /// apply` is, and the history shows it as "rolled back to vN". Also brings back a deleted
    /// workflow. Refused for an unknown workflow or version, or a version already current.
    Rollback {
        /// The workflow id.
        id: String,
        /// The version to make current again (`rhizome workflow history` lists them).
        #[arg(long, value_name = "VERSION")]
        to: u64,
        /// The node (id or name) that wrote that version, when two nodes wrote different
        /// versions under the same number while apart.
        #[arg(long, value_name = "NODE")]
        by: Option<String>,
        /// Print the stored version as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a workflow on every node and retire it.
    ///
    /// Writes a deletion as the workflow's next version, signed and permitted as `workflow
    /// apply` is: every node stops scheduling the workflow when the deletion reaches it (runs
    /// in flight finish), `workflow list` leaves it out (`--all` shows it), `workflow show`
    /// says who deleted it and when. Its results stay until retention removes them. `workflow
    /// rollback` or a new `workflow apply` brings it back.
    Delete {
        /// The workflow id.
        id: String,
        /// Print the stored deletion as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// List stored documents with their size.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one document's content.
    Show {
        /// A document name (`mesh`, `workflow/<id>`, `results/<node>/<window>`,
        /// `rollup/<zone>/<window>`) or an automerge-repo document id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compact documents' incremental chunks into one snapshot each.
    Compact {
        /// Only this document (name or id); all documents when omitted.
        id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retire old result windows now, by the retention settings of `rhizome.toml`.
    Retire {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Show whether the store is encrypted, the fingerprint of its key, where the node reads
    /// the key from, and whether a rotation or a re-seal is under way.
    Keys {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the store key without stopping the node. The store then opens with the new key
    /// only; values are sealed again with a new data key in the background (a re-seal cut
    /// short goes on at the next start).
    ///
    /// With a key file (the default, `<data-dir>/store.key`), the node writes the new key over
    /// it and retires the old one: done in one step, and finished at the next open if killed
    /// halfway. With the key in `RHIZOME_STORE_KEY` or a systemd credential, the new key is
    /// written to `<data-dir>/store.key.next`; install it there and restart the node: the
    /// old key, which opens the store until then, is retired when the node first opens the
    /// store with the new one.
    RotateKey {
        /// Retire the old key now that the node reads the new one (key from a variable or a
        /// credential; a node does it by itself when it starts with the new key).
        #[arg(long)]
        finish: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Only runs of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only runs of this node (id).
    #[arg(long)]
    pub node: Option<String>,
    /// Only runs that finished since this time: an RFC 3339 timestamp
    /// (`2026-11-24T04:00:00Z`), a date (`2026-11-24`), or an age (`90m`, `2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Show at most this many (the newest).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON (one array of run records).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow id (applied with `rhizome workflow apply`).
    pub workflow: String,
    /// The run's input: a JSON file, or `-` for standard input.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Print the run record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many runs (one per 30 s of simulated time).
    #[arg(long, default_value_t = 360)]
    pub runs: usize,
}
