//! `rhizome config list|get|set`: reading and editing `rhizome.toml`, the configuration file in
//! a data dir.
//!
//! `list` and `get` show the file's values merged over the defaults, and where each comes from.
//! `set` edits the file with `toml_edit`, so its comments and layout stay; the whole document
//! that would result is checked first (deserialized into [`Config`], which refuses unknown keys,
//! then [`Config::validate`] and the checks `start` makes), and a refused change leaves the file
//! as it was, byte for byte. The new file replaces the old one atomically. The node reads its
//! configuration only when it starts: a change reaches a running node at its next start.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use serde::Serialize;
use toml_edit::{DocumentMut, Item, Value};

use crate::config::{Config, DataDir};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every key as `section.key = value`: the file's values over the defaults, with
    /// `(default)` after the keys the file does not set.
    ///
    /// Arrays of tables (`[[health.checks]]`, `[[alerts.rules]]`) are listed too; change them
    /// in the file.
    List {
        /// Print JSON: an array of {key, value, source}, source `file` or `default`.
        #[arg(long)]
        json: bool,
    },
    /// Print one key's value (`node.name`, `store.min_free`), as the node would read it from
    /// the file.
    Get {
        /// The key, as `section.key`.
        key: String,
        /// Print JSON: {key, value, source}.
        #[arg(long)]
        json: bool,
    },
    /// Change one key in `rhizome.toml`, keeping the file's comments and layout.
    ///
    /// The value is read by the key's type: text as given, `true`/`false`, a whole number, or a
    /// list of strings (`a,b` or `["a", "b"]`; an empty value for an empty list). The whole
    /// file is checked as the node checks it at start: an unknown key or a value the node would
    /// refuse is refused, naming the key and why, and the file is left untouched. A node
    /// reads the file only when it starts: restart a running node to apply the change.
    Set {
        /// The key, as `section.key` (`rhizome config list` shows them all).
        key: String,
        /// The new value.
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Print JSON: {key, old, old_source, new, changed, file, node_running,
        /// restart_needed}.
        #[arg(long)]
        json: bool,
    },
}

/// Keys holding arrays of tables (`[[health.checks]]`): listed, never set from the command
/// line. A serialized configuration leaves them out while they are empty, hence named here.
const TABLE_ARRAYS: &[(&str, &str)] = &[("health", "checks"), ("alerts", "rules")];

/// Where a key's effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `rhizome.toml` sets it.
    File,
    /// The file does not set it: the built-in default.
    Default,
}

/// One key and its effective value.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `section.key` (just `key` for a value outside any section, which the node refuses).
    pub key: String,
    pub value: Value,
    pub source: Source,
}

impl Entry {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key,
            "value": to_json(&self.value),
            "source": self.source,
        })
    }
}

/// What `set` did.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: String,
    pub old: Value,
    pub old_source: Source,
    pub new: Value,
    /// False when the file already held this value (nothing was written).
    pub changed: bool,
    /// The file written (or that would have been).
    pub file: PathBuf,
}

