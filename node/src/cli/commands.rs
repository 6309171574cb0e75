//! One function per subcommand.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use crdt_store::{
    DocKind, DocName, MeshRegistry, NodeEntry, ResultsDoc, ResultsQuery, RollupDoc, RunRecord,
    RunStatus, Store, StoreHandle, WorkflowDoc, format_timestamp,
};
use serde_json::json;

use crate::cli::output;
use crate::cli::{
    Command, DemoArgs, DocCommand, InitArgs, MeshCommand, Opts, ResultsArgs, RunArgs, SyncArgs,
    WorkflowCommand,
};
use crate::config::{CA_KEY_FILE, Config, DataDir, OWN_MESH_DIR, parse_duration};
use crate::fleet::hierarchy::{HierarchyView, zone_label};
use crate::identity::Identity;
use crate::node::{Node, now_ms};

pub fn run(opts: Opts) -> Result<()> {
    crate::cli::output::set_quiet(opts.quiet);
    let root = opts.data_dir.clone();
    dispatch(opts).map_err(|e| crate::ops::durability::explain_any(e, &root))
}

fn dispatch(opts: Opts) -> Result<()> {
    let root = opts.data_dir;
    match opts.command {
        Command::Init(args) => init(&root, args),
        Command::Join(args) => join(&root, args),
        Command::Mesh(cmd) => mesh_command(&root, cmd),
        Command::Token(cmd) => token_command(&Node::load(&root)?, cmd),
        Command::Start(args) => crate::daemon::start(Node::load(&root)?, args),
        Command::Status {
            fleet: true,
            since,
            json,
            ..
        } => fleet(&Node::load(&root)?, since.as_deref(), json),
        Command::Status {
            security: true,
            json,
            ..
        } => security_events(&Node::load(&root)?, json),
        Command::Status { json, .. } => status(&Node::load(&root)?, json),
        Command::Peers { json } => peers(&Node::load(&root)?, json),
        Command::Sync(args) => sync_now(&Node::load(&root)?, args),
        Command::Doc(cmd) => doc(&Node::load(&root)?, cmd),
        Command::Store(cmd) => crate::cli::store_keys::store_command(&Node::load(&root)?, cmd),
        Command::Explain(cmd) => crate::cli::explain::explain(&Node::load(&root)?, cmd),
        Command::Alerts(args) => crate::cli::alerts::alerts(&Node::load(&root)?, args),
        Command::Export(cmd) => crate::cli::export::export(&Node::load(&root)?, cmd),
        Command::Artifact(cmd) => crate::cli::artifact::artifact(&Node::load(&root)?, cmd),
        Command::Rollout(cmd) => crate::cli::rollout::rollout(&Node::load(&root)?, cmd),
        Command::Release(cmd) => crate::cli::release::release(&Node::load(&root)?, cmd),
        Command::Workflow(cmd) => workflow(&Node::load(&root)?, cmd),
        Command::Results(args) => results(&Node::load(&root)?, args),
        Command::Run(args) => run_once(&Node::load(&root)?, args),
        Command::Demo(args) => demo(&root, args),
        Command::Sim(args) => Ok(simulator::cli::main(args)?),
        Command::Config(cmd) => crate::cli::config_cmd::config_command(&root, cmd),
        Command::InstallService(args) => crate::cli::install_service::install_service(&root, args),
    }
}

fn security_events(node: &Node, json: bool) -> Result<()> {
    let Some(api) = crate::cli::client::running_node(&node.dir) else {
        bail!(
            "no node is running on {}: security events are kept by the running node (and its \
             log, target rhizome::audit)",
            node.dir.root.display()
        );
    };
    let view: crate::security::audit::AuditView = api.get("/security")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    if view.counts.is_empty() {
        println!("no security events since the node started");
        return Ok(());
    }
    let counts: Vec<String> = view
        .counts
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    println!("since start: {}", counts.join(", "));
    let rows: Vec<Vec<String>> = view
        .recent
        .iter()
        .rev()
        .map(|e| {
            vec![
                format_timestamp(e.at_ms),
                e.kind.as_str().to_owned(),
                e.subject.clone(),
                match e.repeats {
                    0 => e.detail.clone(),
                    n => format!("{} (and {n} times before)", e.detail),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["WHEN", "EVENT", "WHO", "WHAT"], &rows)
    );
    Ok(())
}

fn token_command(node: &Node, cmd: crate::cli::TokenCommand) -> Result<()> {
    use crate::api::auth;
    use crate::cli::TokenCommand;
    let path = node.dir.tokens();
    match cmd {
        TokenCommand::Create {
            role,
            name,
            ttl,
            json,
        } => {
            let role = auth::Role::parse(&role).context("--role")?;
            let ttl = ttl
                .as_deref()
                .map(parse_duration)
                .transpose()
                .context("--ttl")?;
            let (token, record) = auth::create(&path, &name, role, ttl, now_ms())?;
            let expires = record.expires_ms.map(format_timestamp);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "token": token,
                        "id": record.id,
                        "name": record.name,
                        "role": record.role,
                        "expires": expires,
                    }))?
                );
            } else {
                println!("{token}");
                if !crate::cli::output::quiet() {
                    eprintln!(
                        "token {} ({}, role {}{}): shown this once, only its hash is kept",
                        record.id,
                        record.name,
                        record.role,
                        expires
                            .map(|at| format!(", expires {at}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        TokenCommand::List { json } => {
            let records = auth::load(&path)?;
            if json {
                let listed: Vec<serde_json::Value> = records
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.id,
                            "name": r.name,
                            "role": r.role,
                            "created": format_timestamp(r.created_ms),
                            "expires": r.expires_ms.map(format_timestamp),
                            "revoked": r.revoked_ms.map(format_timestamp),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(());
            }
            if records.is_empty() {
                println!("no tokens (`rhizome token create --role monitor --name NAME`)");
                return Ok(());
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    let state = match (r.revoked_ms, r.expires_ms) {
                        (Some(at), _) => format!("revoked {}", format_timestamp(at)),
                        (None, Some(at)) if at <= now => {
                            format!("expired {}", format_timestamp(at))
                        }
                        (None, Some(at)) => format!("valid until {}", format_timestamp(at)),
                        (None, None) => "valid".into(),
                    };
                    vec![
                        r.id.clone(),
                        r.name.clone(),
                        r.role.to_string(),
                        format_timestamp(r.created_ms),
                        state,
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ID", "NAME", "ROLE", "CREATED", "STATE"], &rows)
            );
        }
        TokenCommand::Revoke { token } => {
            let record = auth::revoke(&path, &token, now_ms())?;
            println!(
                "revoked token {} ({}, role {})",
                record.id, record.name, record.role
            );
        }
    }
    Ok(())
}

fn join(root: &std::path::Path, args: crate::cli::JoinArgs) -> Result<()> {
    let token = crate::security::enrolment::JoinToken::parse(&args.token).context("--token")?;
    let init = InitArgs {
        name: args.name,
        zone: args.zone,
        tags: args.tags,
        mesh: None,
        control: false,
        encrypt: args.encrypt,
        json: args.json,
    };
    let node = create_node_from(
        root,
        &init,
        &Issuance::Join {
            addr: args.addr.clone(),
            token,
        },
    )?;
    let role = node.cert_info()?.role;
    let encryption = encryption_of(&node)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "node_id": node.node_id(),
                "name": node.config.node.name,
                "zone": node.config.node.zone,
                "mesh_id": node.mesh_id,
                "role": role.as_str(),
                "peer": args.addr,
                "data_dir": root,
                "encryption": encryption,
            }))?
        );
    } else {
        println!(
            "joined mesh {} as node {} ({}), role {role}",
            node.mesh_id,
            node.config.node.name,
            node.node_id()
        );
        println!("  data dir  {}", root.display());
        println!("  peer      {} (dialled at start)", args.addr);
        print_encryption(&encryption);
        println!("  next      rhizome start --data-dir {}", root.display());
    }
    Ok(())
}

