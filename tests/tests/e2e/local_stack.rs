//! `./deploy/local-stack.sh`, the README's first command, as a user runs
//! it: its topics created by `processors topics apply` (and found as
//! defined on the second start), up with the demo stream (whose lost
//! webhooks `ingest poll` recovers from the simulator's history API),
//! stopped with one
//! SIGTERM, and up again on the same data folder. It builds with the test suite's debug profile
//! (`LOCAL_STACK_PROFILE=debug`) and runs on free ports.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::free_port;

struct Stack {
    child: Child,
    err: std::path::PathBuf,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Stack {
    fn start(data: &Path, run: u32, ports: &[(&str, u16)]) -> Stack {
        let err = data.with_extension(format!("run{run}.err"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("deploy/local-stack.sh"))
            .env("LOCAL_STACK_PROFILE", "debug")
            .env("DATA_DIR", data)
            .env("DEMO_EVENTS", "60")
            .envs(ports.iter().map(|(k, v)| (*k, v.to_string())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        let mut child = cmd.spawn().expect("starting local-stack.sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Stack {
            child,
            err,
            lines,
            seen: Vec::new(),
        }
    }

    /// Lines up to and including the first that starts with `prefix`, and
    /// the `then` lines after it.
    fn until(&mut self, prefix: &str, then: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut found: Option<usize> = None;
        loop {
            if let Some(i) = found
                && self.seen.len() > i + then
            {
                return self.seen[i..=i + then].to_vec();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if found.is_none() && line.starts_with(prefix) {
                        found = Some(self.seen.len());
                    }
                    self.seen.push(line);
                }
                Err(_) => {
                    let err = std::fs::read_to_string(&self.err).unwrap_or_default();
                    let tail: Vec<&str> = err.lines().rev().take(30).collect();
                    panic!(
                        "no line {prefix:?} (+{then}) within {within:?}; its output:\n{}\n--- its last errors:\n{}",
                        self.seen.join("\n"),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                }
            }
        }
    }

    /// SIGTERM to the script: it stops every service it started.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "local-stack.sh did not stop within 90 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn closed(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn the_local_stack_runs_the_demo_stops_on_sigterm_and_starts_again_on_its_data() {
    let data = tempfile::tempdir().expect("temporary folder");
    let ports = [
        ("KAFKA_PORT", free_port()),
        ("INGEST_PORT", free_port()),
        ("VENUES_PORT", free_port()),
        ("PROCESSORS_METRICS_PORT", free_port()),
        ("PROVIDER_API_PORT", free_port()),
        ("POLLER_METRICS_PORT", free_port()),
    ];
    for run in 1..=2 {
        let mut stack = Stack::start(data.path(), run, &ports);
        // The topics, from `processors topics apply`, the poller's from
        // ingest's config: created by the first run, found as defined by
        // the second.
        let topics = stack.until("webhooks.raw (kafka.topic): ", 8, Duration::from_secs(200));
        for line in &topics[..8] {
            let want = if run == 1 { ": created: " } else { ": ok" };
            assert!(line.contains(want), "run {run}: {topics:?}");
        }
        for name in [
            "webhooks.reconcile (kafka.reconcile_topic)",
            "webhooks.poll-cursors (ingest's poller.cursor_topic)",
            "webhooks.unfillable-gaps (ingest's poller.unfillable_topic)",
        ] {
            assert!(
                topics.iter().any(|l| l.starts_with(name)),
                "run {run}: no {name}: {topics:?}"
            );
        }
        assert_eq!(
            topics[8],
            "8 topics: 8 as defined, 0 differing or missing, 0 not fully reported, 0 failed",
            "run {run}"
        );
        let analytics = stack.until("analytics (", 0, Duration::from_secs(200));
        assert!(
            analytics[0].contains(" events, "),
            "run {run}: {}",
            analytics[0]
        );
        // The webhooks the simulator lost on purpose came in through the
        // poller (the second run's events are the first run's, already
        // stored: nothing new to recover).
        let polling = stack.until("polling: ", 0, Duration::from_secs(60));
        let numbers: Vec<u64> = polling[0]
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        let [lost, read, recovered] = numbers[..] else {
            panic!("run {run}: {}", polling[0]);
        };
        assert!(lost > 0, "run {run}: nothing lost: {}", polling[0]);
        if run == 1 {
            // A lost delivery can be a duplicate whose event another
            // delivery brought: what the poller must bring is the events
            // no webhook did, and then the store has all 60.
            assert!(
                recovered >= 1 && read >= recovered,
                "run {run}: {}",
                polling[0]
            );
            assert!(
                analytics[0].contains(": 60 events, "),
                "run {run}: {}",
                analytics[0]
            );
        }
        // The demo's three venues, on the live venue view, each with its
        // day from the embedded analytics store in its own time zone.
        let view = stack.until("live venue view (", 6, Duration::from_secs(60));
        assert!(view[0].contains(": 3 venues"), "run {run}: {view:?}");
        for pair in view[1..].chunks(2) {
            assert!(pair[0].contains(" devices, "), "run {run}: {view:?}");
            assert!(
                pair[1].trim_start().starts_with("today (") && pair[1].contains(" arrivals"),
                "run {run}: no history from the analytics store: {view:?}"
            );
        }
        // The demo's VIP arrivals are logged by the log receiver, but no
        // log line names a guest (the simulator's guests have first names).
        let err = std::fs::read_to_string(&stack.err).unwrap_or_default();
        // (The second run's arrivals are the same guests within their
        // cooldown: not raised again.)
        if run == 1 {
            assert!(err.contains("VipArrival"), "no VIP arrival logged");
        }
        let named: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("VIP guest ") && !l.contains("VIP guest arrived"))
            .collect();
        assert!(
            named.is_empty(),
            "run {run}: a guest named in the log: {named:?}"
        );
        stack.stop();
        for (name, port) in ports {
            assert!(
                closed(port),
                "run {run}: {name} {port} still open after the stop"
            );
        }
    }
}
