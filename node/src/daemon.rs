//! `rhizome start`: the node process. It owns the store thread, the mesh, the workflow scheduler
//! and the local HTTP API, and shuts them down in order on SIGINT or SIGTERM: the API stops
//! accepting, runs in flight are cancelled and recorded, then mesh goodbyes, store last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use crdt_store::{DocName, MeshRegistry, NodeEntry, StoreHandle};
use mesh::net::discovery::Interfaces;
use mesh::net::driver::MeshConfig;
use mesh::net::identity::Revocations;
use mesh::proto::membership::Timing;

use crate::cli::StartArgs;
use crate::node::{Node, now_ms};

/// How often a running node applies its retention settings (and once at start).
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);
/// How often a running node reads its capabilities again (free disk changes as it runs).
const CAPABILITIES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// How often free space is checked against the watermark, to make room in time.
const HEADROOM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub fn start(node: Node, args: StartArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dir = node.dir.clone();
    let swap = runtime.block_on(run(node, args))?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match swap {
        // The node stopped to try a release: this process supervises the trial, then becomes
        // whichever binary is installed at its end.
        Some(request) => Err(crate::fleet::releases::swap::swap(&dir, &request)),
        None => Ok(()),
    }
}

async fn run(
    node: Node,
    args: StartArgs,
) -> Result<Option<crate::fleet::releases::swap::SwapRequest>> {
    let started = Instant::now();
    let started_wall_ms = now_ms();
    let net = &node.config.network;
    let results_to_cloud = node.config.sync.results_to_cloud()?;
    let sync_config = mesh::proto::sync::SyncConfig {
        bytes_per_sec: node.config.sync.max_rate()?,
        ..mesh::proto::sync::SyncConfig::default()
    };
    let listen: SocketAddr = args
        .listen
        .as_deref()
        .unwrap_or(&net.listen)
        .parse()
        .context("--listen must be an address like 0.0.0.0:4860")?;
    let http: SocketAddr = args
        .http
        .as_deref()
        .unwrap_or(&net.http)
        .parse()
        .context("--http must be an address like 127.0.0.1:4861")?;
    let http_tls = args.http_tls || net.http_tls;
    if !http.ip().is_loopback() && !http_tls {
        if !args.http_insecure {
            bail!(
                "--http {http} is not a loopback address: the API would carry its tokens in plain \
                 HTTP over the network. Serve it over TLS with the node's certificate \
                 (--http-tls), keep it on 127.0.0.1 (reach it over SSH), or pass \
                 --http-insecure to serve it in plain HTTP anyway"
            );
        }
        tracing::warn!(%http, "the HTTP API is served in plain HTTP on a non-loopback address (--http-insecure): its tokens cross the network unencrypted");
    }
    let mut bootstrap = net.peers.clone();
    bootstrap.extend(args.peers.iter().cloned());
    let mdns_names = if args.mdns_interfaces.is_empty() {
        net.mdns_interfaces.clone()
    } else {
        args.mdns_interfaces.clone()
    };
    let discovery = if args.no_mdns || !net.mdns {
        None
    } else if mdns_names.is_empty() {
        Some(Interfaces::All)
    } else if mdns_names.iter().all(|n| n == "lo" || n == "loopback") {
        Some(Interfaces::Loopback)
    } else {
        Some(Interfaces::Named(mdns_names))
    };
    let discovery_described = discovery.as_ref().map(|d| match d {
        Interfaces::All => "every interface".to_owned(),
        Interfaces::Loopback => "loopback only".to_owned(),
        Interfaces::Named(names) => names.join(", "),
    });
    let bootstrap_described = bootstrap.clone();

    let role = crate::fleet::hierarchy::parse_role(
        args.role
            .as_deref()
            .unwrap_or(node.config.node.role.as_str()),
    )?;
    let named_mdns = match &discovery {
        Some(Interfaces::Named(names)) => names.clone(),
        _ => Vec::new(),
    };
    let zone = crate::fleet::hierarchy::effective_zone(
        &node.config.node.zone,
        role,
        matches!(discovery, Some(Interfaces::Loopback)),
        &named_mdns,
    )?;
    let capabilities = crate::ops::resources::capabilities(&node.dir.root, &node.config.node)?;
    tracing::info!(
        zone = crate::fleet::hierarchy::zone_label(&zone),
        %role,
        ?capabilities,
        "taking part in the zone hierarchy"
    );

    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let node_id = node.node_id();

    // Revocations and the mesh's CAs are read before the mesh starts, so a revoked node, or
    // one of a retired CA, is refused from the first handshake.
    let mut opened = open_store_when_free(&node).await?;
    let registry: MeshRegistry = opened.read::<MeshRegistry>(&DocName::Mesh)?;
    crate::security::trust::update(&node.trust, &registry, &node.mesh_id, &node.dir)?;
    let credentials = node
        .trust
        .credentials(&read(node.dir.cert())?, node.identity.secret())
        .with_context(|| format!("the certificates in {}", node.dir.root.display()))?;
    let own_ca =
        crate::security::trust::issuer_fingerprint(&node.trust.all(), &read(node.dir.cert())?)
            .unwrap_or_default();
    let revoked = Revocations::default();
    let verdicts =
        crate::security::revocations::verdicts(&registry, &node.mesh_id, &node.trust.all());
    for (node, why) in &verdicts.ignored {
        tracing::warn!(%node, why = %why, "a revocation is ignored");
    }
    revoked.set(verdicts.revoked);

    // Security events, from every part of the node.
    let audit = Arc::new(crate::security::audit::Audit::default());
    // The node that holds the mesh CA enrols joining machines and renews certificates.
    let issuer = crate::security::enrolment::issuer(&node, audit.clone())?;
    let (_, renew_before) = node.config.security.lifetimes()?;

    // Every committed change reaches document sync (announce to peers) and the node's own
    // watchers (revocations in the mesh document, workflows).
    let crate::fleet::sync::Replication {
        store,
        mesh,
        sync,
        changes,
        hierarchy: hierarchy_rx,
    } = crate::fleet::sync::start(
        node_id.clone(),
        sync_config,
        opened,
        MeshConfig {
            credentials,
            revoked: revoked.clone(),
            mesh_id: node.mesh_id.clone(),
            zone: zone.clone(),
            role,
            capabilities,
            listen,
            bootstrap,
            discovery,
            timing: Timing::default(),
            seed: u64::from_le_bytes(node.identity.public_key()[..8].try_into().expect("8 bytes")),
            enrolment: issuer
                .clone()
                .map(|i| i as Arc<dyn mesh::net::enrolment::Enrolment>),
        },
        audit.clone(),
        |_| {},
    )
    .await?;
    let quic = mesh.local_addr();

    let entry = NodeEntry {
        name: node.config.node.name.clone(),
        zone: zone.clone(),
        tags: node.config.node.tags.clone(),
        addresses: published_addresses(quic),
        version: env!("CARGO_PKG_VERSION").into(),
        // Nodes find where to renew their certificates by this.
        capabilities: if issuer.is_some() {
            vec![crate::security::renewal::ENROLS.into()]
        } else {
            Vec::new()
        },
        ca: own_ca,
        role: role.to_string(),
        ..NodeEntry::default()
    };
    // Rings when the mesh's current CA changes: the node renews from the new one at once.
    let renew_now = Arc::new(tokio::sync::Notify::new());
    let renewal_state = Arc::new(std::sync::Mutex::new(
        crate::security::renewal::RenewalState::default(),
    ));
    let renewal = tokio::spawn(
        crate::security::renewal::Renewal {
            dir: node.dir.clone(),
            secret: node.identity.secret(),
            mesh: mesh.clone(),
            store: store.clone(),
            revoked: revoked.clone(),
            issuer: issuer.clone(),
            renew_before,
            state: renewal_state.clone(),
            audit: audit.clone(),
            trust: node.trust.clone(),
            wake: renew_now.clone(),
        }
        .run(),
    );
    let trust = tokio::spawn(crate::security::trust::follow(
        crate::security::trust::Follow {
            changes: changes.mesh_changes(),
            store: store.clone(),
            mesh: mesh.clone(),
            dir: node.dir.clone(),
            mesh_id: node.mesh_id.clone(),
            secret: node.identity.secret(),
            trust: node.trust.clone(),
            renew_now: renew_now.clone(),
            audit: audit.clone(),
        },
    ));
    // Sync announces a rewrite like any other change. Written before the API serves, so that a
    // node that answers is listed; a disk that fails as the node starts delays the entry, not
    // the node: it is written once the store serves again.
    let mut own_entry = None;
    if !registry.holds(&node_id, &entry)
        && let Err(e) = store_own_entry(&store, &node_id, &entry).await
    {
        tracing::warn!(error = %e, "the node's registry entry is not stored yet; trying again");
        own_entry = Some(tokio::spawn(write_own_entry(
            store.clone(),
            node_id.clone(),
            entry,
        )));
    }

    let rollups = tokio::spawn(crate::fleet::rollup::run(
        node_id.clone(),
        results_to_cloud,
        store.clone(),
        changes.clone(),
        mesh.hierarchy().await?,
        hierarchy_rx.clone(),
    ));
    let routes = tokio::spawn(follow_routes(
        node_id.clone(),
        results_to_cloud,
        changes.mesh_changes(),
        hierarchy_rx.clone(),
        store.clone(),
        mesh.clone(),
        sync.clone(),
    ));
    let zone_peers = tokio::spawn(follow_zone_addresses(
        node_id.clone(),
        zone.clone(),
        changes.mesh_changes(),
        store.clone(),
        mesh.clone(),
        revoked.clone(),
    ));
    let revocations = tokio::spawn(follow_revocations(
        changes.mesh_changes(),
        store.clone(),
        mesh.clone(),
        revoked,
        (node.mesh_id.clone(), node.trust.clone(), verdicts.ignored),
        audit.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {http}"))?;
    let http = listener.local_addr()?;
    let health = crate::api::Health {
        status: "ok".into(),
        node_id: node_id.clone(),
        name: node.config.node.name.clone(),
        zone: zone.clone(),
        role: role.to_string(),
        mesh_id: node.mesh_id.clone(),
        quic: quic.to_string(),
        http: http.to_string(),
        uptime_ms: 0,
        version: env!("CARGO_PKG_VERSION").into(),
        problems: Vec::new(),
        store: None,
        warnings: Vec::new(),
        checks: Vec::new(),
    };
    let (user_checks, check_tasks) =
        crate::ops::health::spawn_user_checks(&node.config.health.checks)?;
    let (sync_watch, sync_watching) = crate::ops::health::SyncWatch::spawn(sync.clone());
    let monitor = crate::ops::monitor::MonitorHandle::spawn(
        node.dir.root.clone(),
        node.config.health.monitor()?,
    )?;
    let vitals = tokio::spawn(publish_vitals(
        monitor.clone(),
        store.clone(),
        node_id.clone(),
    ));
    // The local CLI's admin credential: fresh at every start, readable only by the node's user,
    // so local processes of other users cannot use the API.
    let token = hex::encode(rand::random::<[u8; 32]>());
    let _ = std::fs::remove_file(node.dir.api_token());
    crate::identity::write_private(&node.dir.api_token(), &token)?;
    // The artifacts directory is the node's while it runs; the CLI goes through the API.
    let artifacts = crate::fleet::artifacts::Artifacts::new(
        crate::fleet::artifacts::ArtifactStore::open(&node.dir.artifacts())?,
        node.config.artifact_cache_cap()?,
    );
    sync.attach_artifacts(artifacts.clone()).await;
    let alerts = crate::ops::alerts::AlertsHandle::default();
    let scheduler = crate::run::scheduler::spawn(
        store.clone(),
        crate::run::scheduler::SchedulerConfig {
            // Selectors match the zone the node runs in (derived from its LAN when not set).
            node: crate::run::workflow::NodeTraits {
                zone: zone.clone(),
                ..node.traits()
            },
            agents: crate::fleet::artifacts::provider::agent_factory(artifacts.clone()),
            reload_every: crate::run::scheduler::RELOAD_EVERY,
            artifacts: Some(Arc::new(crate::fleet::artifacts::provider::NodeArtifacts {
                artifacts: artifacts.clone(),
                sync: sync.clone(),
            })),
            rollout_trust: {
                let writer = node.writer()?;
                Some((writer.mesh_id, writer.trust))
            },
            alerts: Some(alerts.clone()),
        },
    );
    // Workflows replicated from peers are picked up at once, not at the next periodic reload.
    // Only the documents that changed are read again: one edit must not cost a walk of every
    // workflow a cloud holds.
    let mut workflow_changes = changes.workflow_changes();
    let reloader = scheduler.clone();
    let feed = changes.clone();
    let reloads = tokio::spawn(async move {
        while workflow_changes.changed().await.is_ok() {
            match feed.take_changed_workflows() {
                // Taken already, with an earlier bump.
                Some(names) if names.is_empty() => {}
                Some(names) => {
                    reloader.request_reload_of(names.iter().filter_map(|n| n.parse().ok()));
                }
                None => reloader.request_reload(),
            }
        }
    });
    let reseal_wake = Arc::new(tokio::sync::Notify::new());
    let (alerts_every, local_rules) = node.config.alerts.rules()?;
    // The export into PostgreSQL, when `[export] postgres` is set: its own task, off the hot
    // paths; the API reads its state.
    let (export, exporting) = crate::export::spawn(&node, &node_id, role, store.clone())?;

    let state = Arc::new(crate::api::AppState {
        tokens: crate::api::auth::Tokens::new(node.dir.tokens(), token),
        health,
        started,
        mesh: mesh.clone(),
        store: store.clone(),
        sync: sync.clone(),
        role,
        writer: node.writer()?,
        capabilities: Arc::new(std::sync::Mutex::new(capabilities)),
        scheduler: scheduler.clone(),
        data_dir: node.dir.root.clone(),
        renewal: renewal_state.clone(),
        audit: audit.clone(),
        store_key: node
            .config
            .store
            .encryption
            .then(|| crate::security::store_key::source(&node.config.store, &node.dir.root)),
        reseal: reseal_wake.clone(),
        user_checks,
        sync_watch,
        started_wall_ms,
        monitor: Some(monitor),
        alerts: alerts.clone(),
        export,
        changes: changes.clone(),
        clients: Arc::default(),
        artifacts,
        discovery: format!(
            "mDNS {}; dialling {}",
            match &discovery_described {
                Some(interfaces) => format!("on {interfaces}"),
                None => "off".into(),
            },
            if bootstrap_described.is_empty() {
                "no address".into()
            } else {
                bootstrap_described.join(", ")
            }
        ),
    });
    let alerting = tokio::spawn(crate::ops::alerts::driver::run(
        state.clone(),
        alerts.clone(),
        crate::ops::alerts::driver::DriverConfig {
            interval: alerts_every,
            local: local_rules,
            window_minutes: store_config_window_minutes(&node.config)?,
        },
    ));
    let current_capabilities = state.capabilities.clone();
    let installed = std::env::current_exe().context("finding this node's own binary")?;
    let (swap_asked, swap_due) = tokio::sync::oneshot::channel();
    let release_agent = crate::fleet::releases::agent::Agent {
        node_id: node_id.clone(),
        dir: node.dir.clone(),
        mesh_id: state.writer.mesh_id.clone(),
        trust: state.writer.trust.clone(),
        installed,
        started_ms: started_wall_ms,
        store: store.clone(),
        sync: sync.clone(),
        artifacts: state.artifacts.clone(),
        mesh: mesh.clone(),
        alerts: alerts.clone(),
    };
    let release_changes = changes.mesh_changes();
    let releases = tokio::spawn(async move {
        let request = crate::fleet::releases::agent::run(release_agent, release_changes).await;
        let _ = swap_asked.send(request);
    });
    let app = crate::api::router(state);
    let signalled = shutdown_signal()?;
    let swap_slot = Arc::new(std::sync::Mutex::new(None));
    let swap_taken = swap_slot.clone();
    let stopped = async move {
        tokio::select! {
            () = signalled => {}
            Ok(request) = swap_due => {
                *swap_taken.lock().expect("not poisoned") = Some(request);
            }
        }
    };
    // The local CLI finds the API here, and whether to speak TLS to it.
    let scheme = if http_tls { "https" } else { "http" };
    let address = if http_tls {
        format!("https://{http}")
    } else {
        http.to_string()
    };
    std::fs::write(node.dir.http_addr(), address)
        .with_context(|| format!("cannot write {}", node.dir.http_addr().display()))?;
    say(&format!(
        "rhizome node {} ({node_id}) serving: quic {quic}, {scheme} {http}, in {:.0?}",
        node.config.node.name,
        started.elapsed()
    ));

    // What older data keys sealed is sealed again while the node runs, resuming a re-seal a
    // kill cut short.
    let reseal = tokio::spawn(crate::security::store_key::reseal(
        store.clone(),
        reseal_wake,
    ));
    let retention_store = store.clone();
    let retention = tokio::spawn(async move {
        let mut every = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            every.tick().await;
            let now = now_ms();
            match retention_store
                .call(move |s| s.enforce_retention(now))
                .recv()
                .await
            {
                Ok(retired) if !retired.is_empty() => {
                    tracing::info!(windows = retired.len(), "retention retired old windows");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    });
    // A fleet's registry has a head per node after it starts; aggregators fold them into one
    // (one merger per zone: were every node to merge, merges would be most of the changes),
    // at a random phase so that two merges rarely cross.
    // Below the free-space watermark, windows the aggregator chain already holds make room
    // first; writes are refused only when that is not enough.
    let room_store = store.clone();
    let room_view = hierarchy_rx.clone();
    let room_sync = sync.clone();
    let headroom = tokio::spawn(async move {
        let mut every = tokio::time::interval(HEADROOM_INTERVAL);
        let mut was_low = false;
        loop {
            every.tick().await;
            // Peers' changes refused while space was low wait in their sessions: once it is
            // back, compare again with every peer rather than wait for their stall checks.
            let low = matches!(
                room_store.call(|s| Ok(s.headroom())).recv().await,
                Ok(Some(Ok(room))) if room.is_low()
            );
            if was_low && !low {
                tracing::info!(
                    "free space is above the watermark again: comparing with every peer"
                );
                room_sync.resync(None).await;
            }
            was_low = low;
            let holders: Vec<String> = room_view
                .borrow()
                .as_ref()
                .map(|h| h.chain.iter().filter_map(|(_, a)| a.clone()).collect())
                .unwrap_or_default();
            let now = now_ms();
            match room_store
                .call(move |s| s.retire_held_windows(&holders, now))
                .recv()
                .await
            {
                Ok(retired) if !retired.is_empty() => {
                    let bytes: u64 = retired.iter().map(|r| r.bytes).sum();
                    tracing::warn!(
                        windows = retired.len(),
                        bytes,
                        "low disk: retired windows the aggregator chain holds"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "making room on a low disk failed"),
            }
        }
    });
    let merge_store = store.clone();
    let merge_view = hierarchy_rx;
    let merges = tokio::spawn(async move {
        let phase = rand::random::<f64>() * crdt_store::MERGE_HEADS_EVERY.as_secs_f64();
        tokio::time::sleep(std::time::Duration::from_secs_f64(phase)).await;
        let mut every = tokio::time::interval(crdt_store::MERGE_HEADS_EVERY);
        loop {
            every.tick().await;
            let aggregates = merge_view
                .borrow()
                .as_ref()
                .is_some_and(|h| h.is_aggregator());
            if !aggregates {
                continue;
            }
            let merged = merge_store
                .call(|s| s.merge_heads::<MeshRegistry>(&DocName::Mesh))
                .recv()
                .await;
            if let Err(e) = merged {
                tracing::warn!(error = %e, "cannot merge the registry's heads");
            }
        }
    });
    let refresh_mesh = mesh.clone();
    let refresh_dir = node.dir.root.clone();
    let refresh_section = node.config.node.clone();
    let refresh = tokio::spawn(async move {
        let mut every = tokio::time::interval(CAPABILITIES_INTERVAL);
        every.tick().await;
        loop {
            every.tick().await;
            let (dir, section) = (refresh_dir.clone(), refresh_section.clone());
            match tokio::task::spawn_blocking(move || {
                crate::ops::resources::capabilities(&dir, &section)
            })
            .await
            {
                Ok(Ok(capabilities)) => {
                    *current_capabilities.lock().expect("not poisoned") = capabilities;
                    let _ = refresh_mesh.set_capabilities(capabilities).await;
                }
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "cannot read capabilities"),
                Err(_) => {}
            }
        }
    });
    if http_tls {
        let listener = crate::api::tls::listen(
            listener,
            node.dir.clone(),
            node.identity.secret(),
            node.trust.clone(),
        )?;
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
            .context("HTTP API")?;
    } else {
        use axum::serve::ListenerExt;
        // Small frames (sync messages, WebSocket pings) must not wait for Nagle's timer.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
            .context("HTTP API")?;
    }
    tracing::info!("shutting down");
    // Runs in flight end `interrupted` and are recorded before the store stops.
    scheduler.shutdown().await;
    // The mesh says goodbye first; its event stream then ends, which stops sync.
    mesh.shutdown().await;
    if let Some(own_entry) = own_entry {
        own_entry.abort();
    }
    renewal.abort();
    trust.abort();
    sync_watching.abort();
    vitals.abort();
    alerting.abort();
    if let Some(exporting) = exporting {
        exporting.abort();
    }
    for task in check_tasks {
        task.abort();
    }
    reseal.abort();
    revocations.abort();
    zone_peers.abort();
    routes.abort();
    rollups.abort();
    reloads.abort();
    retention.abort();
    merges.abort();
    headroom.abort();
    refresh.abort();
    releases.abort();
    let _ = std::fs::remove_file(node.dir.http_addr());
    let _ = std::fs::remove_file(node.dir.api_token());
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .context("stopping the store")?;
    say(&format!("rhizome node {node_id} stopped"));
    let swap = swap_slot.lock().expect("not poisoned").take();
    Ok(swap)
}

/// How long a starting node waits for its store while another process holds it.
const STORE_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the store, waiting a little while another process holds it: a CLI command that found
/// no node answering reads the store directly for a moment, and a node re-executed by a release
/// swap must not die of that moment. Another node on the data dir still holds it at the end.
async fn open_store_when_free(node: &Node) -> Result<crdt_store::Store> {
    let deadline = Instant::now() + STORE_LOCK_PATIENCE;
    loop {
        match node.open_store() {
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.downcast_ref::<crdt_store::StoreError>(),
                        Some(crdt_store::StoreError::Locked { .. })
                    ) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The results window in minutes, which alerts documents share.
fn store_config_window_minutes(config: &crate::config::Config) -> Result<u32> {
    let window = crate::config::parse_duration(&config.store.results_window)?;
    u32::try_from(window.as_secs() / 60).context("store.results_window is too long")
}

/// How often the node looks whether its coarse health moved enough to tell the fleet.
const VITALS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps the node's registry entry's vitals current: rewritten only when they moved by more
/// than their rounding, since the registry replicates to every node.
async fn publish_vitals(
    monitor: crate::ops::monitor::MonitorHandle,
    store: StoreHandle,
    node_id: String,
) {
    let mut told: Option<crate::ops::monitor::Coarse> = None;
    let mut every = tokio::time::interval(VITALS_EVERY);
    loop {
        every.tick().await;
        let Some(coarse) = monitor.coarse() else {
            continue;
        };
        if told.as_ref().is_some_and(|t| !t.differs_enough(&coarse)) {
            continue;
        }
        let vitals = crdt_store::Vitals {
            cpu_percent: coarse.cpu_percent.into(),
            memory_used_percent: coarse.memory_used_percent.into(),
            disk_free_percent: coarse.disk_free_percent.into(),
            load1_x100: coarse.load1_x100.into(),
            temperature_celsius: coarse.temperature_celsius.map(i64::from),
            battery_percent: coarse.battery_percent.map(u64::from),
            at_ms: now_ms(),
        };
        let id = node_id.clone();
        let written = store
            .call(move |s| {
                s.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                    if let Some(entry) = m.nodes.get(&id).cloned() {
                        m.write_entry(
                            &id,
                            NodeEntry {
                                vitals: Some(vitals),
                                ..entry
                            },
                            now_ms(),
                        );
                    }
                })
            })
            .recv()
            .await;
        match written {
            Ok(()) => told = Some(coarse),
            Err(e) => tracing::warn!(error = %e, "cannot write this node's vitals"),
        }
    }
}

/// Longest wait between tries to write the node's own registry entry.
const OWN_ENTRY_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

async fn store_own_entry(
    store: &StoreHandle,
    id: &str,
    entry: &NodeEntry,
) -> Result<(), crdt_store::StoreError> {
    let (id, entry) = (id.to_owned(), entry.clone());
    store
        .call(move |s| {
            s.update::<MeshRegistry, _>(&DocName::Mesh, |m| {
                // Rollout reports are the scheduler's, and a `failed` one is final: a restart
                // keeps them.
                let rollouts = m
                    .nodes
                    .get(&id)
                    .map(|e| e.rollouts.clone())
                    .unwrap_or_default();
                m.write_entry(&id, NodeEntry { rollouts, ..entry }, now_ms())
            })
        })
        .recv()
        .await
}

/// Writes the node's own registry entry after a first try failed, trying again with back-off
/// while the store refuses (its disk full or failing, or reopening after a failed commit).
async fn write_own_entry(store: StoreHandle, id: String, entry: NodeEntry) {
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(OWN_ENTRY_RETRY_MAX);
        match store_own_entry(&store, &id, &entry).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = %e,
                retry_in_s = wait.as_secs(),
                "the node's registry entry is not stored yet"
            ),
        }
    }
}

/// The addresses peers can dial this node at: the bound one, or, when bound to every interface,
/// each interface's (an unspecified address is of no use to a peer reading the registry).
fn published_addresses(quic: std::net::SocketAddr) -> Vec<String> {
    if !quic.ip().is_unspecified() {
        return vec![quic.to_string()];
    }
    let mut addresses: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter(|i| quic.is_ipv6() || i.ip().is_ipv4())
        .map(|i| std::net::SocketAddr::new(i.ip(), quic.port()).to_string())
        .collect();
    addresses.sort();
    if addresses.is_empty() {
        addresses.push(std::net::SocketAddr::from(([127, 0, 0, 1], quic.port())).to_string());
    }
    addresses
}

/// Tells membership the registered addresses of the other members of this node's zone, so a
/// zone meets and elects one aggregator where multicast (mDNS) does not pass: one bootstrap
/// peer (`--peer`, the cloud) brings the registry, the registry brings the zone. Only the own
/// zone's members: dialling every node of a fleet's registry would make a full mesh of it.
async fn follow_zone_addresses(
    me: String,
    zone: String,
    mut changes: tokio::sync::watch::Receiver<u64>,
    store: StoreHandle,
    mesh: mesh::net::driver::MeshHandle,
    revoked: Revocations,
) {
    let mut told: std::collections::BTreeSet<(String, String)> = Default::default();
    loop {
        let registry = store
            .call(|s| s.read::<MeshRegistry>(&DocName::Mesh))
            .recv()
            .await;
        if let Ok(registry) = registry {
            for (node, entry) in &registry.nodes {
                if *node == me || entry.zone != zone || revoked.contains(node) {
                    continue;
                }
                for addr in &entry.addresses {
                    if told.insert((node.clone(), addr.clone())) {
                        let _ = mesh.learned(node.clone(), addr.clone()).await;
                    }
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the mesh's refusal list in step with the revocations of the replicated `mesh`
/// document, and closes connections of nodes revoked while connected.
async fn follow_revocations(
    mut changes: tokio::sync::watch::Receiver<u64>,
    store: StoreHandle,
    mesh: mesh::net::driver::MeshHandle,
    revoked: Revocations,
    (mesh_id, trust, mut ignored): (
        String,
        crate::security::trust::Trust,
        std::collections::BTreeMap<String, String>,
    ),
    audit: Arc<crate::security::audit::Audit>,
) {
    use crate::security::audit::Kind;
    while changes.changed().await.is_ok() {
        let registry = match store
            .call(|s| s.read::<MeshRegistry>(&DocName::Mesh))
            .recv()
            .await
        {
            Ok(registry) => registry,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mesh document for revocations");
                continue;
            }
        };
        let verdicts = crate::security::revocations::verdicts(&registry, &mesh_id, &trust.all());
        // Logged once per decision seen, not at every change of the document.
        for (node, why) in &verdicts.ignored {
            if ignored.get(node) != Some(why) {
                tracing::warn!(%node, why = %why, "a revocation is ignored");
                audit.record(
                    Kind::DecisionIgnored,
                    node.clone(),
                    format!("a revocation decision: {why}"),
                );
            }
        }
        ignored = verdicts.ignored;
        let before: std::collections::BTreeSet<String> = revoked.snapshot();
        for node in before.difference(&verdicts.revoked) {
            tracing::warn!(%node, "revocation withdrawn by the mesh CA: admitting the node again");
            audit.record(Kind::Revocation, node.clone(), "withdrawn by the mesh CA");
        }
        revoked.set(verdicts.revoked.iter().cloned());
        for node in verdicts.revoked.iter().filter(|n| !before.contains(*n)) {
            tracing::warn!(%node, "node revoked by the mesh CA: refusing it from now on");
            audit.record(Kind::Revocation, node.clone(), "revoked by the mesh CA");
            let _ = mesh.disconnect(node, "revoked").await;
        }
    }
}

/// Keeps replication's share policy in step with the election (who aggregates what) and the
/// registry (which zone each node is in).
async fn follow_routes(
    me: String,
    results_to_cloud: bool,
    mut registry_changes: tokio::sync::watch::Receiver<u64>,
    mut hierarchy: tokio::sync::watch::Receiver<Option<mesh::proto::election::Hierarchy>>,
    store: StoreHandle,
    mesh: mesh::net::driver::MeshHandle,
    sync: crate::fleet::sync::SyncHandle,
) {
    let Ok(mut view) = mesh.hierarchy().await else {
        return;
    };
    loop {
        let routes = store.call(|s| {
            let clouds = crate::fleet::hierarchy::clouds(&*s.registry()?);
            Ok((s.node_zones()?, clouds))
        });
        match routes.recv().await {
            Ok((zones, clouds)) => {
                let policy = crate::fleet::hierarchy::share_policy(
                    &me,
                    &view,
                    &zones,
                    clouds,
                    results_to_cloud,
                );
                sync.set_policy(policy).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the mesh document for routing"),
        }
        tokio::select! {
            changed = registry_changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(mesh::proto::sync::POLICY_SETTLE) => {}
                    changed = hierarchy.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        take_view(&mut hierarchy, &mut view);
                    }
                }
            }
            changed = hierarchy.changed() => {
                if changed.is_err() {
                    return;
                }
                take_view(&mut hierarchy, &mut view);
            }
        }
    }
}

/// Takes the latest hierarchy view, if one was published.
fn take_view(
    hierarchy: &mut tokio::sync::watch::Receiver<Option<mesh::proto::election::Hierarchy>>,
    view: &mut mesh::proto::election::Hierarchy,
) {
    if let Some(latest) = hierarchy.borrow_and_update().clone() {
        *view = latest;
    }
}

/// A line on stdout. A daemon's stdout may be closed by whoever started it; that must not
/// stop the node (println! would panic on a broken pipe).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// SIGINT or SIGTERM. Installed before the node says it serves: a supervisor that stops it
/// right after must get a clean stop, not the default action of the signal.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