fn join_token_command(root: &std::path::Path, cmd: crate::cli::JoinTokenCommand) -> Result<()> {
    use crate::cli::JoinTokenCommand;
    use crate::security::enrolment;
    Node::load(root)?;
    let own_ca = root.join(OWN_MESH_DIR);
    match cmd {
        JoinTokenCommand::Create {
            role,
            zone,
            ttl,
            json,
        } => {
            if !own_ca.join(CA_KEY_FILE).exists() {
                bail!(
                    "join tokens are made and redeemed on the node that holds the mesh CA (the \
                     one that created the mesh); {} holds none",
                    own_ca.display()
                );
            }
            let ca = crate::mesh_admin::load_ca(&own_ca)?;
            let role = mesh::net::identity::NodeRole::parse(&role)
                .with_context(|| format!("--role {role}: member or control"))?;
            let ttl = parse_duration(&ttl).context("--ttl")?;
            let (token, record) = enrolment::create(
                root,
                &ca,
                role,
                zone.as_deref().unwrap_or_default(),
                ttl,
                now_ms(),
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "token": token,
                        "id": record.id,
                        "role": record.role,
                        "zone": record.zone,
                        "expires": format_timestamp(record.expires_ms),
                    }))?
                );
            } else {
                println!("{token}");
                if !crate::cli::output::quiet() {
                    eprintln!(
                        "join token {} (role {}{}), valid until {}, once: shown this once, only its \
                         hash is kept. On the new machine: rhizome join <this node's address:port> \
                         --token <token>",
                        record.id,
                        record.role,
                        if record.zone.is_empty() {
                            String::new()
                        } else {
                            format!(", zone {}", record.zone)
                        },
                        format_timestamp(record.expires_ms)
                    );
                }
            }
        }
        JoinTokenCommand::List { json } => {
            let records = enrolment::list(root)?;
            let now = now_ms();
            let state = |r: &enrolment::JoinTokenRecord| match (r.used_ms, r.revoked_ms) {
                (Some(at), _) => format!(
                    "used {} by {}",
                    format_timestamp(at),
                    r.used_by.as_deref().unwrap_or("?")
                ),
                (None, Some(at)) => format!("withdrawn {}", format_timestamp(at)),
                (None, None) if r.expires_ms <= now => {
                    format!("expired {}", format_timestamp(r.expires_ms))
                }
                (None, None) => format!("valid until {}", format_timestamp(r.expires_ms)),
            };
            if json {
                let listed: Vec<serde_json::Value> = records
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.id,
                            "role": r.role,
                            "zone": r.zone,
                            "created": format_timestamp(r.created_ms),
                            "state": state(r),
                            "used_by": r.used_by,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else if records.is_empty() {
                println!("no join tokens (`rhizome mesh token create`)");
            } else {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.role.clone(),
                            r.zone.clone(),
                            format_timestamp(r.created_ms),
                            state(r),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table(&["ID", "ROLE", "ZONE", "CREATED", "STATE"], &rows)
                );
            }
        }
        JoinTokenCommand::Revoke { id } => {
            let record = enrolment::revoke(root, &id, now_ms())?;
            println!("withdrew join token {}", record.id);
        }
    }
    Ok(())
}

fn init(root: &std::path::Path, args: InitArgs) -> Result<()> {
    let node = create_node(root, &args)?;
    let id = node.node_id();
    let encryption = encryption_of(&node)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "node_id": id,
                "name": node.config.node.name,
                "zone": node.config.node.zone,
                "mesh_id": node.mesh_id,
                "role": node.cert_info()?.role.as_str(),
                "data_dir": root,
                "encryption": encryption,
            }))?
        );
    } else {
        println!("initialised node {} ({id})", node.config.node.name);
        println!("  data dir  {}", root.display());
        println!("  zone      {}", configured_zone(&node.config.node.zone));
        println!("  mesh      {}", node.mesh_id);
        println!("  role      {}", node.cert_info()?.role);
        println!("  config    {}", node.dir.config().display());
        print_encryption(&encryption);
    }
    Ok(())
}

/// Where a new node's store key is, when its store is encrypted.
fn encryption_of(node: &Node) -> Result<serde_json::Value> {
    use crate::security::store_key::{self, KeySource};
    if !node.config.store.encryption {
        return Ok(serde_json::Value::Null);
    }
    let source = store_key::source(&node.config.store, &node.dir.root);
    let key = store_key::read(&source)?;
    Ok(json!({
        "store_key": key.fingerprint(),
        "source": source.to_string(),
        "key_file": match &source {
            KeySource::File(path) => Some(path),
            _ => None,
        },
    }))
}

fn print_encryption(encryption: &serde_json::Value) {
    if encryption.is_null() {
        return;
    }
    println!(
        "  store     encrypted with key {} from {}",
        encryption["store_key"].as_str().unwrap_or_default(),
        encryption["source"].as_str().unwrap_or_default()
    );
    if let Some(file) = encryption["key_file"].as_str() {
        println!(
            "            without this key the store cannot be read: keep a copy off this machine. \
             To keep it off the disk too, give it to the node as RHIZOME_STORE_KEY or the systemd \
             credential rhizome-store-key, and delete {file}"
        );
    }
}

/// Builds the new data dir aside, beside `root`, and moves it into place only when it is whole:
/// a failed or killed init (a full disk, a bad CA, Ctrl-C) leaves `root` as it was.
fn create_node(root: &std::path::Path, args: &InitArgs) -> Result<Node> {
    create_node_from(root, args, &Issuance::Local)
}

/// Where a new node's certificate comes from.
enum Issuance {
    /// From a CA on this machine: `--mesh DIR`, the data dir's own, or a new mesh.
    Local,
    /// From a node that holds the CA, over the network, with a join token; the node is then
    /// the new one's bootstrap peer.
    Join {
        addr: String,
        token: crate::security::enrolment::JoinToken,
    },
}

fn create_node_from(root: &std::path::Path, args: &InitArgs, issuance: &Issuance) -> Result<Node> {
    let dir = DataDir::new(root.to_owned());
    if dir.key().exists() {
        let existing = Identity::load(&dir.key())?;
        bail!(
            "{} already holds node {}; choose another --data-dir",
            root.display(),
            existing.node_id()
        );
    }
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let leaf = root
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    let staging = parent.join(format!(
        ".{leaf}.init-{}",
        hex::encode(rand::random::<[u8; 4]>())
    ));
    std::fs::create_dir(&staging).with_context(|| {
        format!(
            "cannot create the data dir {} (it is built in {} first)",
            root.display(),
            staging.display()
        )
    })?;
    let built = build_node(&staging, root, args, issuance)
        .and_then(|node| publish(&staging, root).map(|()| node));
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(Node { dir, ..built? })
}

/// Moves a built data dir into place: in one rename when `root` is missing or empty (rename
/// replaces an empty directory atomically), else file by file with the key last, since the key
/// is what marks a finished init.
fn publish(staging: &std::path::Path, root: &std::path::Path) -> Result<()> {
    let empty = match std::fs::read_dir(root) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    let moved = if empty {
        std::fs::rename(staging, root)
            .with_context(|| format!("cannot move the new data dir into {}", root.display()))
    } else {
        let key = DataDir::new(staging.to_owned()).key();
        let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(staging)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        // The key last.
        entries.sort_by_key(|p| *p == key);
        for from in entries {
            let to = root.join(from.file_name().expect("entries have names"));
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        }
        let _ = std::fs::remove_dir(staging);
        Ok(())
    };
    moved?;
    // The renames are durable once the directories holding them are.
    for dir in [root, root.parent().unwrap_or(std::path::Path::new("."))] {
        if let Ok(handle) = std::fs::File::open(dir) {
            let _ = handle.sync_all();
        }
    }
    Ok(())
}

