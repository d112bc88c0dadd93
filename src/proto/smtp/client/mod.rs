//! The SMTP client, sans-IO: [`reply`] parses what a server sends, [`session`] is the
//! state machine that speaks to it, [`error`] names every way that can fail. The
//! outbound queue (`src/shard/outbound/`) does the IO. No sockets, no clock here.

pub mod error;
pub mod reply;
pub mod session;

pub use error::{Failure, Phase, SessionError, Severity};
pub use reply::{
    capabilities, is_8bit, needs_smtputf8, parse_reply, Capabilities, Reply, ReplyError,
};
pub use session::{
    ClientAction, ClientConfig, ClientSession, Envelope, NotIdle, RcptResult, TlsPolicy,
};
