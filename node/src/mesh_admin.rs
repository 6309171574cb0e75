//! `rhizome mesh ...` and enrolment: creating a mesh CA and issuing node certificates.

use std::path::Path;

use anyhow::{Context, Result, bail};
use mesh::net::identity::MeshCa;

use crate::config::{CA_CERT_FILE, CA_KEY_FILE};
use crate::identity::write_private;

/// Creates a mesh CA in `dir`, refusing to overwrite one.
pub fn create_ca(dir: &Path) -> Result<MeshCa> {
    if dir.join(CA_KEY_FILE).exists() {
        bail!(
            "{} already holds a mesh CA; choose another directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the mesh directory {}", dir.display()))?;
    let ca = MeshCa::create()?;
    write_private(&dir.join(CA_KEY_FILE), &ca.key_pem())?;
    std::fs::write(dir.join(CA_CERT_FILE), ca.cert_pem())
        .with_context(|| format!("cannot write {}", dir.join(CA_CERT_FILE).display()))?;
    Ok(ca)
}

/// Loads the mesh CA of `dir`.
pub fn load_ca(dir: &Path) -> Result<MeshCa> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is {} a mesh directory made by `rhizome mesh create`?)",
                path.display(),
                dir.display()
            )
        })
    };
    let key = read(CA_KEY_FILE)?;
    let cert = read(CA_CERT_FILE)?;
    MeshCa::load(&key, &cert).with_context(|| format!("mesh CA in {}", dir.display()))
}
