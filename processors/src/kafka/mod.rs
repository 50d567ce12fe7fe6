//! The only code that talks to Kafka through rdkafka (besides the offline
//! commands in `ops/`): the client settings built in one place, the
//! consumer-group runtime and the side-topic producer.
//!
//! - [`KafkaConfig`]: brokers, group, membership, topics and extra
//!   librdkafka settings, with the settings the runtime relies on refused;
//!   [`Membership`]: static (`group.instance.id`, KIP-345) or dynamic, as
//!   `kafka.instance_id` and the host name decide;
//! - [`consumer`]: the group runtime, one worker per partition, offsets
//!   stored only as far as everything was handled;
//! - [`side`]: the producer of the quarantine and dead-letter topics;
//! - [`changelog`]: the state changelog topic (see [`crate::state`]);
//! - [`topics`]: what `processors topics` asks and creates: each topic's
//!   partitions, replicas and configs as the brokers report them.

pub mod changelog;
pub mod consumer;
pub mod side;
pub mod topics;

use std::collections::BTreeMap;
use std::time::Duration;

use plumbing::valid_topic;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use serde::Deserialize;

/// How long a side-topic write may take before it is retried.
pub(crate) const SIDE_TIMEOUT: Duration = Duration::from_secs(30);

/// The librdkafka consumer settings, membership as [`KafkaConfig::membership`]
/// decides (which may read the host name).
pub fn consumer_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaError> {
    consumer_config_as(kafka, &kafka.membership())
}

/// The consumers' default `fetch.wait.max.ms`.
pub const FETCH_WAIT_MS: &str = "100";

