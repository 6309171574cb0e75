//! `rhizome store`: the store's encryption, its keys and their rotation, through the running
//! node when there is one (it holds the store), else on the store directly.

use anyhow::{Result, bail};
use serde_json::json;

use crate::cli::StoreCommand;
use crate::node::Node;
use crate::security::store_key::{self, KeysView, Rotation};

pub fn store_command(node: &Node, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Keys { json } => {
            let view: KeysView = match crate::cli::client::running_node(&node.dir) {
                Some(api) => api.get("/store/keys")?,
                None => {
                    let store = node.open_store()?;
                    store_key::view(&store, source(node).as_ref())?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_keys(&view);
            }
            Ok(())
        }
        StoreCommand::RotateKey { finish, json } => {
            if !node.config.store.encryption {
                bail!(
                    "the store of {} is not encrypted (store.encryption is off): there is no key \
                     to rotate",
                    node.dir.root.display()
                );
            }
            let rotation: Rotation = match crate::cli::client::running_node(&node.dir) {
                Some(api) => api.post(
                    "/store/rotate-key",
                    &json!({ "finish": finish }).to_string(),
                )?,
                None => rotate_here(node, finish, json)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rotation)?);
            } else {
                print_rotation(&rotation);
            }
            Ok(())
        }
    }
}

fn source(node: &Node) -> Option<store_key::KeySource> {
    node.config
        .store
        .encryption
        .then(|| store_key::source(&node.config.store, &node.dir.root))
}

/// Rotates on the store itself (no node runs), and re-seals it before returning, since no
/// node would do it in the background.
fn rotate_here(node: &Node, finish: bool, quiet: bool) -> Result<Rotation> {
    let source = store_key::source(&node.config.store, &node.dir.root);
    let mut store = node.open_store()?;
    let rotation = if finish {
        store_key::finish(&mut store, &source, &node.dir.root)?
    } else {
        store_key::rotate(&mut store, &source, &node.dir.root)?
    };
    let mut resealed = 0;
    loop {
        let step = store.reseal_step(1024)?;
        resealed += step.resealed;
        if !quiet && step.resealed > 0 {
            eprint!("\rre-sealed {resealed} values");
        }
        if step.done {
            break;
        }
    }
    if !quiet && resealed > 0 {
        eprintln!();
    }
    store.flush()?;
    Ok(rotation)
}

fn print_keys(view: &KeysView) {
    let Some(keys) = &view.keys else {
        println!("encrypted  no (store.encryption is off)");
        return;
    };
    println!("encrypted  yes, AES-256-GCM");
    println!("store key  {}", keys.store_key);
    if let Some(source) = &view.source {
        println!("read from  {source}");
    }
    if let Some(to) = &keys.rotating_to {
        println!(
            "rotating   to key {to}: the old key opens the store until the node reads the new one"
        );
    }
    println!("data key   {}", keys.data_key);
    if keys.resealing {
        println!(
            "re-seal    under way: values of data keys {:?} (or written before encryption) are \
             sealed again in the background",
            keys.old_data_keys
        );
    }
}

fn print_rotation(rotation: &Rotation) {
    if rotation.finished {
        println!(
            "the store key is now {} ({}); only it opens the store",
            rotation.store_key, rotation.source
        );
        if !rotation.retired.is_empty() {
            println!("  retired  {}", rotation.retired.join(", "));
        }
        println!(
            "  data key {} seals new values; older values are sealed again in the background",
            rotation.data_key
        );
        return;
    }
    println!(
        "the store now opens with its old key and with new key {}",
        rotation.store_key
    );
    if let Some(next) = &rotation.new_key_file {
        println!("  new key  {} (mode 0600)", next.display());
    }
    println!(
        "  next     put the new key in {} instead of the old one and restart the node: the old \
         key is retired when the node opens the store with the new one",
        rotation.source
    );
}