pub fn config_command(root: &Path, cmd: ConfigCommand) -> Result<()> {
    let dir = DataDir::new(root.to_owned());
    match cmd {
        ConfigCommand::List { json } => {
            let (entries, exists) = list(&dir)?;
            if !exists && !crate::cli::output::quiet() {
                eprintln!(
                    "note: there is no {}: these are the defaults",
                    dir.config().display()
                );
            }
            if json {
                let array: Vec<serde_json::Value> = entries.iter().map(Entry::json).collect();
                println!("{}", serde_json::to_string_pretty(&array)?);
            } else {
                for entry in &entries {
                    let suffix = match entry.source {
                        Source::File => "",
                        Source::Default => " (default)",
                    };
                    println!("{} = {}{suffix}", entry.key, toml_text(&entry.value));
                }
            }
            if exists && let Err(e) = check_file(&dir.config()) {
                eprintln!(
                    "warning: the node would refuse {}: {e:#}",
                    dir.config().display()
                );
            }
        }
        ConfigCommand::Get { key, json } => {
            let entry = get(&dir, &key)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entry.json())?);
            } else {
                println!("{}", plain_text(&entry.value));
            }
        }
        ConfigCommand::Set { key, value, json } => {
            let change = set(&dir, &key, &value)?;
            let running = crate::cli::client::running_node(&dir).is_some();
            if json {
                let out = serde_json::json!({
                    "key": change.key,
                    "old": to_json(&change.old),
                    "old_source": change.old_source,
                    "new": to_json(&change.new),
                    "changed": change.changed,
                    "file": change.file,
                    "node_running": running,
                    "restart_needed": running && change.changed,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            if !change.changed {
                println!(
                    "{}: already {} in {}; nothing written",
                    change.key,
                    short_text(&change.new),
                    change.file.display()
                );
                return Ok(());
            }
            let from = match change.old_source {
                Source::File => short_text(&change.old),
                Source::Default => format!("{} (default)", short_text(&change.old)),
            };
            println!("{}: {from} -> {}", change.key, short_text(&change.new));
            if running {
                println!(
                    "wrote {}. A node is running on {}: restart the node to apply (it reads its \
                     configuration only at start)",
                    change.file.display(),
                    root.display()
                );
            } else {
                println!(
                    "wrote {}; the node reads it at its next start",
                    change.file.display()
                );
            }
            if let Some((section, key)) = change.key.split_once('.') {
                let var = format!(
                    "RHIZOME_{}_{}",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                );
                if std::env::var_os(&var).is_some() {
                    println!(
                        "note: {var} is set in this environment and overrides the file for a \
                         node started from it"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every key with its effective value, and whether the file exists.
pub fn list(dir: &DataDir) -> Result<(Vec<Entry>, bool)> {
    let path = dir.config();
    let text = read(&path)?;
    let file = parse(&path, text.as_deref().unwrap_or(""))?;
    Ok((entries(&defaults()?, &file), text.is_some()))
}

/// One key's effective value; an unknown key is an error that lists the keys of its section.
pub fn get(dir: &DataDir, key: &str) -> Result<Entry> {
    let defaults = defaults()?;
    check_key(&defaults, key)?;
    let path = dir.config();
    let file = parse(&path, read(&path)?.as_deref().unwrap_or(""))?;
    entries(&defaults, &file)
        .into_iter()
        .find(|e| e.key == key)
        .ok_or_else(|| anyhow!("`{key}` has no value"))
}

/// Sets `key` to `raw` (typed by the key's default) in the data dir's `rhizome.toml`, after
/// checking the whole resulting file; creates the file when the data dir has none.
pub fn set(dir: &DataDir, key: &str, raw: &str) -> Result<Change> {
    let defaults = defaults()?;
    let (section, name) = check_key(&defaults, key)?;
    let path = match std::fs::canonicalize(dir.config()) {
        // A symlinked file is edited where it is, and stays a symlink.
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir.config(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.config().display())),
    };
    if TABLE_ARRAYS.contains(&(section, name)) {
        bail!(
            "`{key}` is an array of tables ([[{key}]]), which `config set` does not change: edit \
             {} (the node checks it when it starts; `rhizome config list` shows what it reads)",
            path.display()
        );
    }
    let text = read(&path)?;
    if text.is_none() && !dir.root.is_dir() {
        bail!(
            "there is no data dir {}: create the node first (`rhizome init`)",
            dir.root.display()
        );
    }
    let mut doc = parse(&path, text.as_deref().unwrap_or(""))?;
    let default = defaults
        .get(section)
        .and_then(|t| t.get(name))
        .and_then(Item::as_value)
        .ok_or_else(|| anyhow!("`{key}` has no default value"))?;
    let new = typed(key, raw, default)?;
    let old = entries(&defaults, &doc)
        .into_iter()
        .find(|e| e.key == key)
        .ok_or_else(|| anyhow!("`{key}` has no value"))?;
    let mut change = Change {
        key: key.to_owned(),
        old: old.value,
        old_source: old.source,
        new: new.clone(),
        changed: true,
        file: path.clone(),
    };
    if old.source == Source::File && to_json(&change.old) == to_json(&new) {
        change.changed = false;
        return Ok(change);
    }
    edit(&mut doc, section, name, new)?;
    let written = doc.to_string();
    check(&written).with_context(|| {
        format!(
            "refused `{key} = {}`; {} is unchanged",
            toml_text(&change.new),
            path.display()
        )
    })?;
    write_atomically(&path, written.as_bytes())?;
    Ok(change)
}

/// The default configuration as a document, in the order of its sections and fields.
fn defaults() -> Result<DocumentMut> {
    let text = toml::to_string(&Config::default()).context("encoding the default configuration")?;
    let mut doc: DocumentMut = text
        .parse()
        .context("reading back the default configuration")?;
    for (section, key) in TABLE_ARRAYS {
        if let Some(table) = doc.get_mut(section).and_then(Item::as_table_like_mut)
            && !table.contains_key(key)
        {
            table.insert(key, toml_edit::value(toml_edit::Array::new()));
        }
    }
    Ok(doc)
}

/// The file's text, `None` when it does not exist.
fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut> {
    text.parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

/// The effective keys: the defaults' in their order, each with the file's value when it sets
/// one, then the keys only the file has (which the node refuses).
fn entries(defaults: &DocumentMut, file: &DocumentMut) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut push = |key: String, item: &Item, source: Source| {
        if let Some(value) = item.clone().into_value().ok().map(plain) {
            out.push(Entry { key, value, source });
        }
    };
    for (section, item) in defaults.iter() {
        let Some(known) = item.as_table_like() else {
            continue;
        };
        let given = file.get(section).and_then(Item::as_table_like);
        for (key, default) in known.iter() {
            match given.and_then(|f| f.get(key)) {
                Some(set) => push(format!("{section}.{key}"), set, Source::File),
                None => push(format!("{section}.{key}"), default, Source::Default),
            }
        }
        for (key, set) in given.iter().flat_map(|f| f.iter()) {
            if !known.contains_key(key) {
                push(format!("{section}.{key}"), set, Source::File);
            }
        }
    }
    for (section, item) in file.iter() {
        if defaults.contains_key(section) {
            continue;
        }
        match item.as_table_like() {
            Some(table) if !item.is_inline_table() => {
                for (key, set) in table.iter() {
                    push(format!("{section}.{key}"), set, Source::File);
                }
            }
            _ => push(section.to_owned(), item, Source::File),
        }
    }
    out
}

/// Splits `section.key` and checks that the configuration has that key.
fn check_key<'k>(defaults: &DocumentMut, key: &'k str) -> Result<(&'k str, &'k str)> {
    let sections: Vec<&str> = defaults.iter().map(|(s, _)| s).collect();
    let Some((section, name)) = key.split_once('.') else {
        let holders: Vec<String> = sections
            .iter()
            .filter(|s| {
                defaults
                    .get(s)
                    .and_then(Item::as_table_like)
                    .is_some_and(|t| t.contains_key(key))
            })
            .map(|s| format!("`{s}.{key}`"))
            .collect();
        if holders.is_empty() {
            bail!("`{key}` is not a key: give it as `section.key`, such as `store.min_free`");
        }
        bail!(
            "`{key}` is not a key: did you mean {}?",
            holders.join(" or ")
        );
    };
    let Some(table) = defaults.get(section).and_then(Item::as_table_like) else {
        bail!(
            "unknown key `{key}`: there is no section [{section}] (the sections are {})",
            sections.join(", ")
        );
    };
    if !table.contains_key(name) {
        let keys: Vec<&str> = table.iter().map(|(k, _)| k).collect();
        bail!(
            "unknown key `{key}`: the keys of [{section}] are {}",
            keys.join(", ")
        );
    }
    Ok((section, name))
}

/// `raw` as a value of the type of `default`.
fn typed(key: &str, raw: &str, default: &Value) -> Result<Value> {
    Ok(match default {
        Value::String(_) => Value::from(unquoted(raw)),
        Value::Boolean(_) => match raw.trim() {
            "true" => Value::from(true),
            "false" => Value::from(false),
            _ => bail!("{key} is true or false, not `{raw}`"),
        },
        Value::Integer(_) => Value::from(
            raw.trim()
                .parse::<i64>()
                .map_err(|_| anyhow!("{key} is a whole number, not `{raw}`"))?,
        ),
        Value::Array(_) => Value::Array(string_list(key, raw)?),
        other => bail!(
            "{key} holds a {}, which `config set` does not change: edit the file",
            other.type_name()
        ),
    })
}

/// A string given with TOML quotes (`'"press 7"'`) loses them; anything else is taken as is.
fn unquoted(raw: &str) -> String {
    let trimmed = raw.trim();
    if trimmed.starts_with(['"', '\''])
        && let Some(value) = single_value(trimmed)
        && let Some(text) = value.as_str()
    {
        return text.to_owned();
    }
    raw.to_owned()
}

/// `a, b` or `["a", "b"]` as an array of strings; empty for an empty list.
fn string_list(key: &str, raw: &str) -> Result<toml_edit::Array> {
    let raw = raw.trim();
    let items: Vec<String> = if raw.starts_with('[') {
        let not_a_list = || {
            anyhow!(
                "{key} is a list of strings, and `{raw}` is none (give `a,b` or `[\"a\", \"b\"]`)"
            )
        };
        let array = single_value(raw)
            .and_then(|v| v.as_array().cloned())
            .ok_or_else(not_a_list)?;
        array
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(not_a_list))
            .collect::<Result<_>>()?
    } else {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(items.iter().map(String::as_str).collect())
}

/// `text` read as one TOML value, if it is one.
fn single_value(text: &str) -> Option<Value> {
    let doc: DocumentMut = format!("v = {text}").parse().ok()?;
    doc.get("v")?.as_value().cloned()
}

/// Sets `section.key` in the document, keeping the comment after an existing value.
fn edit(doc: &mut DocumentMut, section: &str, key: &str, new: Value) -> Result<()> {
    let table = doc
        .entry(section)
        .or_insert(toml_edit::table())
        .as_table_like_mut()
        .ok_or_else(|| anyhow!("`{section}` in the file is not a table: fix the file first"))?;
    match table.get_mut(key) {
        Some(Item::Value(value)) => {
            let decor = value.decor().clone();
            *value = new;
            *value.decor_mut() = decor;
        }
        Some(other) => bail!(
            "`{section}.{key}` in the file is a {}, not a value: fix the file first",
            other.type_name()
        ),
        None => {
            table.insert(key, Item::Value(new));
        }
    }
    Ok(())
}

/// The checks the node makes of the file when it starts (but for the environment, which
/// `config` does not read).
fn check(text: &str) -> Result<()> {
    let table: toml::Table = toml::from_str(text).context("the node would not read the file")?;
    Config::from_table(table, "the file").map(|_| ())
}

fn check_file(path: &Path) -> Result<()> {
    check(&std::fs::read_to_string(path)?)
}

/// Writes `bytes` over `path` through a temporary file in the same directory: synced, given the
/// old file's mode and owner, then renamed over it, so a crash leaves the old file or the new.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let old = std::fs::metadata(path).ok();
    let write = || -> Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        if let Some(old) = &old {
            let new = file.metadata()?;
            if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
                std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())).with_context(
                    || {
                        format!(
                            "cannot give the new {name} the owner of the old one ({}:{})",
                            old.uid(),
                            old.gid()
                        )
                    },
                )?;
            }
            file.set_permissions(old.permissions())?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(parent)?.sync_all()?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.context(format!("cannot write {}", path.display()))
    })
}