/// The librdkafka consumer settings for `membership`: the options and
/// security ([`KafkaConfig::base_config`]), then the guarantees, so they
/// win. `group.instance.id` is set here only: the side producer and the
/// one-shot readers are not group members.
pub fn consumer_config_as(
    kafka: &KafkaConfig,
    membership: &Membership,
) -> Result<ClientConfig, KafkaError> {
    let mut c = kafka.base_config()?;
    // A default `kafka.options` may change: how long an idle fetch waits
    // (librdkafka's 500 ms). A broker answers as soon as records are
    // there, so this only bounds idle waits; a broker that waits its
    // whole fetch wait between passes (tansu) adds up to this much to
    // every event's way to the sinks (see BENCHMARKS.md, the venue view's
    // latency).
    if !kafka.options.contains_key("fetch.wait.max.ms") {
        c.set("fetch.wait.max.ms", FETCH_WAIT_MS);
    }
    c.set("group.id", &kafka.group_id)
        .set("client.id", &kafka.client_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "max.poll.interval.ms",
            kafka.max_poll_interval.as_millis().to_string(),
        )
        .set(
            "session.timeout.ms",
            kafka.session_timeout.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000");
    if let Membership::Static { instance_id, .. } = membership {
        c.set("group.instance.id", instance_id);
    }
    Ok(c)
}

/// The side-topic producer settings: durable like ingest's.
pub fn producer_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaError> {
    let mut c = kafka.base_config()?;
    c.set("client.id", format!("{}-side", kafka.client_id))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", SIDE_TIMEOUT.as_millis().to_string());
    Ok(c)
}

/// The settings of an admin client or metadata reader (state topics,
/// `processors topics`): [`KafkaConfig::base_config`] (options, brokers,
/// `[kafka.security]`) and a client id of its own.
pub fn admin_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaError> {
    let mut c = kafka.base_config()?;
    c.set("client.id", format!("{}-admin", kafka.client_id));
    Ok(c)
}

/// Kafka settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated `host:port`.
    pub brokers: String,
    /// Consumer group: run more instances with the same group to scale.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// The raw topic ingest writes.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Where bodies that cannot be parsed go, with the reason.
    #[serde(default = "default_quarantine")]
    pub quarantine_topic: String,
    /// Where events a sink refused for good go, with the sink and reason.
    #[serde(default = "default_dlq")]
    pub dlq_topic: String,
    /// Where a skipped sequence gap is asked for (JSON `{source,
    /// ordering_key, from_sequence, to_sequence}`, key `source/ordering
    /// key`), for `ingest poll` to fetch from the provider. Absent: gaps
    /// are skipped and counted only.
    #[serde(default)]
    pub reconcile_topic: Option<String>,
    /// Client id shown in broker logs.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// This instance's identity in the consumer group: Kafka's
    /// `group.instance.id` (static membership, KIP-345). An instance that
    /// stops and starts again under the same id within `session_timeout`
    /// gets its own partitions back with no rebalance: the other instances
    /// keep theirs and never stop (a rolling restart moves nothing).
    /// Unset: the host name (the `HOSTNAME` environment variable, else the
    /// first line of `/etc/hostname`); when there is none, or it is not a
    /// valid id, static membership is off and the start-up log says why.
    /// `""` turns static membership off: each start joins as a new member
    /// and a stop hands the partitions to the others at once. A valid id
    /// is 1-249 of `a-z A-Z 0-9 . _ -`. It must be unique among the
    /// running instances of the group and survive a restart of the same
    /// instance: give several instances on one host their own ids (a
    /// StatefulSet's pod names do; a Deployment's new pod has a new name,
    /// so its old id's partitions wait `session_timeout`). Two running
    /// processes with one id: Kafka fences the older one, which then hands
    /// its partitions over and exits with an error naming the id; tansu
    /// 0.6 gives both the same partitions.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long the group waits for a member it does not hear from before
    /// it hands that member's partitions to the others (librdkafka
    /// `session.timeout.ms`; Kafka brokers accept 6 s to 30 min by
    /// default). A static member (see `instance_id`) sends no LeaveGroup
    /// when it stops (librdkafka skips it on close, as KIP-345 says): its
    /// partitions stay assigned to its id, unconsumed, until it comes back
    /// or this long has passed since its last heartbeat. So a restart
    /// shorter than this keeps the partitions, and an instance stopped for
    /// good (scaled down, its host gone) leaves its partitions idle for up
    /// to this long (on Kafka; tansu 0.6 does not hand a departed static
    /// member's partitions over at all: see the README). A dynamic member
    /// leaves the group when it stops; for it this only bounds how long a
    /// crashed instance's partitions wait. At most `max_poll_interval`.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long the consumer may go without polling before the group
    /// considers it dead (librdkafka `max.poll.interval.ms`). A partition
    /// blocked on a failing sink is paused and the consumer keeps polling,
    /// so a sink outage of any length causes no rebalance; this only
    /// catches a consumer that is really stuck.
    #[serde(default = "default_max_poll_interval", with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// Extra librdkafka settings. Settings the runtime relies on (offset
    /// storage, commit, group id) are refused, and so are those a field
    /// sets (`group.instance.id`, `session.timeout.ms`,
    /// `max.poll.interval.ms`, TLS and SASL).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// TLS and SASL to the brokers, secrets from the environment or files
    /// (see [`plumbing::kafka::Security`]).
    #[serde(default)]
    pub security: plumbing::kafka::Security,
}

fn default_group() -> String {
    "processors".into()
}
fn default_topic() -> String {
    "webhooks.raw".into()
}
fn default_quarantine() -> String {
    "webhooks.quarantine".into()
}
fn default_dlq() -> String {
    "webhooks.dlq".into()
}
fn default_client_id() -> String {
    "processors".into()
}
const fn default_max_poll_interval() -> Duration {
    Duration::from_secs(300)
}
const fn default_session_timeout() -> Duration {
    Duration::from_secs(45)
}

/// The bounds Kafka brokers put on `session.timeout.ms` by default
/// (`group.min.session.timeout.ms`, `group.max.session.timeout.ms`).
const SESSION_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(6), Duration::from_secs(30 * 60));

