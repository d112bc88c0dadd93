//! APPEND (RFC 9051 §6.3.12) with MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), UTF8
//! (RFC 6855 §4), LITERAL+ (RFC 7888) and literal8 (RFC 3516), every message literal
//! streamed.
//!
//! The framer hands the session an APPEND at its first literal
//! ([`super::super::lexer::Frame::Upload`]); from there the session reads the command
//! itself, a segment between literals at a time, through
//! [`super::super::append_syntax`]. Each argument is checked as it arrives, so a
//! wrong mailbox, a bad flag, a message over APPENDLIMIT, one message too many or a
//! bad CATENATE URL is refused before the client sends the literal (no continuation
//! for a synchronizing literal; a LITERAL+ one is read and thrown away, with the rest
//! of the command). Message bytes, `TEXT` parts and the bytes of the stored messages
//! a `URL` names go one after another into one [`Incoming`] that the IO layer spools
//! as it grows: the session never holds a large message (DESIGN.md §2, §10). Nothing
//! is stored until the command has ended; then every message goes in one commit, all
//! or none. Part of the sans-IO session: no IO, no clock.

use super::super::append_syntax::{
    lex_segment, parse_message_url, Grammar, Role, SegmentEnd, Step,
};
use super::super::command::{self, Section};
use super::super::lexer::Token;
use super::super::render;
use super::{
    normalize, Action, Bodies, Change, Mailstore, NewMessage, Outbox, Pending, Session, Write,
    LINE_MAX,
};
use crate::proto::Incoming;

/// Longest mailbox name or URL given as a literal.
const TEXT_LITERAL_BYTES_MAX: u64 = 8 * 1024;

/// An APPEND being received.
#[derive(Debug)]
pub(super) struct Upload {
    tag: String,
    grammar: Grammar,
    /// The target mailbox: (id, UIDVALIDITY), once named.
    mailbox: Option<(u32, u32)>,
    /// Every message's bytes so far, back to back.
    bytes: Incoming,
    /// Complete messages: length in `bytes`, flags and date.
    messages: Vec<(u64, NewMessage)>,
    /// The message being received: where it starts in `bytes`, its flags and date.
    current: Option<(u64, NewMessage)>,
    /// In a literal: bytes still to come and where they go.
    literal: Option<(u64, Sink)>,
    /// Command text outside literals so far (bounded like a command line).
    text_bytes: usize,
    /// Refused (the tagged reply is sent): the rest of the command is read and dropped.
    refused: bool,
}

#[derive(Debug)]
enum Sink {
    Message,
    Text(Vec<u8>),
    Discard,
}

impl Upload {
    pub(super) fn incoming_mut(&mut self) -> &mut Incoming {
        &mut self.bytes
    }

    /// Bytes of the current message so far.
    fn current_len(&self) -> u64 {
        self.current
            .as_ref()
            .map_or(0, |(start, _)| self.bytes.len() - start)
    }

    /// Bytes of the command's messages so far, and their count with the current one.
    fn totals(&self) -> (u64, u64) {
        let done: u64 = self.messages.iter().map(|(len, _)| len).sum();
        (
            done + self.current_len(),
            self.messages.len() as u64 + u64::from(self.current.is_some()),
        )
    }
}

impl Session {
    /// The framer found the first literal of an APPEND: `command` is the command up to
    /// the literal's `{`.
    pub(super) fn begin_upload(
        &mut self,
        command: &[u8],
        size: u64,
        non_sync: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        // The command's first segment, its literal header put back.
        let mut first = command.to_vec();
        first
            .extend_from_slice(format!("{{{size}{}}}", if non_sync { "+" } else { "" }).as_bytes());
        self.start_upload(&first, store, out);
    }

    /// An APPEND framed as a whole command: one without any literal (CATENATE of URLs
    /// only, or a syntax error), which is its only segment.
    pub(super) fn append_framed(
        &mut self,
        command: &[u8],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let line = command.strip_suffix(b"\n").unwrap_or(command);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.start_upload(line, store, out);
    }

