//! IMAP command framing and tokens (RFC 9051 §2.2, §4; RFC 7888 LITERAL+), sans-IO.
//!
//! [`Framer::frame`] finds where a complete command ends in the input — across any
//! number of literals — and says when the server must send a continuation request
//! (`+ `) for a synchronizing literal, or refuse one that is too large before the
//! client sends it. [`tokenize`] then turns a complete command into borrowed
//! [`Token`]s. Limits on command length, literal size and list nesting are arguments,
//! so the session can apply `limits.*` and APPENDLIMIT. Nothing here allocates per byte,
//! reads a clock, or panics on any input (fuzzed and property-tested).

use std::borrow::Cow;

use memchr::memchr;

/// Bounds a command must stay within.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Bytes of a command outside its literals (its "lines"), CRLFs included.
    pub command_bytes_max: usize,
    /// Bytes of all literals of one command together (they are buffered whole),
    /// except an APPEND's message.
    pub literal_bytes_max: u64,
    /// Size of an APPEND message literal (streamed, never buffered whole: see
    /// [`Frame::Upload`]); 0 = APPEND messages are framed like any literal.
    pub upload_bytes_max: u64,
    /// Largest non-synchronizing (`{n+}`) literal: 4,096 where LITERAL- is
    /// advertised (RFC 7888 §5), `u64::MAX` under LITERAL+.
    pub non_sync_bytes_max: u64,
}

/// What [`Framer::frame`] decided about the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete command occupies `input[..len]`.
    Complete { len: usize },
    /// Send `+ Ready for literal data` CRLF, then call again when more input arrives.
    Continue,
    /// Wait for more input.
    NeedMore,
    /// An APPEND's message literal begins: `input[..prefix]` is the command up to the
    /// literal's `{` (tag, APPEND and its arguments), `input[..header]` includes the
    /// literal header's line. The session streams the `size` literal bytes that follow
    /// (after a continuation for a synchronizing literal), then the line's end.
    Upload {
        prefix: usize,
        header: usize,
        size: u64,
        non_sync: bool,
    },
    /// The command is refused; `discard` bytes of input belong to it and must be
    /// dropped (a LITERAL+ literal the client sends anyway is still being discarded
    /// when `remaining > 0`). When `line_continues`, the rest of the command's line
    /// (after the discarded bytes) belongs to it too: drop input up to the next LF.
    /// `tag` is the command's tag, if one could be read.
    Refused {
        reason: Refusal,
        tag: Option<String>,
        discard: usize,
        remaining: u64,
        line_continues: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Lines exceed `command_bytes_max`.
    CommandTooLong,
    /// A literal exceeds `literal_bytes_max` (answer `NO [TOOBIG]` / `BAD`).
    LiteralTooLarge,
}

/// Remembers, across calls, which synchronizing literals were already answered with a
/// continuation request, so each gets exactly one.
#[derive(Debug, Default)]
pub struct Framer {
    continued: usize,
    /// The last call stopped inside (or right before) a literal's bytes.
    in_literal: bool,
}

/// Parses `{n}` or `{n+}` at the end of a line (before its CRLF).
fn literal_header(line: &[u8]) -> Option<(u64, bool)> {
    literal_header_at(line).map(|(n, non_sync, _)| (n, non_sync))
}

/// [`literal_header`], with the position of its `{` in the line.
pub(super) fn literal_header_at(line: &[u8]) -> Option<(u64, bool, usize)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = inner.get(open + 1..)?;
    let (digits, non_sync) = match digits.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (digits, false),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, non_sync, open))
}

/// Is the literal whose `{` is at `input[brace]` part of an APPEND? Every literal of
/// an APPEND is handed to the session, which reads the command's arguments itself
/// (`append_syntax`): its messages are streamed, never framed with the command.
fn is_append_message(input: &[u8]) -> bool {
    let first_line = input.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut words = first_line.split(|&b| b == b' ');
    let (_, name) = (words.next(), words.next().unwrap_or(&[]));
    name.eq_ignore_ascii_case(b"APPEND")
}