/// How this instance joins the consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Static, under this `group.instance.id`.
    Static {
        /// The id sent to the group coordinator.
        instance_id: String,
        /// Whether it is the host name (`kafka.instance_id` unset).
        from_host: bool,
    },
    /// Dynamic (a new member id on every start), for this reason.
    Dynamic(String),
}

/// The host name: `HOSTNAME`, else the first line of `/etc/hostname`.
fn host_name() -> Option<String> {
    host_name_from(
        std::env::var("HOSTNAME").ok().as_deref(),
        std::fs::read_to_string("/etc/hostname").ok().as_deref(),
    )
}

/// The first non-blank of the `HOSTNAME` variable and `/etc/hostname`'s
/// first line, trimmed.
fn host_name_from(env: Option<&str>, etc_hostname: Option<&str>) -> Option<String> {
    let env = env.map(str::trim).filter(|h| !h.is_empty());
    let file = etc_hostname
        .and_then(|f| f.lines().next())
        .map(str::trim)
        .filter(|h| !h.is_empty());
    env.or(file).map(str::to_owned)
}

/// librdkafka settings the runtime sets itself: from a field of
/// [`KafkaConfig`], or because a user value would break "commit only what
/// the sinks accepted".
pub const RESERVED_KAFKA_OPTIONS: &[&str] = &[
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "isolation.level",
    "max.poll.interval.ms",
    "session.timeout.ms",
    "group.instance.id",
    "acks",
    "enable.idempotence",
];

/// The `kafka` field that sets a reserved librdkafka setting, if one does.
fn typed_field(key: &str) -> Option<&'static str> {
    match key {
        "group.instance.id" => Some("kafka.instance_id"),
        "session.timeout.ms" => Some("kafka.session_timeout"),
        "max.poll.interval.ms" => Some("kafka.max_poll_interval"),
        "group.id" => Some("kafka.group_id"),
        _ => None,
    }
}

/// Why an assignment setting is refused, if it is: the runtime hands a
/// partition over on the eager protocol's "revoke everything, then
/// assign" (it drops the records it holds and re-reads from the committed
/// offset on every assignment). An incremental (cooperative) rebalance
/// keeps partitions across a generation, so held records would be dropped
/// while the fetch position moved past them, and the commit would pass
/// records nobody handled.
fn eager_only(key: &str, value: &str) -> Option<String> {
    match key {
        "partition.assignment.strategy" => {
            let bad: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !matches!(*s, "range" | "roundrobin"))
                .collect();
            (!bad.is_empty()).then(|| {
                format!(
                    "{} is not supported: only the eager assignors range and roundrobin keep the hand-over exact",
                    bad.join(", ")
                )
            })
        }
        "group.protocol" if value.trim() != "classic" => Some(format!(
            "{value:?} is not supported: the incremental consumer protocol (KIP-848) would move partitions without the hand-over the runtime relies on; use classic"
        )),
        _ => None,
    }
}

