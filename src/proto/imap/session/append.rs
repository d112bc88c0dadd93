//! APPEND (RFC 9051 §6.3.12, RFC 7888 LITERAL+, RFC 3516 literal8), with the message
//! literal streamed.
//!
//! The framer stops at an APPEND's message literal ([`super::super::lexer::Frame::Upload`]);
//! the arguments before it are checked first, so a wrong mailbox, a bad flag, a keyword
//! over the limit or a message over APPENDLIMIT is refused before the client sends a
//! byte of it (no continuation for a synchronizing literal; a LITERAL+ one is read and
//! thrown away). Accepted, its bytes go into an [`Incoming`] that the IO layer spools as
//! it grows: the session never holds a whole large message (DESIGN.md §2, §10). The
//! message is stored only when the command line has ended. Part of the sans-IO
//! session: no IO, no clock.

use super::super::command;
use super::super::lexer::{tokenize, Token};
use super::{normalize, Action, Mailstore, Outbox, Pending, Session, Write, LINE_MAX};
use crate::proto::Incoming;

/// An APPEND whose message literal is arriving.
#[derive(Debug)]
pub(super) struct Upload {
    tag: String,
    mailbox: u32,
    uidvalidity: u32,
    flags: u32,
    keywords: Vec<String>,
    internal_date: i64,
    /// Literal bytes still to come; then the command line's end.
    remaining: u64,
    incoming: Incoming,
}

impl Upload {
    pub(super) fn incoming_mut(&mut self) -> &mut Incoming {
        &mut self.incoming
    }
}

/// APPEND's arguments before the message.
struct AppendArgs {
    mailbox: String,
    flags: u32,
    keywords: Vec<String>,
    internal_date: i64,
}

