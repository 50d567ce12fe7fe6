//! The quarantine and dead-letter topics on Kafka: [`KafkaSide`] writes the
//! original record with headers saying why (`acks=all`, idempotent), so the
//! pipeline moves past a record only once it is durably set aside.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{KafkaConfig, SIDE_TIMEOUT, producer_config};
use crate::event::{Event, Quarantine};
use crate::pipeline::{GapRequest, RawRecord, SideTopics};
use crate::sinks::BoxFuture;

/// Longest header value copied from a quarantine reason.
const MAX_DETAIL: usize = 1024;

/// Quarantine and dead-letter topics on Kafka.
pub struct KafkaSide {
    producer: FutureProducer,
    quarantine_topic: String,
    dlq_topic: String,
    /// Where skipped gaps are asked for (`kafka.reconcile_topic`).
    reconcile_topic: Option<String>,
}

impl KafkaSide {
    /// Creates the producer (does not contact the brokers yet).
    pub fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(KafkaSide {
            producer: producer_config(kafka)?.create()?,
            quarantine_topic: kafka.quarantine_topic.clone(),
            dlq_topic: kafka.dlq_topic.clone(),
            reconcile_topic: kafka.reconcile_topic.clone(),
        })
    }

    async fn write(
        &self,
        topic: &str,
        record: &RawRecord,
        headers: &[(&str, &str)],
    ) -> Result<(), String> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let mut h = OwnedHeaders::new()
            .insert(Header {
                key: "original-partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "original-offset",
                value: Some(&offset),
            });
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut r = FutureRecord::to(topic)
            .payload(record.payload.as_slice())
            .headers(h);
        if let Some(k) = &record.key {
            r = r.key(k.as_slice());
        }
        self.producer
            .send(r, SIDE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("{topic}: {e}"))
    }
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_DETAIL {
        return s;
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl SideTopics for KafkaSide {
    fn quarantine<'a>(
        &'a self,
        record: &'a RawRecord,
        source: &'a str,
        why: &'a Quarantine,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let headers = [
                ("source", source),
                ("reason", why.reason),
                ("detail", clip(&why.detail)),
            ];
            self.write(&self.quarantine_topic, record, &headers).await
        })
    }

    fn dead_letter<'a>(
        &'a self,
        record: &'a RawRecord,
        event: &'a Event,
        sink: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let headers = [
                ("source", event.source.as_str()),
                ("event-id", event.event_id.as_str()),
                ("sink", sink),
                ("reason", clip(reason)),
            ];
            self.write(&self.dlq_topic, record, &headers).await
        })
    }

    fn reconcile<'a>(&'a self, gap: &'a GapRequest) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let Some(topic) = &self.reconcile_topic else {
                return Ok(false);
            };
            let value = serde_json::to_vec(gap).map_err(|e| e.to_string())?;
            let key = format!("{}/{}", gap.source, gap.ordering_key);
            self.producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    SIDE_TIMEOUT,
                )
                .await
                .map(|_| true)
                .map_err(|(e, _)| format!("{topic}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// On-CPU nanoseconds of this process's rdkafka producer polling
    /// threads (`/proc/self/task/*/schedstat`, first field).
    fn polling_threads_cpu_ns() -> u64 {
        let mut total = 0;
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let path = task.expect("task").path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if !comm.starts_with("producer pollin") {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    /// Every `FutureProducer` has a thread that polls for delivery reports
    /// in rounds of 100 ms. rust-rdkafka turned what was left of a round
    /// into whole milliseconds, so the last fraction of each was polled
    /// with a 0 ms timeout in a tight loop: about 1 % of a core per
    /// producer with nothing to produce (BENCHMARKS.md, "Processor
    /// throughput"). Measured as the thread's own CPU time over 2 s idle.
    #[test]
    fn an_idle_producer_does_not_spin_its_polling_thread() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let config = crate::config::Config::from_toml(&format!(
            "[kafka]\nbrokers = \"127.0.0.1:{port}\"\n[dedupe]\npath = \"unused\"\n[sources.purple]\nparser = \"guest_wifi\"\n[sinks.out]\nkind = \"log\"\n[[routes]]\nname = \"all\"\nsinks = [\"out\"]\n"
        ))
        .unwrap();
        let side = KafkaSide::new(&config.kafka).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let before = polling_threads_cpu_ns();
        std::thread::sleep(Duration::from_secs(2));
        let used = polling_threads_cpu_ns() - before;
        drop(side);
        eprintln!(
            "idle producer polling thread: {:.2} ms of CPU in 2 s",
            used as f64 / 1e6
        );
        assert!(
            used < 8_000_000,
            "the idle producer's polling thread used {:.1} ms of CPU in 2 s",
            used as f64 / 1e6
        );
    }
}
