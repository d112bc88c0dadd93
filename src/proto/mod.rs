//! Protocol state machines and parsers: pure code over byte slices (DESIGN.md §2).
//!
//! Nothing under `proto` opens a socket, touches glommio, reads a clock (time is an
//! argument) or panics on peer input. The IO layer in `src/shard/` drives these.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![deny(clippy::indexing_slicing)]

pub mod imap;
pub mod milter;
pub mod pop3;
pub mod sasl;
pub mod smtp;
#[doc(hidden)]
pub mod testkit;

use std::time::{SystemTime, UNIX_EPOCH};

/// Replies and actions a session produced in one call; `A` is the protocol's action.
#[derive(Debug)]
pub struct Outbox<A> {
    /// Reply bytes, in order, ready for the wire.
    pub reply: Vec<u8>,
    /// Work for the IO layer, in order.
    pub actions: Vec<A>,
}

impl<A> Default for Outbox<A> {
    fn default() -> Self {
        Outbox {
            reply: Vec::new(),
            actions: Vec::new(),
        }
    }
}

impl<A> Outbox<A> {
    /// Appends one reply line and its CRLF.
    pub(crate) fn line(&mut self, line: &str) {
        self.reply.extend_from_slice(line.as_bytes());
        self.reply.extend_from_slice(b"\r\n");
    }
}

/// A message body as it arrives (SMTP DATA/BDAT, an IMAP APPEND literal). The session
/// appends to `staged`; the IO layer moves staged bytes out to a spool file whenever
/// they pass `store.spool_threshold_bytes` (see [`Incoming::take_staged`]), so a
/// session never holds a whole large message (DESIGN.md §2, §10). A session that
/// throws a body away calls [`Incoming::discard`], which the IO layer notices by the
/// changed [`Incoming::generation`] and drops its spool.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Bytes not yet moved out.
    pub staged: Vec<u8>,
    /// Bytes moved out before `staged` (they precede it).
    pub spilled: u64,
    generation: u64,
}

impl Incoming {
    /// A new body; `generation` tells it apart from earlier ones of the session.
    pub fn new(generation: u64) -> Incoming {
        Incoming {
            staged: Vec::new(),
            spilled: 0,
            generation,
        }
    }

    /// Starts with `bytes` (our trace header).
    pub fn with_head(generation: u64, bytes: Vec<u8>) -> Incoming {
        Incoming {
            staged: bytes,
            spilled: 0,
            generation,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Body bytes so far, moved out or not.
    pub fn len(&self) -> u64 {
        self.spilled + self.staged.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands the staged bytes to the IO layer (which writes them to the spool).
    pub fn take_staged(&mut self) -> Vec<u8> {
        let bytes = std::mem::take(&mut self.staged);
        self.spilled += bytes.len() as u64;
        bytes
    }

    /// Throws the body away (oversize, refused): memory back now, spool dropped.
    pub fn discard(&mut self) {
        self.staged = Vec::new();
        self.spilled = 0;
        self.generation = self.generation.wrapping_add(1 << 32);
    }

    /// The whole body, when nothing was moved out (tests, small messages).
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        (self.spilled == 0).then_some(self.staged)
    }
}

/// Offsets of the dots that must be doubled when `message` goes out as SMTP DATA or a
/// POP3 multi-line response (RFC 5321 §4.5.2, RFC 1939 §3): every `.` starting a line.
pub fn stuffing_points(message: &[u8]) -> Vec<usize> {
    let mut points = Vec::new();
    if message.first() == Some(&b'.') {
        points.push(0);
    }
    points.extend(memchr::memmem::find_iter(message, b"\n.").map(|i| i + 1));
    points
}

/// What ends a dot-stuffed multi-line body: `.` CRLF, preceded by a CRLF when the
/// message does not end with one (SMTP DATA, POP3 RETR/TOP).
pub fn dot_terminator(message: &[u8]) -> &'static [u8] {
    if message.is_empty() || message.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    }
}

/// Appends `message` dot-stuffed and terminated to `out`.
pub fn dot_stuff_into(out: &mut Vec<u8>, message: &[u8]) {
    let mut start = 0;
    for dot in stuffing_points(message) {
        out.extend_from_slice(message.get(start..dot).unwrap_or(&[]));
        out.push(b'.');
        start = dot;
    }
    out.extend_from_slice(message.get(start..).unwrap_or(&[]));
    out.extend_from_slice(dot_terminator(message));
}

/// Formats `t` as an RFC 5322 date-time in UTC, e.g. `Thu, 26 Nov 2026 06:45:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = WEEKDAYS.get(days.rem_euclid(7) as usize).unwrap_or(&"Thu");
    let month = MONTHS.get(m.saturating_sub(1) as usize).unwrap_or(&"Jan");
    format!(
        "{weekday}, {d} {month} {y} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31); Howard Hinnant's algorithm.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_675_500);
        assert_eq!(rfc5322_date(t), "Thu, 26 Nov 2026 06:45:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
