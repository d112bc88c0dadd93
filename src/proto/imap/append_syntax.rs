//! APPEND's grammar, read one line segment at a time: RFC 9051 §6.3.12 with
//! MULTIAPPEND (RFC 3502: several messages in one command), CATENATE (RFC 4469: a
//! message built from `TEXT` literals and `URL`s of stored messages) and UTF8
//! (RFC 6855 §4: `UTF8 (~{n})`).
//!
//! An APPEND's literals are message bytes, far larger than a command line, so the
//! command is never framed whole: the session streams each literal and hands this
//! module the text between literals, one segment (up to a literal header or the
//! command's end) at a time. [`lex_segment`] splits a segment into pieces with the
//! parentheses left open (a CATENATE list spans many segments); [`Grammar`] follows
//! the pieces and says what each literal is: a mailbox name or URL (small, collected)
//! or message bytes (streamed). Pure code: no IO, no store, no limits (the session
//! applies them as each [`Step`] arrives).

use super::lexer::{lex_flat, literal_header_at, SyntaxError};

/// A lexical piece of a segment: the lexer's own atoms and quoted strings.
pub use super::lexer::Flat as Piece;

/// How a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEnd {
    /// The command's CRLF.
    Line,
    /// A literal header: `{size}`, `{size+}` (non-synchronizing), `~{…}` (literal8).
    Literal {
        size: u64,
        non_sync: bool,
        eight: bool,
    },
}

/// Splits one segment (a line's bytes without its CRLF) into pieces and its end.
pub fn lex_segment(line: &[u8]) -> Result<(Vec<Piece>, SegmentEnd), String> {
    let (body, end) = match literal_header_at(line) {
        Some((size, non_sync, open)) => {
            let before = line.get(..open).unwrap_or(&[]);
            let (before, eight) = match before.strip_suffix(b"~") {
                Some(b) => (b, true),
                None => (before, false),
            };
            let end = SegmentEnd::Literal {
                size,
                non_sync,
                eight,
            };
            (before, end)
        }
        None => (line, SegmentEnd::Line),
    };
    let pieces = lex_flat(body).map_err(|e| {
        let what = match e {
            SyntaxError::BadQuoted => "a bad quoted string",
            SyntaxError::NotUtf8 => "text that is not UTF-8",
            SyntaxError::BadLiteral => "a misplaced literal",
            _ => "a misplaced character",
        };
        format!("APPEND arguments hold {what}")
    })?;
    Ok((pieces, end))
}

/// What the grammar found, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Mailbox(String),
    /// A message begins: its flags (atoms, unchecked) and date-time text, if given;
    /// `utf8`: it is UTF8 APPEND data (RFC 6855 §4).
    Begin {
        flags: Vec<String>,
        date: Option<String>,
        utf8: bool,
    },
    /// A CATENATE URL part of the current message.
    Url(String),
    /// The current message is complete.
    MessageDone,
}

/// What the literal ending a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An astring: the mailbox name or a CATENATE URL. Collect it, then
    /// [`Grammar::literal_value`].
    Text,
    /// Message bytes (a whole message, a CATENATE `TEXT` part or UTF8's literal8):
    /// stream them, then [`Grammar::literal_ended`].
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Mailbox,
    /// A message's options or data; `after_one`: a message is complete, so the
    /// command may end here.
    Message {
        after_one: bool,
    },
    Flags,
    CatenateOpen,
    CatenatePart,
    Url,
    Text,
    Utf8Open,
    Utf8Literal,
    Utf8Close,
    /// In a plain message literal.
    Literal,
}

/// The parser's position in one APPEND command.
#[derive(Debug, Clone)]
pub struct Grammar {
    state: State,
    flags: Option<Vec<String>>,
    date: Option<String>,
}

impl Default for Grammar {
    fn default() -> Grammar {
        Grammar::new()
    }
}

impl Grammar {
    /// At the mailbox argument (after `tag APPEND`).
    pub fn new() -> Grammar {
        Grammar {
            state: State::Mailbox,
            flags: None,
            date: None,
        }
    }

