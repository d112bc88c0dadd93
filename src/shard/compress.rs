//! IMAP COMPRESS=DEFLATE (RFC 4978): raw deflate (RFC 1951) in both directions over a
//! connection's plain or TLS stream, below the protocol and above TLS.
//!
//! Input is inflated only into the caller's buffer, never into one of its own, so a
//! small compressed input that inflates enormously is bounded by the connection's
//! input buffer like any other input (DESIGN.md §10); at most
//! [`COMPRESSED_PENDING_MAX`] compressed bytes wait to be inflated. Output is deflated
//! a piece at a time and every write ends with a sync flush, so the client can read
//! each reply whole. The state is `Send` ([`DeflateState`]) so a compressed session
//! can still move to another shard (a login after UNAUTHENTICATE). Shard-local; it
//! never parses the protocol.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::admission::DeflateTicket;
use super::conn::Stream;

/// Compressed bytes read from the socket at a time.
const COMPRESSED_READ_BYTES: usize = 16 * 1024;
/// Compressed input not yet inflated, at most (the inflater consumes input as it goes,
/// so only a broken stream gets near this).
const COMPRESSED_PENDING_MAX: usize = 4 * COMPRESSED_READ_BYTES;
/// Plaintext deflated per call, so a large reply is compressed and sent in pieces.
const PLAIN_CHUNK_BYTES: usize = 64 * 1024;
/// Level 1 (fastest): mail text compresses well even so, and the CPU per byte matters
/// more on a busy shard than the last few percent of size.
const LEVEL: u32 = 1;

/// The deflate state of a connection, to move it between shards.
pub struct DeflateState {
    compress: Compress,
    decompress: Decompress,
    /// Compressed input read but not yet inflated.
    pending: Vec<u8>,
    /// The server-wide slot this session holds (`limits.imap_compress_sessions_max`).
    _slot: DeflateTicket,
}

impl DeflateState {
    /// A fresh state; `pending` is compressed input already read (pipelined behind
    /// the COMPRESS command).
    pub fn new(pending: Vec<u8>, slot: DeflateTicket) -> DeflateState {
        DeflateState {
            compress: Compress::new(Compression::new(LEVEL), false),
            decompress: Decompress::new(false),
            pending,
            _slot: slot,
        }
    }
}

/// A stream with deflate on both directions.
pub struct Deflated {
    pub(super) inner: Stream,
    state: DeflateState,
    /// `state.pending[pending_pos..]` is not inflated yet.
    pending_pos: usize,
    /// Compressed output staging.
    out: Vec<u8>,
}

fn corrupt(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("deflate: {e}"))
}

impl Deflated {
    pub fn new(inner: Stream, state: DeflateState) -> Deflated {
        Deflated {
            inner,
            state,
            pending_pos: 0,
            out: Vec::new(),
        }
    }

    /// Takes the state apart from the stream (for a move to another shard).
    pub fn into_parts(mut self) -> (Stream, DeflateState) {
        self.state
            .pending
            .drain(..self.pending_pos.min(self.state.pending.len()));
        (self.inner, self.state)
    }

    /// Whether compressed input is waiting to be inflated.
    pub fn has_pending(&self) -> bool {
        self.pending_pos < self.state.pending.len()
    }

    /// Inflates into `buf`; `Ok(0)` at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.has_pending() {
                let input = self.state.pending.get(self.pending_pos..).unwrap_or(&[]);
                let (in_before, out_before) = (
                    self.state.decompress.total_in(),
                    self.state.decompress.total_out(),
                );
                let status = self
                    .state
                    .decompress
                    .decompress(input, buf, FlushDecompress::None)
                    .map_err(corrupt)?;
                self.pending_pos += (self.state.decompress.total_in() - in_before) as usize;
                let produced = (self.state.decompress.total_out() - out_before) as usize;
                if produced > 0 {
                    return Ok(produced);
                }
                if status == Status::StreamEnd {
                    return Ok(0); // the client ended its deflate stream: nothing follows
                }
            }
            // More compressed input: keep only what is not inflated yet.
            self.state.pending.drain(..self.pending_pos);
            self.pending_pos = 0;
            let have = self.state.pending.len();
            if have >= COMPRESSED_PENDING_MAX {
                return Err(corrupt("input does not inflate"));
            }
            self.state.pending.resize(have + COMPRESSED_READ_BYTES, 0);
            let free = self.state.pending.get_mut(have..).unwrap_or(&mut []);
            let n = self.inner.read(free).await?;
            self.state.pending.truncate(have + n);
            if n == 0 {
                return Ok(0);
            }
        }
    }

    /// Waits until input can be read (compressed bytes are waiting, or the stream has
    /// some).
    pub async fn readable(&mut self) -> io::Result<()> {
        if self.has_pending() {
            return Ok(());
        }
        self.inner.readable().await
    }

    /// Deflates `buf`, sends it, and flushes so the client can inflate all of it.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        for chunk in buf.chunks(PLAIN_CHUNK_BYTES) {
            deflate_into(
                &mut self.state.compress,
                chunk,
                &mut self.out,
                FlushCompress::None,
            )?;
            if self.out.len() >= PLAIN_CHUNK_BYTES {
                self.inner.write_all(&self.out).await?;
                self.out.clear();
            }
        }
        deflate_into(
            &mut self.state.compress,
            &[],
            &mut self.out,
            FlushCompress::Sync,
        )?;
        let result = self.inner.write_all(&self.out).await;
        self.out.clear();
        result
    }

    /// Gives back staging memory kept from a large write.
    pub fn trim(&mut self, keep: usize) {
        if self.out.capacity() > keep {
            self.out = Vec::new();
        }
        if self.state.pending.capacity() > 2 * COMPRESSED_READ_BYTES && !self.has_pending() {
            self.state.pending = Vec::new();
            self.pending_pos = 0;
        }
    }
}

/// Deflates all of `input` onto `out` with `flush` (growing `out` as needed).
fn deflate_into(
    compress: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> io::Result<()> {
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(16 * 1024);
        }
        let before = compress.total_in();
        compress.compress_vec(input, out, flush).map_err(corrupt)?;
        let used = (compress.total_in() - before) as usize;
        input = input.get(used..).unwrap_or(&[]);
        // Room left in `out` means the compressor had nothing more to give.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_flushed_output_inflates_whole() {
        let mut c = Compress::new(Compression::new(LEVEL), false);
        let text = b"* 1 FETCH (BODY[] {5}\r\nhello)\r\n".repeat(5000);
        let mut out = Vec::new();
        deflate_into(&mut c, &text, &mut out, FlushCompress::None).expect("deflate");
        deflate_into(&mut c, &[], &mut out, FlushCompress::Sync).expect("flush");
        assert!(out.len() < text.len() / 10, "{}", out.len());
        let mut d = Decompress::new(false);
        let mut back = Vec::with_capacity(text.len() + 16);
        d.decompress_vec(&out, &mut back, FlushDecompress::Sync)
            .expect("inflate");
        assert_eq!(back, text);
    }
}
