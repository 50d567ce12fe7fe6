//! End-to-end test harness.
//!
//! Starts real processes on free loopback ports and stops them when dropped
//! (and, through `PR_SET_PDEATHSIG`, when the test process dies):
//!
//! - [`Broker`]: a tansu broker with sqlite storage in a temporary folder;
//!   can be killed (`SIGKILL`) and restarted on the same port and data.
//! - [`Ingest`]: the `ingest` binary with a generated config; SIGTERM-able.
//! - [`read_topic`]: every record of a topic, read back with rdkafka.
//! - [`purple_signature`] and [`send_purple`]: signed requests as the
//!   guest-WiFi platform sends them.
//! - [`simulate`]: the real provider simulator (`ingest send --json`),
//!   its report parsed; [`rss_kib`]: a process's resident memory.
//!
//! - [`fake_crm::FakeCrm`]: a scripted CRM that records what it applied,
//!   by idempotency key.
//! - [`exposition`]: parses a `/metrics` scrape and judges it against the
//!   naming rules; the metric names in a PromQL expression.
//! - [`json_log_lines`]: a binary's JSON log, line by line.
//! - [`fake_chat::FakeChat`]: a Slack-compatible incoming webhook that
//!   records the messages posted and can be scripted to fail (500, 429,
//!   stalls past the client's timeout, outages).
//! - [`Alertmanager`]: the real `prometheus-alertmanager` from Debian on a
//!   free port, clustering off, storage in a temporary folder.
//!
//! Each test makes its own broker and topic so tests run in parallel.

pub mod exposition;
pub mod fake_chat;
pub mod fake_crm;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sha2::Sha256;

/// A binary of this workspace, from the same build folder as the running
/// test (`target/debug/deps/<test>` -> `target/debug/<name>`), where the test
/// command builds the binaries before running the tests.
pub fn binary(name: &str) -> PathBuf {
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join(name)));
    let path = from_exe.filter(|p| p.is_file()).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name)
    });
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The tansu binary: `TANSU_BIN`, else `tansu` on PATH, else `~/.cargo/bin`.
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("tansu");
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/tansu");
    assert!(
        p.is_file(),
        "tansu not found: install it with `cargo install --locked tansu --version 0.6.0 --features libsql`"
    );
    p
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Spawned children die with the test process.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to a child we own.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A tansu broker on a free loopback port with sqlite storage.
pub struct Broker {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    /// Holds the sqlite file and the log.
    dir: tempfile::TempDir,
    /// The running process, if any.
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut b = Broker {
            port: free_port(),
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("broker log file");
        let mut cmd = Command::new(tansu_binary());
        cmd.arg("broker")
            .arg("--storage-engine")
            // tansu resolves the sqlite path against its working folder.
            .arg("sqlite://tansu.db")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("starting tansu"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's log so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SIGSTOP`: the broker keeps its connections open but answers
    /// nothing, as one stalled by a long pause or a saturated disk does.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal(c, libc::SIGSTOP);
        }
    }

    /// `SIGCONT`: a paused broker carries on where it stopped.
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c, libc::SIGCONT);
        }
    }

    /// Starts again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Creates a topic and waits until its metadata shows every partition.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let res = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .expect("create_topics request");
        for r in res {
            r.expect("topic created");
        }
        let brokers = self.brokers();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .expect("consumer");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(md) = c.fetch_metadata(Some(&name), Duration::from_secs(2))
                    && md
                        .topics()
                        .iter()
                        .any(|t| t.partitions().len() == partitions as usize)
                {
                    return;
                }
                assert!(Instant::now() < deadline, "topic {name} did not appear");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("metadata wait");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition it is in.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Vec<u8>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record in `topic`, read from the start of each partition up to its
/// high watermark.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_topic_blocking(&brokers, &topic))
        .await
        .expect("reader thread")
}

fn read_topic_blocking(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("reader consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))
                .expect("partition offset");
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = std::collections::HashSet::new();
    while done.len() < ends.len() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} did not reach the high watermarks"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let p = msg.partition();
        if msg.offset() + 1 >= ends[&p] {
            done.insert(p);
        }
        out.push(Record {
            partition: p,
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp_ms: msg.timestamp().to_millis(),
        });
    }
    out
}

