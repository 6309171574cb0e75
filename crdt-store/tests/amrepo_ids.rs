//! The store's document ids are automerge-repo's document ids: the same bytes give the same
//! bs58check string in the store (samod-core's `DocumentId`, whose string is also the store's
//! key prefix) and in the WebSocket protocol (`mesh::proto::amrepo`), and a client that
//! `find`s the URL reaches the document the store holds.

use crdt_store::DocName;
use crdt_store::samod_core::DocumentId;
use mesh::proto::amrepo::{
    AutomergeUrl, automerge_url, document_id_string, parse_document_id, parse_document_id16,
};

#[test]
fn derived_ids_are_automerge_repo_ids() {
    let names = [
        DocName::Mesh,
        DocName::workflow("ingest").unwrap(),
        "results/node-1/2024-06-01T00:00Z+60m".parse().unwrap(),
    ];
    for name in names {
        let id = name.document_id("mesh-1234");
        let text = id.to_string();
        assert_eq!(document_id_string(id.as_bytes()), text, "{name}");
        assert_eq!(parse_document_id16(&text).unwrap(), id.as_bytes(), "{name}");
        assert_eq!(text.parse::<DocumentId>().unwrap(), id);
        let url = AutomergeUrl::parse(&automerge_url(id.as_bytes())).unwrap();
        assert_eq!(url.document_id, text);
        assert_eq!(url.id16().as_ref().map(|b| &b[..]), Some(id.as_bytes()));
    }
    // The mesh document of mesh "mesh-1234", as automerge-repo 2.5.6 in Node.js writes the id
    // of those 16 bytes (SHA-256 computed there too).
    assert_eq!(
        DocName::Mesh.document_id("mesh-1234").to_string(),
        "QcYKLPcGdsmcjMoJAudtvaia3Um"
    );
}

#[test]
fn any_16_bytes_agree_with_samod() {
    // Leading zero bytes are where base58 encoders differ most: cover 0 to 16 of them.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200usize {
        let mut bytes = [0u8; 16];
        for b in bytes.iter_mut().skip(round % 17) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let id = DocumentId::try_from(bytes.to_vec()).unwrap();
        assert_eq!(document_id_string(&bytes), id.to_string());
        assert_eq!(parse_document_id(&id.to_string()).unwrap(), bytes);
    }
}