/// The tag of a command (its first atom), for refusals.
fn tag_of(input: &[u8]) -> Option<String> {
    let end = input
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')?;
    let tag = input.get(..end)?;
    (!tag.is_empty() && tag.iter().all(|&b| is_atom_char(b) && b != b'+'))
        .then(|| String::from_utf8_lossy(tag).into_owned())
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Whether the last [`Framer::frame`] stopped waiting for a literal's bytes (the
    /// IO layer then applies the minimum data rate rather than the command timeout).
    pub fn in_literal(&self) -> bool {
        self.in_literal
    }

    /// Looks for one complete command at the start of `input`.
    // Longer than ~80 lines: the framing state machine in one place (literal, upload and refusal cases).
    pub fn frame(&mut self, input: &[u8], limits: &FrameLimits) -> Frame {
        self.in_literal = false;
        let mut pos = 0;
        let mut line_bytes = 0;
        let mut literal_index = 0;
        let mut literal_total: u64 = 0;
        loop {
            let rest = input.get(pos..).unwrap_or(&[]);
            let window = limits.command_bytes_max.saturating_sub(line_bytes) + 2;
            let scan = rest.get(..window.min(rest.len())).unwrap_or(rest);
            let Some(lf) = memchr(b'\n', scan) else {
                if scan.len() >= window {
                    // Only what was scanned: the rest of this line is the caller's to
                    // skip, and whatever follows it is the next command.
                    // The line goes on past what was scanned.
                    return self.refuse(input, Refusal::CommandTooLong, pos + scan.len(), 0, true);
                }
                return Frame::NeedMore;
            };
            line_bytes += lf + 1;
            if line_bytes > limits.command_bytes_max {
                return self.refuse(input, Refusal::CommandTooLong, pos + lf + 1, 0, false);
            }
            let line = scan.get(..lf).unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let after_line = pos + lf + 1;
            let Some((size, non_sync, open)) = literal_header_at(line) else {
                self.continued = 0;
                return Frame::Complete { len: after_line };
            };
            literal_index += 1;
            let brace = pos + open;
            let upload = limits.upload_bytes_max > 0 && is_append_message(input);
            if upload && size <= limits.upload_bytes_max {
                self.continued = 0;
                return Frame::Upload {
                    prefix: brace,
                    header: after_line,
                    size,
                    non_sync,
                };
            }
            literal_total = literal_total.saturating_add(size);
            let limit = if upload {
                limits.upload_bytes_max
            } else {
                limits.literal_bytes_max
            };
            let limit = if non_sync {
                limit.min(limits.non_sync_bytes_max)
            } else {
                limit
            };
            if size > limit || (!upload && literal_total > limits.literal_bytes_max) {
                // A synchronizing literal was never sent (no continuation); a LITERAL+
                // one is on its way and must be read and thrown away.
                let remaining = if non_sync { size } else { 0 };
                let have = (input.len() - after_line) as u64;
                let drop_now = remaining.min(have);
                return self.refuse(
                    input,
                    Refusal::LiteralTooLarge,
                    after_line + drop_now as usize,
                    remaining - drop_now,
                    // A LITERAL+ literal is followed by the rest of its command line;
                    // after a synchronizing one the client sends nothing more.
                    non_sync,
                );
            }
            // A client waits for `+` after a synchronizing literal's header — even for
            // `{0}` — so it is owed one as soon as the header is in and nothing after it.
            if !non_sync && self.continued < literal_index && input.len() == after_line {
                self.continued = literal_index;
                self.in_literal = true;
                return Frame::Continue;
            }
            let literal_end = after_line as u64 + size;
            if (input.len() as u64) < literal_end {
                self.in_literal = true;
                return Frame::NeedMore;
            }
            pos = literal_end as usize;
        }
    }

    fn refuse(
        &mut self,
        input: &[u8],
        reason: Refusal,
        discard: usize,
        remaining: u64,
        line_continues: bool,
    ) -> Frame {
        self.continued = 0;
        Frame::Refused {
            reason,
            tag: tag_of(input),
            discard: discard.min(input.len()),
            remaining,
            line_continues,
        }
    }
}

