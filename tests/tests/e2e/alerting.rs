//! The alerting sink end to end: tansu, the `processors` binary, a real
//! Alertmanager (Debian's `prometheus-alertmanager`) and a fake Slack
//! webhook that fails on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use e2e::fake_chat::{FakeChat, Reply, TOKEN};
use e2e::{Alertmanager, Broker, Processor, produce, purple_envelope_received};

/// A guest-WiFi event as the platform sends it, happening at `at`.
#[allow(clippy::too_many_arguments)]
fn wifi(
    id: &str,
    kind: &str,
    venue: &str,
    seq: u64,
    zone: &str,
    device: &str,
    vip: bool,
    at: SystemTime,
) -> (Vec<u8>, Vec<u8>) {
    let body = serde_json::json!({
        "id": id,
        "type": kind,
        "sequence": seq,
        "occurred_at": humantime::format_rfc3339_millis(at).to_string(),
        "venue": {"id": venue},
        "zone": zone,
        "device": {"id": device},
        "guest": {"id": format!("g-{device}"), "first_name": "Ana", "vip": vip,
                  "email": format!("g-{device}@example.com")},
    });
    (
        venue.as_bytes().to_vec(),
        // Received when it happened, as ingest would stamp a live event
        // (the sink ignores events dated well past their receipt).
        purple_envelope_received(
            id,
            venue,
            seq,
            Some(body.to_string().into_bytes()),
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
        ),
    )
}

fn config(brokers: &str, topic: &str, dir: &Path, am: &str, rules: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "alerting"
topic = "{topic}"
quarantine_topic = "{topic}.quarantine"
dlq_topic = "{topic}.dlq"

[processing]
retry_initial = "50ms"
retry_max = "1s"
revoke_timeout = "10s"

[dedupe]
path = "{dir}/dedupe.redb"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.alerts]
kind = "alerts"
path = "{dir}/alerts.sqlite"
resend_interval = "1s"
alert_ttl = "1m"
timeout = "1s"
retry_initial = "100ms"
retry_max = "1s"
{rules}

[[sinks.alerts.receivers]]
kind = "slack"
url_env = "ALERTS_SLACK_URL"

[[sinks.alerts.receivers]]
kind = "alertmanager"
url = "{am}"

[[sinks.alerts.receivers]]
kind = "log"