/// Parses `mailbox [flags] [date-time] [~]` (the message literal is not in `args`).
fn append_args(args: &[Token<'_>], now: i64) -> Result<AppendArgs, String> {
    let Some(mailbox) = args.first().and_then(command::mailbox_text) else {
        return Err("APPEND needs a mailbox name".into());
    };
    let mut rest = args.get(1..).unwrap_or(&[]);
    let (mut flags, mut keywords) = (0, Vec::new());
    if let Some(Token::List(list)) = rest.first() {
        (flags, keywords) = command::flag_list(list)?;
        rest = rest.get(1..).unwrap_or(&[]);
    }
    let mut internal_date = now;
    if let Some(Token::Quoted(date)) = rest.first() {
        internal_date = command::parse_date_time(date)?;
        rest = rest.get(1..).unwrap_or(&[]);
    }
    // literal8 (`~{n}`): the `~` may arrive as an atom of its own.
    if let Some(Token::Atom("~")) = rest.first() {
        rest = rest.get(1..).unwrap_or(&[]);
    }
    if !rest.is_empty() {
        return Err("APPEND takes a mailbox, optional flags and date, then the message".into());
    }
    Ok(AppendArgs {
        mailbox,
        flags,
        keywords,
        internal_date,
    })
}

impl Session {
    /// The framer found an APPEND message literal of `size` bytes; `command` is the
    /// command up to its `{`. Either the upload begins (after `+` for a synchronizing
    /// literal) or the command is refused and the literal, if it comes anyway
    /// (LITERAL+), is thrown away with the rest of its line.
    pub(super) fn begin_upload(
        &mut self,
        command: &[u8],
        size: u64,
        non_sync: bool,
        store: &dyn Mailstore,
        now: i64,
        out: &mut Outbox,
    ) {
        let refuse = |session: &mut Session| {
            if non_sync {
                session.discard = size;
                session.skip_line = true;
            }
        };
        let mut line = command.to_vec();
        if line.last() == Some(&b'~') {
            line.pop();
        }
        line.extend_from_slice(b"\r\n");
        let Ok(cmd) = tokenize(&line, self.config.depth_max) else {
            refuse(self);
            return self.bad("*", "Syntax error in APPEND", out);
        };
        let tag = cmd.tag.to_string();
        if self.state != super::State::Authenticated {
            refuse(self);
            return self.bad(&tag, "Log in first", out);
        }
        let args = match append_args(&cmd.args, now) {
            Ok(a) => self.in_stored_form(a),
            Err(e) => {
                refuse(self);
                return self.bad(&tag, &e, out);
            }
        };
        let Some(mb) = store
            .account()
            .and_then(|a| a.mailbox(&normalize(&args.mailbox)))
        else {
            refuse(self);
            out.line(&format!("{tag} NO [TRYCREATE] No such mailbox"));
            return;
        };
        if !self.keywords_fit(&tag, mb, &args.keywords, out) {
            return refuse(self);
        }
        if self.over_quota(&tag, store, size, 1, out) {
            return refuse(self);
        }
        if !non_sync {
            out.line("+ Ready for literal data");
        }
        self.uploads += 1;
        self.upload = Some(Upload {
            tag,
            mailbox: mb.id,
            uidvalidity: mb.uidvalidity,
            flags: args.flags,
            keywords: args.keywords,
            internal_date: args.internal_date,
            remaining: size,
            incoming: Incoming::new(self.uploads << 1),
        });
    }

    /// Takes literal bytes, then the end of the command line; `None` when more input
    /// is needed.
    pub(super) fn upload_input(&mut self, input: &[u8], out: &mut Outbox) -> Option<usize> {
        let upload = self.upload.as_mut()?;
        if upload.remaining > 0 {
            let n = upload.remaining.min(input.len() as u64) as usize;
            if n == 0 {
                return None;
            }
            upload
                .incoming
                .staged
                .extend_from_slice(input.get(..n).unwrap_or(&[]));
            upload.remaining -= n as u64;
            return Some(n);
        }
        let Some(lf) = memchr::memchr(b'\n', input) else {
            if input.len() > LINE_MAX {
                self.upload = None;
                self.skip_line = true;
                self.line_too_long(out);
                return Some(input.len());
            }
            return None;
        };
        let line = input.get(..lf).unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let upload = self.upload.take()?;
        if !line.is_empty() {
            // Another message (MULTIAPPEND, not offered) or garbage: nothing stored.
            self.bad(
                &upload.tag,
                "APPEND takes one message (MULTIAPPEND is not supported)",
                out,
            );
            return Some(lf + 1);
        }
        self.pending = Some(Pending::Append {
            tag: upload.tag,
            uidvalidity: upload.uidvalidity,
        });
        out.actions.push(Action::Write(Write::Append {
            mailbox: upload.mailbox,
            message: upload.incoming,
            flags: upload.flags,
            keywords: upload.keywords,
            internal_date: upload.internal_date,
        }));
        Some(lf + 1)
    }

    /// The APPEND's mailbox name in stored form (UTF-8 sessions send UTF-8).
    fn in_stored_form(&self, mut args: AppendArgs) -> AppendArgs {
        args.mailbox = self.stored_name(args.mailbox);
        args
    }

    /// An APPEND framed as a whole command (not logged in, or a message that is not a
    /// literal): answered like any command.
    pub(super) fn append_framed(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        now: i64,
        out: &mut Outbox,
    ) {
        let (message, head) = match args.split_last() {
            Some((Token::Literal(m), head)) => (*m, head),
            // UTF8 APPEND (RFC 6855 §4): `UTF8 (literal8)`, once UTF8=ACCEPT is on.
            // It is framed whole, so bounded by limits.imap_command_bytes_max.
            Some((Token::List(inner), head)) if self.utf8_accept => {
                // The `~` of the literal8 lexes as an atom of its own.
                let literal = match inner.as_slice() {
                    [Token::Literal(m)] | [Token::Atom("~"), Token::Literal(m)] => Some(*m),
                    _ => None,
                };
                match (literal, head.split_last()) {
                    (Some(m), Some((Token::Atom(word), head)))
                        if word.eq_ignore_ascii_case("UTF8") =>
                    {
                        (m, head)
                    }
                    _ => return self.bad(tag, "APPEND needs the message as a literal", out),
                }
            }
            _ => return self.bad(tag, "APPEND needs the message as a literal", out),
        };
        let args = match append_args(head, now) {
            Ok(a) => self.in_stored_form(a),
            Err(e) => return self.bad(tag, &e, out),
        };
        let Some(mb) = store
            .account()
            .and_then(|a| a.mailbox(&normalize(&args.mailbox)))
        else {
            out.line(&format!("{tag} NO [TRYCREATE] No such mailbox"));
            return;
        };
        if !self.keywords_fit(tag, mb, &args.keywords, out) {
            return;
        }
        if self.over_quota(tag, store, message.len() as u64, 1, out) {
            return;
        }
        self.uploads += 1;
        self.pending = Some(Pending::Append {
            tag: tag.to_string(),
            uidvalidity: mb.uidvalidity,
        });
        out.actions.push(Action::Write(Write::Append {
            mailbox: mb.id,
            message: Incoming::with_head(self.uploads << 1, message.to_vec()),
            flags: args.flags,
            keywords: args.keywords,
            internal_date: args.internal_date,
        }));
    }
}
