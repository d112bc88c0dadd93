//! Checks before any executor starts, so failures read as diagnostics, not panics.
//!
//! glommio panics with a misleading message when io_uring is blocked and fails in
//! `make()` when RLIMIT_MEMLOCK is too small (CRATES.md); both are checked here first,
//! with the fix named. Also takes the data directory's lock so two servers never share
//! one store.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;

/// The smallest RLIMIT_MEMLOCK glommio can start with (CRATES.md).
const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;

pub fn check(config: &Config) -> Result<(), String> {
    probe_io_uring()?;
    check_memlock(config)
}

fn probe_io_uring() -> Result<(), String> {
    // io_uring_setup(2) with one entry; a valid fd proves the kernel allows io_uring.
    let mut params = [0u8; 120]; // struct io_uring_params
                                 // SAFETY: io_uring_setup writes at most sizeof(struct io_uring_params) = 120 bytes
                                 // into `params`, which lives for the whole call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: `fd` is a descriptor we just received and own.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(format!(
        "io_uring is not available ({err}). shardmail needs Linux 5.8 or newer with io_uring \
         enabled: check `sysctl kernel.io_uring_disabled` (must be 0), and in a container \
         allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp profile \
         (Docker: --security-opt seccomp=unconfined)"
    ))
}

fn check_memlock(config: &Config) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(()); // cannot tell; let glommio decide
    }
    let wanted = (config.io_memory_bytes as u64 + 256 * 1024) * config.shards as u64;
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < wanted {
        // Raise the soft limit as far as the hard limit allows.
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max.min(wanted.max(lim.rlim_cur)),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < MEMLOCK_BYTES_MIN {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB; io_uring needs at least {} KiB. Raise it with \
             `ulimit -l {}` (or LimitMEMLOCK= in the systemd unit, memlock in \
             /etc/security/limits.conf)",
            lim.rlim_cur / 1024,
            MEMLOCK_BYTES_MIN / 1024,
            wanted / 1024
        ));
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < wanted {
        tracing::warn!(
            memlock_kib = lim.rlim_cur / 1024,
            wanted_kib = wanted / 1024,
            "RLIMIT_MEMLOCK is below server.io_memory x server.shards; io_uring buffers will \
             fall back to unregistered memory (raise `ulimit -l` or lower server.io_memory)"
        );
    }
    Ok(())
}

/// Connections the server can hold: RLIMIT_NOFILE (raised to its hard limit first)
/// minus what the store, the listeners, outbound delivery and housekeeping need.
/// Errors when too few remain to be useful.
pub fn connection_capacity(config: &Config, partitions: u32) -> Result<usize, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        ));
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let files = if lim.rlim_cur == libc::RLIM_INFINITY {
        1 << 20
    } else {
        lim.rlim_cur as usize
    };
    let reserve = open_file_reserve(config, partitions);
    let capacity = files.saturating_sub(reserve);
    if capacity < 64 {
        return Err(format!(
            "RLIMIT_NOFILE is {files}: after {reserve} descriptors for the store, listeners and              outbound delivery, fewer than 64 connections would fit. Raise it (`ulimit -n              65536`, LimitNOFILE= in the systemd unit, nofile in /etc/security/limits.conf)"
        ));
    }
    tracing::info!(
        open_files = files,
        reserved = reserve,
        connections = capacity,
        "connection capacity (RLIMIT_NOFILE minus a reserve for the store and delivery)"
    );
    Ok(capacity)
}

/// Descriptors kept back from connections: three per partition (log writer, reader,
/// appender), every listening socket, outbound connections, a spool file per shard
/// and message in flight, and a margin for DNS, snapshots, users.json and the like.
fn open_file_reserve(config: &Config, partitions: u32) -> usize {
    partitions as usize * 3
        + super::listen::socket_count(config)
        + config.queue.connections_max * config.shards
        + 64 * config.shards
        + 256
}

/// Holds `DATA_DIR/lock` exclusively for the life of the server.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("server.data_dir: cannot create {}: {e}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    // Not truncated before the lock is ours: it names the process that holds it.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("server.data_dir: cannot create {}: {e}", path.display()))?;
    crate::users::flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(|_| {
        format!(
            "another shardmail is already serving {} (it holds {}); stop it or choose \
             another server.data_dir",
            data_dir.display(),
            path.display()
        )
    })?;
    // `shardmail reload` finds the server through this.
    use std::io::Write;
    file.set_len(0)
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(|e| format!("server.data_dir: cannot write {}: {e}", path.display()))?;
    Ok(file)
}

/// The lock file in the data directory, holding the serving process's id.
pub const LOCK_FILE: &str = "lock";

/// The process id of the server serving `data_dir`, or why there is none.
pub fn serving_pid(data_dir: &Path) -> Result<u32, String> {
    let path = data_dir.join(LOCK_FILE);
    let not_serving = || {
        format!(
            "no shardmail is serving {} (start it with `shardmail serve`, or give the \
             --config / --data-dir it runs with)",
            data_dir.display()
        )
    };
    let file = std::fs::File::open(&path).map_err(|_| not_serving())?;
    // A lock we can take is a lock nobody holds: no server runs there.
    if crate::users::flock(&file, libc::LOCK_SH | libc::LOCK_NB).is_ok() {
        return Err(not_serving());
    }
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "{} holds no process id (a server older than this command?); send SIGHUP \
                 to it yourself",
                path.display()
            )
        })
}

/// The file in which a serving server records its configuration.
pub const RUNNING_CONFIG: &str = "running.toml";

/// Writes the running server's configuration (as `check-config` prints it, secrets
/// hidden) to `DATA_DIR/running.toml`, so commands run with other flags (`user add`,
/// `dkim generate`) judge the data directory by the configuration that serves it.
/// Call with the data directory locked.
pub fn record_running_config(data_dir: &Path, effective: &str) -> Result<(), String> {
    let path = data_dir.join(RUNNING_CONFIG);
    let staged = data_dir.join(format!("{RUNNING_CONFIG}.new"));
    let header =
        "# Written by `shardmail serve` at start and on reload: the configuration it runs on.\n";
    std::fs::write(&staged, format!("{header}{effective}\n"))
        .and_then(|_| std::fs::rename(&staged, &path))
        .map_err(|e| format!("server.data_dir: cannot write {}: {e}", path.display()))
}

/// A hint for bind errors on privileged ports.
pub fn bind_hint(addr: &SocketAddr) -> &'static str {
    if addr.port() < 1024 {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE: \
          `setcap cap_net_bind_service=+ep $(which shardmail)`)"
    } else {
        ""
    }
}

/// Turns glommio's executor start-up errors into advice.
pub fn explain_executor_error(e: &str) -> String {
    if e.contains("MemLock") || e.contains("memlock") {
        format!("cannot start shards: {e}. Raise RLIMIT_MEMLOCK (`ulimit -l`) or lower server.io_memory")
    } else {
        format!("cannot start shards: {e}")
    }
}
