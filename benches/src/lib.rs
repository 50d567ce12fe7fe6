//! Benchmarks for the pipeline. Speed is measured here, never asserted in
//! tests; the figures and the method are in BENCHMARKS.md.
//!
//! - `benches/micro.rs` (criterion): every signature scheme on 1 KiB and
//!   16 KiB bodies, envelope encode/decode, guest-WiFi normalisation,
//!   reorder, dedupe lookups and inserts, offset tracking.
//! - `benches/processors.rs`: records per second through the processors'
//!   runtime (broker real) with the null sink and the analytics sinks
//!   (embedded SQLite, PostgreSQL), against a bare consumer's ceiling.
//! - `benches/venue_latency.rs`: the live venue view's latency, from
//!   ingest's `200` to the change on 100 Server-Sent-Events clients of
//!   `venues`, at half the pipeline's maximum rate (the release binaries
//!   on a real broker).
//! - `src/bin/load.rs`: the end-to-end load benchmark
//!   (`cargo run --release -p pipeline-benches --bin load`): ingest on a
//!   real broker, against the raw producer's ceiling of the same run.
//!
//! This library holds what they share: the benchmark's guest-WiFi body,
//! latency percentiles, a process's CPU time, the machine description and
//! the JSON results.

use std::path::PathBuf;

/// A guest-WiFi platform event (`device_connected`) of about `len` bytes:
/// the documented fields, padded with a device user agent.
pub fn guest_wifi_body(id: &str, venue: &str, sequence: u64, len: usize) -> Vec<u8> {
    let mut v = serde_json::json!({
        "id": id,
        "type": "device_connected",
        "sequence": sequence,
        "occurred_at": "2026-11-22T18:03:11.123Z",
        "venue": {"id": venue, "name": "Airport Hotel"},
        "zone": "lobby",
        "device": {"id": format!("dev_{sequence}"), "user_agent": ""},
        "guest": {"id": "g_77", "email": "a@example.com", "first_name": "Ana", "vip": false}
    });
    let short = v.to_string().len();
    v["device"]["user_agent"] = "x".repeat(len.saturating_sub(short)).into();
    v.to_string().into_bytes()
}

/// Latency samples in microseconds, summarised as percentiles.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    /// Every sample, unsorted until [`Latencies::summary`].
    pub micros: Vec<u32>,
}

/// Percentiles of a [`Latencies`], in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latencies {
    /// Adds a sample.
    pub fn record(&mut self, d: std::time::Duration) {
        self.micros
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    /// Sorts the samples and reads the percentiles (nearest rank).
    pub fn summary(&mut self) -> Summary {
        self.micros.sort_unstable();
        let n = self.micros.len();
        if n == 0 {
            return Summary::default();
        }
        let at = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            f64::from(self.micros[rank - 1]) / 1000.0
        };
        Summary {
            count: n,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: f64::from(self.micros[n - 1]) / 1000.0,
        }
    }
}

impl Summary {
    /// As a JSON object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "max_ms": self.max_ms,
        })
    }
}

/// The machine the figures come from: CPU model, cores, memory, kernel.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
        "loadavg_at_start": loadavg.trim(),
    })
}

/// CPU time (user + system, all threads) process `pid` has used so far,
/// in seconds, from `/proc/PID/stat`; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is 3rd,
    // utime the 14th and stime the 15th of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// Puts every thread of this process under `SCHED_BATCH`; threads they
