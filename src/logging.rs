//! The process's log: a tracing subscriber writing to stderr (journald under systemd),
//! as `key=value` text or one JSON object per line (`log.format`), with a filter
//! (`log.level`, or `SHARDMAIL_LOG` when set) that a reload can replace.
//!
//! Owns the one global subscriber; sets it once per process and never panics when a
//! test or a second call finds one already set. Field names are documented in
//! `docs/logging.md`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, LogSettings};

/// The environment variable that replaces `log.level` (and pins it across reloads).
pub const ENV_FILTER: &str = "SHARDMAIL_LOG";

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter for `directives`. rustls warns once per handshake about things any peer
/// can send (an IP address as SNI, which RFC 6066 §3 says to ignore, and other
/// malformed hellos): those would let any client flood the log, so rustls speaks only
/// at `error` unless the directives name it.
pub fn filter(directives: &str) -> EnvFilter {
    let base = Some(directives.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let directives = if base.contains("rustls") {
        base.to_string()
    } else {
        format!("{base},rustls=error")
    };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,rustls=error"))
}

fn env_directives() -> Option<String> {
    std::env::var(ENV_FILTER)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Installs the process's subscriber (once; later calls change nothing).
pub fn init(settings: &LogSettings) {
    let directives = env_directives().unwrap_or_else(|| settings.level.clone());
    let (layer, handle) = reload::Layer::new(filter(&directives));
    let registry = tracing_subscriber::registry().with(layer);
    let installed = match settings.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours only on a terminal: log files and journald get plain text.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Applies a reloaded `log.level`. Returns what is in force afterwards, which is
/// `SHARDMAIL_LOG` when that is set (the environment wins, as at start).
pub fn set_level(level: &str) -> Result<String, String> {
    let directives = env_directives().unwrap_or_else(|| level.to_string());
    if let Some(handle) = FILTER.get() {
        handle
            .reload(filter(&directives))
            .map_err(|e| format!("log.level: cannot apply: {e}"))?;
    }
    Ok(directives)
}
