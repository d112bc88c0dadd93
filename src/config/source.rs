//! Where a configuration comes from, and what changed between two of them.
//!
//! [`load_raw`] reads the file and applies `--set KEY=VALUE` overrides on the TOML
//! tree before serde sees it. A [`ConfigSource`] is the `--config` file, the `--set` overrides and `--data-dir` a
//! command was started with; [`ConfigSource::load`] reads them again each time, which
//! is what a reload does. A [`Loaded`] keeps the validated [`Config`] beside the raw
//! tree it came from, so that two configurations can be compared key by key
//! ([`Loaded::changed_keys`]) and the keys a running server cannot change
//! ([`RESTART_ONLY`]) can be carried over from the running one
//! ([`Loaded::keeping_restart_only`]). Never touches the data directory or a socket.

use std::path::{Path, PathBuf};

use super::raw::RawConfig;
use super::{err, Config, ConfigError, SECRET_PLACEHOLDER};

/// Keys (or whole tables) a running server keeps until it restarts: the sockets it
/// listens on, the shard and partition layout, the store's open options, the DNS
/// worker and the log format. A reload that changes one names it in the log.
pub const RESTART_ONLY: &[&str] = &[
    // The checks' worker signs Authentication-Results with it, and the headers it
    // strips are recognised by it: both must change together, at start.
    "server.hostname",
    "server.shards",
    "server.data_dir",
    "server.partitions",
    "server.io_memory",
    "server.spin_before_park_us",
    "listen",
    "store",
    "dns",
    "auth.queue_depth_max",
    "log.format",
];

/// Whether the dotted `key` is one of [`RESTART_ONLY`] or inside one of its tables.
pub fn is_restart_only(key: &str) -> bool {
    RESTART_ONLY.iter().any(|p| {
        key == *p
            || key
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The command line's configuration sources, kept so a server can read them again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Vec<String>,
    pub data_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// Reads and validates the sources as they are now.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let raw = load_raw(
            self.file.as_deref(),
            &self.overrides,
            self.data_dir.as_deref(),
        )?;
        Loaded::from_raw(raw)
    }
}

/// A validated configuration and the raw values it was made from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    raw: RawConfig,
}

impl Loaded {
    fn from_raw(raw: RawConfig) -> Result<Loaded, ConfigError> {
        let config = Config::validate(raw.clone())?;
        Ok(Loaded { config, raw })
    }

    /// Every key with its value as TOML that `serve --config` accepts (what
    /// `shardmail check-config` prints); secrets (`queue.relay_password`) are printed
    /// as [`SECRET_PLACEHOLDER`].
    pub fn effective_toml(&self) -> Result<String, ConfigError> {
        let mut raw = self.raw.clone();
        raw.server.hostname = Some(self.config.hostname.clone());
        if raw.queue.relay_password.is_some() {
            raw.queue.relay_password = Some(SECRET_PLACEHOLDER.into());
        }
        toml::to_string_pretty(&raw).map_err(|e| {
            err(
                "check-config",
                format!("cannot print the configuration: {e}"),
            )
        })
    }

    fn tree(&self) -> Result<toml::Table, ConfigError> {
        toml::Table::try_from(&self.raw)
            .map_err(|e| err("config", format!("cannot compare configurations: {e}")))
    }

    /// Dotted keys whose values differ between `self` and `other`, sorted. Arrays
    /// compare as one value; a key present in only one of them counts as changed.
    pub fn changed_keys(&self, other: &Loaded) -> Result<Vec<String>, ConfigError> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        flatten("", &toml::Value::Table(self.tree()?), &mut a);
        flatten("", &toml::Value::Table(other.tree()?), &mut b);
        a.sort_by(|x, y| x.0.cmp(&y.0));
        b.sort_by(|x, y| x.0.cmp(&y.0));
        let mut changed: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.iter().find(|(k2, _)| k2 == k).map(|(_, v2)| v2) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(
            b.iter()
                .filter(|(k, _)| !a.iter().any(|(k2, _)| k2 == k))
                .map(|(k, _)| k.clone()),
        );
        changed.sort();
        changed.dedup();
        Ok(changed)
    }

    /// `self` with every [`RESTART_ONLY`] key set as in `running`: what a running
    /// server applies when it reloads.
    pub fn keeping_restart_only(&self, running: &Loaded) -> Result<Loaded, ConfigError> {
        let mut tree = self.tree()?;
        let old = running.tree()?;
        for key in RESTART_ONLY {
            let path: Vec<&str> = key.split('.').collect();
            match lookup(&old, &path) {
                Some(value) => insert(&mut tree, &path, value.clone()),
                None => remove(&mut tree, &path),
            }
        }
        Loaded::from_raw(RawConfig::from_tree(tree)?)
    }
}

