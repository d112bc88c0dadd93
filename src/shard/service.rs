//! The service manager's readiness protocol (systemd's `sd_notify`): one datagram to
//! `$NOTIFY_SOCKET` per change of state — `READY=1` once every shard listens,
//! `STOPPING=1` when a graceful shutdown begins — for `Type=notify` units
//! (`contrib/systemd/shardmail.service`). Does nothing when the variable is unset (not
//! started by systemd); never blocks a shard (a datagram, sent non-blocking).

use std::os::unix::net::UnixDatagram;

/// Tells the service manager `state` (`KEY=VALUE` lines), if one is listening.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        socket.set_nonblocking(true)?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): `@name`.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot tell the service manager (NOTIFY_SOCKET) our state");
    }
}
