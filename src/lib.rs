//! shardmail: a shard-per-core mail server (SMTP, IMAP, POP3) for dedicated Linux hosts.
//!
//! # Module map
//! - [`config`]: TOML file → validated [`config::Config`] (every key has a default).
//! - [`proto`]: sans-IO parsers and session state machines; no IO, no clocks.
//! - [`store`]: per-partition append-only message log, index, group commit, recovery.
//! - [`users`]: accounts, aliases and password hashes (`users.json` in the data dir).
//! - [`shard`]: the only glommio code: executors, listeners, connections, the mesh.
//! - [`tls`]: certificates (self-signed on first start) and the rustls server config.
//! - [`logging`]: the log subscriber, its format and its reloadable filter.
//! - [`export`]: Maildir export of an account, for backups and tests.
//!
//! Read `docs/architecture.md` for how these fit together.

pub mod auth;
pub mod config;
pub mod export;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod queue;
pub mod shard;
pub mod store;
pub mod store_admin;
pub mod tls;
pub mod users;
