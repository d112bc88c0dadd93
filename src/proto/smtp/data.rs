//! The DATA body reader: CRLF.CRLF detection and dot-unstuffing over fragments.
//!
//! It consumes as much input as it can decide on and leaves at most two undecided
//! bytes (a trailing CR, or a line-start `.` / `.\r`) for the next call, so the result
//! never depends on how the peer's bytes were split. Bare CR or LF (RFC 5321 §2.3.8)
//! marks the message as rejected, but the body is still read to the real end of data,
//! which is recognised only as `<CRLF>.<CRLF>` (no SMTP smuggling through `<LF>.<LF>`).
//! Bytes beyond `size_max` are counted, never buffered.

use memchr::memchr2;

use crate::proto::Incoming;

/// Progress of one DATA body.
#[derive(Debug)]
pub struct DataReader {
    /// The next byte begins a line (only ever set after a real CRLF).
    line_start: bool,
    /// A bare CR or LF was seen: the message will be refused.
    pub bare_newline: bool,
    /// More than `size_max` body bytes arrived: the message will be refused.
    pub oversize: bool,
    /// Body bytes received so far (after unstuffing), counted even when not kept.
    pub body_bytes: u64,
}

/// What one call to [`DataReader::read`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum DataProgress {
    /// Consumed this many bytes; the end of data has not arrived.
    More(usize),
    /// Consumed this many bytes, the last of which ended the data (`.CRLF`).
    Done(usize),
}

impl Default for DataReader {
    fn default() -> Self {
        Self::new()
    }
}

impl DataReader {
    pub fn new() -> DataReader {
        DataReader {
            line_start: true,
            bare_newline: false,
            oversize: false,
            body_bytes: 0,
        }
    }

    /// Reads body bytes from `input` into `sink` (bounded by `size_max`).
    pub fn read(&mut self, input: &[u8], sink: &mut Incoming, size_max: usize) -> DataProgress {
        let mut pos = 0;
        loop {
            let Some(rest) = input.get(pos..) else {
                return DataProgress::More(pos);
            };
            if self.line_start {
                match rest {
                    [] | [b'.'] | [b'.', b'\r'] => return DataProgress::More(pos),
                    [b'.', b'\r', b'\n', ..] => return DataProgress::Done(pos + 3),
                    [b'.', ..] => {
                        pos += 1; // dot-unstuffing: drop the leading dot
                        self.line_start = false;
                        continue;
                    }
                    _ => self.line_start = false,
                }
            }
            let Some(at) = memchr2(b'\r', b'\n', rest) else {
                self.keep(rest, sink, size_max);
                return DataProgress::More(pos + rest.len());
            };
            match (rest.get(at), rest.get(at + 1)) {
                (Some(b'\r'), Some(b'\n')) => {
                    self.keep(rest.get(..at + 2).unwrap_or(rest), sink, size_max);
                    self.line_start = true;
                    pos += at + 2;
                }
                (Some(b'\r'), None) => {
                    // Undecided: the LF may come in the next fragment.
                    self.keep(rest.get(..at).unwrap_or(rest), sink, size_max);
                    return DataProgress::More(pos + at);
                }
                _ => {
                    // A bare CR, or a LF not preceded by CR.
                    self.bare_newline = true;
                    self.keep(rest.get(..=at).unwrap_or(rest), sink, size_max);
                    pos += at + 1;
                }
            }
        }
    }

    fn keep(&mut self, bytes: &[u8], sink: &mut Incoming, size_max: usize) {
        self.body_bytes += bytes.len() as u64;
        if self.body_bytes > size_max as u64 {
            if !self.oversize {
                self.oversize = true;
                // Nothing of an oversize message will be stored: free it now.
                sink.discard();
            }
            return;
        }
        if self.bare_newline {
            if !sink.is_empty() {
                sink.discard(); // it will be refused: keep nothing
            }
        } else {
            sink.staged.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], chunk: usize) -> (Vec<u8>, usize, DataReader) {
        let mut r = DataReader::new();
        let mut sink = Incoming::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut consumed_total = 0;
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            match r.read(&buf, &mut sink, 1 << 20) {
                DataProgress::More(n) => {
                    consumed_total += n;
                    buf.drain(..n);
                }
                DataProgress::Done(n) => {
                    consumed_total += n;
                    return (sink.staged, consumed_total, r);
                }
            }
        }
        panic!("no end of data in {:?}", String::from_utf8_lossy(input));
    }

    #[test]
    fn unstuffs_and_stops_at_crlf_dot_crlf_in_any_fragmentation() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nNEXT";
        for chunk in [1, 2, 3, 7, 100] {
            let (body, used, r) = read_all(wire, chunk);
            assert_eq!(body, b"Subject: x\r\n\r\n.leading dot\r\n");
            assert_eq!(used, wire.len() - 4);
            assert!(!r.bare_newline && !r.oversize);
        }
    }

    #[test]
    fn bare_lf_is_flagged_and_lf_dot_lf_does_not_end_data() {
        let wire = b"a\n.\nstill body\r\n.\r\n";
        for chunk in [1, 2, 5, 100] {
            let (_, used, r) = read_all(wire, chunk);
            assert_eq!(used, wire.len());
            assert!(r.bare_newline);
        }
        let (_, _, r) = read_all(b"a\rb\r\n.\r\n", 1);
        assert!(r.bare_newline);
    }

    #[test]
    fn oversize_is_counted_not_kept() {
        let mut r = DataReader::new();
        let mut sink = Incoming::default();
        let p = r.read(b"0123456789\r\n.\r\n", &mut sink, 5);
        assert_eq!(p, DataProgress::Done(15));
        assert!(r.oversize);
        assert!(sink.is_empty());
    }

    #[test]
    fn empty_message() {
        let (body, used, _) = read_all(b".\r\n", 1);
        assert!(body.is_empty());
        assert_eq!(used, 3);
    }
}