/// `hex(HMAC-SHA256(secret, body))`, the guest-WiFi platform's signature.
pub fn purple_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A running `ingest` process.
pub struct Ingest {
    /// Where it listens.
    pub addr: SocketAddr,
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
        let (child, dir, url) = start_service(
            "ingest",
            "serve",
            ("INGEST_LOG", "info,librdkafka=error"),
            config,
            env,
            "listening on http://",
        );
        let addr = url.parse().expect("listen address");
        Ingest {
            addr,
            child: Some(child),
            dir,
        }
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ingest never became ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

/// The resident set size of a process in KiB (`VmRSS` in
/// `/proc/PID/status`), `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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

/// A guest-WiFi platform event body, as the platform documents it.
pub fn purple_event(id: &str, venue: &str, sequence: u64) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "type": "device_connected",
        "sequence": sequence,
        "occurred_at": "2026-11-22T18:03:11.123Z",
        "venue": {"id": venue, "name": "Airport Hotel"},
        "zone": "lobby",
        "device": {"id": format!("dev_{sequence}")},
        "guest": {"id": "g_77", "email": "a@example.com", "first_name": "Ana", "vip": sequence % 7 == 0}
    })
    .to_string()
    .into_bytes()
}

/// An ingest config for one `purple` source signed with secrets read from
/// the named environment variables (`id = env`).
pub fn purple_config(brokers: &str, topic: &str, secrets: &[(&str, &str)], extra: &str) -> String {
    let secrets = secrets
        .iter()
        .map(|(id, env)| format!("{{ id = \"{id}\", env = \"{env}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra}

[kafka]
brokers = "{brokers}"
topic = "{topic}"
# tansu 0.6 cannot take an idempotent epoch bump (see ingest's config).
delivery_timeout = "30s"

[sources.purple]
max_body_bytes = 65536
ordering_key = {{ pointer = "/venue/id" }}
sequence = {{ pointer = "/sequence" }}
signature = {{ scheme = "purple", secrets = [{secrets}] }}
"#
    )
}

/// What one webhook request got back.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// HTTP status, or 0 when there was no response (connection refused or
    /// reset).
    pub status: u16,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// The JSON body.
    pub body: serde_json::Value,
    /// How long the request took.
    pub elapsed: Duration,
}

/// Sends one signed guest-WiFi request.
pub async fn send_purple(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Vec<u8>,
) -> Outcome {
    let sig = purple_signature(secret, &body);
    let started = Instant::now();
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-purple-signature", sig)
        .body(body)
        .send()
        .await;
    match r {
        Err(_) => Outcome {
            status: 0,
            retry_after: None,
            body: serde_json::Value::Null,
            elapsed: started.elapsed(),
        },
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.json().await.unwrap_or(serde_json::Value::Null);
            Outcome {
                status,
                retry_after,
                body,
                elapsed: started.elapsed(),
            }
        }
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
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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

/// A processors config: the `purple` source parsed as guest-WiFi, every
/// event routed to a JSON-lines sink at `sink_path`.
pub fn processors_config(
    brokers: &str,
    topic: &str,
    group: &str,
    dedupe_path: &std::path::Path,
    sink_path: &std::path::Path,
    extra_processing: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"

[processing]
retry_initial = "50ms"
retry_max = "1s"
revoke_timeout = "10s"
{extra_processing}

[dedupe]
path = "{dedupe}"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.test]
kind = "jsonl"
path = "{sink}"

[[routes]]
name = "everything"
sinks = ["test"]
"#,
        dedupe = dedupe_path.display(),
        sink = sink_path.display(),
    )
}

/// The envelope ingest would write for a guest-WiFi event.
pub fn purple_envelope(id: &str, venue: &str, sequence: u64, body: Option<Vec<u8>>) -> Vec<u8> {
    schemas::Envelope {
        event_id: id.into(),
        source: "purple".into(),
        received_at_micros: 1_795_370_591_000_000,
        body: body.unwrap_or_else(|| purple_event(id, venue, sequence)),
        headers: vec![],
        content_type: Some("application/json".into()),
        client_addr: Some("127.0.0.1".into()),
        verification: schemas::Verification {
            scheme: "hmac".into(),
            secret_id: "current".into(),
        },
        ordering_key: Some(venue.into()),
        sequence: Some(sequence as i64),
        request_id: format!("req-{id}"),
    }
    .encode()
    .expect("encoding an envelope")
}