/// Writes a whole data dir into `staging`, taking settings and an existing own CA from `root`.
fn build_node(
    staging: &std::path::Path,
    root: &std::path::Path,
    args: &InitArgs,
    issuance: &Issuance,
) -> Result<Node> {
    let dir = DataDir::new(staging.to_owned());
    let mut config = Config::load(&DataDir::new(root.to_owned()).config(), std::env::vars())?;
    if let Some(name) = &args.name {
        crate::config::check_node_name(name).context("--name")?;
        config.node.name = name.clone();
    }
    if config.node.name.is_empty() {
        config.node.name = host_name();
    }
    if let Some(zone) = &args.zone {
        config.node.zone = zone.clone();
    }
    if !args.tags.is_empty() {
        config.node.tags = args.tags.clone();
    }
    if args.encrypt {
        config.store.encryption = true;
    }
    config.validate()?;
    let identity = Identity::generate();
    let node_id = identity.node_id();
    let (cert, ca_pem) = match issuance {
        Issuance::Local => {
            let own = root.join(OWN_MESH_DIR);
            let ca_dir = match &args.mesh {
                Some(mesh_dir) => mesh_dir.clone(),
                None if own.join(CA_KEY_FILE).exists() => own,
                None => {
                    crate::mesh_admin::create_ca(&staging.join(OWN_MESH_DIR))?;
                    staging.join(OWN_MESH_DIR)
                }
            };
            let ca = crate::mesh_admin::load_ca(&ca_dir)?;
            // The node that starts a mesh changes what runs where; one joining with the CA's
            // files does only when asked to (`--control`).
            let role = if args.mesh.is_none() || args.control {
                mesh::net::identity::NodeRole::Control
            } else {
                mesh::net::identity::NodeRole::Member
            };
            let (lifetime, _) = config.security.lifetimes()?;
            (
                ca.issue_for(&identity.public_key(), role, lifetime)?,
                crate::security::trust::holder::bundle(&ca_dir)?,
            )
        }
        Issuance::Join { addr, token } => {
            let (cert, ca_pem, _role, zone) = crate::security::enrolment::join(
                addr,
                token,
                &identity.public_key(),
                &config.node.name,
            )?;
            // The token's zone is the issuer's choice for this node; the node may not pick
            // another one.
            if !zone.is_empty() {
                if args.zone.as_deref().is_some_and(|z| z != zone) {
                    bail!(
                        "the join token puts this node in zone {zone}; --zone {} differs",
                        args.zone.as_deref().unwrap_or_default()
                    );
                }
                config.node.zone = zone;
            }
            if !config.network.peers.contains(addr) {
                config.network.peers.push(addr.clone());
            }
            (cert, ca_pem)
        }
    };
    let mesh_id = mesh::net::identity::mesh_id_of_ca(&ca_pem)?;
    // Store, configuration and certificates first, the key last: the key marks a finished
    // init, so a failed init can simply be run again.
    let mut store_config = config.store_config(&mesh_id, &node_id)?;
    if config.store.encryption {
        use crate::security::store_key::{self, KeySource};
        let source = store_key::source(&config.store, staging);
        store_config.encryption = Some(match &source {
            KeySource::File(path) if !path.exists() => store_key::generate_file(path)?,
            _ => store_key::read(&source)?,
        });
    }
    let mut store = Store::open(&dir.store(), store_config)
        .with_context(|| format!("cannot create the store for {}", root.display()))?;
    let entry = NodeEntry {
        name: config.node.name.clone(),
        zone: config.node.zone.clone(),
        tags: config.node.tags.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        updated_ms: now_ms(),
        ..NodeEntry::default()
    };
    store.update::<MeshRegistry, _>(&DocName::Mesh, |mesh| {
        mesh.nodes.insert(node_id.clone(), entry);
    })?;
    drop(store);
    config.save(&dir.config())?;
    for (path, text) in [
        (dir.cert(), cert.as_str()),
        (dir.ca_cert(), ca_pem.as_str()),
    ] {
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    identity.save_new(&dir.key())?;
    let trust = crate::security::trust::Trust::from_bundle(&ca_pem)?;
    Ok(Node {
        dir,
        config,
        identity,
        mesh_id,
        trust,
    })
}

fn peers(node: &Node, json: bool) -> Result<()> {
    let Some(addr) = crate::cli::client::running_node(&node.dir) else {
        bail!(
            "no node is running on {}: start one with `rhizome start --data-dir {}`",
            node.dir.root.display(),
            node.dir.root.display()
        );
    };
    let peers: Vec<crate::api::PeerView> = addr.get("/peers")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    print_peers(&peers);
    Ok(())
}

fn sync_now(node: &Node, args: SyncArgs) -> Result<()> {
    let Some(addr) = crate::cli::client::running_node(&node.dir) else {
        bail!(
            "no node is running on {}: sync happens between running nodes; start one with \
             `rhizome start --data-dir {}`",
            node.dir.root.display(),
            node.dir.root.display()
        );
    };
    let timeout = parse_duration(&args.timeout).context("--timeout")?;
    let peers: Vec<crate::api::PeerView> = addr.get("/peers")?;
    let name_of = |id: &str| {
        peers
            .iter()
            .find(|p| p.node_id == id)
            .and_then(|p| p.name.clone())
            .unwrap_or_else(|| "?".into())
    };
    let peer = match &args.peer {
        None => None,
        Some(wanted) => {
            let found = peers
                .iter()
                .find(|p| p.node_id == *wanted || p.name.as_deref() == Some(wanted.as_str()));
            match found {
                Some(p) if p.state == "connected" => Some(p.node_id.clone()),
                Some(p) => bail!("peer {wanted} is {} (see `rhizome peers`)", p.state),
                None => bail!("no peer {wanted} is known (see `rhizome peers`)"),
            }
        }
    };
    let body = json!({ "peer": peer, "timeout_ms": timeout.as_millis() as u64 }).to_string();
    let report: crate::api::SyncReport =
        addr.post_with_timeout("/sync", &body, timeout + std::time::Duration::from_secs(5))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.peers.is_empty() {
        println!("no connected peers");
    } else {
        for p in &report.peers {
            if p.pending.is_empty() {
                println!(
                    "in sync with {} ({}): {} shared documents",
                    name_of(&p.peer),
                    p.peer,
                    p.shared
                );
            } else {
                println!(
                    "{} of {} shared documents still differ with {} ({}): {}",
                    p.pending.len(),
                    p.shared,
                    name_of(&p.peer),
                    p.peer,
                    p.pending.join(", ")
                );
            }
        }
    }
    if !report.converged {
        bail!(
            "not converged within {} ({})",
            args.timeout,
            if report.peers.is_empty() {
                "the peer is not connected"
            } else {
                "documents still differ"
            }
        );
    }
    Ok(())
}

fn print_peers(peers: &[crate::api::PeerView]) {
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone().unwrap_or_else(|| "?".into()),
                p.node_id.clone(),
                p.addr.clone().unwrap_or_else(|| "-".into()),
                p.state.clone(),
                output::millis(p.silent_ms as i64),
                match &p.sync {
                    Some(s) if s.pending.is_empty() => format!("in sync ({} docs)", s.shared),
                    Some(s) => format!("{} of {} docs pending", s.pending.len(), s.shared),
                    None => "-".into(),
                },
                match &p.sync {
                    Some(s) => format!(
                        "{} / {}",
                        output::bytes(s.bytes_sent),
                        output::bytes(s.bytes_received)
                    ),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "NAME",
                "NODE",
                "ADDRESS",
                "STATE",
                "SILENT",
                "SYNC",
                "SENT / RECEIVED"
            ],
            &rows
        )
    );
    let connected = peers.iter().filter(|p| p.state == "connected").count();
    println!("{} peers, {connected} connected", peers.len());
}

