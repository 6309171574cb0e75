//! `rhizome explain`: why a document is or is not in sync with a peer, and why a node is or is
//! not connected, from the running node's own state.

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::api::explain::{DocExplanation, PeerExplanation};
use crate::cli::client::encode_query;
use crate::node::Node;

#[derive(Debug, Subcommand)]
pub enum ExplainCommand {
    /// For each connected peer (or the one named): whether the document is shared with it and
    /// by which rule, whether it is in sync, what is pending and since when, the last error.
    Doc {
        /// A document name (`mesh`, `workflow/<id>`, `results/<node>/<window>`,
        /// `rollup/<zone>/<window>`).
        name: String,
        /// Only this peer (node id, id prefix or name), connected or not.
        #[arg(long)]
        peer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Why a node is or is not connected: connected since when, down since when and why,
    /// refused at the handshake and why, its dials failing, revoked, or never met.
    Peer {
        /// Node id, id prefix or name.
        node: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn explain(node: &Node, cmd: ExplainCommand) -> Result<()> {
    let Some(api) = crate::cli::client::running_node(&node.dir) else {
        bail!(
            "no node is running on {}: explain reads what the running node holds and saw; \
             start it with `rhizome start --data-dir {}`",
            node.dir.root.display(),
            node.dir.root.display()
        );
    };
    match cmd {
        ExplainCommand::Doc { name, peer, json } => {
            let mut path = format!("/explain/doc?name={}", encode_query(&name));
            if let Some(peer) = &peer {
                path.push_str(&format!("&peer={}", encode_query(peer)));
            }
            let explained: DocExplanation = api.get(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&explained)?);
                return Ok(());
            }
            println!(
                "{} ({}){}",
                explained.name,
                explained.id,
                if explained.held {
                    ""
                } else {
                    ", not held here"
                }
            );
            if explained.peers.is_empty() {
                println!("  no peer is connected: name one with --peer");
            }
            for p in &explained.peers {
                let name = p.peer_name.as_deref().unwrap_or("?");
                println!(
                    "  {name} ({}): {}",
                    &p.peer[..12.min(p.peer.len())],
                    p.verdict
                );
                if p.shared {
                    println!("      shared: {}", p.rule);
                }
            }
        }
        ExplainCommand::Peer { node: asked, json } => {
            let path = format!("/explain/peer?node={}", encode_query(&asked));
            let explained: PeerExplanation = api.get(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&explained)?);
                return Ok(());
            }
            println!(
                "{} ({}): {}",
                explained.name.as_deref().unwrap_or("?"),
                explained.node,
                explained.verdict
            );
            println!("  state       {}", explained.state);
            if let Some(zone) = &explained.zone {
                println!(
                    "  zone        {}",
                    crate::fleet::hierarchy::zone_label(zone)
                );
            }
            if !explained.registered_addresses.is_empty() {
                println!(
                    "  addresses   {}",
                    explained.registered_addresses.join(", ")
                );
            }
            println!("  discovery   {}", explained.discovery);
        }
    }
    Ok(())
}