/// Produces `(key, value)` records in order (acks=all), as ingest would.
pub async fn produce(brokers: &str, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("test producer");
    let sends = records.iter().map(|(k, v)| {
        producer.send(
            FutureRecord::to(topic)
                .key(k.as_slice())
                .payload(v.as_slice()),
            Duration::from_secs(30),
        )
    });
    for r in futures::future::join_all(sends).await {
        r.expect("producing a test record");
    }
}

/// The events in a JSON-lines sink file, in file order.
pub fn sink_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with('}'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The newest PostgreSQL server binaries from Debian's packages
/// (`/usr/lib/postgresql/N/bin`); `deploy/install-debian-packages.sh`
/// installs them.
pub fn postgres_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run deploy/install-debian-packages.sh")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// A PostgreSQL server on a free loopback port, in a temporary folder,
/// stopped when dropped. PostgreSQL refuses to run as root: when the tests
/// run as root, the server runs as the `postgres` user, on a folder it owns.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// Starts `postgres` on the cluster in `dir/data`, logging to
/// `dir/postgres.log`.
fn spawn_postgres(bin: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .expect("log file");
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // A test server: durability is not what is under test here.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some((uid, gid)) = postgres_user() {
        cmd.uid(uid).gid(gid);
    }
    die_with_parent(&mut cmd);
    cmd.spawn().expect("starting postgres")
}

/// The uid and gid of `postgres` when we are root, so the server can run.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: a valid C string; the result is read at once, before any other
    // getpw* call on this thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root but there is no postgres user"
    );
    // SAFETY: non-null result of getpwnam.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

impl Postgres {
    /// Stops the server (fast shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the stopped server again, same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        self.child = Some(spawn_postgres(&self.bin, self.dir.path(), self.port));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// initdb in a temporary folder, start the server, wait until it
    /// accepts connections.
    pub fn start() -> Postgres {
        let bin = postgres_bin_dir();
        let dir = tempfile::tempdir().expect("temporary folder");
        let data = dir.path().join("data");
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null());
        as_user(&mut initdb);
        let out = initdb.output().expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = spawn_postgres(&bin, dir.path(), port);
        let pg = Postgres {
            port,
            child: Some(child),
            dir,
            bin,
        };
        pg.wait_ready();
        pg
    }

    /// A connection URL for the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(),
                "-c",
                sql,
            ])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate shutdown: a test server has nothing to keep.
            signal(&c, libc::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
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

/// Scrapes `http://addr/metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scraping /metrics")
        .text()
        .await
        .expect("reading /metrics")
}

/// `prometheus-alertmanager`: `ALERTMANAGER_BIN`, else on PATH (Debian's
/// package; `deploy/install-debian-packages.sh` installs it).
pub fn alertmanager_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ALERTMANAGER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("prometheus-alertmanager");
            if p.is_file() {
                return p;
            }
        }
    }
    let p = PathBuf::from("/usr/bin/prometheus-alertmanager");
    assert!(
        p.is_file(),
        "prometheus-alertmanager not found: run deploy/install-debian-packages.sh"
    );
    p
}

/// A real Alertmanager on a free loopback port: one receiver that sends
/// nothing, clustering off, storage in a temporary folder; killed when
/// dropped.
pub struct Alertmanager {
    /// Its web port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts it and waits until `/-/ready` answers 200.
    pub async fn start() -> Alertmanager {
        let dir = tempfile::tempdir().expect("temporary folder");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n",
        )
        .expect("writing the Alertmanager config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log file");
        let mut cmd = Command::new(alertmanager_binary());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let am = Alertmanager {
            port,
            child: Some(cmd.spawn().expect("starting prometheus-alertmanager")),
            dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(am.url("/-/ready")).send().await
                && r.status() == 200
            {
                return am;
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager did not become ready:\n{}",
                am.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:port` plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The alerts it holds as active now (`GET /api/v2/alerts`: resolved
    /// ones are not listed).
    pub async fn alerts(&self) -> Vec<serde_json::Value> {
        let r = reqwest::get(self.url("/api/v2/alerts"))
            .await
            .expect("GET /api/v2/alerts");
        assert_eq!(r.status(), 200, "GET /api/v2/alerts");
        r.json().await.expect("alerts JSON")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