/// One token of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// An atom (also numbers, sequence sets, flags like `\Seen`, `BODY[HEADER]`).
    Atom(&'a str),
    /// A quoted string, unescaped (borrowed when it had no escapes).
    Quoted(Cow<'a, str>),
    /// A literal's bytes, borrowed from the input.
    Literal(&'a [u8]),
    /// `( … )`.
    List(Vec<Token<'a>>),
    Nil,
}

impl<'a> Token<'a> {
    /// An astring (atom, quoted or literal) as text.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        match self {
            Token::Atom(a) => Some(Cow::Borrowed(a)),
            Token::Quoted(q) => Some(q.clone()),
            Token::Literal(l) => std::str::from_utf8(l).ok().map(Cow::Borrowed),
            // No client command gives NIL a meaning of its own: where the grammar has
            // an astring, `NIL` is just the atom (`SEARCH SUBJECT NIL`).
            Token::Nil => Some(Cow::Borrowed("NIL")),
            Token::List(_) => None,
        }
    }
}

/// Why a complete command could not be tokenized (answer `BAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    Unbalanced,
    TooDeep,
    BadQuoted,
    BadLiteral,
    NotUtf8,
    Empty,
}

/// Characters of a token atom: anything but controls, space, `(`, `)`, `{` and `"`.
/// Wider than RFC 9051's atom on purpose: flags (`\Seen`), list wildcards (`%`, `*`),
/// sequence sets (`1:*`) and `BODY[…]` are all single tokens here; the command layer
/// checks each argument's grammar.
/// Whether a `[` after `atom` starts a FETCH section.
fn opens_section(atom: Option<&[u8]>) -> bool {
    let atom = atom.unwrap_or(&[]);
    [
        &b"BODY"[..],
        b"BODY.PEEK",
        b"BINARY",
        b"BINARY.PEEK",
        b"BINARY.SIZE",
    ]
    .iter()
    .any(|name| atom.eq_ignore_ascii_case(name))
}

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b != 0x7f && !matches!(b, b'(' | b')' | b'{' | b'"')
}

/// A tagged command: its tag, its name (uppercased) and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    pub tag: &'a str,
    pub name: String,
    pub args: Vec<Token<'a>>,
}

/// One piece of a command segment read without matching parentheses (APPEND, whose
/// lists span its literals): atoms and quoted strings exactly as [`tokenize`] reads
/// them, `(` and `)` as pieces of their own. `NIL` is the atom `NIL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flat {
    Open,
    Close,
    Atom(String),
    Quoted(String),
}

/// Splits `text` (no literal, no CRLF) into [`Flat`] pieces.
pub fn lex_flat(text: &[u8]) -> Result<Vec<Flat>, SyntaxError> {
    let mut p = Parser {
        input: text,
        pos: 0,
        depth_max: 0,
    };
    let mut pieces = Vec::new();
    while let Some(b) = p.peek() {
        let piece = match b {
            b' ' => {
                p.pos += 1;
                continue;
            }
            b'(' | b')' => {
                p.pos += 1;
                if b == b'(' {
                    Flat::Open
                } else {
                    Flat::Close
                }
            }
            b'"' => match p.quoted()? {
                Token::Quoted(q) => Flat::Quoted(q.into_owned()),
                _ => return Err(SyntaxError::BadQuoted),
            },
            b'{' => return Err(SyntaxError::BadLiteral),
            b'\r' | b'\n' => return Err(SyntaxError::Unbalanced),
            _ => match p.atom()? {
                Token::Atom(a) => Flat::Atom(a.to_string()),
                _ => Flat::Atom("NIL".into()),
            },
        };
        pieces.push(piece);
    }
    Ok(pieces)
}

