//! A Rust automerge-repo client, `samod`, as a peer through `GET /automerge` of one node of a
//! two-node mesh of real processes: it finds a workflow by the URL `doc show` prints, reads it,
//! edits it (an admin token; the node writes it as its own signed version), the edit reaches
//! the other node over QUIC, a version applied on the node reaches the client, and a document
//! the node lacks is unavailable at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use automerge::{ReadDoc, ScalarValue, Value as AmValue};
use futures::{SinkExt, StreamExt, TryStreamExt};
use rhizome_e2e::process::{
    LogsOnPanic, api_token, apply_on, connected, doc_url, init, init_in, json_if_ok, run_on, start,
};
use rhizome_e2e::wait_until;
use rhizome_e2e::workflows::LINE;
use serde_json::{Value, json};

/// Dials the node's endpoint with tokio-tungstenite, each frame one protocol message.
struct Dialer {
    url: url::Url,
}

impl samod::Dialer for Dialer {
    type Error = std::convert::Infallible;

    fn url(&self) -> url::Url {
        self.url.clone()
    }

    fn connect(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<samod::Transport, samod::DialError<Self::Error>>>
    {
        let url = self.url.clone();
        Box::pin(async move {
            let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(samod::DialError::transient)?;
            let (sink, stream) = socket.split();
            let stream = stream
                .try_filter_map(|frame| async move {
                    Ok(match frame {
                        tungstenite::Message::Binary(bytes) => Some(bytes.to_vec()),
                        _ => None,
                    })
                })
                .boxed();
            let sink = sink.with(|bytes: Vec<u8>| async move {
                Ok::<_, tungstenite::Error>(tungstenite::Message::Binary(bytes.into()))
            });
            Ok(samod::Transport::new(stream, Box::pin(sink)))
        })
    }
}

/// The workflow definition a samod document holds, parsed.
fn definition(handle: &samod::DocHandle) -> Value {
    handle.with_document(|doc| match doc.get(automerge::ROOT, "definition") {
        Ok(Some((AmValue::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(text) => serde_json::from_str(text).unwrap(),
            other => panic!("the definition is {other:?}"),
        },
        other => panic!("no definition: {other:?}"),
    })
}

#[test]
fn a_samod_repo_syncs_with_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|n| tmp.path().join(n)).collect();
    let _logs = LogsOnPanic(dirs.clone());
    init(&dirs[0], "a", None);
    init_in(&dirs[1], "b", Some(&dirs[0].join("mesh")), &[]);
    let a = start(&dirs[0], &[]);
    let b = start(&dirs[1], &[&a.quic]);
    for node in [&a, &b] {
        wait_until("connected", Duration::from_secs(10), || {
            connected(node) == 1
        });
    }
    apply_on(&a, LINE);
    let shown = |node| json_if_ok(run_on(node, &["workflow", "show", "line", "--json"]));
    wait_until("the workflow at b", Duration::from_secs(10), || {
        shown(&b)["description"] == "base"
    });
    let admin = api_token(&a.dir, "admin", "samod");
    let doc_url = doc_url(&a, "workflow/line");
    let doc_id: samod::DocumentId = doc_url.trim_start_matches("automerge:").parse().unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (repo, handle) = runtime.block_on(async {
        let repo = samod::Repo::build_tokio().load().await;
        let url = url::Url::parse(&format!("ws://{}/automerge?token={admin}", a.http)).unwrap();
        let dialer = repo
            .dial(samod::BackoffConfig::default(), Arc::new(Dialer { url }))
            .unwrap();
        // A repo with no peer yet answers `find` "unavailable" at once: connected first.
        tokio::time::timeout(Duration::from_secs(20), dialer.established())
            .await
            .expect("connected within 20 s")
            .expect("the node accepted the connection");
        let found = tokio::time::timeout(Duration::from_secs(20), repo.find(doc_id))
            .await
            .expect("found within 20 s")
            .unwrap()
            .expect("the node has the workflow");

        // A document the node does not hold: unavailable, not a hang.
        let unknown: samod::DocumentId = "2j9knpCseyhnK8izDmLpGP5WMdZQ".parse().unwrap();
        let missing = tokio::time::timeout(Duration::from_secs(20), repo.find(unknown))
            .await
            .expect("answered within 20 s")
            .unwrap();
        assert!(missing.is_none(), "a document the node lacks was found");
        (repo, found)
    });

    let mut edited = definition(&handle);
    assert_eq!(edited["description"], "base");
    edited["description"] = json!("edited by a samod repo");
    edited["version"] = json!(edited["version"].as_u64().unwrap() + 1);
    handle.with_document(|doc| {
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            use automerge::transaction::Transactable;
            tx.put(automerge::ROOT, "definition", edited.to_string())?;
            Ok(())
        })
        .unwrap();
    });
    let took = wait_until("samod's edit at b", Duration::from_secs(15), || {
        shown(&b)["description"] == "edited by a samod repo"
    });
    eprintln!("samod client: its edit reached the other node in {took:?}");

    apply_on(
        &a,
        &LINE.replace("description: base", "description: applied on a"),
    );
    let took = wait_until(
        "a's version at the samod repo",
        Duration::from_secs(15),
        || definition(&handle)["description"] == "applied on a",
    );
    eprintln!("samod client: a version applied on the node reached it in {took:?}");
    runtime.block_on(repo.stop());
}
