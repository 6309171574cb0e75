//! Who may call the HTTP API: tokens with roles, checked on every request but `GET /health`.
//!
//! A token is `rzt_<id>_<secret>`: the id names its record, the secret (32 random bytes) is
//! known only to whoever it was shown to. The node keeps the SHA-256 of the secret, never the
//! secret, in `<data-dir>/tokens.json` (mode 0600); a secret of 256 random bits needs no slow
//! hash. Roles are ordered: `monitor` reads, `operator` also runs workflows and asks for sync,
//! `admin` also applies workflows and manages tokens. The local CLI uses the node's own admin
//! credential, `<data-dir>/api.token` (0600), written afresh at every start, so a user who can
//! read the data dir needs no setup.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do; each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads: status, peers, documents, results, workflows, the fleet, metrics.
    Monitor,
    /// Also runs workflows and asks for sync.
    Operator,
    /// Also applies workflows and manages tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role> {
        match text {
            "monitor" => Ok(Role::Monitor),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => bail!("`{other}` is not a role: monitor, operator or admin"),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token as the node keeps it (the secret only as its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Names the token in `token list` and `token revoke`; part of the token itself.
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    /// After this it is refused; `None`: it does not expire.
    pub expires_ms: Option<i64>,
    /// Set by `token revoke`; refused from then on.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No `Authorization: Bearer` header.
    #[error(
        "this endpoint needs a token: `Authorization: Bearer <token>` (`rhizome token create`; \
         the node's own CLI uses <data-dir>/api.token)"
    )]
    Missing,
    /// Not of the form `rzt_<id>_<secret>`, or no such token, or a wrong secret.
    #[error("the token is not one of this node's")]
    Unknown,
    /// Past its expiry.
    #[error("token {id} ({name}) expired at {at}")]
    Expired {
        id: String,
        name: String,
        at: String,
    },
    /// Withdrawn.
    #[error("token {id} ({name}) was revoked at {at}")]
    Revoked {
        id: String,
        name: String,
        at: String,
    },
    /// Valid, but its role is below what the endpoint needs.
    #[error("token {name} has the role {has}; {what} needs {needs}")]
    Insufficient {
        name: String,
        has: Role,
        needs: Role,
        what: String,
    },
}

/// A token accepted, and the role it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `local` for the node's own credential, else the token's name.
    pub name: String,
    pub role: Role,
}

/// The node's tokens: `<data-dir>/tokens.json`, read again whenever it changes on disk, so
/// `token create` and `token revoke` take effect on a running node at once.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    /// The node's own admin credential, for the local CLI.
    local_secret: String,
    /// The list as last read, with the file's (inode, modified time, length) then: every save
    /// writes a new file renamed over the old, so a new inode marks a change even when the
    /// time has not ticked and the length is the same (a revocation that writes `5000` over
    /// `null`).
    cache: std::sync::Mutex<Option<(FileStamp, Vec<TokenRecord>)>>,
}

impl Tokens {
    pub fn new(path: PathBuf, local_secret: String) -> Tokens {
        Tokens {
            path,
            local_secret,
            cache: std::sync::Mutex::new(None),
        }
    }

    /// Who presents `bearer` (the value after `Bearer `), at `now_ms`.
    pub fn check(&self, bearer: Option<&str>, now_ms: i64) -> Result<Caller, Refused> {
        let bearer = bearer.ok_or(Refused::Missing)?.trim();
        if constant_time_eq(bearer.as_bytes(), self.local_secret.as_bytes()) {
            return Ok(Caller {
                name: "local".into(),
                role: Role::Admin,
            });
        }
        let (id, secret) = split_token(bearer).ok_or(Refused::Unknown)?;
        let records = self.records().map_err(|_| Refused::Unknown)?;
        let record = records
            .iter()
            .find(|r| r.id == id)
            .ok_or(Refused::Unknown)?;
        let hash = hex::encode(Sha256::digest(secret.as_bytes()));
        if !constant_time_eq(hash.as_bytes(), record.secret_sha256.as_bytes()) {
            return Err(Refused::Unknown);
        }
        if let Some(at) = record.revoked_ms {
            return Err(Refused::Revoked {
                id: record.id.clone(),
                name: record.name.clone(),
                at: crdt_store::format_timestamp(at),
            });
        }
        if let Some(at) = record.expires_ms.filter(|at| *at <= now_ms) {
            return Err(Refused::Expired {
                id: record.id.clone(),
                name: record.name.clone(),
                at: crdt_store::format_timestamp(at),
            });
        }
        Ok(Caller {
            name: record.name.clone(),
            role: record.role,
        })
    }

