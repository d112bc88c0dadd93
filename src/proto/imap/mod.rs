//! IMAP4rev2/IMAP4rev1 (RFC 9051, RFC 3501), sans-IO. Work in progress for issue 3:
//! today the command framer and tokenizer ([`lexer`]); the session state machine and
//! the IO driver follow. No listener serves IMAP until they exist.

pub mod command;
pub mod lexer;
#[doc(hidden)]
pub mod memstore;
pub mod render;
pub mod search;
pub mod session;