fn status(node: &Node, json: bool) -> Result<()> {
    let running = crate::cli::client::running_node(&node.dir);
    let (health, peers, hierarchy, store, resources, alerts, export) = match running {
        Some(addr) => {
            let health = addr.health()?;
            let alerts: Option<crate::ops::alerts::AlertsView> = addr.get("/alerts").ok();
            let export: Option<crate::export::ExportStatus> = addr
                .get("/export")
                .ok()
                .filter(|e: &crate::export::ExportStatus| e.configured);
            let peers: Vec<crate::api::PeerView> = addr.get("/peers")?;
            let hierarchy: HierarchyView = addr.get("/hierarchy")?;
            let resources: Option<crate::api::resources::ResourcesView> =
                addr.get("/resources").ok();
            (
                Some(health),
                peers,
                Some(hierarchy),
                None,
                resources.and_then(|r| r.latest),
                alerts,
                export,
            )
        }
        None => (
            None,
            Vec::new(),
            None,
            Some(node.open_store()?.stats()?),
            None,
            None,
            None,
        ),
    };
    // The rules firing and pending now, by name.
    let (firing, pending): (Vec<String>, Vec<String>) = alerts
        .as_ref()
        .map(|a| {
            let named = |state| {
                a.rules
                    .iter()
                    .filter(|r| r.status.state == state)
                    .map(|r| r.name.clone())
                    .collect()
            };
            (
                named(crate::ops::alerts::engine::RuleState::Firing),
                named(crate::ops::alerts::engine::RuleState::Pending),
            )
        })
        .unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "node_id": node.node_id(),
                "name": node.config.node.name,
                "zone": hierarchy.as_ref().map_or(node.config.node.zone.as_str(), |h| h.zone.as_str()),
                "role": hierarchy.as_ref().map_or(node.config.node.role.as_str(), |h| h.role.as_str()),
                "mesh_role": node.cert_info().ok().map(|c| c.role.as_str()),
                "cert_expires": node.cert_info().ok().map(|c| format_timestamp(c.not_after * 1000)),
                "cert_ca": std::fs::read_to_string(node.dir.cert()).ok().and_then(|cert| {
                    crate::security::trust::issuer_fingerprint(&node.trust.all(), &cert)
                }),
                "mesh_id": node.mesh_id,
                "running": health.is_some(),
                "alerts_firing": firing,
                "alerts_pending": pending,
                "health": health,
                "hierarchy": hierarchy,
                "peers": peers,
                "store": store,
                "resources": resources,
                "export": export,
            }))?
        );
        return Ok(());
    }
    println!("node     {} ({})", node.config.node.name, node.node_id());
    match &hierarchy {
        Some(h) => println!("zone     {} (role {})", zone_label(&h.zone), h.role),
        None => println!(
            "zone     {} (role {})",
            configured_zone(&node.config.node.zone),
            node.config.node.role
        ),
    }
    match node.cert_info() {
        Ok(cert) => println!(
            "mesh     {} (mesh role {}, certificate until {})",
            node.mesh_id,
            cert.role,
            format_timestamp(cert.not_after * 1000)
        ),
        Err(e) => println!("mesh     {} (its certificate: {e:#})", node.mesh_id),
    }
    match &health {
        Some(h) => {
            println!(
                "running  yes, for {} (quic {}, http {})",
                output::millis(h.uptime_ms as i64),
                h.quic,
                h.http
            );
            if let Some(store) = &h.store {
                println!(
                    "disk     {} free of {} on {} (keeps {} free)",
                    output::bytes(store.free_bytes),
                    output::bytes(store.total_bytes),
                    store.dir,
                    output::bytes(store.min_free_bytes)
                );
                if let Some(keys) = &store.encryption {
                    println!(
                        "store    encrypted, key {}{}",
                        keys.store_key,
                        if keys.resealing { ", re-sealing" } else { "" }
                    );
                }
            }
            if let Some(r) = &resources {
                let mut parts = vec![
                    format!("cpu {:.0}%", r.cpu_percent),
                    format!("load {:.2}", r.load1),
                    format!(
                        "memory {} of {}",
                        output::bytes(r.memory_used_bytes),
                        output::bytes(r.memory_total_bytes)
                    ),
                ];
                if let Some(t) = r.temperature_celsius {
                    parts.push(format!("{t:.0} °C"));
                }
                if let Some(b) = r.battery_percent {
                    parts.push(format!(
                        "battery {b:.0}%{}",
                        if r.on_battery == Some(true) {
                            " (on battery)"
                        } else {
                            ""
                        }
                    ));
                }
                println!("host     {}", parts.join(", "));
            }
            println!("health   {}", h.status);
            if !h.checks.is_empty() {
                let checks: Vec<String> = h
                    .checks
                    .iter()
                    .map(|c| {
                        let status = match c.status {
                            crate::ops::health::CheckStatus::Ok => "ok",
                            crate::ops::health::CheckStatus::Warning => "warning",
                            crate::ops::health::CheckStatus::Failing => "failing",
                        };
                        format!("{} {status}", c.name)
                    })
                    .collect();
                println!("checks   {}", checks.join(", "));
            }
            if !firing.is_empty() || !pending.is_empty() {
                let mut parts = Vec::new();
                if !firing.is_empty() {
                    parts.push(format!("{} firing ({})", firing.len(), firing.join(", ")));
                }
                if !pending.is_empty() {
                    parts.push(format!(
                        "{} pending ({})",
                        pending.len(),
                        pending.join(", ")
                    ));
                }
                println!("alerts   {}", parts.join(", "));
            }
            if let Some(e) = &export {
                let mut line = format!(
                    "export   {} to {}: {} documents pending, lag {:.1} s",
                    e.state,
                    e.target.as_deref().unwrap_or("?"),
                    e.documents_pending,
                    e.lag_seconds
                );
                if let Some(error) = e.last_error.as_ref().filter(|_| e.state == "failing") {
                    line.push_str(&format!(" ({error})"));
                }
                println!("{line}");
            }
            for problem in &h.problems {
                println!("  ! {problem}");
            }
            for warning in &h.warnings {
                println!("  ~ {warning}");
            }
            if let Some(hierarchy) = &hierarchy {
                print_hierarchy(hierarchy);
            }
            println!();
            print_peers(&peers);
        }
        None => {
            println!("running  no");
            if let Some(s) = store {
                println!(
                    "store    {} documents, {}, {} results waiting to be folded",
                    s.documents,
                    output::bytes(s.chunk_bytes),
                    s.pending_results
                );
            }
        }
    }
    Ok(())
}

/// The aggregator chain, one line per level from this node's zone up to the root.
fn print_hierarchy(h: &HierarchyView) {
    let c = &h.capabilities;
    println!(
        "offers   {} CPUs, {} memory, {} free disk, power {}",
        c.cpus,
        output::bytes(c.memory_mb << 20),
        output::bytes(c.disk_free_mb << 20),
        c.power
    );
    let rows: Vec<Vec<String>> = h
        .chain
        .iter()
        .map(|link| {
            let aggregator = match &link.aggregator {
                None => "unknown".to_owned(),
                Some(id) if *id == h.node_id => "this node".to_owned(),
                Some(id) => match &link.name {
                    Some(name) => format!("{name} ({})", output::short_id(id)),
                    // Names arrive with the mesh document; until then the id says who it is.
                    None => output::short_id(id).to_owned(),
                },
            };
            vec![zone_label(&link.zone).to_owned(), aggregator]
        })
        .collect();
    println!();
    print!("{}", output::table(&["ZONE", "AGGREGATOR"], &rows));
    if h.aggregates.is_empty() {
        println!("aggregates no zone");
    } else {
        let zones: Vec<&str> = h.aggregates.iter().map(|z| zone_label(z)).collect();
        println!("aggregates {}", zones.join(", "));
    }
    for split in &h.split {
        let claimants: Vec<String> = split
            .aggregators
            .iter()
            .filter_map(|link| link.aggregator.clone())
            .collect();
        let name_of = |id: &str| {
            split
                .aggregators
                .iter()
                .find(|l| l.aggregator.as_deref() == Some(id))
                .and_then(|l| l.name.clone())
        };
        println!(
            "{}",
            crate::fleet::hierarchy::describe_split(&split.zone, &claimants, name_of)
        );
    }
}

/// A configured zone as people read it.
fn configured_zone(zone: &str) -> &str {
    match zone {
        "" => "(automatic: from the LAN when the node starts)",
        "/" => "(root)",
        other => other,
    }
}

