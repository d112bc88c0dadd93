//! `listen.metrics`: a minimal HTTP/1.x responder for Prometheus scrapes.
//!
//! `GET /metrics` gathers every shard's snapshot over the mesh and answers the merged
//! text exposition; anything else is 404/405. Requests are bounded (8 KiB, 5 s) and
//! the connection is closed after one answer. No other HTTP is spoken here.

use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpStream;

use super::conn::{with_timeout, InputBuffer, Stream};
use super::{metrics_snapshot, Shard};

const REQUEST_BYTES_MAX: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one scrape on an accepted connection (the accept loop is `listen.rs`).
pub async fn serve_one(shard: &Rc<Shard>, tcp: TcpStream) {
    let mut stream = Stream::Plain(tcp);
    let _ = with_timeout(REQUEST_TIMEOUT, answer(shard, &mut stream)).await;
    stream.close().await;
}

async fn answer(shard: &Rc<Shard>, stream: &mut Stream) {
    let mut input = InputBuffer::new(REQUEST_BYTES_MAX);
    loop {
        if memchr::memmem::find(input.data(), b"\r\n\r\n").is_some() || input.is_full() {
            break;
        }
        match input.fill(stream).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let request_line = input.data().split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut words = request_line.split(|&b| b == b' ');
    let (method, path) = (words.next().unwrap_or(&[]), words.next().unwrap_or(&[]));
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            let mut snapshots = vec![metrics_snapshot(shard)];
            snapshots.extend(shard.mesh.gather_metrics().await);
            (
                "200 OK",
                "text/plain; version=0.0.4",
                crate::metrics::render(&snapshots),
            )
        }
        (b"GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
}