    fn records(&self) -> Result<Vec<TokenRecord>> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("reading the token list"),
        };
        let stamp = (
            std::os::unix::fs::MetadataExt::ino(&meta),
            meta.modified()?,
            meta.len(),
        );
        let mut cache = self.cache.lock().expect("token cache lock");
        if let Some((at, records)) = cache.as_ref()
            && *at == stamp
        {
            return Ok(records.clone());
        }
        let records = load(&self.path)?;
        *cache = Some((stamp, records.clone()));
        Ok(records)
    }
}

type FileStamp = (u64, std::time::SystemTime, u64);

/// `rzt_<id>_<secret>`, split; `None` for anything else.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("rzt_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 8) && hex_of(secret, 64)).then_some((id, secret))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token list of a data dir.
pub fn load(path: &Path) -> Result<Vec<TokenRecord>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a token list", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the token list whole, aside then renamed into place (mode 0600): a crash leaves the
/// old list or the new one.
fn save(path: &Path, records: &[TokenRecord]) -> Result<()> {
    let text = serde_json::to_string_pretty(records)?;
    let aside = path.with_extension("json.new");
    let _ = std::fs::remove_file(&aside);
    crate::identity::write_private(&aside, &text)?;
    std::fs::rename(&aside, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// A new token: its record is stored, the token itself is returned to be shown once.
pub fn create(
    path: &Path,
    name: &str,
    role: Role,
    ttl: Option<std::time::Duration>,
    now_ms: i64,
) -> Result<(String, TokenRecord)> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        bail!("a token's name must be non-empty text without control characters");
    }
    let mut records = load(path)?;
    let id = loop {
        let id = hex::encode(rand::random::<[u8; 4]>());
        if !records.iter().any(|r| r.id == id) {
            break id;
        }
    };
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        role,
        created_ms: now_ms,
        expires_ms: ttl.map(|t| now_ms.saturating_add(t.as_millis() as i64)),
        revoked_ms: None,
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
    };
    records.push(record.clone());
    save(path, &records)?;
    Ok((format!("rzt_{id}_{secret}"), record))
}

/// Withdraws a token by id (or name, when one token has it).
pub fn revoke(path: &Path, which: &str, now_ms: i64) -> Result<TokenRecord> {
    let mut records = load(path)?;
    let by_id = records.iter().position(|r| r.id == which);
    let index = match by_id {
        Some(i) => i,
        None => {
            let named: Vec<usize> = (0..records.len())
                .filter(|&i| records[i].name == which)
                .collect();
            match named.as_slice() {
                [i] => *i,
                [] => bail!("no token with the id or name `{which}` (see `rhizome token list`)"),
                _ => bail!("{} tokens are named `{which}`: give the id", named.len()),
            }
        }
    };
    if records[index].revoked_ms.is_some() {
        bail!("token {} was revoked already", records[index].id);
    }
    records[index].revoked_ms = Some(now_ms);
    save(path, &records)?;
    Ok(records[index].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_role_and_are_refused_by_name_when_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let tokens = Tokens::new(path.clone(), "local-secret".into());
        let hour = std::time::Duration::from_secs(3600);
        let (op, _) = create(&path, "ci", Role::Operator, Some(hour), 1_000).unwrap();
        let (mon, record) = create(&path, "grafana", Role::Monitor, None, 1_000).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&mon[13..]));
        let role = |t: &str, now| tokens.check(Some(t), now).map(|c| c.role);
        assert_eq!(role(&op, 2_000), Ok(Role::Operator));
        assert_eq!(role(&mon, 2_000), Ok(Role::Monitor));
        assert_eq!(role("local-secret", 2_000), Ok(Role::Admin));
        assert_eq!(tokens.check(None, 0), Err(Refused::Missing));
        assert_eq!(role("rzt_nonsense", 0), Err(Refused::Unknown));
        // A right id with a wrong secret is unknown, not "wrong secret": nothing to guess by.
        let forged = format!("{}{}", &mon[..13], "0".repeat(64));
        assert_eq!(role(&forged, 0), Err(Refused::Unknown));
        let expired = role(&op, 1_000 + 3_600_001).unwrap_err();
        assert!(expired.to_string().contains("expired"), "{expired}");
        revoke(&path, &record.id, 5_000).unwrap();
        let revoked = role(&mon, 6_000).unwrap_err();
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
        assert!(revoke(&path, "grafana", 7_000).is_err(), "twice");
        assert!(revoke(&path, "nobody", 7_000).is_err());
        assert!(create(&path, "", Role::Admin, None, 0).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the token list is private: {mode:o}");
        }
    }
}