    /// Follows a segment's pieces; returns what they said and, if the segment ends
    /// with a literal, what the literal is (`None`: the command ended).
    pub fn feed(
        &mut self,
        pieces: Vec<Piece>,
        end: SegmentEnd,
    ) -> Result<(Vec<Step>, Option<Role>), String> {
        let mut steps = Vec::new();
        for piece in pieces {
            self.piece(piece, &mut steps)?;
        }
        match end {
            SegmentEnd::Line => match self.state {
                State::Message { after_one: true } => Ok((steps, None)),
                _ => Err("APPEND ended before its message".into()),
            },
            SegmentEnd::Literal { eight, .. } => {
                let role = self.literal(eight, &mut steps)?;
                Ok((steps, Some(role)))
            }
        }
    }

    /// The value of a [`Role::Text`] literal.
    pub fn literal_value(&mut self, text: String) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        self.piece(Piece::Quoted(text), &mut steps)?;
        Ok(steps)
    }

    /// A [`Role::Bytes`] literal has been read.
    pub fn literal_ended(&mut self) -> Vec<Step> {
        match self.state {
            State::Literal => {
                self.state = State::Message { after_one: true };
                vec![Step::MessageDone]
            }
            State::Text => {
                self.state = State::CatenatePart;
                Vec::new()
            }
            State::Utf8Literal => {
                self.state = State::Utf8Close;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn begin(&mut self, utf8: bool) -> Step {
        Step::Begin {
            flags: self.flags.take().unwrap_or_default(),
            date: self.date.take(),
            utf8,
        }
    }

    /// A literal header at the end of a segment, in the current state.
    fn literal(&mut self, eight: bool, steps: &mut Vec<Step>) -> Result<Role, String> {
        let text_role = |eight: bool| {
            if eight {
                Err("a mailbox name or URL cannot be a literal8".to_string())
            } else {
                Ok(Role::Text)
            }
        };
        match self.state {
            State::Mailbox | State::Url => text_role(eight),
            State::Message { .. } => {
                steps.push(self.begin(false));
                self.state = State::Literal;
                Ok(Role::Bytes)
            }
            State::Text => Ok(Role::Bytes),
            State::Utf8Literal if eight => Ok(Role::Bytes),
            State::Utf8Literal => Err("UTF8 takes a literal8 (~{n})".into()),
            _ => Err("unexpected literal in APPEND".into()),
        }
    }

    // Longer than ~80 lines would be a sign to split; this is one arm per state.
    fn piece(&mut self, piece: Piece, steps: &mut Vec<Step>) -> Result<(), String> {
        let keyword =
            |p: &Piece, word: &str| matches!(p, Piece::Atom(a) if a.eq_ignore_ascii_case(word));
        match (self.state, piece) {
            (State::Mailbox, Piece::Atom(a) | Piece::Quoted(a)) => {
                steps.push(Step::Mailbox(a));
                self.state = State::Message { after_one: false };
            }
            (State::Message { .. }, Piece::Open) if self.flags.is_none() && self.date.is_none() => {
                self.flags = Some(Vec::new());
                self.state = State::Flags;
            }
            (State::Message { .. }, Piece::Quoted(d)) if self.date.is_none() => {
                self.date = Some(d);
            }
            (State::Message { .. }, p) if keyword(&p, "CATENATE") => {
                steps.push(self.begin(false));
                self.state = State::CatenateOpen;
            }
            (State::Message { .. }, p) if keyword(&p, "UTF8") => {
                steps.push(self.begin(true));
                self.state = State::Utf8Open;
            }
            (State::Flags, Piece::Atom(a)) => self.flags.get_or_insert_with(Vec::new).push(a),
            (State::Flags, Piece::Close) => self.state = State::Message { after_one: false },
            (State::CatenateOpen, Piece::Open) => self.state = State::CatenatePart,
            (State::CatenatePart, p) if keyword(&p, "URL") => self.state = State::Url,
            (State::CatenatePart, p) if keyword(&p, "TEXT") => self.state = State::Text,
            (State::CatenatePart, Piece::Close) => {
                steps.push(Step::MessageDone);
                self.state = State::Message { after_one: true };
            }
            (State::Url, Piece::Atom(u) | Piece::Quoted(u)) => {
                steps.push(Step::Url(u));
                self.state = State::CatenatePart;
            }
            (State::Utf8Open, Piece::Open) => self.state = State::Utf8Literal,
            (State::Utf8Close, Piece::Close) => {
                steps.push(Step::MessageDone);
                self.state = State::Message { after_one: true };
            }
            (state, piece) => return Err(unexpected(state, &piece)),
        }
        Ok(())
    }
}

/// The BAD text for a piece the grammar does not allow where it is.
fn unexpected(state: State, piece: &Piece) -> String {
    let what = match piece {
        Piece::Open => "(".to_string(),
        Piece::Close => ")".to_string(),
        Piece::Atom(a) => a.clone(),
        Piece::Quoted(q) => format!("\"{q}\""),
    };
    let wanted = match state {
        State::Mailbox => "a mailbox name",
        State::Message { .. } => "flags, a date-time, or the message",
        State::Flags => "a flag",
        State::CatenateOpen | State::Utf8Open => "(",
        State::CatenatePart => "URL, TEXT or )",
        State::Url => "a URL",
        State::Text | State::Utf8Literal | State::Literal => "a literal",
        State::Utf8Close => ")",
    };
    format!("APPEND: {what} where {wanted} was expected")
}

/// A CATENATE URL naming a stored message or part of one (RFC 5092 §3, as RFC 4469
/// §5 restricts it: a message by UID, optionally a section and a partial range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUrl {
    /// `imap://user@host/`: whose and which server's message (absent in a relative URL).
    pub server: Option<(Option<String>, String)>,
    /// The mailbox, as UTF-8 (RFC 5092 §9); `None`: the selected mailbox.
    pub mailbox: Option<String>,
    pub uidvalidity: Option<u32>,
    pub uid: u32,
    /// The section text (`1.2`, `HEADER`, `2.MIME`…); `None`: the whole message.
    pub section: Option<String>,
    /// `;PARTIAL=offset[.length]`.
    pub partial: Option<(u32, Option<u32>)>,
}

/// Parses an IMAP URL of a message (absolute `imap://…/box;UID=…`, mailbox-absolute
/// `/box/;UID=…`, or relative to the selected mailbox `;UID=…`). URLAUTH and search
/// URLs are not message URLs here: `None`, which the session answers `NO [BADURL]`.
pub fn parse_message_url(url: &str) -> Option<MessageUrl> {
    let (server, path) = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("imap://") => {
            let rest = url.get(7..)?;
            let slash = rest.find('/')?;
            let authority = rest.get(..slash)?;
            let (user, host) = match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split(';').next().unwrap_or("");
                    (Some(percent_decode(user)?), host)
                }
                None => (None, authority),
            };
            let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
            (Some((user, host)), rest.get(slash..)?)
        }
        _ => (None, url),
    };
    // `/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o.l]` or `;UID=n…`.
    let (mailbox, uidvalidity, rest) = match path.strip_prefix('/') {
        Some(p) => {
            let end = p.find("/;")?;
            let (name, validity) = match p.get(..end)?.split_once(';') {
                Some((name, param)) => {
                    let value = strip_prefix_ignore_case(param, "UIDVALIDITY=")?;
                    (name, Some(nz_number(value)?))
                }
                None => (p.get(..end)?, None),
            };
            (Some(percent_decode(name)?), validity, p.get(end + 1..)?)
        }
        None => (None, None, path),
    };
    let mut parts = rest.split("/;");
    let uid = nz_number(strip_prefix_ignore_case(parts.next()?, ";UID=")?)?;
    let mut message = MessageUrl {
        server,
        mailbox,
        uidvalidity,
        uid,
        section: None,
        partial: None,
    };
    for part in parts {
        if let Some(section) = strip_prefix_ignore_case(part, "SECTION=") {
            if message.section.is_some() || message.partial.is_some() {
                return None;
            }
            message.section = Some(percent_decode(section)?);
        } else if let Some(range) = strip_prefix_ignore_case(part, "PARTIAL=") {
            if message.partial.is_some() {
                return None;
            }
            let (offset, length) = match range.split_once('.') {
                Some((o, l)) => (o.parse().ok()?, Some(nz_number(l)?)),
                None => (range.parse().ok()?, None),
            };
            message.partial = Some((offset, length));
        } else {
            return None; // ;URLAUTH=, ;EXPIRE=, anything else
        }
    }
    Some(message)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

