//! The registry's `alert_rules` map is written by any member (the signature decides what
//! counts), so its strings are a stranger's bytes when a node reads them; a rule's condition
//! is text that the node parses. Whatever the bytes: no panic, nothing obeyed unless it is a
//! rule signed on a control node of this mesh (the fixture's registry holds none), and every
//! refusal carries a reason.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesh::net::identity::MeshCa;
use rhizome::ops::alerts::driver::fleet_rules;
use rhizome::ops::alerts::rules::parse_condition;

fn ca() -> &'static MeshCa {
    static CA: OnceLock<MeshCa> = OnceLock::new();
    CA.get_or_init(|| MeshCa::create().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_condition(&text);
    let (name, body) = text.split_once('\n').unwrap_or(("rule", &text));
    let mut registry = crdt_store::MeshRegistry::default();
    registry
        .alert_rules
        .insert(name.to_owned(), body.to_owned());
    let ca = ca();
    let (obeyed, refused) = fleet_rules(&registry, ca.mesh_id(), ca.cert_pem());
    assert!(obeyed.is_empty(), "a rule nobody signed was obeyed");
    assert!(refused.iter().all(|r| !r.reason.is_empty()));
});
