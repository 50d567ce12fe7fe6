//! Each binary's async runtime: a malformed `TOKIO_WORKER_THREADS` is a
//! clear error naming the variable and its rule, never a panic (tokio's own
//! reading of it panics), and ingest runs the worker count it is
//! configured with (`server.worker_threads`). Starts nothing but the
//! binaries: each must fail before it reaches a broker.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::process::binary;

/// `bin args` from the workspace root with `env` added, stderr piped.
fn command(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary(bin));
    cmd.args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `bin args` with `env`, kills it past 20 s; its exit code and stderr.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = command(bin, args, env)
        .spawn()
        .expect("starting the binary");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("{bin} {args:?} was still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn a_malformed_worker_count_in_the_environment_is_named_not_a_panic() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "ingest",
            &["serve", "--config", "deploy/config/ingest.local.toml"],
        ),
        (
            "ingest",
            &["poll", "--config", "deploy/config/ingest.local.toml"],
        ),
        (
            "processors",
            &["run", "--config", "deploy/config/processors.local.toml"],
        ),
        (
            "venues",
            &["run", "--config", "deploy/config/venues.local.toml"],
        ),
    ];
    for value in ["abc", "0", "-2", "100000"] {
        for (bin, args) in cases {
            let (code, stderr) = run(
                bin,
                args,
                &[
                    ("TOKIO_WORKER_THREADS", value),
                    ("PURPLE_WEBHOOK_SECRET", "runtime-test-secret"),
                    ("PURPLE_API_TOKEN", "runtime-test-token"),
                    (
                        "INGEST_SOURCES__PURPLE__POLL__URL",
                        "http://127.0.0.1:9/api/v1/events",
                    ),
                    ("INGEST_KAFKA__BROKERS", "127.0.0.1:9"),
                    ("PROCESSORS_KAFKA__BROKERS", "127.0.0.1:9"),
                    ("VENUES_KAFKA__BROKERS", "127.0.0.1:9"),
                ],
            );
            let at = format!("{bin} {args:?} with TOKIO_WORKER_THREADS={value:?}");
            assert!(!stderr.contains("panicked"), "{at} panicked:\n{stderr}");
            assert_eq!(code, Some(1), "{at}: exit code\n{stderr}");
            assert!(
                stderr.contains(&format!(
                    "TOKIO_WORKER_THREADS: {value:?} is not a whole number from 1 to 256"
                )),
                "{at}: the error does not name the variable and its rule:\n{stderr}"
            );
        }
    }
}

/// Starts `ingest serve` on the local config with `env`, no broker
/// reachable, and returns its "listening" log line (it listens before the
/// brokers answer; readiness waits for them), then stops it.
fn ingest_listening_line(env: &[(&str, &str)]) -> String {
    let mut cmd = command(
        "ingest",
        &["serve", "--config", "deploy/config/ingest.local.toml"],
        &[
            ("PURPLE_WEBHOOK_SECRET", "runtime-test-secret"),
            ("INGEST_KAFKA__BROKERS", "127.0.0.1:9"),
            ("INGEST_SERVER__LISTEN", "127.0.0.1:0"),
            ("INGEST_LOG", "info,librdkafka=off"),
        ],
    );
    cmd.env_remove("INGEST_SERVER__ADMIN_LISTEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting ingest");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("listening") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("ingest never logged \"listening\":\n{}", seen.join("\n")))
}

#[test]
fn ingest_runs_the_workers_it_is_configured_with() {
    for (env, want) in [
        (
            &[
                ("INGEST_SERVER__WORKER_THREADS", "3"),
                ("TOKIO_WORKER_THREADS", "5"),
            ][..],
            "workers=3",
        ),
        (&[("TOKIO_WORKER_THREADS", "2")][..], "workers=2"),
        (&[("INGEST_SERVER__WORKER_THREADS", "1")][..], "workers=1"),
    ] {
        let line = ingest_listening_line(env);
        assert!(line.contains(want), "{env:?}: want {want} in {line}");
    }
}