impl KafkaConfig {
    /// Every problem, each naming its field under `kafka`.
    pub fn problems(&self) -> Vec<String> {
        let k = self;
        let mut p = Vec::new();
        if k.brokers.trim().is_empty() {
            p.push("kafka.brokers: must not be empty".into());
        }
        if k.group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty".into());
        }
        for (field, topic) in [
            ("topic", &k.topic),
            ("quarantine_topic", &k.quarantine_topic),
            ("dlq_topic", &k.dlq_topic),
        ] {
            if !valid_topic(topic) {
                p.push(format!(
                    "kafka.{field}: {topic:?} is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"
                ));
            }
        }
        if let Some(t) = &k.reconcile_topic
            && (!valid_topic(t) || *t == k.topic)
        {
            p.push(format!(
                "kafka.reconcile_topic: {t:?} is not a valid topic name other than the raw topic"
            ));
        }
        if k.quarantine_topic == k.topic || k.dlq_topic == k.topic {
            p.push(
                "kafka: the quarantine and dead-letter topics must differ from the raw topic"
                    .into(),
            );
        }
        if k.max_poll_interval < Duration::from_secs(10) {
            p.push("kafka.max_poll_interval: must be at least 10s".into());
        }
        if let Some(id) = &k.instance_id
            && !id.is_empty()
            && !valid_topic(id)
        {
            p.push(format!(
                "kafka.instance_id: {id:?} is not a valid group instance id (1-249 of a-z A-Z 0-9 . _ -; \"\" turns static membership off)"
            ));
        }
        let (min, max) = SESSION_TIMEOUT_RANGE;
        if k.session_timeout < min || k.session_timeout > max {
            p.push(format!(
                "kafka.session_timeout: must be from {} to {} (the brokers' default bounds; got {})",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(k.session_timeout)
            ));
        } else if k.session_timeout > k.max_poll_interval {
            p.push(format!(
                "kafka.session_timeout: {} is longer than kafka.max_poll_interval ({}); librdkafka refuses that",
                humantime::format_duration(k.session_timeout),
                humantime::format_duration(k.max_poll_interval)
            ));
        }
        for key in k.options.keys() {
            if let Some(why) = eager_only(key, &k.options[key]) {
                p.push(format!("kafka.options.{key}: {why}"));
            }
            if let Some(field) = typed_field(key) {
                p.push(format!("kafka.options.{key}: set it with {field}"));
            } else if RESERVED_KAFKA_OPTIONS.contains(&key.as_str()) {
                p.push(format!(
                    "kafka.options.{key}: set by the processors to keep their guarantees; remove it"
                ));
            }
        }
        p.extend(plumbing::kafka::options_problems(&k.options));
        p.extend(k.security.problems());
        p
    }

    /// Where every client's settings start: the options, the brokers and
    /// the security settings ([`plumbing::kafka::client_config`]).
    pub fn base_config(&self) -> Result<ClientConfig, KafkaError> {
        plumbing::kafka::client_config(&self.brokers, &self.options, &self.security)
    }

    /// How this instance joins the group: `instance_id` if set (`""`:
    /// dynamic), else the host name if it is a valid id, else dynamic.
    pub fn membership(&self) -> Membership {
        self.membership_with(host_name)
    }

    fn membership_with(&self, host: impl FnOnce() -> Option<String>) -> Membership {
        match self.instance_id.as_deref() {
            Some("") => Membership::Dynamic("kafka.instance_id is \"\"".into()),
            Some(id) => Membership::Static {
                instance_id: id.to_owned(),
                from_host: false,
            },
            None => match host() {
                None => Membership::Dynamic(
                    "kafka.instance_id is unset and there is no host name (HOSTNAME, /etc/hostname) to default it to".into(),
                ),
                Some(h) if !valid_topic(&h) => Membership::Dynamic(format!(
                    "kafka.instance_id is unset and the host name {h:?} is not a valid group instance id"
                )),
                Some(h) => Membership::Static {
                    instance_id: h,
                    from_host: true,
                },
            },
        }
    }
}

/// librdkafka callbacks for the one-shot commands: its log lines go through
/// `tracing` like the live path's, and its errors (every failed connection
/// attempt) at debug, so an unreachable broker ends in one line naming the
/// problem rather than a screen of retries.
pub struct QuietCtx;

impl ClientContext for QuietCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        plumbing::route_librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for QuietCtx {}

/// A consumer of the one-shot commands.
pub type Reader = StreamConsumer<QuietCtx>;