fn fleet(node: &Node, since: Option<&str>, json: bool) -> Result<()> {
    let since_ms = since.map(parse_since).transpose()?;
    let path = match since_ms {
        Some(ms) => format!("/fleet?since_ms={ms}"),
        None => "/fleet".into(),
    };
    let view: crdt_store::FleetView = read_via(node, &path, |store| Ok(store.fleet(since_ms)?))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    if view.zones.is_empty() {
        println!(
            "no rollups here yet: rollups are written by zone aggregators and flow up to the \
             cloud peer"
        );
        return Ok(());
    }
    let mut rows = Vec::new();
    for zone in &view.zones {
        for w in &zone.workflows {
            let label = if zone.zone.is_empty() {
                "/".to_owned()
            } else {
                zone.zone.clone()
            };
            rows.push(vec![
                match (zone.stale, zone.split.is_empty()) {
                    (true, _) => format!("{label} (stale)"),
                    (false, false) => format!("{label} (split)"),
                    (false, true) => label,
                },
                w.workflow.clone(),
                w.nodes.to_string(),
                w.runs.to_string(),
                w.failures.to_string(),
                output::millis(w.mean_ms as i64),
                output::millis(w.max_ms as i64),
                format!(
                    "{} {}",
                    w.last_status.as_str(),
                    format_timestamp(w.last_finished_ms)
                ),
            ]);
        }
    }
    print!(
        "{}",
        output::table(
            &[
                "ZONE", "WORKFLOW", "NODES", "RUNS", "FAILED", "MEAN", "MAX", "LAST"
            ],
            &rows
        )
    );
    println!(
        "{} zones, {} nodes, {} runs, {} failed",
        view.zones.len(),
        view.nodes,
        view.runs,
        view.failures
    );
    for zone in view.zones.iter().filter(|z| !z.split.is_empty()) {
        println!(
            "{}",
            crate::fleet::hierarchy::describe_split(&zone.zone, &zone.split, |_| None)
        );
    }
    if view.zones.iter().any(|z| z.stale) {
        println!(
            "(stale): this node no longer aggregates that zone and its rollups no longer reach \
             it; the figures are as they were at the hand-over (see `rhizome status` for the \
             current aggregator)"
        );
    }
    Ok(())
}

fn mesh_command(root: &std::path::Path, cmd: MeshCommand) -> Result<()> {
    match cmd {
        MeshCommand::Create { dir, json } => {
            let ca = crate::mesh_admin::create_ca(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "mesh_id": ca.mesh_id(),
                        "dir": dir,
                    }))?
                );
            } else {
                println!("created mesh {} in {}", ca.mesh_id(), dir.display());
                println!(
                    "  {} admits nodes: keep it safe",
                    dir.join(CA_KEY_FILE).display()
                );
                println!("  join a node with: rhizome init --mesh {}", dir.display());
            }
        }
        MeshCommand::Revoke { node, reason, mesh } => {
            record_revocation(root, &node, false, &reason, mesh.as_deref())?;
            println!("revoked node {node}; members refuse it once they have this mesh document");
        }
        MeshCommand::Token(cmd) => join_token_command(root, cmd)?,
        MeshCommand::RotateCa {
            finish,
            force,
            mesh,
            json,
        } => crate::cli::ca_rotation::rotate_ca(root, mesh.as_deref(), finish, force, json)?,
        MeshCommand::Policy { change: None, json } => {
            let here = Node::load(root)?;
            let shown: serde_json::Value =
                read_via(&here, "/doc?id=mesh", |s| show_doc(s, "mesh"))?;
            let registry: MeshRegistry = serde_json::from_value(shown["content"].clone())
                .context("the mesh document as the node shows it")?;
            let ca_pem = std::fs::read_to_string(here.dir.ca_cert())?;
            let (policy, ignored) =
                crate::security::policy::read(&registry, &here.mesh_id, &ca_pem);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "members_write_workflows": policy.members_write_workflows,
                        "ignored": ignored,
                    }))?
                );
            } else {
                for (setting, meaning) in crate::security::policy::SETTINGS {
                    let value = match *setting {
                        crate::security::policy::MEMBERS_WRITE_WORKFLOWS => {
                            policy.members_write_workflows
                        }
                        _ => false,
                    };
                    println!("{setting} = {value}\n  {meaning}");
                }
                for (setting, why) in &ignored {
                    println!("ignored: a decision about {setting}: {why}");
                }
            }
        }
        MeshCommand::Policy {
            change:
                Some(crate::cli::PolicyCommand::Set {
                    setting,
                    value,
                    mesh,
                }),
            ..
        } => {
            let here = Node::load(root)?;
            let ca = crate::security::revocations::ca_for_decisions(root, mesh.as_deref())?;
            if ca.mesh_id() != here.mesh_id {
                bail!(
                    "the CA given is of mesh {}, this node is of mesh {}",
                    ca.mesh_id(),
                    here.mesh_id
                );
            }
            let decision = crate::security::policy::decide(&ca, &setting, &value, now_ms())?;
            match crate::cli::client::running_node(&here.dir) {
                Some(api) => {
                    let body = json!({ "setting": setting, "decision": decision }).to_string();
                    let _: serde_json::Value = api.post("/mesh/policy", &body)?;
                }
                None => {
                    let mut store = here.open_store()?;
                    store.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                        m.policy.insert(setting.clone(), decision);
                    })?;
                }
            }
            println!("{setting} = {value}; nodes follow it once they have this mesh document");
        }
        MeshCommand::Unrevoke { node, reason, mesh } => {
            record_revocation(root, &node, true, &reason, mesh.as_deref())?;
            println!(
                "withdrew the revocation of node {node}; members admit it again once they have \
                 this mesh document"
            );
        }
    }
    Ok(())
}

/// Signs a revocation decision with the mesh CA and stores it, through the running node when
/// there is one.
fn record_revocation(
    root: &std::path::Path,
    node: &str,
    withdrawn: bool,
    reason: &str,
    mesh_dir: Option<&std::path::Path>,
) -> Result<()> {
    crate::security::revocations::check_node_id(node)?;
    let here = Node::load(root)?;
    let ca = crate::security::revocations::ca_for_decisions(root, mesh_dir)?;
    if ca.mesh_id() != here.mesh_id {
        bail!(
            "the CA given is of mesh {}, this node is of mesh {}",
            ca.mesh_id(),
            here.mesh_id
        );
    }
    let decision = crate::security::revocations::decide(&ca, node, withdrawn, reason, now_ms());
    match crate::cli::client::running_node(&here.dir) {
        Some(api) => {
            let body = json!({ "node": node, "decision": decision }).to_string();
            let _: serde_json::Value = api.post("/mesh/revocations", &body)?;
        }
        None => {
            let mut store = here.open_store()?;
            store.update::<MeshRegistry, _>(&DocName::Mesh, |mesh| {
                mesh.revoked.insert(node.to_owned(), decision);
            })?;
        }
    }
    Ok(())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Reads through the running node's HTTP API (`GET path`), or from the store when no node runs
/// on the data dir: a running node holds the store.
fn read_via<T: serde::de::DeserializeOwned>(
    node: &Node,
    path: &str,
    offline: impl FnOnce(&mut Store) -> Result<T>,
) -> Result<T> {
    match crate::cli::client::running_node(&node.dir) {
        Some(addr) => addr.get(path),
        None => offline(&mut node.open_store()?),
    }
}

fn doc(node: &Node, cmd: DocCommand) -> Result<()> {
    match cmd {
        DocCommand::List { json } => {
            let docs: Vec<crdt_store::DocInfo> =
                read_via(node, "/docs", |store| Ok(store.list_docs()?))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&docs)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = docs
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone().unwrap_or_else(|| "(unnamed)".into()),
                        d.kind.clone().unwrap_or_else(|| "-".into()),
                        d.chunks.to_string(),
                        output::bytes(d.bytes),
                        d.id.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["NAME", "KIND", "CHUNKS", "SIZE", "ID"], &rows)
            );
            println!(
                "{} documents, {}",
                docs.len(),
                output::bytes(docs.iter().map(|d| d.bytes).sum())
            );
        }
        DocCommand::Show { id, json } => {
            let path = format!("/doc?id={}", crate::cli::client::encode_query(&id));
            let shown: serde_json::Value = read_via(node, &path, |store| show_doc(store, &id))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                println!(
                    "# {} ({})",
                    shown["name"].as_str().unwrap_or("(unnamed)"),
                    shown["id"].as_str().unwrap_or_default()
                );
                let heads: Vec<&str> = shown["heads"]
                    .as_array()
                    .map(|h| h.iter().filter_map(|h| h.as_str()).collect())
                    .unwrap_or_default();
                println!("# heads: {}", heads.join(", "));
                println!(
                    "# automerge-repo: {}",
                    shown["url"].as_str().unwrap_or_default()
                );
                println!("{}", serde_json::to_string_pretty(&shown["content"])?);
            }
        }
        DocCommand::Compact { id, json } => compact(node, id, json)?,
        DocCommand::Retire { json } => retire(node, json)?,
    }
    Ok(())
}