    /// Starts reading an APPEND from its first segment (`tag APPEND …`).
    fn start_upload(&mut self, first: &[u8], store: &dyn Mailstore, out: &mut Outbox) {
        self.uploads += 1;
        let tag_end = first.iter().position(|&b| b == b' ').unwrap_or(first.len());
        let tag = String::from_utf8_lossy(first.get(..tag_end).unwrap_or(&[])).into_owned();
        // After the tag, the command name: the arguments follow its space.
        let args = first
            .get(tag_end + 1..)
            .and_then(|rest| {
                rest.iter()
                    .position(|&b| b == b' ')
                    .and_then(|at| rest.get(at..))
            })
            .unwrap_or(&[]);
        let mut upload = Upload {
            tag,
            grammar: Grammar::new(),
            mailbox: None,
            bytes: Incoming::new(self.uploads << 1),
            messages: Vec::new(),
            current: None,
            literal: None,
            text_bytes: 0,
            refused: false,
        };
        if self.state != super::State::Authenticated {
            let tag = upload.tag.clone();
            upload.refused = true;
            self.bad(&tag, "Log in first", out);
        }
        self.upload_segment(upload, args, store, out);
    }

    /// Takes APPEND input: literal bytes, or the next segment of the command; `None`
    /// when more input is needed.
    pub(super) fn upload_input(
        &mut self,
        input: &[u8],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) -> Option<usize> {
        let mut upload = self.upload.take()?;
        if let Some((remaining, sink)) = upload.literal.as_mut() {
            if *remaining > 0 {
                let n = (*remaining).min(input.len() as u64) as usize;
                let bytes = input.get(..n).unwrap_or(&[]);
                match sink {
                    Sink::Message => upload.bytes.staged.extend_from_slice(bytes),
                    Sink::Text(text) => text.extend_from_slice(bytes),
                    Sink::Discard => {}
                }
                *remaining -= n as u64;
                self.upload = Some(upload);
                return (n > 0).then_some(n);
            }
            let (_, sink) = upload.literal.take()?;
            self.literal_ended(upload, sink, store, out);
            return Some(0);
        }
        let Some(lf) = memchr::memchr(b'\n', input) else {
            if input.len() > LINE_MAX {
                self.skip_line = true;
                self.line_too_long(out);
                return Some(input.len());
            }
            self.upload = Some(upload);
            return None;
        };
        let line = input.get(..lf).unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.upload_segment(upload, line, store, out);
        Some(lf + 1)
    }

    /// A literal of the command has been read completely.
    fn literal_ended(
        &mut self,
        mut upload: Upload,
        sink: Sink,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let steps = match sink {
            Sink::Discard => Ok(Vec::new()),
            Sink::Message => Ok(upload.grammar.literal_ended()),
            Sink::Text(text) => match String::from_utf8(text) {
                Ok(text) => upload.grammar.literal_value(text),
                Err(_) => Err("APPEND: a mailbox name or URL must be UTF-8".into()),
            },
        };
        match steps {
            Ok(steps) => {
                for step in steps {
                    if upload.refused {
                        break;
                    }
                    self.upload_step(&mut upload, step, store, out);
                }
            }
            Err(e) => self.refuse_upload(&mut upload, Refusal::Bad(e), out),
        }
        self.upload = Some(upload);
    }

    /// One segment of the command (text up to a literal header or the command's end):
    /// its arguments are checked, then the literal it announces begins, or the command
    /// ends.
    fn upload_segment(
        &mut self,
        mut upload: Upload,
        line: &[u8],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        upload.text_bytes += line.len() + 2;
        let parsed = lex_segment(line);
        let end = parsed.as_ref().map(|(_, end)| *end).ok();
        if upload.refused {
            return self.upload_segment_refused(upload, end);
        }
        if upload.text_bytes > self.config.command_bytes_max {
            let max = self.config.command_bytes_max;
            let text = format!(
                "APPEND arguments over {max} bytes outside literals (limits.imap_command_bytes_max)"
            );
            self.refuse_upload(&mut upload, Refusal::Bad(text), out);
            return self.upload_segment_refused(upload, end);
        }
        let fed = parsed.and_then(|(pieces, end)| upload.grammar.feed(pieces, end));
        let (steps, role) = match fed {
            Ok(fed) => fed,
            Err(e) => {
                self.refuse_upload(&mut upload, Refusal::Bad(e), out);
                return self.upload_segment_refused(upload, end);
            }
        };
        for step in steps {
            self.upload_step(&mut upload, step, store, out);
            if upload.refused {
                return self.upload_segment_refused(upload, end);
            }
        }
        let Some(SegmentEnd::Literal { size, non_sync, .. }) = end else {
            return self.finish_upload(upload, out);
        };
        let sink = match role {
            Some(Role::Text) if size > TEXT_LITERAL_BYTES_MAX => {
                let text = format!(
                    "APPEND: a mailbox name or URL is at most {TEXT_LITERAL_BYTES_MAX} bytes"
                );
                self.refuse_upload(&mut upload, Refusal::Bad(text), out);
                return self.upload_segment_refused(upload, end);
            }
            Some(Role::Text) => Sink::Text(Vec::new()),
            Some(Role::Bytes) | None => {
                if !self.message_bytes_fit(&mut upload, size, store, out) {
                    return self.upload_segment_refused(upload, end);
                }
                Sink::Message
            }
        };
        if !non_sync {
            out.line("+ Ready for literal data");
        }
        upload.literal = Some((size, sink));
        self.upload = Some(upload);
    }

