//! The workspace's own binaries as running processes: [`Ingest`] and
//! [`Processor`] (long-running, ready when they say so), the provider
//! simulator and one-shot `processors` commands run to completion, and
//! what they expose (metrics, JSON logs).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::process::{binary, die_with_parent, signal};

/// A running `ingest` process.
pub struct Ingest {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http`, or `https` when it serves TLS (`server.tls`).
    scheme: &'static str,
    /// The process.
    child: Option<Child>,
    /// Holds the config file and the log.
    dir: tempfile::TempDir,
}

/// Writes `config` to `NAME.toml` in a new temporary folder, starts
/// `NAME SUBCOMMAND --config FILE` with `log` and `env` added and its stderr
/// in `NAME.log` there, and waits for its first stdout line, which must
/// start with `ready`: answers the child, the folder and the rest of that
/// line (the address it serves).
fn start_service(
    name: &str,
    subcommand: &str,
    log: (&str, &str),
    config: &str,
    env: &[(&str, &str)],
    ready: &str,
) -> (Child, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("writing config");
    let log_path = dir.path().join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(binary(name));
    cmd.arg(subcommand)
        .arg("--config")
        .arg(&path)
        .env(log.0, log.1)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading {name} stdout: {e}"));
    let Some(rest) = line.trim().strip_prefix(ready) else {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("{name} did not start: {line:?}\n{log}");
    };
    let rest = rest.to_string();
    (child, dir, rest)
}

impl Ingest {
    /// Writes `config` to a file, starts `ingest serve` with `env` added, and
    /// waits for its "listening on" line.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Ingest {
        Self::start_as("http", config, env)
    }

    /// Like [`Ingest::start`], for a config with `server.tls`: waits for
    /// its "listening on https://" line.
    pub fn start_tls(config: &str, env: &[(&str, &str)]) -> Ingest {
        Self::start_as("https", config, env)
    }

    fn start_as(scheme: &'static str, config: &str, env: &[(&str, &str)]) -> Ingest {
        let (child, dir, url) = start_service(
            "ingest",
            "serve",
            ("INGEST_LOG", "info,librdkafka=error"),
            config,
            env,
            &format!("listening on {scheme}://"),
        );
        let addr = url.parse().expect("listen address");
        Ingest {
            addr,
            scheme,
            child: Some(child),
            dir,
        }
    }

    /// `http://addr/path` (`https://` with TLS).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Waits until `/readyz` answers 200 to `client` (one that trusts the
    /// test CA, when ingest serves TLS).
    pub async fn wait_ready_with(&self, client: &reqwest::Client) {
        ready_with(
            client,
            &self.url("/readyz"),
            Duration::from_secs(30),
            "ingest",
            || self.log(),
        )
        .await;
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        ready_within(
            &self.url("/readyz"),
            Duration::from_secs(30),
            "ingest",
            || self.log(),
        )
        .await;
    }

