//! IMAP4rev2/IMAP4rev1 (RFC 9051, RFC 3501), sans-IO: the command framer and
//! tokenizer ([`lexer`]), typed arguments ([`command`]), addresses ([`address`]), mailbox names and LIST
//! patterns ([`names`]), command names and their states ([`verb`]), rendering ([`render`]), SEARCH ([`search`]), SORT and THREAD ([`sort`]) and the session
//! state machine ([`session`]). The IO driver is `src/shard/imap.rs`.

pub mod address;
pub mod append_syntax;
pub mod command;
pub mod lexer;
#[doc(hidden)]
pub mod memstore;
pub mod names;
pub mod render;
pub mod search;
pub mod session;
pub mod sort;
pub mod utf7;
pub mod verb;