/// A document as `doc show --json` prints it (and `GET /doc` answers): id, name, kind, heads and
/// the content as JSON.
pub fn show_doc(store: &mut Store, name_or_id: &str) -> Result<serde_json::Value> {
    let (doc_id, name) = store.resolve(name_or_id)?;
    let content = match &name {
        Some(name) => typed_json(store, name)?,
        None => {
            let doc = store.automerge(&doc_id)?;
            serde_json::to_value(crdt_store::automerge::AutoSerde::from(&doc))?
        }
    };
    let heads: Vec<String> = store
        .automerge(&doc_id)?
        .get_heads()
        .iter()
        .map(|h| h.to_string())
        .collect();
    Ok(json!({
        "id": doc_id.to_string(),
        // What an automerge-repo client `find`s through the node's `GET /automerge`.
        "url": mesh::proto::amrepo::automerge_url(doc_id.as_bytes()),
        "name": name.as_ref().map(|n| n.to_string()),
        "kind": name.as_ref().map(|n| n.kind().as_str()),
        "heads": heads,
        "content": content,
    }))
}

/// Compaction writes to the store, so it runs on a stopped node.
fn compact(node: &Node, id: Option<String>, json: bool) -> Result<()> {
    let mut store = node.open_store()?;
    let started = Instant::now();
    let reports = match id {
        Some(id) => vec![store.compact(&id)?],
        None => store.compact_all()?,
    };
    let elapsed = started.elapsed();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    let before: u64 = reports.iter().map(|r| r.bytes_before).sum();
    let after: u64 = reports.iter().map(|r| r.bytes_after).sum();
    println!(
        "compacted {} documents in {:.1?}: {} -> {}",
        reports.len(),
        elapsed,
        output::bytes(before),
        output::bytes(after)
    );
    Ok(())
}

/// Retirement writes to the store, so it runs on a stopped node (a running node applies its
/// retention settings every ten minutes by itself).
fn retire(node: &Node, json: bool) -> Result<()> {
    let mut store = node.open_store()?;
    let retired = store.enforce_retention(now_ms())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&retired)?);
        return Ok(());
    }
    for r in &retired {
        println!(
            "retired {} ({}, {:?})",
            r.doc,
            output::bytes(r.bytes),
            r.reason
        );
    }
    println!("{} windows retired", retired.len());
    Ok(())
}

fn workflow(node: &Node, cmd: WorkflowCommand) -> Result<()> {
    match cmd {
        WorkflowCommand::Apply { file, json } => {
            // Validated here too, so a bad file is reported with its name either way.
            let definition = crate::run::workflow::load(&file)?;
            let stored: WorkflowDoc = match crate::cli::client::running_node(&node.dir) {
                Some(addr) => {
                    let yaml = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    addr.post("/workflows", &yaml)?
                }
                None => {
                    // Names of artifacts are pinned to ids from the data dir's own store.
                    let definition = if crate::run::artifact_refs::referenced_by_name(&definition) {
                        let store =
                            crate::fleet::artifacts::ArtifactStore::open(&node.dir.artifacts())?;
                        crate::run::artifact_refs::pin(definition, |name| store.resolve(name))?
                    } else {
                        definition
                    };
                    apply_workflow(&mut node.open_store()?, definition, &node.writer()?)?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&stored)?);
            } else if stored
                .rollout
                .as_ref()
                .is_some_and(|p| p.version == stored.version)
            {
                crate::cli::rollout::print_started(&stored);
            } else {
                println!(
                    "applied workflow {} version {} ({} steps)",
                    stored.id,
                    stored.version,
                    stored.steps.len()
                );
            }
        }
        WorkflowCommand::Schedule { json } => {
            let Some(addr) = crate::cli::client::running_node(&node.dir) else {
                bail!(
                    "no node runs on {}: the schedule is the running node's (start it with \
                     `rhizome start`; `rhizome workflow list` reads the stored workflows)",
                    node.dir.root.display()
                );
            };
            let views: Vec<crate::run::scheduler::ScheduledView> = addr.get("/schedule")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let note = match (&v.fetching, &v.error) {
                        (Some(f), _) => format!(
                            "version {} waits for {} artifact(s){}",
                            f.version,
                            f.artifacts.len(),
                            f.error
                                .as_deref()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        ),
                        (None, Some(e)) => e.clone(),
                        (None, None) => String::new(),
                    };
                    vec![
                        v.workflow.clone(),
                        v.version.to_string(),
                        if v.targeted { "yes" } else { "no" }.to_owned(),
                        v.running.to_string(),
                        v.queued.to_string(),
                        v.started.to_string(),
                        note,
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &[
                        "WORKFLOW", "VERSION", "HERE", "RUNNING", "QUEUED", "STARTED", "NOTE"
                    ],
                    &rows
                )
            );
        }
        WorkflowCommand::List { all, json } => {
            let path = if all {
                "/workflows?all=true"
            } else {
                "/workflows"
            };
            let workflows: Vec<crate::run::workflow::ListedWorkflow> =
                read_via(node, path, |store| crate::run::workflow::list(store, all))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&workflows)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = workflows
                .iter()
                .map(|listed| {
                    let w = &listed.doc;
                    vec![
                        w.id.clone(),
                        w.version.to_string(),
                        listed.state.clone(),
                        w.trigger.clone(),
                        crate::run::workflow::describe_target(&w.target),
                        w.steps.len().to_string(),
                        w.description.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &[
                        "WORKFLOW",
                        "VERSION",
                        "STATE",
                        "TRIGGER",
                        "TARGET",
                        "STEPS",
                        "DESCRIPTION"
                    ],
                    &rows
                )
            );
        }
        WorkflowCommand::History { id, limit, json } => {
            let name = DocName::workflow(&id)?;
            let path = format!(
                "/workflows/{}/history?limit={limit}",
                crate::cli::client::encode_query(&id)
            );
            let history: crate::run::history::HistoryView = read_via(node, &path, |store| {
                crate::run::history::history(store, &name, limit)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                print_history(&history);
            }
        }
        WorkflowCommand::Rollback { id, to, by, json } => {
            DocName::workflow(&id)?;
            let stored: WorkflowDoc = match crate::cli::client::running_node(&node.dir) {
                Some(api) => {
                    let body = json!({ "to": to, "by": by }).to_string();
                    api.post(
                        &format!(
                            "/workflows/{}/rollback",
                            crate::cli::client::encode_query(&id)
                        ),
                        &body,
                    )?
                }
                None => crate::run::history::rollback(
                    &mut node.open_store()?,
                    &id,
                    to,
                    by.as_deref(),
                    &node.writer()?,
                )?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&stored)?);
            } else {
                println!(
                    "workflow {} version {} is version {to}'s definition, current again",
                    stored.id, stored.version
                );
            }
        }
        WorkflowCommand::Delete { id, json } => {
            DocName::workflow(&id)?;
            let stored: WorkflowDoc = match crate::cli::client::running_node(&node.dir) {
                Some(api) => api.delete(&format!(
                    "/workflows/{}",
                    crate::cli::client::encode_query(&id)
                ))?,
                None => crate::run::history::delete(&mut node.open_store()?, &id, &node.writer()?)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&stored)?);
            } else {
                println!(
                    "deleted workflow {} (version {}); every node stops it as the deletion \
                     reaches it",
                    stored.id, stored.version
                );
            }
        }
        WorkflowCommand::Show { id, json } => {
            let name = DocName::workflow(&id)?.to_string();
            let path = format!("/doc?id={}", crate::cli::client::encode_query(&name));
            let shown: serde_json::Value = read_via(node, &path, |store| show_doc(store, &name))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown["content"])?);
                return Ok(());
            }
            let view: crate::run::workflow::WorkflowView =
                serde_json::from_value(shown["content"].clone())?;
            print_workflow(&id, &view);
        }
    }
    Ok(())
}