/// start later inherit it. The load generator stands for senders on
/// other machines: under the default policy the answers it is woken for
/// preempt the receiver on the shared cores (1-2 preemptions of ingest in
/// 10 requests at its maximum, BENCHMARKS.md step 13), which no sender
/// elsewhere causes. A batch thread is not scheduled less, only never by
/// preempting on its wake-up. Answers how many threads were changed.
pub fn stand_aside() -> std::io::Result<usize> {
    let mut n = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let tid: libc::pid_t = match task?.file_name().to_str().and_then(|t| t.parse().ok()) {
            Some(tid) => tid,
            None => continue,
        };
        match set_policy(tid, libc::SCHED_BATCH) {
            Ok(()) => n += 1,
            // The thread ended between the listing and the call.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// For a child's `pre_exec`: back to the default policy, so the processes
/// under test never inherit [`stand_aside`]'s.
pub fn default_scheduling() -> std::io::Result<()> {
    set_policy(0, libc::SCHED_OTHER)
}

/// Sets thread `tid`'s policy (0: the calling thread), priority 0.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives through the call; the call is async-signal-safe.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The scheduling policy of process or thread `pid` (field 41 of
/// `/proc/PID/stat`: 0 `SCHED_OTHER`, 3 `SCHED_BATCH`).
pub fn scheduling_policy(stat: &str) -> Option<i32> {
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(38)?
        .parse()
        .ok()
}

/// The machine's CPU time so far, all cores, in clock ticks: `(steal,
/// total)`, where steal is the time the hypervisor ran something else
/// while this machine's CPUs had work. `None` where `/proc/stat` is
/// missing or unreadable.
pub fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// [`machine_ticks`] from the text of `/proc/stat`: its first line is
/// `cpu user nice system idle iowait irq softirq steal ...`; guest time is
/// counted inside user time already, so the total is the first eight.
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let mut fields = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace();
    let mut ticks = [0u64; 8];
    for t in &mut ticks {
        *t = fields.next()?.parse().ok()?;
    }
    Some((ticks[7], ticks.iter().sum()))
}

/// Share of the machine's CPU time the hypervisor took between two
/// [`machine_ticks`] samples (0 when nothing elapsed).
pub fn steal_share(start: (u64, u64), end: (u64, u64)) -> f64 {
    let total = end.1.saturating_sub(start.1);
    if total == 0 {
        return 0.0;
    }
    end.0.saturating_sub(start.0) as f64 / total as f64
}

/// `target/bench-results` of this workspace (created).
pub fn results_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Writes `value` to `target/bench-results/NAME.json` and returns the path.
pub fn write_results(name: &str, value: &serde_json::Value) -> std::io::Result<PathBuf> {
    let path = results_dir().join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// Seconds since the Unix epoch, for the results' timestamp.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut l = Latencies {
            micros: (1..=1000).rev().collect(),
        };
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_ms, 0.5);
        assert_eq!(s.p99_ms, 0.99);
        assert_eq!(s.p999_ms, 0.999);
        assert_eq!(s.max_ms, 1.0);
    }

    #[test]
    fn a_running_process_has_a_cpu_time_and_a_gone_one_none() {
        assert!(cpu_seconds(std::process::id()).is_some_and(|s| s >= 0.0));
        assert_eq!(cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn steal_is_read_from_the_eighth_column_of_the_cpu_line() {
        let stat = "cpu  482979 0 54156 6172401 3891 0 5249 29517 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let total = 482_979 + 54_156 + 6_172_401 + 3_891 + 5_249 + 29_517;
        assert_eq!(parse_machine_ticks(stat), Some((29_517, total)));
        assert_eq!(parse_machine_ticks("cpu  1 2 3\n"), None, "too few columns");
        assert_eq!(
            parse_machine_ticks("intr 1 2 3 4 5 6 7 8\n"),
            None,
            "not the cpu line"
        );
        assert!(machine_ticks().is_some_and(|(steal, total)| steal <= total && total > 0));
    }

    #[test]
    fn steal_share_is_stolen_ticks_over_all_ticks_between_samples() {
        assert_eq!(steal_share((100, 1_000), (150, 1_200)), 0.25);
        assert_eq!(steal_share((100, 1_000), (100, 1_000)), 0.0);
    }

    fn own_policy() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        scheduling_policy(&stat).expect("policy")
    }

    #[test]
    fn a_batch_thread_passes_its_policy_on_to_its_threads_but_not_to_reset_children() {
        use std::os::unix::process::CommandExt;
        std::thread::spawn(|| {
            assert_eq!(own_policy(), libc::SCHED_OTHER);
            set_policy(0, libc::SCHED_BATCH).expect("batch");
            assert_eq!(own_policy(), libc::SCHED_BATCH);
            let inner = std::thread::spawn(own_policy).join().expect("thread");
            assert_eq!(inner, libc::SCHED_BATCH, "a new thread inherits it");
            let child_policy = |reset: bool| {
                let mut cmd = std::process::Command::new("cat");
                cmd.arg("/proc/self/stat");
                if reset {
                    // SAFETY: only an async-signal-safe system call.
                    unsafe { cmd.pre_exec(default_scheduling) };
                }
                let out = cmd.output().expect("cat");
                scheduling_policy(&String::from_utf8_lossy(&out.stdout)).expect("policy")
            };
            assert_eq!(
                child_policy(false),
                libc::SCHED_BATCH,
                "inherited without the reset"
            );
            assert_eq!(
                child_policy(true),
                libc::SCHED_OTHER,
                "the reset gives the default"
            );
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn the_policy_is_the_39th_field_after_the_command_name() {
        // Fields 3 to 40 (state to rt_priority), then the policy, then more.
        let before: Vec<&str> = std::iter::repeat_n("1", 38).collect();
        let stat = format!("7 (a b) {} 3 0 0", before.join(" "));
        assert_eq!(scheduling_policy(&stat), Some(3));
        let real = std::fs::read_to_string("/proc/self/stat").expect("stat");
        assert_eq!(
            scheduling_policy(&real),
            Some(libc::SCHED_OTHER),
            "this test runs unchanged"
        );
        assert_eq!(scheduling_policy("7 (a) S 1"), None);
    }

    #[test]
    fn the_body_is_padded_to_the_size_asked_and_stays_json() {
        let b = guest_wifi_body("evt-1", "venue-1", 7, 1024);
        assert_eq!(b.len(), 1024);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["venue"]["id"], "venue-1");
    }
}
