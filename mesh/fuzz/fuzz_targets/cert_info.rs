//! A peer's certificate and a role extension come from the network: whatever their bytes,
//! reading them gives a node id, role and validity or an error, never a panic, and a CA
//! signature check over arbitrary text and signature bytes says no without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::net::identity::{cert_info, der_utf8_string, verify_ca_signature};
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let _ = cert_info(&CertificateDer::from(data.to_vec()));
    if let Some(text) = der_utf8_string(data) {
        assert!(data.len() >= 2 + text.len());
    }
    let text = String::from_utf8_lossy(data);
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert!(!verify_ca_signature(pem, &text, &text));
});