/// `workflow history`: one line per version, newest first.
fn print_history(history: &crate::run::history::HistoryView) {
    let rows: Vec<Vec<String>> = history
        .versions
        .iter()
        .map(|v| {
            let author = match &v.author_name {
                Some(name) => format!("{name} ({})", v.author),
                None => v.author.clone(),
            };
            let mut notes = Vec::new();
            if v.current {
                notes.push("current".to_owned());
            }
            if v.competing {
                notes.push("competing".to_owned());
            }
            if let Some(why) = &v.refused {
                notes.push(format!("refused here: {why}"));
            }
            if !v.concurrent_with.is_empty() {
                let others: Vec<String> = v
                    .concurrent_with
                    .iter()
                    .map(|o| {
                        format!(
                            "v{} by {}",
                            o.version,
                            o.author.get(..8).unwrap_or(&o.author)
                        )
                    })
                    .collect();
                notes.push(format!("concurrent with {}", others.join(", ")));
            }
            vec![
                format!("v{}", v.version),
                format_timestamp(v.at_ms),
                author,
                notes.join("; "),
                v.summary.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["VERSION", "WRITTEN", "AUTHOR", "NOTE", "CHANGE"], &rows)
    );
    if history.total > history.versions.len() {
        println!(
            "{} older versions not shown (--limit {})",
            history.total - history.versions.len(),
            history.limit
        );
    }
}

/// `workflow show`: the version in effect, then what stands in its way, if anything.
fn print_workflow(id: &str, view: &crate::run::workflow::WorkflowView) {
    if view.state == "deleted"
        && let Some(tombstone) = &view.definition
    {
        let by = match &view.deleted_by_name {
            Some(name) => format!("{name} ({})", tombstone.updated_by),
            None => tombstone.updated_by.clone(),
        };
        println!(
            "workflow {id} was deleted by {by} at {} (version {})",
            format_timestamp(tombstone.updated_ms),
            tombstone.version
        );
        println!("  state           deleted: no node runs it; its results stay");
        if let Some(version) = view.restorable {
            println!(
                "  restore         rhizome workflow rollback {id} --to {version}  (its last version)"
            );
        }
        return;
    }
    match &view.definition {
        Some(wf) => {
            println!(
                "workflow {} version {}: {}",
                wf.id, wf.version, wf.description
            );
            println!(
                "  applied         {} by {}",
                format_timestamp(wf.updated_ms),
                wf.updated_by
            );
            println!("  trigger         {}", wf.trigger);
            println!(
                "  target          nodes {:?}, tags {:?}, zones {:?}",
                wf.target.nodes, wf.target.tags, wf.target.zones
            );
            println!("  max_concurrent  {}", wf.max_concurrent);
            println!("  conflict        {}", view.policy.as_str());
        }
        None => println!("workflow {id}: no version that this node can read"),
    }
    println!("  state           {}", view.state);
    if let Some(error) = &view.error {
        println!("  error           {error}");
    }
    if let Some(wf) = &view.definition {
        let rows: Vec<Vec<String>> = wf
            .steps
            .iter()
            .map(|(id, step)| {
                vec![
                    id.clone(),
                    step.agent.clone(),
                    step.inputs.join(","),
                    step.when.clone().unwrap_or_default(),
                    step.config.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["STEP", "AGENT", "INPUTS", "WHEN", "CONFIG"], &rows)
        );
    }
    if !view.competing.is_empty() {
        println!(
            "{} versions compete (conflict: {}); `rhizome workflow apply` on any node resolves them:",
            view.competing.len(),
            view.policy.as_str()
        );
        let rows: Vec<Vec<String>> = view
            .competing
            .iter()
            .map(|c| {
                vec![
                    c.definition.version.to_string(),
                    if c.definition.by_control {
                        format!("{} (control)", c.definition.updated_by)
                    } else {
                        c.definition.updated_by.clone()
                    },
                    format_timestamp(c.definition.updated_ms),
                    c.definition.steps.len().to_string(),
                    c.invalid.clone().unwrap_or_else(|| "valid".into()),
                    c.definition.description.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(
                &[
                    "VERSION",
                    "WRITER",
                    "APPLIED",
                    "STEPS",
                    "HERE",
                    "DESCRIPTION"
                ],
                &rows
            )
        );
    }
    for rejected in &view.rejected {
        println!(
            "  unreadable version ({} bytes): {}",
            rejected.bytes, rejected.reason
        );
    }
}

/// Stores a validated definition as the next version of its workflow, replacing every version
/// that stands (which resolves a conflict): its version is one more than the highest stored,
/// or the file's own if that is higher, and its time is later than theirs even on a clock
/// behind theirs, so that the last-write order never ranks it below what it replaced.
/// A definition whose file declares `rollout:` is rolled out in those stages over the version
/// in effect; a first version (nothing to roll out from) is applied everywhere at once.
pub fn apply_workflow(
    store: &mut Store,
    mut definition: WorkflowDoc,
    writer: &crate::run::workflow::Writer,
) -> Result<WorkflowDoc> {
    if let Err(refused) = crate::security::workflow_rights::may_apply(store, writer)? {
        return Err(refused.into());
    }
    let name = DocName::workflow(&definition.id)?;
    let standing: crdt_store::WorkflowVersions = store.read(&name)?;
    if let Some(plan) = definition.rollout.take()
        && let Some(baseline) = crate::run::rollout::version_in_effect(&standing)
    {
        return crate::run::rollout::write_rollout(
            store, &standing, definition, plan, baseline, writer,
        );
    }
    let stored = writer.next_version(definition, &standing.versions)?;
    store.update::<WorkflowDoc, _>(&name, |doc| *doc = stored.clone())?;
    Ok(stored)
}

/// How often `rhizome run` asks a running node whether its run finished.
const STATUS_POLL: std::time::Duration = std::time::Duration::from_millis(50);

fn run_once(node: &Node, args: RunArgs) -> Result<()> {
    let input: serde_json::Value = match &args.input {
        None => serde_json::Value::Null,
        Some(path) => {
            use std::io::Read as _;
            // One byte past the limit is enough to refuse: a huge file is never read whole.
            let cap = crdt_store::MAX_RUN_INPUT_BYTES as u64 + 1;
            let mut bytes = Vec::new();
            if path.as_os_str() == "-" {
                std::io::stdin()
                    .take(cap)
                    .read_to_end(&mut bytes)
                    .context("reading the input from stdin")?;
            } else {
                std::fs::File::open(path)
                    .and_then(|f| f.take(cap).read_to_end(&mut bytes))
                    .with_context(|| format!("cannot read the input {}", path.display()))?;
            }
            if bytes.len() as u64 >= cap {
                bail!(
                    "{}: the run input is more than {} bytes (256 KiB), the limit for a run's input",
                    path.display(),
                    crdt_store::MAX_RUN_INPUT_BYTES
                );
            }
            let text = String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!("{}: the run input is not UTF-8 text: {e}", path.display())
            })?;
            crate::run::prescan::run_input(&text)
                .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?
        }
    };
    DocName::workflow(&args.workflow)?;
    let record = match crate::cli::client::running_node(&node.dir) {
        Some(addr) => run_through_node(addr, &args.workflow, &input)?,
        None => run_here(node, &args.workflow, input)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_results(std::slice::from_ref(&record));
        for step in &record.steps {
            println!(
                "  {:<12} {:<10} {:>8}us  attempts {}  {}",
                step.step,
                step.status.as_str(),
                step.duration_us,
                step.attempts,
                step.error.as_deref().unwrap_or(&step.output)
            );
        }
    }
    if record.status != RunStatus::Succeeded {
        bail!(
            "run {} {}: {}",
            record.run_id,
            record.status.as_str(),
            record.error.unwrap_or_default()
        );
    }
    Ok(())
}

/// `POST /run/{workflow}`, then `GET /status/{run}` until the run is over. The loop ends when
/// the run finishes (its workflow's run timeout bounds it) or the node stops answering.
fn run_through_node(
    addr: crate::cli::client::Api,
    workflow: &str,
    input: &serde_json::Value,
) -> Result<RunRecord> {
    let body = if input.is_null() {
        String::new()
    } else {
        input.to_string()
    };
    let accepted: crate::api::runs::RunAccepted = addr.post(&format!("/run/{workflow}"), &body)?;
    let path = format!(
        "/status/{}",
        crate::cli::client::encode_query(&accepted.run_id)
    );
    loop {
        let view: crate::run::scheduler::RunView = addr
            .get(&path)
            .with_context(|| format!("waiting for run {}", accepted.run_id))?;
        if let crate::run::scheduler::RunView::Finished {
            record, recorded, ..
        } = view
        {
            if !recorded {
                // Done means durable: a run whose record did not reach the disk is not done.
                let problems = addr
                    .health()
                    .map(|h| h.problems.join("; "))
                    .unwrap_or_default();
                bail!(
                    "run {} {} but its record could not be stored durably{}",
                    record.run_id,
                    record.status.as_str(),
                    if problems.is_empty() {
                        " (see the node's log)".to_owned()
                    } else {
                        format!(": {problems}")
                    }
                );
            }
            return Ok(record);
        }
        std::thread::sleep(STATUS_POLL);
    }
}

/// One run in this process, recorded in the store (no node runs on the data dir).
fn run_here(node: &Node, workflow_id: &str, input: serde_json::Value) -> Result<RunRecord> {
    let mut store = node.open_store()?;
    let name = DocName::workflow(workflow_id)?;
    let Some(stored) = crate::run::workflow::stored_one(&mut store, &name)? else {
        bail!(
            "no workflow `{workflow_id}` on this node: apply it first with `rhizome workflow apply FILE`"
        );
    };
    if let Some(reason) = stored.blocked {
        bail!("workflow `{workflow_id}` does not run on this node: {reason}");
    }
    let workflow = stored.doc;
    let traits = node.traits();
    if !crate::run::workflow::selects(&workflow.target, &traits) {
        bail!(
            "workflow `{workflow_id}` targets {}, which does not select this node (name {}, zone {}, tags [{}])",
            crate::run::workflow::describe_target(&workflow.target),
            traits.name,
            traits.zone,
            traits.tags.join(", ")
        );
    }
    let prepared = crate::run::engine::Prepared::new(workflow)?;
    let node_id = node.node_id();
    // A random sequence number: this process has no scheduler counting runs.
    let run_id = crate::run::scheduler::run_id(&node_id, now_ms(), rand::random::<u16>().into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("starting the async runtime")?;
    let record = runtime.block_on(prepared.run(run_id, &node_id, input, now_ms));
    store.append_results(std::slice::from_ref(&record))?;
    Ok(record)
}

fn typed_json(store: &mut Store, name: &DocName) -> Result<serde_json::Value> {
    Ok(match name.kind() {
        DocKind::Mesh => serde_json::to_value(store.read::<MeshRegistry>(name)?)?,
        DocKind::Workflow => serde_json::to_value(crate::run::workflow::view(store, name)?)?,
        DocKind::Results => serde_json::to_value(store.read::<ResultsDoc>(name)?)?,
        DocKind::Rollup => serde_json::to_value(store.read::<RollupDoc>(name)?)?,
        DocKind::Alerts => serde_json::to_value(store.read::<crdt_store::AlertsDoc>(name)?)?,
    })
}

pub(crate) fn parse_since(text: &str) -> Result<i64> {
    if let Some(ms) = crdt_store::parse_timestamp(text) {
        return Ok(ms);
    }
    match parse_duration(text) {
        Ok(age) => Ok(now_ms() - age.as_millis() as i64),
        Err(_) => bail!(
            "--since `{text}` is neither a timestamp (2026-11-24T04:00:00Z), a date (2026-11-24) \
             nor an age (90m, 2h, 7d)"
        ),
    }
}

fn results(node: &Node, args: ResultsArgs) -> Result<()> {
    let query = ResultsQuery {
        workflow: args.workflow,
        node: args.node,
        since_ms: args.since.as_deref().map(parse_since).transpose()?,
    };
    let mut path = String::from("/results?");
    if let Some(w) = &query.workflow {
        path += &format!("workflow={}&", crate::cli::client::encode_query(w));
    }
    if let Some(n) = &query.node {
        path += &format!("node={}&", crate::cli::client::encode_query(n));
    }
    if let Some(since) = query.since_ms {
        path += &format!("since_ms={since}&");
    }
    let mut records: Vec<RunRecord> = read_via(node, path.trim_end_matches(['&', '?']), |store| {
        Ok(store.results(&query)?)
    })?;
    if let Some(limit) = args.limit {
        let skip = records.len().saturating_sub(limit);
        records.drain(..skip);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    print_results(&records);
    Ok(())
}

fn print_results(records: &[RunRecord]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                format_timestamp(r.finished_ms),
                output::short_id(&r.node).to_owned(),
                format!("{}@{}", r.workflow, r.workflow_version),
                r.status.as_str().to_owned(),
                output::millis(r.finished_ms - r.started_ms),
                r.output.clone(),
                r.run_id.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "FINISHED", "NODE", "WORKFLOW", "STATUS", "TOOK", "OUTPUT", "RUN"
            ],
            &rows
        )
    );
    println!("{} runs", records.len());
}

/// The workflow the demo applies and runs.
const DEMO_WORKFLOW: &str = include_str!("../../../docs/examples/sensor-zscore.yaml");

fn demo(root: &std::path::Path, args: DemoArgs) -> Result<()> {
    let node = if DataDir::new(root.to_owned()).key().exists() {
        Node::load(root)?
    } else {
        let node = create_node(
            root,
            &InitArgs {
                name: Some("demo".into()),
                zone: Some("demo-site".into()),
                // `sensor` is what the bundled workflow targets, so that `rhizome start` on
                // this data dir goes on running it every 30 s.
                tags: vec!["demo".into(), "sensor".into()],
                mesh: None,
                control: false,
                encrypt: false,
                json: false,
            },
        )?;
        println!("created demo node {} in {}", node.node_id(), root.display());
        node
    };
    let node_id = node.node_id();
    let mut store = node.open_store()?;
    let definition =
        crate::run::workflow::parse(DEMO_WORKFLOW).context("the bundled demo workflow")?;
    let workflow = apply_workflow(&mut store, definition, &node.writer()?)?;
    println!(
        "applied workflow {} version {} (sensor -> zscore -> threshold)",
        workflow.id, workflow.version
    );
    let prepared = crate::run::engine::Prepared::new(workflow)?;
    let handle = StoreHandle::spawn(store);
    // The runs of the last few hours, one every 30 s, replayed on simulated time so that the
    // sliding window sees a realistic history.
    const PERIOD_MS: i64 = 30_000;
    let first = now_ms() - PERIOD_MS * args.runs as i64;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let mut acked = 0;
    let mut batch = Vec::with_capacity(60);
    for i in 0..args.runs {
        let at = first + PERIOD_MS * i as i64;
        let run_id = format!("{}-{at}", output::short_id(&node_id));
        let record =
            runtime.block_on(prepared.run(run_id, &node_id, serde_json::Value::Null, || at));
        batch.push(record);
        if batch.len() == 60 || i + 1 == args.runs {
            acked += handle.append(std::mem::take(&mut batch)).wait()?.len();
        }
    }
    let took = started.elapsed();
    println!(
        "ran it {acked} times and recorded every run durably in {took:.1?} ({:.0} runs/s)",
        acked as f64 / took.as_secs_f64()
    );
    let (docs, recent) = handle
        .call(|store| {
            let recent = store.results(&ResultsQuery::default())?;
            Ok((store.list_docs()?, recent))
        })
        .wait()?;
    handle.shutdown();
    println!();
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            vec![
                d.name.clone().unwrap_or_default(),
                d.chunks.to_string(),
                output::bytes(d.bytes),
            ]
        })
        .collect();
    print!("{}", output::table(&["DOCUMENT", "CHUNKS", "SIZE"], &rows));
    println!();
    let tail = &recent[recent.len().saturating_sub(5)..];
    print_results(tail);
    let anomalies = recent
        .iter()
        .filter(|r| r.output.contains("\"anomaly\":true"))
        .count();
    println!(
        "\n{} runs stored, {anomalies} flagged as anomalies. Try:\n  rhizome results --data-dir {} --since 1h\n  rhizome doc list --data-dir {}",
        recent.len(),
        root.display(),
        root.display()
    );
    Ok(())
}