    /// After a refusal (in this segment or before): a LITERAL+ literal the segment
    /// announced is still coming and is read and dropped, with the rest of the
    /// command; a synchronizing one will not come (the client has its answer), and
    /// at the command's end there is nothing more to read.
    fn upload_segment_refused(&mut self, mut upload: Upload, end: Option<SegmentEnd>) {
        if let Some(SegmentEnd::Literal {
            size,
            non_sync: true,
            ..
        }) = end
        {
            upload.literal = Some((size, Sink::Discard));
            self.upload = Some(upload);
        }
    }

    /// Whether `size` more bytes of the current message fit APPENDLIMIT and the quota
    /// (else the refusal is sent).
    fn message_bytes_fit(
        &mut self,
        upload: &mut Upload,
        size: u64,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) -> bool {
        let max = self.config.literal_bytes_max;
        if upload.current_len().saturating_add(size) > max {
            let text = format!("Message over {max} bytes (APPENDLIMIT, limits.message_size_max)");
            self.refuse_upload(upload, Refusal::No(format!("[TOOBIG] {text}")), out);
            return false;
        }
        let (bytes, count) = upload.totals();
        if self.over_quota(&upload.tag, store, bytes.saturating_add(size), count, out) {
            upload.refused = true;
            return false;
        }
        true
    }

    /// Acts on one step of the command's grammar; a refusal sets `upload.refused`.
    fn upload_step(
        &mut self,
        upload: &mut Upload,
        step: Step,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        match step {
            Step::Mailbox(name) => {
                let name = normalize(&self.stored_name(name));
                match store.account().and_then(|a| a.mailbox(&name)) {
                    Some(mb) => upload.mailbox = Some((mb.id, mb.uidvalidity)),
                    None => self.refuse_upload(
                        upload,
                        Refusal::No("[TRYCREATE] No such mailbox".into()),
                        out,
                    ),
                }
            }
            Step::Begin { flags, date, utf8 } => {
                if utf8 && !self.utf8_accept {
                    let text = "UTF8 APPEND data needs ENABLE UTF8=ACCEPT (RFC 6855)".to_string();
                    return self.refuse_upload(upload, Refusal::Bad(text), out);
                }
                let max = self.config.append_messages_max;
                if upload.messages.len() >= max {
                    let text = format!("[LIMIT] One APPEND stores at most {max} messages (limits.imap_append_messages_max)");
                    return self.refuse_upload(upload, Refusal::No(text), out);
                }
                let tokens: Vec<Token<'_>> = flags.iter().map(|f| Token::Atom(f)).collect();
                let (flags, keywords) = match command::flag_list(&tokens) {
                    Ok(f) => f,
                    Err(e) => return self.refuse_upload(upload, Refusal::Bad(e), out),
                };
                let internal_date = match date.map(|d| command::parse_date_time(&d)) {
                    None => self.now,
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return self.refuse_upload(upload, Refusal::Bad(e), out),
                };
                let mb = upload
                    .mailbox
                    .and_then(|(id, _)| store.account().and_then(|a| a.mailbox_by_id(id)));
                if let Some(mb) = mb {
                    if !self.keywords_fit(&upload.tag, mb, &keywords, out) {
                        upload.refused = true;
                        return;
                    }
                }
                let message = NewMessage {
                    flags,
                    keywords,
                    internal_date,
                };
                upload.current = Some((upload.bytes.len(), message));
            }
            Step::Url(url) => {
                let part = match self.url_bytes(&url, store) {
                    Ok(part) => part,
                    Err(why) => {
                        let text = format!("[BADURL {url}] {why}");
                        return self.refuse_upload(upload, Refusal::No(text), out);
                    }
                };
                if self.message_bytes_fit(upload, part.len() as u64, store, out) {
                    // One copy of at most APPENDLIMIT bytes, spooled after this step.
                    upload.bytes.staged.extend_from_slice(&part);
                }
            }
            Step::MessageDone => {
                let len = upload.current_len();
                if let Some((_, message)) = upload.current.take() {
                    upload.messages.push((len, message));
                }
            }
        }
    }

