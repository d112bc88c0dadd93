//! Email authentication (DESIGN.md §5): SPF, DKIM, ARC and DMARC checks of inbound
//! mail, and DKIM signing of mail from our own users.
//!
//! - [`policy`]: pure decisions from verdicts (what `[auth]` says to do).
//! - [`verify`]: mail-auth calls and the bounded DNS cache; runs on the worker only.
//! - [`worker`]: the one auth thread (a tokio runtime) serving every shard in batches.
//! - [`dkim`]: per-domain signing keys under `DATA/dkim/`, the DNS record to publish.
//! - [`headers`]: Authentication-Results handling on the stored message.
//!
//! Shards never block on DNS: they hand owned jobs to the worker and await a oneshot.

pub mod dkim;
pub mod headers;
pub mod policy;
pub mod verify;
pub mod worker;