/// Tokenizes one complete command (as framed, CRLF included).
pub fn tokenize(command: &[u8], depth_max: usize) -> Result<Command<'_>, SyntaxError> {
    let mut p = Parser {
        input: command,
        pos: 0,
        depth_max,
    };
    let tokens = p.sequence(0)?;
    let mut it = tokens.into_iter();
    let tag = match it.next() {
        Some(Token::Atom(t)) if !t.contains('+') => t,
        Some(_) => return Err(SyntaxError::Unbalanced),
        None => return Err(SyntaxError::Empty),
    };
    let name = match it.next() {
        Some(Token::Atom(n)) => n.to_ascii_uppercase(),
        Some(Token::Nil) => "NIL".to_string(), // an unknown command, not a syntax error
        _ => return Err(SyntaxError::Empty),
    };
    Ok(Command {
        tag,
        name,
        args: it.collect(),
    })
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    depth_max: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// Tokens until `)` (inside a list) or the end of the command.
    fn sequence(&mut self, depth: usize) -> Result<Vec<Token<'a>>, SyntaxError> {
        if depth > self.depth_max {
            return Err(SyntaxError::TooDeep);
        }
        let mut tokens = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return if depth == 0 {
                        Ok(tokens)
                    } else {
                        Err(SyntaxError::Unbalanced)
                    }
                }
                Some(b' ') => self.pos += 1,
                Some(b'\r') | Some(b'\n') => {
                    // Only the final CRLF may appear outside literals.
                    let rest = self.input.get(self.pos..).unwrap_or(&[]);
                    if depth == 0 && (rest == b"\r\n" || rest == b"\n") {
                        self.pos = self.input.len();
                        return Ok(tokens);
                    }
                    return Err(SyntaxError::Unbalanced);
                }
                Some(b'(') => {
                    self.pos += 1;
                    let inner = self.sequence(depth + 1)?;
                    tokens.push(Token::List(inner));
                }
                Some(b')') => {
                    if depth == 0 {
                        return Err(SyntaxError::Unbalanced);
                    }
                    self.pos += 1;
                    return Ok(tokens);
                }
                Some(b'"') => tokens.push(self.quoted()?),
                Some(b'{') => tokens.push(self.literal()?),
                Some(_) => tokens.push(self.atom()?),
            }
        }
    }

    fn atom(&mut self) -> Result<Token<'a>, SyntaxError> {
        let start = self.pos;
        let mut brackets = 0usize;
        while let Some(b) = self.peek() {
            match b {
                // `[` is an ATOM-CHAR (RFC 3501 §9); only a FETCH section opens a
                // bracket, after BODY, BODY.PEEK, BINARY, BINARY.PEEK or BINARY.SIZE.
                b'[' if brackets > 0 || opens_section(self.input.get(start..self.pos)) => {
                    brackets += 1
                }
                // Inside BODY[...] a space or parenthesis belongs to the atom:
                // BODY[HEADER.FIELDS (DATE FROM)].
                b']' if brackets > 0 => brackets -= 1,
                b' ' | b'(' | b')' if brackets > 0 => {}
                _ if !is_atom_char(b) || b == b'"' => break,
                _ => {}
            }
            self.pos += 1;
        }
        let bytes = self.input.get(start..self.pos).unwrap_or(&[]);
        if bytes.is_empty() || brackets > 0 {
            return Err(SyntaxError::Unbalanced);
        }
        let atom = std::str::from_utf8(bytes).map_err(|_| SyntaxError::NotUtf8)?;
        Ok(if atom.eq_ignore_ascii_case("NIL") {
            Token::Nil
        } else {
            Token::Atom(atom)
        })
    }

    fn quoted(&mut self) -> Result<Token<'a>, SyntaxError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        let mut owned: Option<String> = None;
        loop {
            let b = self.peek().ok_or(SyntaxError::BadQuoted)?;
            match b {
                b'"' => {
                    let raw = self.input.get(start..self.pos).unwrap_or(&[]);
                    self.pos += 1;
                    return Ok(Token::Quoted(match owned {
                        Some(s) => Cow::Owned(s),
                        None => Cow::Borrowed(
                            std::str::from_utf8(raw).map_err(|_| SyntaxError::NotUtf8)?,
                        ),
                    }));
                }
                b'\\' => {
                    let next = self
                        .input
                        .get(self.pos + 1)
                        .copied()
                        .ok_or(SyntaxError::BadQuoted)?;
                    if next != b'"' && next != b'\\' {
                        return Err(SyntaxError::BadQuoted);
                    }
                    let s = owned.get_or_insert_with(|| {
                        String::from_utf8_lossy(self.input.get(start..self.pos).unwrap_or(&[]))
                            .into_owned()
                    });
                    s.push(next as char);
                    self.pos += 2;
                }
                b'\r' | b'\n' => return Err(SyntaxError::BadQuoted),
                _ => {
                    if let Some(s) = owned.as_mut() {
                        // Multi-byte UTF-8 arrives byte by byte: push the whole char.
                        let rest = self.input.get(self.pos..).unwrap_or(&[]);
                        let len = utf8_len(b).min(rest.len());
                        let ch = std::str::from_utf8(rest.get(..len).unwrap_or(&[]))
                            .map_err(|_| SyntaxError::NotUtf8)?;
                        s.push_str(ch);
                        self.pos += len;
                        continue;
                    }
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> Result<Token<'a>, SyntaxError> {
        let rest = self.input.get(self.pos..).unwrap_or(&[]);
        let close = rest
            .iter()
            .position(|&b| b == b'}')
            .ok_or(SyntaxError::BadLiteral)?;
        let header = rest.get(..close + 1).unwrap_or(&[]);
        let (size, _) = literal_header(header).ok_or(SyntaxError::BadLiteral)?;
        let after = rest.get(close + 1..).unwrap_or(&[]);
        let crlf = if after.starts_with(b"\r\n") {
            2
        } else if after.starts_with(b"\n") {
            1
        } else {
            return Err(SyntaxError::BadLiteral);
        };
        let start = self.pos + close + 1 + crlf;
        let end = start
            .checked_add(usize::try_from(size).map_err(|_| SyntaxError::BadLiteral)?)
            .ok_or(SyntaxError::BadLiteral)?;
        let bytes = self.input.get(start..end).ok_or(SyntaxError::BadLiteral)?;
        self.pos = end;
        Ok(Token::Literal(bytes))
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        command_bytes_max: 200,
        literal_bytes_max: 1000,
        upload_bytes_max: 0,
        non_sync_bytes_max: u64::MAX,
    };

    #[test]
    fn tokens_of_common_commands() {
        let c = tokenize(b"a1 LOGIN \"al\\\"ice\" {3}\r\npw!\r\n", 8).unwrap();
        assert_eq!(c.tag, "a1");
        assert_eq!(c.name, "LOGIN");
        assert_eq!(
            c.args,
            vec![
                Token::Quoted(Cow::Owned("al\"ice".into())),
                Token::Literal(b"pw!")
            ]
        );
        let c = tokenize(
            b"x UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (DATE FROM)] UID)\r\n",
            8,
        )
        .unwrap();
        assert_eq!(c.args[0], Token::Atom("FETCH"));
        assert_eq!(c.args[1], Token::Atom("1:*"));
        assert_eq!(
            c.args[2],
            Token::List(vec![
                Token::Atom("FLAGS"),
                Token::Atom("BODY.PEEK[HEADER.FIELDS (DATE FROM)]"),
                Token::Atom("UID")
            ])
        );
        let c = tokenize(b"t STORE 1 +FLAGS (\\Seen $Forwarded)\r\n", 8).unwrap();
        assert_eq!(
            c.args[2],
            Token::List(vec![Token::Atom("\\Seen"), Token::Atom("$Forwarded")])
        );
        let c = tokenize(b"t LIST \"\" %\r\n", 8).unwrap();
        assert_eq!(
            c.args,
            vec![Token::Quoted(Cow::Borrowed("")), Token::Atom("%")]
        );
        assert_eq!(
            tokenize(b"t SELECT NIL\r\n", 8).unwrap().args,
            vec![Token::Nil]
        );
        assert_eq!(tokenize(b"t X ((((x))))\r\n", 2), Err(SyntaxError::TooDeep));
        assert_eq!(tokenize(b"t X (a\r\n", 8), Err(SyntaxError::Unbalanced));
        assert_eq!(
            tokenize(b"t X \"a\\q\"\r\n", 8),
            Err(SyntaxError::BadQuoted)
        );
        assert_eq!(tokenize(b"\r\n", 8), Err(SyntaxError::Empty));
    }

    #[test]
    fn framing_with_literals_and_continuations() {
        let mut f = Framer::new();
        let cmd = b"a APPEND INBOX (\\Seen) {5}\r\nhello\r\n";
        assert_eq!(f.frame(&cmd[..10], &LIMITS), Frame::NeedMore);
        assert_eq!(f.frame(&cmd[..27], &LIMITS), Frame::NeedMore, "no LF yet");
        assert_eq!(f.frame(&cmd[..28], &LIMITS), Frame::Continue);
        assert_eq!(
            f.frame(&cmd[..30], &LIMITS),
            Frame::NeedMore,
            "continuation sent once"
        );
        assert_eq!(f.frame(&cmd[..34], &LIMITS), Frame::NeedMore);
        assert_eq!(f.frame(cmd, &LIMITS), Frame::Complete { len: cmd.len() });
        // {0} still needs its continuation: the client waits for it.
        let mut f = Framer::new();
        assert_eq!(f.frame(b"a LOGIN {0}\r\n", &LIMITS), Frame::Continue);
        assert_eq!(f.frame(b"a LOGIN {0}\r\n", &LIMITS), Frame::NeedMore);
        assert_eq!(
            f.frame(b"a LOGIN {0}\r\n x\r\n", &LIMITS),
            Frame::Complete { len: 17 }
        );
        // LITERAL+: no continuation.
        let mut f = Framer::new();
        let plus = b"a APPEND INBOX {5+}\r\nhel";
        assert_eq!(f.frame(plus, &LIMITS), Frame::NeedMore);
        // Too large: a synchronizing literal is refused before it is sent…
        let mut f = Framer::new();
        match f.frame(b"a APPEND INBOX {5000}\r\n", &LIMITS) {
            Frame::Refused {
                reason: Refusal::LiteralTooLarge,
                tag,
                discard,
                remaining,
                line_continues,
            } => {
                assert_eq!((tag.as_deref(), discard, remaining), (Some("a"), 23, 0));
                assert!(
                    !line_continues,
                    "the client sends nothing after a refused {{n}}"
                );
            }
            other => panic!("{other:?}"),
        }
        // …a LITERAL+ one is discarded as it arrives.
        match f.frame(b"a APPEND INBOX {5000+}\r\nxyz", &LIMITS) {
            Frame::Refused {
                reason: Refusal::LiteralTooLarge,
                discard,
                remaining,
                line_continues,
                ..
            } => {
                assert_eq!((discard, remaining), (27, 4997));
                assert!(
                    line_continues,
                    "the command line goes on after a LITERAL+ literal"
                );
            }
            other => panic!("{other:?}"),
        }
        let long = [b"a NOOP ".as_slice(), &[b'x'; 300], b"\r\n"].concat();
        assert!(matches!(
            Framer::new().frame(&long, &LIMITS),
            Frame::Refused {
                reason: Refusal::CommandTooLong,
                ..
            }
        ));
    }
}