[[routes]]
name = "live"
sources = ["purple"]
include_late = false
sinks = ["alerts"]
"#,
        dir = dir.display()
    )
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, logs: &[&Processor], mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the first sample whose line starts with `prefix`.
async fn metric_line(p: &Processor, prefix: &str) -> String {
    let text = reqwest::get(format!("http://{}/metrics", p.metrics_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0")
        .to_string()
}

/// Active alerts named `name`, by (venue, zone).
async fn active(am: &Alertmanager, name: &str) -> BTreeMap<(String, String), serde_json::Value> {
    am.alerts()
        .await
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .map(|a| {
            let l = &a["labels"];
            (
                (
                    l["venue"].as_str().unwrap_or("").to_string(),
                    l["zone"].as_str().unwrap_or("").to_string(),
                ),
                a.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn occupancy_raises_one_alert_holds_it_through_the_cooldown_and_resolves() {
    let broker = Broker::start();
    broker.create_topic("al-occ", 1).await;
    let am = Alertmanager::start().await;
    let chat = FakeChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
[[sinks.alerts.rules]]
kind = "zone_occupancy"
threshold = 3
cooldown = "10m"

[[sinks.alerts.rules]]
kind = "vip_arrival"
"#;
    let cfg = config(&broker.brokers(), "al-occ", dir.path(), &am.url(""), rules);
    let p = Processor::start_with_env(&cfg, &[("ALERTS_SLACK_URL", &chat.url())]);
    let now = SystemTime::now;
    let conn = |i: u64, venue: &str, seq: u64| {
        wifi(
            &format!("c{venue}-{i}"),
            "device_connected",
            venue,
            seq,
            "lobby",
            &format!("d{i}"),
            false,
            now(),
        )
    };
    let routed = |n: f64| {
        let p = &p;
        move || async move { p.metric("processors_routed_total").await >= n }
    };

    // Four devices in v1's lobby (over 3), two in v2's (under).
    let mut first: Vec<_> = (1..=4).map(|i| conn(i, "v1", i)).collect();
    first.extend((1..=2).map(|i| conn(i, "v2", i)));
    produce(&broker.brokers(), "al-occ", &first).await;
    wait_until(
        "the alert in Alertmanager",
        Duration::from_secs(60),
        &[&p],
        || async { !active(&am, "ZoneOverCapacity").await.is_empty() },
    )
    .await;
    let alerts = active(&am, "ZoneOverCapacity").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[&("v1".into(), "lobby".into())];
    assert_eq!(a["labels"]["severity"], "warning");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("4 devices"),
        "{a}"
    );
    let started = a["startsAt"].clone();
    wait_until(
        "the chat message",
        Duration::from_secs(30),
        &[&p],
        || async { !chat.posted().is_empty() },
    )
    .await;

    // Two more: still over; one alert, re-posted with the new count, no new message.
    produce(
        &broker.brokers(),
        "al-occ",
        &[conn(5, "v1", 5), conn(6, "v1", 6)],
    )
    .await;
    wait_until("8 events", Duration::from_secs(30), &[&p], routed(8.0)).await;
    wait_until(
        "the refreshed count",
        Duration::from_secs(30),
        &[&p],
        || async {
            active(&am, "ZoneOverCapacity").await.values().any(|a| {
                a["annotations"]["summary"]
                    .as_str()
                    .unwrap_or("")
                    .contains("6 devices")
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = active(&am, "ZoneOverCapacity").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[&("v1".into(), "lobby".into())]["startsAt"], started);
    assert_eq!(chat.posted().len(), 1, "{:?}", chat.posted());
    assert_eq!(p.metric("processors_alerts_raised_total").await, 1.0);

    // Three leave: 3 devices, not over: resolved in Alertmanager and chat.
    let leave: Vec<_> = (1..=3)
        .map(|i| {
            wifi(
                &format!("l{i}"),
                "device_disconnected",
                "v1",
                6 + i,
                "lobby",
                &format!("d{i}"),
                false,
                now(),
            )
        })
        .collect();
    produce(&broker.brokers(), "al-occ", &leave).await;
    wait_until(
        "the resolve in Alertmanager",
        Duration::from_secs(30),
        &[&p],
        || async { active(&am, "ZoneOverCapacity").await.is_empty() },
    )
    .await;
    wait_until(
        "the resolve message",
        Duration::from_secs(30),
        &[&p],
        || async { chat.posted().len() == 2 },
    )
    .await;
    let posted = chat.posted();
    assert!(
        posted[0].1.contains("FIRING") && posted[0].1.contains("v1"),
        "{posted:?}"
    );
    assert!(posted[1].1.contains("RESOLVED"), "{posted:?}");
    assert_eq!(p.metric("processors_alerts_resolved_total").await, 1.0);

    // Over again inside the cooldown: not raised again. And a replay of a
    // VIP arrival from last week pages nobody.
    let week_ago = now() - Duration::from_secs(7 * 24 * 3600);
    produce(
        &broker.brokers(),
        "al-occ",
        &[
            conn(7, "v1", 10),
            wifi(
                "vip-old",
                "guest_connects",
                "v1",
                11,
                "bar",
                "dv",
                true,
                week_ago,
            ),
        ],
    )
    .await;
    wait_until("13 events", Duration::from_secs(30), &[&p], routed(13.0)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.metric("processors_alerts_suppressed_total").await, 1.0);
    assert_eq!(p.metric("processors_alerts_raised_total").await, 1.0);
    assert!(am.alerts().await.is_empty(), "{:?}", am.alerts().await);
    assert_eq!(chat.posted().len(), 2, "{:?}", chat.posted());
    let log = p.log();
    assert!(
        log.contains("ZoneOverCapacity"),
        "the log receiver printed nothing"
    );
    assert!(!log.contains(TOKEN), "the Slack token leaked into the log");
    let metrics = reqwest::get(format!("http://{}/metrics", p.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(TOKEN));
    assert!(
        metrics.contains(
            r#"processors_alerting_events_ignored_total{reason="stale",sink="alerts"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_alert_work_loses_nothing_and_duplicates_nothing() {
    let broker = Broker::start();
    broker.create_topic("al-kill", 2).await;
    let am = Alertmanager::start().await;
    let chat = FakeChat::start().await;
    chat.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let rules = "[[sinks.alerts.rules]]\nkind = \"zone_occupancy\"\nthreshold = 2\n";
    let cfg = config(&broker.brokers(), "al-kill", dir.path(), &am.url(""), rules);
    let env = [("ALERTS_SLACK_URL", chat.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let now = SystemTime::now;
    let venues: Vec<String> = (0..10).map(|v| format!("v{v}")).collect();

    // Three devices in each venue's hall: ten alerts; the chat is down.
    let mut a = Processor::start_with_env(&cfg, &env);
    let mut connects = Vec::new();
    for v in &venues {
        for i in 1..=3 {
            connects.push(wifi(
                &format!("{v}-c{i}"),
                "device_connected",
                v,
                i,
                "hall",
                &format!("d{i}"),
                false,
                now(),
            ));
        }
    }
    produce(&broker.brokers(), "al-kill", &connects).await;
    wait_until("ten raises", Duration::from_secs(60), &[&a], || async {
        a.metric("processors_alerts_raised_total").await >= 10.0
    })
    .await;
    wait_until(
        "failed chat deliveries",
        Duration::from_secs(30),
        &[&a],
        || async { chat.requests() >= 2 },
    )
    .await;

    // Two devices leave half of the venues; kill -9 while that is being
    // applied and the outbox is being retried.
    let mut leaves = Vec::new();
    for v in &venues[..5] {
        for i in 1..=2 {
            leaves.push(wifi(
                &format!("{v}-l{i}"),
                "device_disconnected",
                v,
                3 + i,
                "hall",
                &format!("d{i}"),
                false,
                now(),
            ));
        }
    }
    produce(&broker.brokers(), "al-kill", &leaves).await;
    // As soon as the sink applied part of them (offsets are committed once
    // a second, so some of what it applied is likely to be offered again).
    wait_until("a resolve", Duration::from_secs(60), &[&a], || async {
        a.metric("processors_alerts_resolved_total").await >= 1.0
    })
    .await;
    a.kill();
    let posted_at_kill = chat.posted().len();
    assert_eq!(posted_at_kill, 0);

    // The chat comes back misbehaving: a 500, a 429, a stall past the
    // client's timeout; then it takes messages.
    chat.script(&[
        Reply::Status(500),
        Reply::TooMany(1),
        Reply::Stall(Duration::from_millis(1500)),
    ]);
    chat.set_down(false);
    // It comes back without its dedupe file (as on another host): the
    // ledger, the positions and the alert state come from the changelog.
    // The batch being applied at the kill was in the alert file but not in
    // the changelog: that partition's rows are rebuilt, its unsent
    // notifications dropped and raised again as its events are re-read.
    let cfg2 = cfg.replace("dedupe.redb", "dedupe-2.redb");
    let a2 = Processor::start_with_env(&cfg2, &env);
    let want_firing: BTreeSet<String> = venues.iter().cloned().collect();
    let want_active: BTreeSet<(String, String)> = venues[5..]
        .iter()
        .map(|v| (v.clone(), "hall".to_string()))
        .collect();
    wait_until("15 messages", Duration::from_secs(120), &[&a2], || async {
        chat.posted().len() >= 15
    })
    .await;
    wait_until(
        "Alertmanager settled",
        Duration::from_secs(60),
        &[&a2],
        || async {
            active(&am, "ZoneOverCapacity")
                .await
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                == want_active
        },
    )
    .await;
    // The outbox alone settles the two waits above; the partitions come
    // back once the group hands them to the restarted member, which
    // restores both before it reads on.
    wait_until(
        "both partitions restored",
        Duration::from_secs(60),
        &[&a2],
        || async {
            metric_line(&a2, "processors_state_restore_seconds_count")
                .await
                .parse::<f64>()
                .is_ok_and(|n| n >= 2.0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let posted = chat.posted();
    let keys: BTreeSet<&String> = posted.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys.len(),
        posted.len(),
        "a notification was posted twice: {posted:#?}"
    );
    assert_eq!(posted.len(), 15, "{posted:#?}");
    let firing: BTreeSet<String> = posted
        .iter()
        .filter(|(_, t)| t.contains("FIRING"))
        .filter_map(|(_, t)| {
            venues
                .iter()
                .find(|v| t.contains(&format!("venue {v} ")))
                .cloned()
        })
        .collect();
    assert_eq!(firing, want_firing, "{posted:#?}");
    assert_eq!(
        posted
            .iter()
            .filter(|(_, t)| t.contains("RESOLVED"))
            .count(),
        5
    );
    let active_now: BTreeSet<_> = active(&am, "ZoneOverCapacity")
        .await
        .keys()
        .cloned()
        .collect();
    assert_eq!(active_now, want_active);
    assert_eq!(a2.metric("processors_alert_outbox_depth").await, 0.0);
    // Its state came from the changelog, not from re-applying the events.
    let restored = metric_line(
        &a2,
        "processors_state_restored_records_total{outcome=\"applied\"",
    )
    .await
    .parse::<f64>()
    .unwrap();
    assert!(
        restored >= 10.0,
        "only {restored} state records restored: {}",
        reqwest::get(format!("http://{}/metrics", a2.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .filter(|l| l.contains("state_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let statuses: Vec<u16> = chat
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| r.status)
        .collect();
    for s in [500, 429, 503] {
        assert!(
            statuses.contains(&s),
            "the chat never answered {s}: {statuses:?}"
        );
    }
    eprintln!(
        "after the kill: {restored} state records restored; chat requests {} (posted {}), answers {:?}",
        statuses.len(),
        posted.len(),
        statuses.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(*s).or_insert(0) += 1;
            m
        })
    );
}

/// The VIP arrival alert as Slack and Alertmanager receive it: by default
/// the guest is named by id, with neither e-mail address nor first name
/// anywhere in what either receiver got; with `fields` naming the first
/// name, the message greets the guest by it, and still carries no e-mail
/// address (issue 22, minimisation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_alertmanager_get_no_email_or_name_unless_configured() {
    let broker = Broker::start();
    let rules = r#"
[[sinks.alerts.rules]]
kind = "vip_arrival"
"#;
    for (topic, fields, named) in [
        ("al-pii-default", None, false),
        (
            "al-pii-named",
            Some(r#"fields = ["guest.id", "guest.first_name", "guest.vip", "device.id"]"#),
            true,
        ),
    ] {
        broker.create_topic(topic, 1).await;
        let am = Alertmanager::start().await;
        let chat = FakeChat::start().await;
        let dir = tempfile::tempdir().unwrap();
        // A group (and so a state changelog) of its own: the second run must
        // not restore the first one's alert and re-post it.
        let mut cfg = config(&broker.brokers(), topic, dir.path(), &am.url(""), rules).replace(
            "group_id = \"alerting\"",
            &format!("group_id = \"{topic}\""),
        );
        if let Some(fields) = fields {
            cfg = cfg.replace(
                "[sinks.alerts]\nkind = \"alerts\"",
                &format!("[sinks.alerts]\nkind = \"alerts\"\n{fields}"),
            );
            assert!(cfg.contains(fields), "{cfg}");
        }
        let p = Processor::start_with_env(&cfg, &[("ALERTS_SLACK_URL", &chat.url())]);
        let vip = wifi(
            "vip-1",
            "device_connected",
            "v1",
            1,
            "lobby",
            "dvip",
            true,
            SystemTime::now(),
        );
        produce(&broker.brokers(), topic, &[vip]).await;
        wait_until(
            "the VIP message in chat and the alert in Alertmanager",
            Duration::from_secs(60),
            &[&p],
            || async { !chat.posted().is_empty() && !active(&am, "VipArrival").await.is_empty() },
        )
        .await;
        let posted = chat.posted();
        let alerts = active(&am, "VipArrival").await;
        let everything = format!("{posted:?} {alerts:?}");
        assert!(
            everything.contains("g-dvip"),
            "the guest is named by id: {everything}"
        );
        assert!(
            !everything.contains("example.com"),
            "an e-mail address reached a receiver: {everything}"
        );
        assert_eq!(
            everything.contains("Ana"),
            named,
            "first name with fields = {fields:?}: {everything}"
        );
        if named {
            assert!(posted[0].1.contains("VIP guest Ana arrived"), "{posted:?}");
        }
    }
}