/// The librdkafka settings of a reader that assigns partitions itself and
/// never commits (replay, `dlq list`); `group` is only its name.
pub fn reader_config(
    kafka: &KafkaConfig,
    group: &str,
    role: &str,
) -> Result<ClientConfig, KafkaError> {
    plumbing::reader_config(
        &kafka.brokers,
        &kafka.options,
        &kafka.security,
        group,
        &format!("{}-{role}", kafka.client_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(options: &[(&str, &str)]) -> KafkaConfig {
        let text = format!(
            "brokers = \"127.0.0.1:9092\"\n[options]\n{}",
            options
                .iter()
                .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
                .collect::<String>()
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn an_incremental_assignor_is_refused_naming_the_option() {
        let p = with(&[("partition.assignment.strategy", "cooperative-sticky")]).problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "kafka.options.partition.assignment.strategy: cooperative-sticky is not supported"
            ),
            "{p:?}"
        );
        let p = with(&[("group.protocol", "consumer")]).problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("kafka.options.group.protocol: "), "{p:?}");
        let p = with(&[("partition.assignment.strategy", "range, cooperative-sticky")]).problems();
        assert_eq!(p.len(), 1, "{p:?}");
    }

    /// A `[kafka]` section: the brokers and `lines`.
    fn kafka(lines: &str) -> KafkaConfig {
        toml::from_str(&format!("brokers = \"127.0.0.1:9092\"\n{lines}")).unwrap()
    }

    #[test]
    fn an_idle_fetch_waits_100_ms_unless_the_options_say_otherwise() {
        let m = Membership::Dynamic(String::new());
        assert_eq!(
            consumer_config_as(&with(&[]), &m)
                .unwrap()
                .get("fetch.wait.max.ms"),
            Some("100")
        );
        let slow = with(&[("fetch.wait.max.ms", "500")]);
        assert_eq!(
            consumer_config_as(&slow, &m)
                .unwrap()
                .get("fetch.wait.max.ms"),
            Some("500")
        );
    }

    fn no_host() -> Option<String> {
        panic!("the host name is read only when kafka.instance_id is unset")
    }

    #[test]
    fn the_instance_id_defaults_to_the_host_name() {
        let k = kafka("");
        assert_eq!(k.instance_id, None);
        assert_eq!(k.problems(), Vec::<String>::new());
        let m = k.membership_with(|| Some("web-1".into()));
        assert_eq!(
            m,
            Membership::Static {
                instance_id: "web-1".into(),
                from_host: true
            }
        );
        let c = consumer_config_as(&k, &m).unwrap();
        assert_eq!(c.get("group.instance.id"), Some("web-1"));
        assert_eq!(c.get("session.timeout.ms"), Some("45000"));
        // HOSTNAME first, else /etc/hostname's first line; blanks skipped.
        assert_eq!(
            host_name_from(Some(" pod-7\n"), Some("box\n")),
            Some("pod-7".into())
        );
        assert_eq!(
            host_name_from(Some(""), Some("box\nignored\n")),
            Some("box".into())
        );
        assert_eq!(host_name_from(None, Some("\n")), None);
        assert_eq!(host_name_from(None, None), None);
    }

    #[test]
    fn without_a_usable_host_name_membership_is_dynamic_and_says_why() {
        let k = kafka("");
        let Membership::Dynamic(why) = k.membership_with(|| None) else {
            panic!("static without a host name")
        };
        assert!(why.contains("no host name"), "{why}");
        let Membership::Dynamic(why) = k.membership_with(|| Some("my host".into())) else {
            panic!("static under an invalid host name")
        };
        assert!(why.contains("\"my host\" is not a valid"), "{why}");
        let c = consumer_config_as(&k, &k.membership_with(|| None)).unwrap();
        assert_eq!(c.get("group.instance.id"), None);
    }

    #[test]
    fn an_explicit_instance_id_wins_and_an_empty_one_turns_static_membership_off() {
        let k = kafka("instance_id = \"processors-0\"");
        assert_eq!(k.problems(), Vec::<String>::new());
        let m = k.membership_with(no_host);
        assert_eq!(
            m,
            Membership::Static {
                instance_id: "processors-0".into(),
                from_host: false
            }
        );
        assert_eq!(
            consumer_config_as(&k, &m).unwrap().get("group.instance.id"),
            Some("processors-0")
        );

        let off = kafka("instance_id = \"\"");
        assert_eq!(off.problems(), Vec::<String>::new());
        let m = off.membership_with(no_host);
        assert!(matches!(m, Membership::Dynamic(_)), "{m:?}");
        assert_eq!(
            consumer_config_as(&off, &m)
                .unwrap()
                .get("group.instance.id"),
            None
        );
        // Only the consumer is a group member.
        assert_eq!(producer_config(&k).unwrap().get("group.instance.id"), None);
        assert_eq!(
            reader_config(&k, "g-replay", "replay")
                .unwrap()
                .get("group.instance.id"),
            None
        );
    }

    #[test]
    fn a_reconcile_topic_must_be_valid_and_not_the_raw_topic() {
        assert!(
            kafka("reconcile_topic = \"webhooks.reconcile\"")
                .problems()
                .is_empty()
        );
        for bad in ["a b", "webhooks.raw"] {
            let p = kafka(&format!("reconcile_topic = {bad:?}")).problems();
            assert_eq!(
                p,
                [format!(
                    "kafka.reconcile_topic: {bad:?} is not a valid topic name other than the raw topic"
                )]
            );
        }
    }

    #[test]
    fn an_invalid_instance_id_is_refused_naming_the_field() {
        for bad in [" ", "web 1", "a/b", ".", "..", "é", &"x".repeat(250)] {
            let p = kafka(&format!("instance_id = {bad:?}")).problems();
            assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
            assert!(
                p[0].starts_with(&format!(
                    "kafka.instance_id: {bad:?} is not a valid group instance id (1-249 of a-z A-Z 0-9 . _ -"
                )),
                "{p:?}"
            );
        }
        let longest = "x".repeat(249);
        assert_eq!(
            kafka(&format!("instance_id = {longest:?}")).problems(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn membership_settings_in_options_are_refused_naming_the_field_to_use() {
        let p = with(&[("group.instance.id", "web-1")]).problems();
        assert_eq!(
            p,
            ["kafka.options.group.instance.id: set it with kafka.instance_id"]
        );
        let p = with(&[("session.timeout.ms", "6000")]).problems();
        assert_eq!(
            p,
            ["kafka.options.session.timeout.ms: set it with kafka.session_timeout"]
        );
        // And the field's value is what the consumer gets.
        let k = kafka("session_timeout = \"6s\"");
        assert_eq!(k.problems(), Vec::<String>::new());
        assert_eq!(
            consumer_config_as(&k, &Membership::Dynamic(String::new()))
                .unwrap()
                .get("session.timeout.ms"),
            Some("6000")
        );
    }

    #[test]
    fn the_session_timeout_is_checked_against_the_brokers_bounds_and_max_poll_interval() {
        for (lines, needle) in [
            (
                "session_timeout = \"5s\"",
                "kafka.session_timeout: must be from 6s to 30m (the brokers' default bounds; got 5s)",
            ),
            (
                "session_timeout = \"31m\"\nmax_poll_interval = \"1h\"",
                "kafka.session_timeout: must be from 6s to 30m",
            ),
            (
                "session_timeout = \"90s\"\nmax_poll_interval = \"60s\"",
                "kafka.session_timeout: 1m 30s is longer than kafka.max_poll_interval (1m)",
            ),
        ] {
            let p = kafka(lines).problems();
            assert_eq!(p.len(), 1, "{lines}: {p:?}");
            assert!(p[0].starts_with(needle), "{lines}: {p:?}");
        }
        let k = kafka("session_timeout = \"30m\"\nmax_poll_interval = \"30m\"");
        assert_eq!(k.problems(), Vec::<String>::new());
    }

    #[test]
    fn eager_assignors_and_other_options_pass() {
        let ok = with(&[
            ("partition.assignment.strategy", "roundrobin,range"),
            ("group.protocol", "classic"),
            ("compression.type", "lz4"),
        ]);
        assert_eq!(ok.problems(), Vec::<String>::new());
    }
}
