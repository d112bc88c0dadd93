//! What the SMTP client reads from a server, pure: replies (multi-line, bounded), EHLO
//! capabilities, and what a message needs from the peer. Never does IO, never panics
//! on what a remote server sends.

use memchr::memchr;

/// One SMTP reply (possibly multi-line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line, without the code and separator.
    pub lines: Vec<String>,
}

/// A reply we refuse to parse further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// Not `DDD[ -]text`.
    Malformed,
    /// More than [`REPLY_LINES_MAX`] lines or a line over [`REPLY_LINE_BYTES_MAX`].
    TooLong,
}

/// Bounds on what a server may send us in one reply.
pub const REPLY_LINES_MAX: usize = 100;
pub const REPLY_LINE_BYTES_MAX: usize = 4096;

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// The whole reply as one line, for logs, queue state and DSNs.
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }
    /// The enhanced status code (RFC 3463) of the first line, if any.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?.split(' ').next()?;
        let mut parts = first.split('.');
        let class = parts.next()?;
        let ok = matches!(class, "2" | "4" | "5")
            && parts.clone().count() == 2
            && parts
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| first.to_string())
    }
}

/// Parses one complete reply from the start of `input`: `Ok(None)` until all its lines
/// have arrived, else the reply and the bytes it used.
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let Some(rest) = input.get(pos..) else {
            return Ok(None);
        };
        let Some(lf) = memchr(b'\n', rest) else {
            return if rest.len() > REPLY_LINE_BYTES_MAX {
                Err(ReplyError::TooLong)
            } else {
                Ok(None)
            };
        };
        if lf > REPLY_LINE_BYTES_MAX {
            return Err(ReplyError::TooLong);
        }
        let line = rest.get(..lf).unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += lf + 1;
        let digits = line.get(..3).ok_or(ReplyError::Malformed)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed);
        }
        let this: u16 = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(ReplyError::Malformed)?;
        if *code.get_or_insert(this) != this {
            return Err(ReplyError::Malformed);
        }
        let more = match line.get(3) {
            None | Some(b' ') => false,
            Some(b'-') => true,
            Some(_) => return Err(ReplyError::Malformed),
        };
        lines.push(String::from_utf8_lossy(line.get(4..).unwrap_or(&[])).to_string());
        if lines.len() > REPLY_LINES_MAX {
            return Err(ReplyError::TooLong);
        }
        if !more {
            return Ok(Some((Reply { code: this, lines }, pos)));
        }
    }
}

/// What a server's EHLO reply offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// `SIZE` limit, if announced (0 = no fixed limit).
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    /// RFC 3461: the server takes NOTIFY/ORCPT/RET/ENVID and reports on from there.
    pub dsn: bool,
    /// RFC 8689: the server keeps REQUIRETLS on the message's further way.
    pub requiretls: bool,
}

pub fn capabilities(ehlo: &Reply) -> Capabilities {
    let mut caps = Capabilities::default();
    // The first line is the greeting-like "host Hello …"; keywords follow.
    for line in ehlo.lines.iter().skip(1) {
        let mut words = line.split_ascii_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword.to_ascii_uppercase().as_str() {
            "PIPELINING" => caps.pipelining = true,
            "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "8BITMIME" => caps.eightbitmime = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "CHUNKING" => caps.chunking = true,
            "STARTTLS" => caps.starttls = true,
            "DSN" => caps.dsn = true,
            "REQUIRETLS" => caps.requiretls = true,
            "AUTH" => caps.auth_plain |= words.any(|m| m.eq_ignore_ascii_case("PLAIN")),
            _ => {}
        }
    }
    caps
}

/// An envelope with a non-ASCII address needs SMTPUTF8 (RFC 6531).
pub fn needs_smtputf8<'a>(from: &str, rcpts: impl IntoIterator<Item = &'a str>) -> bool {
    !from.is_ascii() || rcpts.into_iter().any(|r| !r.is_ascii())
}

/// A message with any byte ≥ 0x80 is 8-bit (BODY=8BITMIME, RFC 6152).
pub fn is_8bit(message: &[u8]) -> bool {
    !message.is_ascii()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn replies_in_pieces() {
        let wire = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-AUTH LOGIN PLAIN\r\n250 CHUNKING\r\n";
        for cut in 0..wire.len() {
            assert_eq!(parse_reply(&wire[..cut]), Ok(None), "cut {cut}");
        }
        let (reply, used) = parse_reply(wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        let caps = capabilities(&reply);
        assert!(caps.pipelining && caps.chunking && caps.auth_plain && !caps.starttls);
        assert_eq!(caps.size, Some(1000));
        let (r, _) = parse_reply(b"550 5.1.1 <x@y>: no such user\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        assert_eq!(parse_reply(b"25x ok\r\n"), Err(ReplyError::Malformed));
        assert_eq!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::Malformed)
        );
        assert_eq!(parse_reply(&[b'2'; 5000]), Err(ReplyError::TooLong));
    }
}
