//! Free space on the data directory's filesystem, against `store.reserve_free_bytes`.
//!
//! New mail (deliveries, APPEND, COPY) is refused as a temporary condition once the
//! free space would drop below the reserve, so that expunges, flag changes and the
//! store's own housekeeping — which need a little space to record — still work on a
//! nearly full disk, and so that delivery resumes by itself once space returns. The
//! filesystem is asked (statvfs) at most every `RECHECK_INTERVAL`, or sooner when the
//! estimate (last answer minus what was written since) nears the reserve. Shard-local.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StoreError;
use crate::config::Reserve;

/// How stale the cached answer may be while far from the reserve.
const RECHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Within this of the reserve, every check asks the filesystem.
const CLOSE_BYTES: u64 = 64 << 20;

#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: Reserve,
    /// When the filesystem was last asked, its free bytes then and its size.
    checked: Cell<Option<(Instant, u64, u64)>>,
    /// Bytes appended since the last check.
    written: Cell<u64>,
}

/// Free and total bytes of the filesystem holding `dir`.
pub fn statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: zeroed is a valid `statvfs` (plain integers); statvfs fills it in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a writable statvfs, both
    // alive for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * block, st.f_blocks as u64 * block))
}

impl DiskSpace {
    pub fn new(dir: &Path, reserve: Reserve) -> DiskSpace {
        DiskSpace {
            dir: dir.to_path_buf(),
            reserve,
            checked: Cell::new(None),
            written: Cell::new(0),
        }
    }

    /// `bytes` were appended.
    pub fn wrote(&self, bytes: u64) {
        self.written.set(self.written.get().saturating_add(bytes));
    }

    /// May `incoming` more bytes of new mail be written now?
    pub fn admit(&self, incoming: u64) -> Result<(), StoreError> {
        if self.reserve == Reserve::Bytes(0) {
            return Ok(());
        }
        let now = Instant::now();
        let (mut free, mut total) = match self.checked.get() {
            Some((_, free, total)) => (free.saturating_sub(self.written.get()), total),
            None => (0, 0),
        };
        let reserve = self.reserve.bytes_for(total);
        let stale = self
            .checked
            .get()
            .is_none_or(|(at, _, _)| now.duration_since(at) > RECHECK_INTERVAL);
        if stale || free < reserve + incoming + CLOSE_BYTES {
            match statvfs(&self.dir) {
                Ok((f, t)) => {
                    (free, total) = (f, t);
                    self.checked.set(Some((now, f, t)));
                    self.written.set(0);
                }
                // Cannot tell: let the write itself find out.
                Err(_) => return Ok(()),
            }
        }
        let reserve = self.reserve.bytes_for(total);
        if free < reserve.saturating_add(incoming) {
            return Err(StoreError::NoSpace(format!(
                "{}: {} MiB free, store.reserve_free_bytes keeps {} MiB",
                self.dir.display(),
                free >> 20,
                reserve >> 20
            )));
        }
        Ok(())
    }
}
