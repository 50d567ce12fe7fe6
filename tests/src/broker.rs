//! The tansu broker, and Kafka as the tests see it: topics read back to
//! the end and records produced as ingest would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::process::{die_with_parent, free_port, signal};

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

/// A tansu broker on a free loopback port with sqlite storage.
pub struct Broker {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    /// The port it names in metadata: its own, or that of a TLS proxy in
    /// front of it (the clients then reach it only through the proxy).
    advertised_port: u16,
    /// Started with `--authentication` (SASL required).
    authentication: bool,
    /// Holds the sqlite file and the log.
    dir: tempfile::TempDir,
    /// The running process, if any.
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Broker {
        Broker::start_advertising(None)
    }

    /// Starts a broker that names `advertised_port` on loopback in its
    /// metadata (a TLS proxy's port), or its own port with `None`.
    pub fn start_advertising(advertised_port: Option<u16>) -> Broker {
        let dir = tempfile::tempdir().expect("temporary folder");
        let port = free_port();
        let mut b = Broker {
            port,
            advertised_port: advertised_port.unwrap_or(port),
            authentication: false,
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    /// Restarts the broker (same port and data) with SASL required
    /// (`--authentication`): PLAIN and SCRAM, the SCRAM users being those
    /// [`Broker::create_scram_user`] made before.
    pub fn require_authentication(&mut self) {
        self.authentication = true;
        self.restart();
    }

    /// Creates a SCRAM user (`mechanism`: `scram256` or `scram512`) with
    /// `tansu user create`, straight to the broker's own port; before
    /// [`Broker::require_authentication`], which the command cannot pass.
    pub fn create_scram_user(&self, name: &str, password: &str, mechanism: &str) {
        let out = Command::new(tansu_binary())
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--mechanism", mechanism, name, password])
            .stdin(Stdio::null())
            .output()
            .expect("running tansu user create");
        assert!(
            out.status.success(),
            "tansu user create: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
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
            .arg(&advertised)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        if self.authentication {
            cmd.arg("--authentication");
        }
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
    /// The broker's process id, while it runs (for CPU accounting in
    /// benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

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
        self.create_topic_with(name, partitions, &[]).await;
    }

    /// [`Broker::create_topic`] with topic settings (`cleanup.policy`, ...).
    pub async fn create_topic_with(&self, name: &str, partitions: i32, settings: &[(&str, &str)]) {
        create_topic_at(&self.brokers(), &[], name, partitions, settings).await;
    }
}

/// Creates a topic through `brokers` with extra client settings
/// (`client`: TLS, SASL) and waits until its metadata shows every
/// partition.
pub async fn create_topic_at(
    brokers: &str,
    client: &[(&str, &str)],
    name: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) {
    let with_client = |c: &mut ClientConfig| {
        c.set("bootstrap.servers", brokers);
        for (k, v) in client {
            c.set(*k, *v);
        }
    };
    {
        let mut config = ClientConfig::new();
        with_client(&mut config);
        let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in settings {
            topic = topic.set(k, v);
        }
        let res = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .expect("create_topics request");
        for r in res {
            r.expect("topic created");
        }
        let mut config = ClientConfig::new();
        with_client(&mut config);
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = config.create().expect("consumer");
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
    read_topic_with(brokers, &[], topic).await
}

/// [`read_topic`] with extra client settings (`client`: TLS, SASL).
pub async fn read_topic_with(brokers: &str, client: &[(&str, &str)], topic: &str) -> Vec<Record> {
    let mut config = ClientConfig::new();
    for (k, v) in client {
        config.set(*k, *v);
    }
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_topic_blocking(config, &topic))
        .await
        .expect("reader thread")
}

fn read_topic_blocking(config: ClientConfig, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = config.create().expect("reader consumer");
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
