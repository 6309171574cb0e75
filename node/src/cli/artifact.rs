//! `rhizome artifact add|list|show|fetch|remove|gc`: the files a node holds by content (see
//! [`crate::fleet::artifacts`]). Through the running node's API when one runs on the data
//! dir (it owns the artifacts directory), else on the directory itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use crdt_store::format_timestamp;

use crate::cli::client::{Api, encode_query};
use crate::cli::output;
use crate::fleet::artifacts::{self, Added, ArtifactStore, Collected, Inventory, Shown};
use crate::node::{Node, now_ms};

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Store a file as an artifact: cut into content-defined chunks (about 256 KiB) stored by
    /// their SHA-256, so a new version of a file stores and moves only the chunks that
    /// changed. Prints the artifact's id (the hash of its manifest); the name then stands for
    /// this id (adding another file under the same name moves the name to it).
    Add {
        /// The file.
        file: PathBuf,
        /// The name the artifact goes by (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Manifest format: 2 keys chunks by BLAKE3 (faster to check on every fetch); 1 by
        /// SHA-256, for fleets with nodes whose build reads only format 1.
        #[arg(long, default_value_t = crate::fleet::artifacts::store::MANIFEST_FORMAT)]
        format: u32,
        #[arg(long)]
        json: bool,
    },
    /// Every artifact this node holds or knows of, most recently used first, with the cache's
    /// cap (`artifacts.cache_size`) and what it holds.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One artifact (by name, id, or an id prefix of 8 or more characters): size, hash,
    /// chunks, and how many of them this node lacks.
    Show {
        artifact: String,
        #[arg(long)]
        json: bool,
    },
    /// Make an artifact whole on this node and write its bytes out, every chunk checked
    /// against its hash and the whole against the manifest's. The running node fetches what
    /// it lacks from its peers (its aggregator first, then up the chain, then any peer that
    /// holds it), resuming where an earlier fetch stopped; an artifact this node has never
    /// seen is named by its whole id.
    Fetch {
        artifact: String,
        /// Where to write the bytes (replaced atomically); without it, only checks that the
        /// artifact is whole here.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Stop holding an artifact (every name for it goes too); its chunks are freed by the next
    /// `gc` unless another artifact shares them.
    Remove { artifact: String },
    /// Free the chunks no artifact needs, after evicting the least recently used artifacts
    /// until what is held fits `artifacts.cache_size`.
    Gc {
        #[arg(long)]
        json: bool,
    },
}

pub fn artifact(node: &Node, cmd: ArtifactCommand) -> Result<()> {
    match crate::cli::client::running_node(&node.dir) {
        Some(api) => through_node(&api, cmd),
        None => {
            let cap = node.config.artifact_cache_cap()?;
            let mut store = ArtifactStore::open(&node.dir.artifacts())?;
            on_disk(&mut store, cap, cmd)
        }
    }
}