    /// Its process id, while it runs (to read `/proc/PID/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            signal(c, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit (after [`Ingest::terminate`]).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("ingest is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for ingest") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ingest did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ingest.log")).unwrap_or_default()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one run of the provider simulator reported (`ingest send --json`).
#[derive(Debug, Clone)]
pub struct SimulatorReport {
    /// Requests sent, duplicates included.
    pub sent: u64,
    /// Requests answered 2xx.
    pub acknowledged: u64,
    /// Distinct event ids answered 2xx at least once.
    pub distinct_acknowledged: u64,
    /// Requests answered otherwise, by status (`"0"`: no answer).
    pub refused: std::collections::BTreeMap<String, u64>,
}

/// Runs the real provider simulator, `ingest send --json ARGS...`, signing
/// with `secret`, to completion (the test fails if it takes longer than
/// `timeout`). Blocking: call it from `spawn_blocking`.
pub fn simulate(url: &str, secret: &str, args: &[&str], timeout: Duration) -> SimulatorReport {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(binary("ingest"));
    cmd.args([
        "send",
        "--json",
        "--url",
        url,
        "--secret-env",
        "E2E_SIMULATOR_SECRET",
    ])
    .args(args)
    .env("E2E_SIMULATOR_SECRET", secret)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out).expect("stdout file"))
    .stderr(std::fs::File::create(&err).expect("stderr file"));
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("starting ingest send");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for ingest send") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ingest send {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success(),
        "ingest send {args:?} failed ({status}): {stdout}{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the JSON report");
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    SimulatorReport {
        sent: n("sent"),
        acknowledged: n("acknowledged"),
        distinct_acknowledged: n("distinct_acknowledged"),
        refused: v["refused"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A running `processors run`, killed when dropped.
pub struct Processor {
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Processor {
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes `config` to a file, starts `processors run`, and waits for its
    /// "metrics on" line.
    pub fn start(config: &str) -> Processor {
        Self::start_with_env(config, &[])
    }

    /// [`Processor::start`] with environment variables added.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Processor {
        let (child, dir, url) = start_service(
            "processors",
            "run",
            ("PROCESSORS_LOG", "info,librdkafka=error,sink=warn"),
            config,
            env,
            "metrics on http://",
        );
        Processor {
            metrics_addr: url.parse().expect("metrics address"),
            child: Some(child),
            dir,
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits (bounded) for exit.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("processors is running");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for processors") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "processors did not exit within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sum of a metric's samples (all label values), 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let Ok(r) = reqwest::get(&url).await else {
            return 0.0;
        };
        metric_sum(&r.text().await.unwrap_or_default(), name, &[])
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("processors.log")).unwrap_or_default()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The JSON objects of a log written with `[log] format = "json"` (other
/// lines are skipped).
pub fn json_log_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object)
        .collect()
}

/// The sum of the samples of metric `name` in a `/metrics` scrape whose
/// labels include every `(label, value)` of `labels` (all samples when
/// empty); 0 if there is none. `name` is a sample's name, so a
/// histogram's `_sum` and `_count` are read by those names.
pub fn metric_sum(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Scrapes `http://addr/metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scraping /metrics")
        .text()
        .await
        .expect("reading /metrics")
}

/// What a finished one-shot command printed.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `processors ARGS...` to completion (killed, and the test failed, if
/// it takes longer than `timeout`: a hang is a bug).
pub fn run_processors(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(binary("processors"));
    cmd.args(args)
        .env("PROCESSORS_LOG", "warn,librdkafka=off")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("starting processors");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for processors") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "processors {args:?} did not finish within {timeout:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// A running `venues` service (the live venue view).
pub struct Venues {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Venues {
    /// Writes `config` to a file, starts `venues run` with `env` added,
    /// and waits for its "listening on" line.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Venues {
        let (child, dir, url) = start_service(
            "venues",
            "run",
            ("VENUES_LOG", "info,librdkafka=error"),
            config,
            env,
            "listening on http://",
        );
        Venues {
            addr: url.parse().expect("venues address"),
            child: Some(child),
            dir,
        }
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `/readyz` answers 200: every changelog partition read
    /// to the end it had at the start.
    pub async fn wait_ready(&self, timeout: Duration) {
        ready_within(&self.url("/readyz"), timeout, "venues", || self.log()).await;
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("venues.log")).unwrap_or_default()
    }
}

impl Drop for Venues {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `readyz` until it answers 200; panics after `timeout` with
/// `name`'s log.
async fn ready_within(readyz: &str, timeout: Duration, name: &str, log: impl Fn() -> String) {
    ready_with(&reqwest::Client::new(), readyz, timeout, name, log).await;
}

/// [`ready_within`] with the client given.
async fn ready_with(
    client: &reqwest::Client,
    readyz: &str,
    timeout: Duration,
    name: &str,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(readyz).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became ready:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn a_metric_is_summed_over_the_label_sets_asked_for() {
        let scrape = "# HELP x_total X.\n# TYPE x_total counter\nx_total{step=\"ledger\",sink=\"a\"} 2\nx_total{step=\"changelog\",sink=\"a\"} 3.5\nx_total_more 100\ny 7\n";
        assert_eq!(metric_sum(scrape, "x_total", &[]), 5.5);
        assert_eq!(metric_sum(scrape, "x_total", &[("step", "ledger")]), 2.0);
        assert_eq!(
            metric_sum(scrape, "x_total", &[("step", "changelog"), ("sink", "a")]),
            3.5
        );
        assert_eq!(metric_sum(scrape, "x_total", &[("step", "dedupe")]), 0.0);
        assert_eq!(metric_sum(scrape, "y", &[]), 7.0);
        assert_eq!(metric_sum(scrape, "absent", &[]), 0.0);
    }
}

/// A running `ingest poll`, killed when dropped.
pub struct Poller {
    /// Where its `/metrics` is served.
    pub metrics_addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Poller {
    /// Writes `config` (an ingest config with `poll` tables) to a file,
    /// starts `ingest poll` with `env` added, and waits for its "poller
    /// metrics on" line.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Poller {
        let (child, dir, url) = start_service(
            "ingest",
            "poll",
            ("INGEST_LOG", "info,librdkafka=error"),
            config,
            env,
            "poller metrics on http://",
        );
        Poller {
            metrics_addr: url.parse().expect("metrics address"),
            child: Some(child),
            dir,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The sum of a metric's samples with these labels.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&scrape(self.metrics_addr).await, name, labels)
    }

    /// Sends SIGTERM and waits (bounded) for exit.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the poller is running");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the poller") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the poller did not exit within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ingest.log")).unwrap_or_default()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The provider simulator with its REST history API
/// (`ingest send --api-listen`), running until it has sent everything and
/// then serving the API until dropped.
pub struct Provider {
    /// Base URL of the API, `http://ADDR`.
    pub api: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// One API request as the provider recorded it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ApiRequest {
    /// Arrival, Unix milliseconds.
    pub at_ms: i64,
    /// Status answered.
    pub status: u16,
    /// Path and query.
    pub uri: String,
}

/// What `/_sim/stats` answers.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProviderStats {
    /// Events generated.
    pub recorded: usize,
    /// Webhooks lost on purpose.
    pub lost: u64,
    /// Whether every event was generated.
    pub done: bool,
    /// The ids of the lost webhooks' events.
    #[serde(default)]
    pub lost_ids: Vec<String>,
    /// Those the provider's history forgot too.
    #[serde(default)]
    pub forgotten_ids: Vec<String>,
    /// Every API request.
    pub requests: Vec<ApiRequest>,
}

impl Provider {
    /// Starts `ingest send --api-listen 127.0.0.1:0 ARGS...` sending to
    /// `url` signed with `secret`, the API guarded by `token`; waits for
    /// its "api on" line.
    pub fn start(url: &str, secret: &str, token: &str, args: &[&str]) -> Provider {
        let dir = tempfile::tempdir().expect("temporary folder");
        let err = dir.path().join("send.log");
        let mut cmd = Command::new(binary("ingest"));
        cmd.args(["send", "--url", url, "--secret-env", "E2E_PROVIDER_SECRET"])
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--api-token-env",
                "E2E_PROVIDER_TOKEN",
            ])
            .args(["--api-linger", "1h"])
            .args(args)
            .env("E2E_PROVIDER_SECRET", secret)
            .env("E2E_PROVIDER_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("log file"));
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting ingest send");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("reading ingest send's stdout");
        // Keep reading: the report comes at the end, and a closed pipe
        // would end the process.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let Some(addr) = line.trim().strip_prefix("api on ") else {
            panic!(
                "ingest send did not serve its API: {line:?}\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        };
        Provider {
            api: addr.to_string(),
            child: Some(child),
            dir,
        }
    }

    /// What the provider has recorded so far.
    pub async fn stats(&self) -> ProviderStats {
        reqwest::get(format!("{}/_sim/stats", self.api))
            .await
            .expect("asking the provider's stats")
            .json()
            .await
            .expect("the provider's stats")
    }

    /// Waits (bounded) until every event was generated; answers the stats.
    pub async fn wait_done(&self, within: Duration) -> ProviderStats {
        let deadline = Instant::now() + within;
        loop {
            let s = self.stats().await;
            if s.done {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the provider did not finish within {within:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("send.log")).unwrap_or_default()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
