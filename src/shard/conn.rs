//! A connection's byte stream (plain or TLS) and its bounded input buffer.
//!
//! The only place that reads and writes sockets. TLS is futures-rustls over glommio's
//! `TcpStream`; STARTTLS upgrades the same stream in place. Shard-local, `!Send`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

/// Plain or TLS; `Upgrading` only while STARTTLS runs.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Upgrading,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Plain",
            Stream::Tls(_) => "Tls",
            Stream::Upgrading => "Upgrading",
        })
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream lost during TLS upgrade",
    )
}

impl Stream {
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Upgrading => Err(gone()),
        }
    }

    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Stream::Upgrading => Err(gone()),
        }
    }

    /// Runs the server side of a TLS handshake on a plain stream (STARTTLS or an
    /// implicit-TLS port), bounded by `limit`.
    pub async fn upgrade(
        &mut self,
        tls: &Arc<rustls::ServerConfig>,
        limit: Duration,
    ) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Upgrading) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "already TLS"));
        };
        let accept = TlsAcceptor::from(tls.clone()).accept(tcp);
        let tls_stream = with_timeout(limit, accept).await??;
        *self = Stream::Tls(Box::new(tls_stream));
        Ok(())
    }

    pub async fn close(&mut self) {
        match self {
            Stream::Plain(s) => {
                let _ = s.close().await;
            }
            Stream::Tls(s) => {
                let _ = s.close().await;
            }
            Stream::Upgrading => {}
        }
    }
}

/// `Err(TimedOut)` if `fut` does not finish within `limit`.
pub async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> io::Result<T> {
    futures_lite::future::or(async { Ok(fut.await) }, async {
        glommio::timer::Timer::new(limit).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    })
    .await
}

/// A fixed-capacity input buffer: protocol code sees `data()`, consumes a prefix.
#[derive(Debug)]
pub struct InputBuffer {
    bytes: Vec<u8>,
    len: usize,
}

impl InputBuffer {
    pub fn new(capacity: usize) -> InputBuffer {
        InputBuffer {
            bytes: vec![0; capacity],
            len: 0,
        }
    }

    pub fn data(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.bytes.len()
    }

    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.bytes.copy_within(n..self.len, 0);
        self.len -= n;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Reads once from `stream` into the free space; `Ok(0)` is end of stream.
    pub async fn fill(&mut self, stream: &mut Stream) -> io::Result<usize> {
        let free = self.bytes.get_mut(self.len..).unwrap_or(&mut []);
        if free.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "input buffer full",
            ));
        }
        let n = stream.read(free).await?;
        self.len += n;
        Ok(n)
    }
}
