//! Each binary's tokio runtime, its worker count decided in one place:
//! the binary's own setting (ingest's `server.worker_threads`), else the
//! `TOKIO_WORKER_THREADS` environment variable, else one worker per CPU
//! the process may use (its affinity mask and its cgroup's CPU quota, so a
//! Kubernetes pod limited to one CPU gets one worker).
//!
//! tokio reads `TOKIO_WORKER_THREADS` itself only when no count is given,
//! and panics on a malformed value; here the count is always given, and a
//! malformed value is an error naming the variable and its rule.

use std::ffi::OsString;
use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// The environment variable read when the binary sets no worker count.
pub const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// The most worker threads any setting may ask for.
pub const MAX_WORKER_THREADS: usize = 256;

/// The worker count from `configured` (already validated by its config),
/// else from the environment variable's value `env`, else `cpus`.
pub fn worker_threads(
    configured: Option<usize>,
    env: Option<OsString>,
    cpus: usize,
) -> Result<usize, String> {
    if let Some(n) = configured {
        return Ok(n);
    }
    let Some(value) = env else {
        return Ok(cpus.max(1));
    };
    let rule = format!("is not a whole number from 1 to {MAX_WORKER_THREADS}");
    let Some(text) = value.to_str() else {
        return Err(format!("{WORKER_THREADS_ENV}: {value:?} {rule}"));
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("{WORKER_THREADS_ENV}: {text:?} {rule}")),
    }
}

/// A multi-threaded runtime with timers and I/O, its worker count as
/// [`worker_threads`] decides from `configured`, the environment and the
/// CPUs this process may use; the reason, naming what is wrong, if not.
pub fn build(configured: Option<usize>) -> Result<Runtime, String> {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let workers = worker_threads(configured, std::env::var_os(WORKER_THREADS_ENV), cpus)?;
    Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime with {workers} workers: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_wins_then_the_environment_then_the_cpus() {
        assert_eq!(worker_threads(Some(3), Some("5".into()), 8), Ok(3));
        assert_eq!(worker_threads(None, Some("5".into()), 8), Ok(5));
        assert_eq!(worker_threads(None, Some(" 2 ".into()), 8), Ok(2));
        assert_eq!(worker_threads(None, None, 8), Ok(8));
        assert_eq!(worker_threads(None, None, 0), Ok(1));
    }

    #[test]
    fn a_malformed_environment_value_is_named_with_its_rule() {
        for bad in [
            "",
            "abc",
            "0",
            "-1",
            "1.5",
            "257",
            "99999999999999999999999",
        ] {
            let e = worker_threads(None, Some(bad.into()), 2).unwrap_err();
            assert_eq!(
                e,
                format!("TOKIO_WORKER_THREADS: {bad:?} is not a whole number from 1 to 256")
            );
        }
        assert_eq!(
            worker_threads(None, Some("256".into()), 2),
            Ok(MAX_WORKER_THREADS)
        );
    }

    #[test]
    fn the_runtime_has_the_workers_it_was_given() {
        let rt = build(Some(3)).unwrap();
        assert_eq!(rt.metrics().num_workers(), 3);
    }
}
