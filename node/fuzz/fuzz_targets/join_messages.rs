//! The join protocol's messages come from strangers: a join request reaches the node that holds
//! the CA from anyone who can connect, and a joining machine reads the answer of whatever sits
//! at the address it was given. Whatever the bytes, the issuer answers a refusal naming why
//! (a certificate only for the exact token it issued), and the joining side accepts nothing but
//! a certificate of the token's CA for its own key; neither panics.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mesh::net::enrolment::Enrolment as _;
use mesh::net::identity::{MeshCa, NodeRole};
use rhizome::security::enrolment::{Issuer, JoinAnswer, JoinToken, check_answer, create};

struct Fixture {
    _dir: tempfile::TempDir,
    issuer: Issuer,
    token: JoinToken,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::create().unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let now = rhizome::node::now_ms();
        // Enough uses for any run: each token works once.
        let (text, _) = create(dir.path(), &ca, NodeRole::Member, "", hour * 24, now).unwrap();
        let issuer = Issuer::new(
            MeshCa::load(&ca.key_pem(), ca.cert_pem()).unwrap(),
            dir.path(),
            hour,
            Arc::new(rhizome::security::audit::Audit::default()),
        );
        Fixture {
            _dir: dir,
            issuer,
            token: JoinToken::parse(&text).unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = JoinToken::parse(text);
    }
    // The issuer's side.
    let answer = fixture
        .issuer
        .enrol(data, "127.0.0.1:9".parse().unwrap(), None);
    match serde_json::from_slice::<JoinAnswer>(&answer).expect("the issuer answers a join answer") {
        JoinAnswer::Issued { .. } => {
            let secret = fixture.token.secret.as_bytes();
            assert!(
                data.windows(secret.len()).any(|w| w == secret),
                "a certificate for a request without the token's secret"
            );
        }
        JoinAnswer::Refused { reason } => assert!(!reason.is_empty()),
    }
    // The joining side, reading whatever came back.
    if let Ok((cert_pem, ..)) = check_answer(data, "peer", &fixture.token, &[7; 32]) {
        panic!("accepted an answer it could not have been sent: {cert_pem}");
    }
});
