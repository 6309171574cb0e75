//! The node's ed25519 identity. The node id is the first 16 bytes of the public key in hex
//! (128 bits: no collisions in any fleet, short enough for document names); the certificate
//! carries the whole key. The secret key lives in `node.key`, readable by its owner only.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;

#[derive(Debug)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    pub fn generate() -> Identity {
        Identity {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The node id: the first 16 bytes of the public key in lowercase hex.
    pub fn node_id(&self) -> String {
        hex::encode(&self.key.verifying_key().as_bytes()[..16])
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn load(path: &Path) -> Result<Identity> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the node key {} (run `rhizome init` first)",
                path.display()
            )
        })?;
        let bytes = hex::decode(text.trim()).with_context(|| {
            format!(
                "node key {} is not hex: the file is corrupt",
                path.display()
            )
        })?;
        let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!(
                "node key {} holds {} bytes, an ed25519 secret key has 32: the file is corrupt",
                path.display(),
                bytes.len()
            );
        };
        Ok(Identity {
            key: SigningKey::from_bytes(&secret),
        })
    }

    /// The 32-byte secret seed, for the TLS configuration.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Writes the secret key, refusing to overwrite an existing one.
    pub fn save_new(&self, path: &Path) -> Result<()> {
        write_private(path, &format!("{}\n", hex::encode(self.key.to_bytes())))
    }
}

/// Writes a new file readable by its owner only, refusing to overwrite an existing one.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_keys_load_back_and_corrupt_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let id = Identity::generate();
        id.save_new(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().node_id(), id.node_id());
        assert!(
            id.save_new(&path).is_err(),
            "an existing key is never overwritten"
        );
        std::fs::write(&path, "abcd\n").unwrap();
        let err = format!("{:#}", Identity::load(&path).unwrap_err());
        assert!(err.contains("node.key") && err.contains("corrupt"), "{err}");
    }
}
