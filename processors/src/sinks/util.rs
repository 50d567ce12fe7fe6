//! What more than one sink needs, written once: `Retry-After` parsing and
//! advisory file locks.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `Retry-After` in seconds, when present and sane (the HTTP-date form is
/// not used by the destinations we talk to and is ignored).
pub fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// An exclusive advisory lock on a file, released on drop (and by the
/// kernel if the process dies).
/// The caller keeps the file open while the lock lives.
pub struct Flock(std::os::fd::RawFd);

impl Flock {
    /// Waits for the lock.
    pub fn exclusive(file: &File) -> std::io::Result<Self> {
        // SAFETY: flock on a valid, open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            Ok(Flock(file.as_raw_fd()))
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is still open (declared after the file, so
        // dropped before it); unlocking cannot fail in a way we could handle.
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
    }
}

/// An exclusive, non-blocking `flock`, never released before the process
/// ends (the kernel releases it when the process dies): answers whether it
/// was taken.
pub fn try_flock(file: &File) -> bool {
    // SAFETY: flock on a valid, open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
