//! Client shards and line-oriented async IO for the load tester.
//!
//! [`run_on_shards`] starts one glommio executor per client shard (`--shards`) and
//! spreads the connections over them; each connection is a task, so thousands of
//! connections cost no threads and no context switches between them. [`Client`] reads
//! lines and exact byte counts from a buffered glommio TCP stream and writes to it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use glommio::net::TcpStream;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

/// io_uring registered memory per client shard (glommio needs RLIMIT_MEMLOCK for it).
const IO_MEMORY: usize = 512 * 1024;
const SPIN_US: u64 = 50;

/// Runs `task(connection)` for every connection in `0..connections`, spread over
/// `shards` glommio executors, and waits for all of them.
pub fn run_on_shards<F, Fut>(shards: usize, connections: usize, task: F) -> Result<(), String>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let shards = shards.clamp(1, connections.max(1));
    let next_shard = Arc::new(AtomicUsize::new(0));
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(shards))
        .name("load")
        .io_memory(IO_MEMORY)
        .spin_before_park(Duration::from_micros(SPIN_US))
        .on_all_shards(move || {
            let (task, next_shard) = (task.clone(), next_shard.clone());
            async move {
                let me = next_shard.fetch_add(1, Ordering::Relaxed);
                let tasks: Vec<_> = (me..connections)
                    .step_by(shards)
                    .map(|c| glommio::spawn_local(task(c)))
                    .collect();
                for t in tasks {
                    t.await;
                }
            }
        })
        .map_err(|e| {
            format!("cannot start client shards: {e} (glommio needs RLIMIT_MEMLOCK >= 512 KiB per shard: ulimit -l)")
        })?;
    handles.join_all().into_iter().try_for_each(|r| {
        r.map(|_| ())
            .map_err(|e| format!("client shard failed: {e}"))
    })
}

/// A connection with buffered reads.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(server: &str) -> Result<Client, String> {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|e| format!("connect: {}", kind(&std::io::Error::from(e))))?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        Ok(Client {
            stream: BufReader::with_capacity(256 * 1024, stream),
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s = self.stream.get_mut();
        s.write_all(bytes)
            .await
            .map_err(|e| format!("write: {}", kind(&e)))?;
        s.flush().await.map_err(|e| format!("write: {}", kind(&e)))
    }

    /// Reads one line (LF included) into `line`, replacing its contents; an empty line
    /// means the server closed the connection.
    pub async fn read_line(&mut self, line: &mut Vec<u8>) -> Result<(), String> {
        line.clear();
        self.stream
            .read_until(b'\n', line)
            .await
            .map_err(|e| format!("read: {}", kind(&e)))?;
        if line.is_empty() {
            return Err("connection closed".into());
        }
        Ok(())
    }

    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.stream
            .read_exact(buf)
            .await
            .map_err(|e| format!("read: {}", kind(&e)))
    }
}

/// Error kinds without addresses or numbers, so errors group by kind in the report.
fn kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}