fn through_node(api: &Api, cmd: ArtifactCommand) -> Result<()> {
    match cmd {
        ArtifactCommand::Add {
            file,
            name,
            format,
            json,
        } => {
            let name = name_for(&file, name)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let added: Added = api.post_bytes(
                &format!("/artifacts?name={}&format={format}", encode_query(&name)),
                &bytes,
                upload_timeout(bytes.len() as u64),
            )?;
            print_added(&added, json)
        }
        ArtifactCommand::List { json } => print_inventory(&api.get("/artifacts")?, json),
        ArtifactCommand::Show { artifact, json } => print_shown(
            &api.get(&format!("/artifacts/{}", encode_query(&artifact)))?,
            json,
        ),
        ArtifactCommand::Fetch {
            artifact,
            output,
            json,
        } => {
            let fetched = fetch_through_node(api, &artifact, json || crate::cli::output::quiet())?;
            let shown: Shown = api.get(&format!("/artifacts/{}", fetched.id))?;
            refuse_incomplete(&shown)?;
            if let Some(output) = &output {
                let path = format!("/artifacts/{}/content", shown.listed.id);
                let bytes = api.get_bytes(&path, upload_timeout(shown.listed.size))?;
                write_checked(&bytes, &shown, output)?;
            }
            print_fetched(&shown, Some(&fetched), output.as_deref(), json)
        }
        ArtifactCommand::Remove { artifact } => {
            let removed: serde_json::Value =
                api.delete(&format!("/artifacts/{}", encode_query(&artifact)))?;
            println!(
                "removed artifact {} (its chunks go at the next `rhizome artifact gc`)",
                removed["removed"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        ArtifactCommand::Gc { json } => print_collected(&api.post("/artifacts/gc", "")?, json),
    }
}

fn on_disk(store: &mut ArtifactStore, cap: Option<u64>, cmd: ArtifactCommand) -> Result<()> {
    match cmd {
        ArtifactCommand::Add {
            file,
            name,
            format,
            json,
        } => {
            let name = name_for(&file, name)?;
            print_added(&store.add_in_format(&file, &name, now_ms(), format)?, json)
        }
        ArtifactCommand::List { json } => print_inventory(&artifacts::inventory(store, cap)?, json),
        ArtifactCommand::Show { artifact, json } => {
            print_shown(&artifacts::show(store, &artifact)?, json)
        }
        ArtifactCommand::Fetch {
            artifact,
            output,
            json,
        } => {
            let shown = artifacts::show(store, &artifact)?;
            refuse_incomplete(&shown)?;
            if let Some(output) = &output {
                store.write_out(&shown.listed.id, output, now_ms())?;
            }
            print_fetched(&shown, None, output.as_deref(), json)
        }
        ArtifactCommand::Remove { artifact } => {
            let id = store.resolve(&artifact)?;
            store.remove(&id)?;
            println!("removed artifact {id} (its chunks go at the next `rhizome artifact gc`)");
            Ok(())
        }
        ArtifactCommand::Gc { json } => print_collected(&artifacts::collect(store, cap)?, json),
    }
}

fn name_for(file: &Path, name: Option<String>) -> Result<String> {
    match name {
        Some(name) => Ok(name),
        None => file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} names no file: give --name", file.display())),
    }
}

/// A minute, plus a second per 10 MB: the node hashes and syncs every chunk before answering.
fn upload_timeout(size: u64) -> std::time::Duration {
    std::time::Duration::from_secs(60 + size / 10_000_000)
}

/// Asks the node to make the artifact whole from its peers, printing progress on stderr while it
/// does (from the node's own count of the chunks it holds).
fn fetch_through_node(
    api: &crate::cli::client::Api,
    artifact: &str,
    quiet: bool,
) -> Result<crate::fleet::artifacts::fetch::Fetched> {
    // Dropping `finished` wakes the progress thread at once: a fetch's answer is not held
    // back until the thread's next look.
    let (finished, finished_rx) = std::sync::mpsc::channel::<()>();
    let progress = (!quiet).then(|| {
        let api = api.clone();
        let path = format!("/artifacts/{}", encode_query(artifact));
        std::thread::spawn(move || {
            let mut last = None;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                finished_rx.recv_timeout(std::time::Duration::from_secs(1))
            {
                if let Ok(shown) = api.get::<Shown>(&path) {
                    let now = (shown.listed.chunks_here, shown.listed.chunks);
                    if last != Some(now) {
                        eprintln!("fetching: {} of {} chunks here", now.0, now.1);
                        last = Some(now);
                    }
                }
            }
        })
    });
    let fetched = api.post_with_timeout(
        &format!("/artifacts/{}/fetch", encode_query(artifact)),
        "",
        FETCH_TIMEOUT,
    );
    drop(finished);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    let fetched: crate::fleet::artifacts::fetch::Fetched = fetched?;
    if !quiet && fetched.blobs_fetched > 0 {
        eprintln!(
            "fetched {} blobs ({}) from peers in {:.1} s",
            fetched.blobs_fetched,
            output::bytes(fetched.bytes_fetched),
            fetched.seconds
        );
    }
    Ok(fetched)
}

/// How long `artifact fetch` waits for the node: a large artifact over a slow uplink takes a
/// while, and the node keeps what it fetched if this runs out.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

fn refuse_incomplete(shown: &Shown) -> Result<()> {
    if shown.missing_chunks > 0 {
        bail!(
            "artifact {} is not whole on this node: {} of its chunks ({}) are missing; start the \
             node (`rhizome start`) and run `rhizome artifact fetch` again to fetch them from \
             its peers",
            shown.listed.id,
            shown.missing_chunks,
            output::bytes(shown.missing_bytes)
        );
    }
    Ok(())
}

/// Writes bytes received from the node after checking them against the manifest.
fn write_checked(bytes: &[u8], shown: &Shown, output: &Path) -> Result<()> {
    use sha2::Digest;
    let found = hex::encode(sha2::Sha256::digest(bytes));
    if bytes.len() as u64 != shown.listed.size || found != shown.listed.sha256 {
        bail!(
            "the node sent {} bytes hashing to {found}; artifact {} is {} bytes hashing to {}: \
             nothing written (the node's log says which chunk failed)",
            bytes.len(),
            shown.listed.id,
            shown.listed.size,
            shown.listed.sha256
        );
    }
    crate::durable_file::replace(output, bytes, 0o644)
        .with_context(|| format!("cannot write {}", output.display()))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_added(added: &Added, json: bool) -> Result<()> {
    if json {
        return print_json(added);
    }
    println!(
        "added artifact {} as `{}`: {} in {} chunks, {} new ({})",
        added.id,
        added.name,
        output::bytes(added.size),
        added.chunks,
        added.new_chunks,
        output::bytes(added.new_bytes)
    );
    Ok(())
}

fn print_inventory(inventory: &Inventory, json: bool) -> Result<()> {
    if json {
        return print_json(inventory);
    }
    let cap = inventory
        .cache_cap
        .map_or("no cap".into(), |c| format!("cap {}", output::bytes(c)));
    println!(
        "{} artifacts, {} held ({cap})",
        inventory.artifacts.len(),
        output::bytes(inventory.held_bytes)
    );
    if inventory.artifacts.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = inventory
        .artifacts
        .iter()
        .map(|a| {
            vec![
                output::short_id(&a.id).to_owned(),
                a.names.join(", "),
                output::bytes(a.size),
                if a.complete {
                    "whole".into()
                } else {
                    format!("{}/{} chunks", a.chunks_here, a.chunks)
                },
                format_timestamp(a.last_used_ms),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["ID", "NAMES", "SIZE", "HERE", "LAST USED"], &rows)
    );
    Ok(())
}

fn print_shown(shown: &Shown, json: bool) -> Result<()> {
    if json {
        return print_json(shown);
    }
    let l = &shown.listed;
    println!("artifact {}", l.id);
    println!("  names      {}", l.names.join(", "));
    println!("  size       {} ({} bytes)", output::bytes(l.size), l.size);
    println!("  sha256     {}", l.sha256);
    println!(
        "  chunks     {} ({} missing here, {})",
        l.chunks,
        shown.missing_chunks,
        output::bytes(shown.missing_bytes)
    );
    println!("  added      {}", format_timestamp(l.added_ms));
    println!("  last used  {}", format_timestamp(l.last_used_ms));
    Ok(())
}

fn print_fetched(
    shown: &Shown,
    fetched: Option<&crate::fleet::artifacts::fetch::Fetched>,
    output: Option<&Path>,
    json: bool,
) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({
            "id": shown.listed.id,
            "size": shown.listed.size,
            "sha256": shown.listed.sha256,
            "output": output,
            "blobs_fetched": fetched.map_or(0, |f| f.blobs_fetched),
            "bytes_fetched": fetched.map_or(0, |f| f.bytes_fetched),
            "seconds": fetched.map_or(0.0, |f| f.seconds),
        }));
    }
    match output {
        Some(path) => println!(
            "artifact {} is whole here; wrote {} to {}",
            shown.listed.id,
            output::bytes(shown.listed.size),
            path.display()
        ),
        None => println!("artifact {} is whole here", shown.listed.id),
    }
    Ok(())
}

fn print_collected(collected: &Collected, json: bool) -> Result<()> {
    if json {
        return print_json(collected);
    }
    println!(
        "evicted {} artifacts, removed {} chunks ({}); {} held",
        collected.evicted.len(),
        collected.chunks_removed,
        output::bytes(collected.bytes_removed),
        output::bytes(collected.bytes_held)
    );
    Ok(())
}