/// The value without the file's spacing and comments.
fn plain(mut value: Value) -> Value {
    value.decor_mut().clear();
    match &mut value {
        Value::Array(array) => array.fmt(),
        Value::InlineTable(table) => table.fmt(),
        _ => {}
    }
    value
}

/// The value as TOML (`"64MB"`, `["a", "b"]`).
fn toml_text(value: &Value) -> String {
    plain(value.clone()).to_string()
}

/// The value as a script reads it: a string bare, anything else as TOML.
fn plain_text(value: &Value) -> String {
    match value.as_str() {
        Some(text) => text.to_owned(),
        None => toml_text(value),
    }
}

/// As [`plain_text`], but an empty string shows as `""`.
fn short_text(value: &Value) -> String {
    match value.as_str() {
        Some(text) if !text.is_empty() => text.to_owned(),
        _ => toml_text(value),
    }
}

fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::String(s) => J::String(s.value().clone()),
        Value::Integer(i) => J::from(*i.value()),
        Value::Float(f) => serde_json::Number::from_f64(*f.value()).map_or(J::Null, J::Number),
        Value::Boolean(b) => J::Bool(*b.value()),
        Value::Datetime(d) => J::String(d.value().to_string()),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::InlineTable(t) => {
            J::Object(t.iter().map(|(k, v)| (k.to_owned(), to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = "\
# The press on line 3.
[node]
name = \"press-7\"   # what operators call it
tags = [\"camera\"]

[store]
# Keep room for the OS.
min_free = \"64MB\"  # measured on the 8 GB card

[[health.checks]]
name = \"disk\"
command = \"true\"
";

    fn data_dir(text: Option<&str>) -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().to_owned());
        if let Some(text) = text {
            std::fs::write(dir.config(), text).unwrap();
        }
        (tmp, dir)
    }

    fn err(result: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn set_keeps_comments_and_layout() {
        let (_tmp, dir) = data_dir(Some(COMMENTED));
        let change = set(&dir, "store.min_free", "128MB").unwrap();
        assert!(change.changed);
        assert_eq!(change.old_source, Source::File);
        assert_eq!(
            (short_text(&change.old), short_text(&change.new)),
            ("64MB".into(), "128MB".into())
        );
        let text = std::fs::read_to_string(dir.config()).unwrap();
        assert_eq!(
            text,
            COMMENTED.replace(
                "min_free = \"64MB\"  # measured",
                "min_free = \"128MB\"  # measured"
            )
        );
        // A key the file does not set goes into its section; a section it lacks is added.
        set(&dir, "node.tags", "camera, line-3").unwrap();
        set(&dir, "node.cpus", "4").unwrap();
        set(&dir, "network.mdns", "false").unwrap();
        let text = std::fs::read_to_string(dir.config()).unwrap();
        assert!(
            text.starts_with("# The press on line 3.\n[node]\n"),
            "{text}"
        );
        assert!(
            text.contains("tags = [\"camera\", \"line-3\"]\ncpus = 4\n"),
            "{text}"
        );
        assert!(text.contains("# Keep room for the OS.\n"), "{text}");
        assert!(text.ends_with("[network]\nmdns = false\n"), "{text}");
        let config = Config::load(&dir.config(), Vec::new()).unwrap();
        assert_eq!(config.node.tags, ["camera", "line-3"]);
        assert_eq!((config.node.cpus, config.network.mdns), (4, false));
        assert_eq!(config.health.checks.len(), 1);
        // Setting what the file holds writes nothing.
        assert!(!set(&dir, "node.cpus", "4").unwrap().changed);
        // Lists in TOML syntax, and empty.
        set(&dir, "network.peers", "[\"cloud.example.net:4860\"]").unwrap();
        set(&dir, "node.tags", "").unwrap();
        let config = Config::load(&dir.config(), Vec::new()).unwrap();
        assert_eq!(config.network.peers, ["cloud.example.net:4860"]);
        assert!(config.node.tags.is_empty());
    }

    #[test]
    fn refused_values_leave_the_file_unchanged() {
        let (_tmp, dir) = data_dir(Some(COMMENTED));
        for (key, value, named) in [
            ("store.min_free", "lots", "lots"),
            ("network.listen", "nope", "network.listen"),
            ("network.peers", "cloud.example.net", "host:port"),
            ("node.role", "fog", "fog"),
            ("node.name", "", "empty"),
            ("node.cpus", "many", "whole number"),
            ("node.cpus", "-1", "node.cpus"),
            ("network.mdns", "maybe", "true or false"),
            ("store.results_window", "90s", "whole number of minutes"),
            ("security.renew_before", "120d", "cert_lifetime"),
            ("sync.results_to", "everywhere", "aggregator"),
            ("node.tags", "[1, 2]", "list of strings"),
        ] {
            let e = err(set(&dir, key, value));
            assert!(e.contains(key) && e.contains(named), "{key} = {value}: {e}");
            assert_eq!(std::fs::read_to_string(dir.config()).unwrap(), COMMENTED);
        }
        let e = err(set(&dir, "health.checks", "[]"));
        assert!(e.contains("array of tables") && e.contains("edit"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.config()).unwrap(), COMMENTED);
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_valid_ones() {
        let (_tmp, dir) = data_dir(Some(COMMENTED));
        let e = err(set(&dir, "store.min_fre", "1GB"));
        assert!(
            e.contains("store.min_fre") && e.contains("min_free") && e.contains("results_window"),
            "{e}"
        );
        let e = err(get(&dir, "stor.min_free"));
        assert!(e.contains("stor") && e.contains("store, network"), "{e}");
        let e = err(get(&dir, "min_free"));
        assert!(e.contains("`store.min_free`"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.config()).unwrap(), COMMENTED);
    }

    #[test]
    fn list_and_get_merge_the_file_over_the_defaults() {
        let (_tmp, dir) = data_dir(Some(COMMENTED));
        let (entries, exists) = list(&dir).unwrap();
        assert!(exists);
        let find = |key: &str| entries.iter().find(|e| e.key == key).unwrap();
        assert_eq!(find("node.name").source, Source::File);
        assert_eq!(toml_text(&find("node.name").value), "\"press-7\"");
        assert_eq!(find("node.role").source, Source::Default);
        assert_eq!(plain_text(&find("node.role").value), "edge");
        assert_eq!(find("store.min_free").source, Source::File);
        let checks = find("health.checks");
        assert_eq!(checks.source, Source::File);
        assert_eq!(to_json(&checks.value)[0]["name"], "disk");
        assert_eq!(find("alerts.rules").source, Source::Default);
        assert_eq!(entries[0].key, "node.name");
        // Every key of the default configuration is listed once.
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let unique: std::collections::BTreeSet<&str> = keys.iter().copied().collect();
        assert_eq!(keys.len(), unique.len());
        assert!(keys.contains(&"network.listen") && keys.contains(&"sync.max_rate"));

        let entry = get(&dir, "store.min_free").unwrap();
        assert_eq!(
            (plain_text(&entry.value), entry.source),
            ("64MB".into(), Source::File)
        );
        assert_eq!(
            entry.json(),
            serde_json::json!({"key": "store.min_free", "value": "64MB", "source": "file"})
        );
        let entry = get(&dir, "network.mdns_interfaces").unwrap();
        assert_eq!(entry.json()["value"], serde_json::json!([]));

        // Without a file: the defaults, and `set` creates it.
        let (_tmp, empty) = data_dir(None);
        let (entries, exists) = list(&empty).unwrap();
        assert!(!exists && entries.iter().all(|e| e.source == Source::Default));
        set(&empty, "node.zone", "site-a").unwrap();
        assert_eq!(
            std::fs::read_to_string(empty.config()).unwrap(),
            "[node]\nzone = \"site-a\"\n"
        );
    }

    #[test]
    fn the_written_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, dir) = data_dir(Some(COMMENTED));
        std::fs::set_permissions(dir.config(), std::fs::Permissions::from_mode(0o600)).unwrap();
        set(&dir, "node.cpus", "2").unwrap();
        let mode = std::fs::metadata(dir.config())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&dir.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != crate::config::CONFIG_FILE)
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