fn nz_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n > 0)
}

/// `%XX` escapes undone; the result must be UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(segments: &[&str]) -> Result<Vec<Step>, String> {
        let mut g = Grammar::new();
        let mut all = Vec::new();
        for seg in segments {
            let (pieces, end) = lex_segment(seg.as_bytes())?;
            let (steps, role) = g.feed(pieces, end)?;
            all.extend(steps);
            match role {
                Some(Role::Bytes) => all.extend(g.literal_ended()),
                Some(Role::Text) => all.extend(g.literal_value("lit".into())?),
                None => {}
            }
        }
        Ok(all)
    }

    #[test]
    fn one_message_with_flags_and_date() {
        let steps = run(&[
            r#"INBOX (\Seen $Work) "01-Jan-2026 10:00:00 +0000" {5}"#,
            "",
        ])
        .unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Mailbox("INBOX".into()),
                Step::Begin {
                    flags: vec!["\\Seen".into(), "$Work".into()],
                    date: Some("01-Jan-2026 10:00:00 +0000".into()),
                    utf8: false
                },
                Step::MessageDone
            ]
        );
    }

    #[test]
    fn multiappend_catenate_and_utf8() {
        let steps = run(&[
            r#""Sent Items" {3+}"#,
            r#" (\Draft) CATENATE (URL "/INBOX;UIDVALIDITY=9/;UID=3" TEXT {2}"#,
            r#" URL {4}"#,
            r#") UTF8 (~{6}"#,
            ")",
        ])
        .unwrap();
        assert_eq!(steps.len(), 9, "{steps:?}");
        assert_eq!(steps[0], Step::Mailbox("Sent Items".into()));
        assert_eq!(steps[4], Step::Url("/INBOX;UIDVALIDITY=9/;UID=3".into()));
        assert_eq!(steps[5], Step::Url("lit".into()));
        assert_eq!(steps[6], Step::MessageDone);
        assert_eq!(steps[8], Step::MessageDone);
    }

    #[test]
    fn refusals() {
        assert!(run(&["INBOX"]).is_err(), "no message");
        assert!(run(&["INBOX (\\Seen"]).is_err(), "open flag list");
        assert!(run(&["INBOX CATENATE (TEXT ~{3}", ")", ""]).is_ok());
        assert!(run(&["INBOX UTF8 ({3}"]).is_err(), "UTF8 needs literal8");
        assert!(run(&["INBOX {3}", " garbage"]).is_err());
        assert!(run(&["INBOX CATENATE (URL ~{3}"]).is_err());
        assert!(run(&["INBOX \"a\" \"b\" {3}"]).is_err(), "two dates");
        assert!(lex_segment(b"INBOX \"open").is_err());
    }

    #[test]
    fn message_urls() {
        let u = parse_message_url("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Drafts"));
        assert_eq!((u.uidvalidity, u.uid), (Some(385759045), 20));
        assert_eq!(u.section.as_deref(), Some("HEADER"));
        let u = parse_message_url("imap://bob@Mail.Example/Sent%20Items/;UID=3/;PARTIAL=0.1024")
            .unwrap();
        assert_eq!(u.server, Some((Some("bob".into()), "mail.example".into())));
        assert_eq!(u.mailbox.as_deref(), Some("Sent Items"));
        assert_eq!(u.partial, Some((0, Some(1024))));
        let u = parse_message_url(";UID=7/;SECTION=1.2").unwrap();
        assert_eq!(
            (u.mailbox, u.uid, u.section.as_deref()),
            (None, 7, Some("1.2"))
        );
        for bad in [
            "/INBOX/;UID=0",
            "/INBOX/;UID=x",
            "/INBOX;UIDVALIDITY=/;UID=1",
            "/INBOX/;UID=1/;URLAUTH=anonymous:internal:abc",
            "/INBOX?SUBJECT%20x",
            "/IN%ZZBOX/;UID=1",
            "http://x/INBOX/;UID=1",
        ] {
            assert_eq!(parse_message_url(bad), None, "{bad}");
        }
    }
}