/// The configuration as serde reads it, before validation.
pub(super) fn load_raw(
    file: Option<&Path>,
    overrides: &[String],
    data_dir: Option<&Path>,
) -> Result<RawConfig, ConfigError> {
    let mut tree = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                err(
                    &path.display().to_string(),
                    format!("cannot read the file: {e}"),
                )
            })?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| err(&path.display().to_string(), format!("not valid TOML: {e}")))?
        }
        None => toml::Table::new(),
    };
    for item in overrides {
        apply_override(&mut tree, item)?;
    }
    if let Some(dir) = data_dir {
        let value = toml::Value::String(dir.display().to_string());
        set_path(&mut tree, "server.data_dir", value)?;
    }
    RawConfig::from_tree(tree)
}

/// `KEY=VALUE`: VALUE is read as TOML (so `8`, `true`, `["a","b"]` work), else as a string.
fn apply_override(tree: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let Some((key, value)) = item.split_once('=') else {
        return Err(err(item, "--set expects KEY=VALUE"));
    };
    let key = key.trim();
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    set_path(tree, key, parsed)
}

/// Splits a dotted key, honouring TOML quoting: `auth.domains."a.example".spf_fail`.
fn key_parts(key: &str) -> Result<Vec<String>, ConfigError> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut().map(|p| p.push(c)).unwrap_or(()),
        }
    }
    if quoted || parts.iter().any(|p| p.trim().is_empty()) {
        return Err(err(key, "not a valid dotted key"));
    }
    Ok(parts.into_iter().map(|p| p.trim().to_string()).collect())
}

fn set_path(tree: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    let mut parts = key_parts(key)?;
    let Some(last) = parts.pop() else {
        return Err(err(key, "empty key"));
    };
    let mut table = tree;
    for part in &parts {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(err(key, format!("`{part}` is not a table"))),
        };
    }
    table.insert(last, value);
    Ok(())
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn lookup<'t>(tree: &'t toml::Table, path: &[&str]) -> Option<&'t toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = tree.get(*first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        toml::Value::Table(t) => lookup(t, rest),
        _ => None,
    }
}

fn insert(tree: &mut toml::Table, path: &[&str], value: toml::Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        tree.insert((*first).to_string(), value);
        return;
    }
    let entry = tree
        .entry((*first).to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        insert(t, rest, value);
    }
}

fn remove(tree: &mut toml::Table, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        tree.remove(*first);
    } else if let Some(toml::Value::Table(t)) = tree.get_mut(*first) {
        remove(t, rest);
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn source(overrides: &[&str]) -> ConfigSource {
        ConfigSource {
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            ..ConfigSource::default()
        }
    }

    #[test]
    fn changed_keys_name_each_leaf_that_differs() {
        let a = source(&[]).load().unwrap();
        let b = source(&[
            "limits.recipients_max=7",
            "listen.imap=[\"127.0.0.1:1143\"]",
            "domains.local=[\"a.example\"]",
        ])
        .load()
        .unwrap();
        assert_eq!(
            a.changed_keys(&b).unwrap(),
            ["domains.local", "limits.recipients_max", "listen.imap"]
        );
        assert!(a.changed_keys(&a).unwrap().is_empty());
    }

    #[test]
    fn restart_only_keys_are_carried_over_from_the_running_configuration() {
        let running = source(&["server.shards=3"]).load().unwrap();
        let next = source(&["server.shards=5", "limits.recipients_max=7"])
            .load()
            .unwrap();
        let applied = next.keeping_restart_only(&running).unwrap();
        assert_eq!(applied.config.shards, 3);
        assert_eq!(applied.config.limits.recipients_max, 7);
        let changed = running.changed_keys(&next).unwrap();
        let restart: Vec<&String> = changed.iter().filter(|k| is_restart_only(k)).collect();
        assert_eq!(restart, ["server.shards"]);
    }

    #[test]
    fn every_key_is_documented_in_docs_config_md() {
        let docs = include_str!("../../docs/config.md");
        let mut keys = Vec::new();
        let tree = source(&[]).load().unwrap().tree().unwrap();
        flatten("", &toml::Value::Table(tree), &mut keys);
        let missing: Vec<&String> = keys
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !docs.contains(&format!("`{k}`")))
            .collect();
        assert!(missing.is_empty(), "not in docs/config.md: {missing:?}");
    }

    #[test]
    fn restart_only_matches_whole_tables_and_exact_keys() {
        assert!(is_restart_only("listen.imap"));
        assert!(is_restart_only("server.shards"));
        assert!(!is_restart_only("server.shards_extra"));
        assert!(!is_restart_only("limits.recipients_max"));
        assert!(!is_restart_only("listening"));
    }
}