    /// The bytes a CATENATE URL names: a message (or part) of this account.
    fn url_bytes(&self, url: &str, store: &dyn Mailstore) -> Result<Vec<u8>, &'static str> {
        let url = parse_message_url(url).ok_or("Not a URL of a message part (RFC 4469 §5)")?;
        if let Some((user, host)) = &url.server {
            let ours = host.eq_ignore_ascii_case(&self.config.hostname) || host == "localhost";
            let same_user = user.as_ref().is_none_or(|u| Some(u) == self.user.as_ref());
            if !ours || !same_user {
                return Err("The URL names another server or user");
            }
        }
        let account = store.account().ok_or("No such message")?;
        let mailbox = match &url.mailbox {
            Some(name) => account.mailbox(&normalize(&super::super::utf7::encode(name))),
            None => self
                .selected
                .as_ref()
                .and_then(|s| account.mailbox_by_id(s.id)),
        }
        .ok_or("No such mailbox (a relative URL needs a selected mailbox)")?;
        if url.uidvalidity.is_some_and(|v| v != mailbox.uidvalidity) {
            return Err("UIDVALIDITY has changed");
        }
        let at = mailbox
            .messages
            .binary_search_by_key(&url.uid, |e| e.uid)
            .map_err(|_| "No such message")?;
        let entry = mailbox.messages.get(at).ok_or("No such message")?;
        let message = store.bytes(entry).ok_or("The message cannot be read")?;
        let section = match &url.section {
            None => Section::default(),
            Some(spec) => command::section_spec(spec, None).map_err(|_| "Bad SECTION")?,
        };
        let summary = store
            .summary(entry)
            .map_err(|_| "The message cannot be read")?;
        let bytes = render::section(message, &summary, &section).ok_or("No such section")?;
        let bytes = match url.partial {
            None => bytes.as_ref(),
            Some((offset, length)) => {
                render::partial(&bytes, Some((offset, length.unwrap_or(u32::MAX))))
            }
        };
        Ok(bytes.to_vec())
    }

    /// Answers the APPEND now (tagged NO or BAD); the rest of it is read and dropped.
    fn refuse_upload(&mut self, upload: &mut Upload, refusal: Refusal, out: &mut Outbox) {
        upload.refused = true;
        match refusal {
            Refusal::No(text) => out.line(&format!("{} NO {text}", upload.tag)),
            Refusal::Bad(text) => {
                let tag = upload.tag.clone();
                self.bad(&tag, &text, out);
            }
        }
    }

    /// The command ended: store its messages, all in one commit.
    fn finish_upload(&mut self, upload: Upload, out: &mut Outbox) {
        let Some((mailbox, uidvalidity)) = upload.mailbox else {
            return self.bad(&upload.tag, "APPEND needs a mailbox name", out);
        };
        self.pending = Some(Pending::Append {
            tag: upload.tag,
            uidvalidity,
        });
        let (lengths, messages) = upload.messages.into_iter().unzip();
        out.actions.push(Action::Write(Write {
            change: Change::Append { mailbox, messages },
            bodies: Some(Bodies {
                bytes: upload.bytes,
                lengths,
            }),
        }));
    }
}

/// How an APPEND is refused.
enum Refusal {
    /// `NO` with this text (response code first).
    No(String),
    Bad(String),
}
