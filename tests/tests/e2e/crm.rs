//! The CRM sink against a fake CRM that fails with 500, 429 + Retry-After,
//! timeouts, a permanent 400 and a full outage: first the sink alone
//! (offered batches the way the pipeline does), then end to end through
//! tansu and the `processors` binary, with the dead-letter topic.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::fake_crm::{FakeCrm, Reply};
use e2e::{Broker, Processor, produce, purple_envelope, read_topic};
use processors::config::Config;
use processors::event::{Event, Guest, GuestWifi};
use processors::metrics::Metrics;
use processors::sinks::SinkConfig;
use processors::sinks::crm::CrmSink;
use processors::sinks::{Outcome, Sink};

const SECRET: &str = "Bearer s3cr3t-token-value";

fn event(id: &str) -> Arc<Event> {
    event_in(id, "v1")
}

/// An event of venue `venue` (its ordering key).
fn event_in(id: &str, venue: &str) -> Arc<Event> {
    Arc::new(Event {
        source: "purple".into(),
        event_id: id.into(),
        event_type: "guest_connects".into(),
        ordering_key: Some(venue.into()),
        sequence: Some(1),
        received_at_micros: 1_795_370_591_000_000,
        occurred_at_micros: Some(1_795_370_591_000_000),
        late: false,
        guest_wifi: Some(GuestWifi {
            event_type: "guest_connects".into(),
            sequence: Some(1),
            occurred_at_micros: 1_795_370_591_000_000,
            venue_id: venue.into(),
            venue_name: Some("Airport Hotel".into()),
            zone: Some("lobby".into()),
            device_id: Some("dev".into()),
            guest: Some(Guest {
                id: format!("g-{id}"),
                email: Some(format!("{id}@example.com")),
                first_name: Some("Ana".into()),
                vip: false,
            }),
        }),
        body: serde_json::json!({"id": id}),
    })
}

/// A CRM sink to `url` with the given extra settings, its credential in
/// the environment variable `var`.
fn sink(url: &str, var: &str, extra: &str) -> (CrmSink, Metrics) {
    let text = format!(
        r#"
[kafka]
brokers = "unused:9092"
[dedupe]
path = "/tmp/unused.redb"
[sinks.crm]
kind = "crm"
url = "{url}"
auth_header = "Authorization"
auth_env = "{var}"
template = "{template}"
required = ["guest.email"]
{rate}
{extra}
[[routes]]
name = "all"
sinks = ["crm"]
"#,
        template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crm/hubspot-contact.json"
        ),
        rate = if extra.contains("rate_per_second") {
            ""
        } else {
            "rate_per_second = 1000"
        },
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    let SinkConfig::Crm(crm) = &config.sinks["crm"].sink else {
        panic!("not a crm sink");
    };
    // SAFETY: each test sets its own variable, once, before any thread of
    // its own reads it; nothing else in this binary reads these names.
    unsafe { std::env::set_var(var, SECRET) };
    let metrics = Metrics::new().unwrap();
    (CrmSink::new("crm", crm, &metrics).unwrap(), metrics)
}

/// Offers `batch` the way the pipeline does: `Retry` events again (in
/// order) until each is accepted or rejected; bounded.
async fn offer_until_settled(
    sink: &CrmSink,
    batch: Vec<Arc<Event>>,
    pause: Duration,
    within: Duration,
) -> (Vec<String>, Vec<(String, String)>) {
    let deadline = Instant::now() + within;
    let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
    let mut pending = batch;
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "still pending after {within:?}: {:?}",
            pending.iter().map(|e| &e.event_id).collect::<Vec<_>>()
        );
        let outcomes = sink.accept(&pending).await;
        assert_eq!(outcomes.len(), pending.len());
        let mut again = Vec::new();
        for (e, o) in pending.into_iter().zip(outcomes) {
            match o {
                Outcome::Accepted => accepted.push(e.event_id.clone()),
                Outcome::Reject(r) => rejected.push((e.event_id.clone(), r)),
                Outcome::Retry(_) => again.push(e),
            }
        }
        pending = again;
        if !pending.is_empty() {
            tokio::time::sleep(pause).await;
        }
    }
    (accepted, rejected)
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.render()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn each_event_is_applied_once_through_500_429_and_timeouts_and_a_400_is_rejected() {
    let crm = FakeCrm::start().await;
    crm.script("purple:e500", &[Reply::Status(500), Reply::Status(502)]);
    crm.script("purple:e429", &[Reply::TooMany(1)]);
    crm.script(
        "purple:ehang",
        &[Reply::Hang(Duration::from_secs(3)), Reply::Status(500)],
    );
    crm.script("purple:e400", &[Reply::Always(400)]);
    let (sink, metrics) = sink(
        &crm.url(),
        "CRM_TEST_SECRET_1",
        r#"timeout = "500ms"
attempts_per_call = 2
max_attempts = 8
backoff_initial = "20ms"
backoff_max = "100ms"
breaker_failures = 50"#,
    );
    let ids = ["ok1", "e500", "e429", "ehang", "e400", "ok2"];
    let batch: Vec<_> = ids.iter().map(|i| event(i)).collect();
    let (accepted, rejected) = offer_until_settled(
        &sink,
        batch,
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await;

    let accepted: HashSet<_> = accepted.into_iter().collect();
    let want: HashSet<String> = ["ok1", "e500", "e429", "ehang", "ok2"]
        .map(String::from)
        .into();
    assert_eq!(accepted, want);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "e400");
    assert!(
        rejected[0].1.starts_with("HTTP 400: ") && rejected[0].1.contains("invalid email"),
        "{}",
        rejected[0].1
    );

    let s = crm.state.lock().unwrap();
    for id in ["ok1", "e500", "e429", "ehang", "ok2"] {
        assert_eq!(s.applied_count(&format!("purple:{id}")), 1, "{id}");
    }
    assert_eq!(s.applied_count("purple:e400"), 0);
    assert_eq!(s.applied.len(), 5);
    // The template's output arrived, keyed and authenticated on every try.
    let (_, body) = s.applied.iter().find(|(k, _)| k == "purple:ok1").unwrap();
    assert_eq!(body["inputs"][0]["id"], "ok1@example.com");
    assert_eq!(
        body["inputs"][0]["properties"]["last_wifi_venue"],
        "Airport Hotel"
    );
    for r in &s.requests {
        assert_eq!(r.auth, SECRET);
        assert!(r.key.starts_with("purple:"), "{r:?}");
    }
    // The 400 was not retried; the 500s were, until they succeeded.
    let tries = |k: &str| s.requests.iter().filter(|r| r.key == k).count();
    assert_eq!(tries("purple:e400"), 1);
    assert_eq!(tries("purple:e500"), 3);
    // The hung request was applied but its answer lost: the retry carried
    // the same key and was recognised as a repeat.
    assert!(s.repeats.get("purple:ehang").copied().unwrap_or(0) >= 1);
    // Retry-After: 1 was honoured.
    let at: Vec<Instant> = s
        .requests
        .iter()
        .filter(|r| r.key == "purple:e429")
        .map(|r| r.at)
        .collect();
    assert_eq!(at.len(), 2);
    assert!(
        at[1] - at[0] >= Duration::from_millis(900),
        "{:?}",
        at[1] - at[0]
    );
    drop(s);
    assert!(metric(&metrics, "processors_crm_requests_total") >= 10.0);
    assert!(!metrics.render().contains("s3cr3t"));
}

/// Per-key order: four venues, five events each, interleaved in one batch
/// the way the reorder stage releases them; some events of each venue fail
/// first (503, retried within the call or offered again), some hang a
/// little so venues overlap in time. Each venue's events must be applied
/// in batch order, and no event of a venue may even reach the CRM before
/// every earlier event of that venue was applied there.
#[tokio::test]
async fn events_of_one_key_are_applied_in_order_through_503s_while_keys_run_in_parallel() {
    let crm = FakeCrm::start().await;
    let venues = ["va", "vb", "vc", "vd"];
    let id = |v: &str, n: usize| format!("{v}-{n}");
    for (i, v) in venues.iter().enumerate() {
        // The first event of each venue: one 503 (retried in the call).
        crm.script(&format!("purple:{}", id(v, 0)), &[Reply::Status(503)]);
        // Its second: slow, so the venues overlap.
        crm.script(
            &format!("purple:{}", id(v, 1)),
            &[Reply::Hang(Duration::from_millis(100))],
        );
        // A later one: two 503s, more than one call's attempts, so the
        // event is answered Retry and offered again.
        crm.script(
            &format!("purple:{}", id(v, 2 + i % 2)),
            &[Reply::Status(503), Reply::Status(503)],
        );
    }
    let (sink, _) = sink(
        &crm.url(),
        "CRM_TEST_SECRET_ORDER",
        r#"timeout = "2s"
attempts_per_call = 2
max_attempts = 20
max_concurrency = 8
backoff_initial = "50ms"
backoff_max = "100ms"
breaker_failures = 50"#,
    );
    let mut batch = Vec::new();
    for n in 0..5 {
        for v in venues {
            batch.push(event_in(&id(v, n), v));
        }
    }
    let (accepted, rejected) = offer_until_settled(
        &sink,
        batch,
        Duration::from_millis(20),
        Duration::from_secs(30),
    )
    .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(accepted.len(), 20);

    let by_venue = crm.arrivals_by("/inputs/0/properties/last_wifi_venue_id");
    for v in venues {
        let arrivals = &by_venue[v];
        let applied: Vec<&str> = arrivals
            .iter()
            .filter(|(_, _, first)| *first)
            .map(|(k, _, _)| k.as_str())
            .collect();
        let want: Vec<String> = (0..5).map(|n| format!("purple:{}", id(v, n))).collect();
        assert_eq!(applied, want, "{v}: applied out of order: {arrivals:?}");
        // No request of a later event before every earlier one was applied.
        let mut done = 0;
        for (key, status, first) in arrivals {
            let n = want.iter().position(|w| w == key).unwrap();
            assert!(
                n <= done,
                "{v}: {key} reached the CRM before {} was applied: {arrivals:?}",
                want[done]
            );
            if *first {
                assert_eq!(n, done, "{v}: {key} ({status})");
                done += 1;
            }
        }
    }
    // The venues did not wait for each other.
    let s = crm.state.lock().unwrap();
    assert!(s.max_in_flight >= 2, "keys were not run in parallel");
}

/// A poison event: the CRM answers `500` to it for ever while it applies
/// everything else (other partitions' traffic on the same sink). The
/// destination is healthy, so the event's failures count: it is rejected
/// after `max_attempts` (the pipeline dead-letters it and its key moves
/// on), while an outage would not have cost it anything.
/// Records nothing; says the partition is handed over once `after`
/// effects were reported.
struct HandOverAfter {
    applied: std::sync::atomic::AtomicUsize,
    after: usize,
}

impl processors::sinks::Applied for HandOverAfter {
    fn applied(&self, _index: usize) -> processors::sinks::BoxFuture<'_, ()> {
        self.applied
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async {})
    }

    fn handing_over(&self) -> bool {
        self.applied.load(std::sync::atomic::Ordering::SeqCst) >= self.after
    }
}

#[tokio::test]
async fn a_hand_over_starts_no_new_request_and_leaves_the_rest_to_the_next_owner() {
    let crm = FakeCrm::start().await;
    let (sink, _) = sink(
        &crm.url(),
        "CRM_HANDOVER_TOKEN",
        "max_concurrency = 2\ntimeout = \"5s\"",
    );
    // Twelve keys, each request answered after 100 ms: the whole batch
    // would take 600 ms; the hand-over comes after the third effect.
    let batch: Vec<Arc<Event>> = (0..12)
        .map(|i| event_in(&format!("h{i}"), &format!("v{i}")))
        .collect();
    for e in &batch {
        crm.script(
            &format!("purple:{}", e.event_id),
            &[Reply::Hang(Duration::from_millis(100))],
        );
    }
    let hook = HandOverAfter {
        applied: Default::default(),
        after: 3,
    };
    let outcomes = sink.accept_tracked(&batch, &hook).await;
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Accepted))
        .count();
    // The third effect raised the hand-over while at most one other
    // request of the two slots was in flight.
    assert!(
        (3..=4).contains(&accepted),
        "{accepted} accepted: {outcomes:?}"
    );
    assert_eq!(
        crm.requests(),
        accepted,
        "no request beyond the accepted ones was sent"
    );
    for o in &outcomes {
        assert!(
            matches!(o, Outcome::Accepted)
                || matches!(o, Outcome::Retry(r) if r == processors::sinks::crm::HANDING_OVER),
            "{o:?}"
        );
    }
}

#[tokio::test]
async fn a_poison_event_that_a_healthy_crm_answers_500_is_rejected_after_max_attempts() {
    let crm = FakeCrm::start().await;
    crm.script("purple:dead", &[Reply::Always(500)]);
    let (sink, _) = sink(
        &crm.url(),
        "CRM_TEST_SECRET_2",
        r#"attempts_per_call = 2
max_attempts = 5
backoff_initial = "10ms"
backoff_max = "20ms"
breaker_failures = 50"#,
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let traffic = async {
        let mut n = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let e = event_in(&format!("other{n}"), &format!("w{n}"));
            assert_eq!(sink.accept(&[e]).await, [Outcome::Accepted]);
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    };
    let poison = async {
        let settled = offer_until_settled(
            &sink,
            vec![event("dead"), event("after")],
            Duration::from_millis(10),
            Duration::from_secs(20),
        )
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        settled
    };
    let (others, (accepted, rejected)) = tokio::join!(traffic, poison);
    assert_eq!(accepted, ["after"]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, "dead");
    assert!(
        rejected[0]
            .1
            .starts_with("gave up after 5 attempts; last: HTTP 500"),
        "{}",
        rejected[0].1
    );
    assert!(!rejected[0].1.contains("s3cr3t"));
    let s = crm.state.lock().unwrap();
    assert_eq!(s.applied.len(), others + 1);
    let tries: Vec<usize> = (0..s.requests.len())
        .filter(|&i| s.requests[i].key == "purple:dead")
        .collect();
    assert!(tries.len() >= 5, "{} requests", tries.len());
    // Its key waited for it: `after` went only once `dead` was refused.
    let after = s
        .requests
        .iter()
        .position(|r| r.key == "purple:after")
        .unwrap();
    assert!(after > tries[tries.len() - 1]);
}

/// An outage (503, then 401 and 403 as during a credential rotation)
/// lasting many times `max_attempts`' worth of attempts and breaker
/// probes: nothing is rejected, and once the CRM is back every event is
/// applied once, in order per key.
#[tokio::test]
async fn an_outage_longer_than_max_attempts_rejects_nothing_and_then_applies_each_event_once() {
    let crm = FakeCrm::start().await;
    let (sink, _) = sink(
        &crm.url(),
        "CRM_TEST_SECRET_OUTAGE",
        r#"timeout = "1s"
attempts_per_call = 2
max_attempts = 3
max_concurrency = 4
backoff_initial = "10ms"
backoff_max = "20ms"
breaker_failures = 3
breaker_cooldown = "100ms""#,
    );
    let batch: Vec<_> = (0..6)
        .map(|i| event_in(&format!("o{i}"), &format!("vo{}", i % 3)))
        .collect();
    let mut pending = batch.clone();
    let mut rejected = Vec::new();
    for status in [503, 401, 403, 500] {
        crm.set_outage(Some(status));
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            let outcomes = sink.accept(&pending).await;
            let mut again = Vec::new();
            for (e, o) in pending.into_iter().zip(outcomes) {
                match o {
                    Outcome::Retry(_) => again.push(e),
                    Outcome::Reject(r) => rejected.push((e.event_id.clone(), r)),
                    Outcome::Accepted => panic!("{} accepted during the outage", e.event_id),
                }
            }
            pending = again;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let during = crm.requests();
    assert!(
        rejected.is_empty(),
        "rejected during an outage ({during} requests): {rejected:?}"
    );
    // Many times max_attempts per key head: the outage outlasted the budget.
    assert!(
        during > 3 * 3 * 2,
        "only {during} requests during the outage"
    );

    crm.set_outage(None);
    let (accepted, rejected) = offer_until_settled(
        &sink,
        pending,
        Duration::from_millis(20),
        Duration::from_secs(20),
    )
    .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(accepted.len(), 6);
    let s = crm.state.lock().unwrap();
    assert_eq!(s.applied.len(), 6);
    for e in &batch {
        assert_eq!(s.applied_count(&format!("purple:{}", e.event_id)), 1);
    }
}

/// A careless CRM echoes the bare token (without its `Bearer` word) in
/// its error bodies: in a `401`, a `403`, and in a `400` whose echo
/// straddles the quoting clip. No reason the sink gives holds any of it.
#[tokio::test]
async fn a_token_echoed_bare_in_401_403_and_400_bodies_is_redacted_from_every_reason() {
    let crm = FakeCrm::start().await;
    crm.script(
        "purple:t401",
        &[Reply::EchoToken {
            status: 401,
            pad: 0,
        }],
    );
    crm.script(
        "purple:t403",
        &[Reply::EchoToken {
            status: 403,
            pad: 0,
        }],
    );
    // 278 + "invalid token ".len() = 292: the clip at 300 cuts the token.
    crm.script(
        "purple:t400",
        &[Reply::EchoToken {
            status: 400,
            pad: 278,
        }],
    );
    let (sink, metrics) = sink(
        &crm.url(),
        "CRM_TEST_SECRET_ECHO",
        "attempts_per_call = 1\nbreaker_failures = 50",
    );
    let batch = vec![
        event_in("t401", "ve1"),
        event_in("t403", "ve2"),
        event_in("t400", "ve3"),
    ];
    let outcomes = sink.accept(&batch).await;
    let bare = SECRET.trim_start_matches("Bearer ");
    let reasons: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Retry(r) | Outcome::Reject(r) => r.clone(),
            Outcome::Accepted => String::new(),
        })
        .collect();
    assert!(matches!(&outcomes[0], Outcome::Retry(_)), "{outcomes:?}");
    assert!(matches!(&outcomes[1], Outcome::Retry(_)), "{outcomes:?}");
    assert!(matches!(&outcomes[2], Outcome::Reject(_)), "{outcomes:?}");
    for (r, code) in reasons.iter().zip(["401", "403", "400"]) {
        assert!(r.starts_with(&format!("HTTP {code}: ")), "{r}");
        assert!(r.contains("invalid token"), "the body was not quoted: {r}");
        // Neither the token nor a piece of it cut by the clip.
        assert!(!r.contains(&bare[..4]), "the token leaked: {r}");
    }
    assert!(!metrics.render().contains(&bare[..4]));
    // And once the CRM takes them, the two it did not refuse are applied.
    let (accepted, rejected) = offer_until_settled(
        &sink,
        batch[..2].to_vec(),
        Duration::from_millis(20),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(accepted, ["t401", "t403"]);
    assert!(rejected.is_empty());
}

#[tokio::test]
async fn an_open_breaker_spares_a_dead_crm_and_closes_when_it_returns() {
    let crm = FakeCrm::start().await;
    crm.set_down(true);
    let (sink, metrics) = sink(
        &crm.url(),
        "CRM_TEST_SECRET_3",
        r#"attempts_per_call = 1
max_attempts = 1000
max_concurrency = 4
breaker_failures = 3
breaker_cooldown = "500ms""#,
    );
    let batch: Vec<_> = (0..20).map(|i| event(&format!("b{i}"))).collect();
    // Two seconds of outage, offered as fast as a pipeline with a 10ms
    // backoff would: without a breaker that is thousands of requests.
    let outage = Instant::now() + Duration::from_secs(2);
    let mut offers = 0;
    while Instant::now() < outage {
        let outcomes = sink.accept(&batch).await;
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Retry(_))));
        offers += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = crm.requests();
    assert!(offers > 20, "only {offers} offers");
    // Up to 4 in flight before it opened, then one probe per 500ms.
    assert!(
        (3..=12).contains(&during),
        "{during} requests during the outage"
    );
    assert_eq!(metric(&metrics, "processors_crm_breaker_open"), 1.0);

    crm.set_down(false);
    let (accepted, rejected) = offer_until_settled(
        &sink,
        batch,
        Duration::from_millis(50),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(accepted.len(), 20);
    assert!(rejected.is_empty());
    assert_eq!(metric(&metrics, "processors_crm_breaker_open"), 0.0);
    let s = crm.state.lock().unwrap();
    assert_eq!(s.applied.len(), 20);
    let keys: HashSet<_> = s.applied.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys.len(), 20);
}

#[tokio::test]
async fn concurrency_and_rate_are_limited_per_destination() {
    let crm = FakeCrm::start().await;
    for i in 0..8 {
        crm.script(
            &format!("purple:s{i}"),
            &[Reply::Hang(Duration::from_millis(200))],
        );
    }
    let (slow, _) = sink(
        &crm.url(),
        "CRM_TEST_SECRET_4",
        "timeout = \"2s\"\nmax_concurrency = 2",
    );
    // Eight keys (one key's events never overlap; keys do, up to the limit).
    let batch: Vec<_> = (0..8)
        .map(|i| event_in(&format!("s{i}"), &format!("vs{i}")))
        .collect();
    let (accepted, _) = offer_until_settled(
        &slow,
        batch,
        Duration::from_millis(10),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(accepted.len(), 8);
    assert_eq!(crm.state.lock().unwrap().max_in_flight, 2);

    let crm = FakeCrm::start().await;
    let (paced, _) = sink(&crm.url(), "CRM_TEST_SECRET_5", "rate_per_second = 20");
    let batch: Vec<_> = (0..11).map(|i| event(&format!("r{i}"))).collect();
    let (accepted, _) = offer_until_settled(
        &paced,
        batch,
        Duration::from_millis(10),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(accepted.len(), 11);
    let s = crm.state.lock().unwrap();
    let span = s.requests[10].at - s.requests[0].at;
    // 11 starts at most 20 per second apart: at least 10 × 50 ms.
    assert!(span >= Duration::from_millis(480), "{span:?}");
}

/// End to end: raw topic → processors (guest_connects routed to the CRM)
/// → fake CRM; the 400 one lands in the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_tansu_each_event_once_or_dead_lettered() {
    let broker = Broker::start();
    broker.create_topic("c-raw", 1).await;
    broker.create_topic("c-raw.quarantine", 1).await;
    broker.create_topic("c-raw.dlq", 1).await;
    let crm = FakeCrm::start().await;
    crm.script("purple:c2", &[Reply::Status(500), Reply::Status(503)]);
    crm.script("purple:c3", &[Reply::TooMany(1)]);
    crm.script("purple:c4", &[Reply::Hang(Duration::from_secs(3))]);
    // c5: two 401s echoing the bare token (logged as the reason of a
    // retry), then a 400 echoing it across the quoting clip (the
    // dead-letter reason): the token must reach neither.
    let echo = |status, pad| Reply::EchoToken { status, pad };
    crm.script("purple:c5", &[echo(401, 0), echo(401, 0), echo(400, 278)]);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-crm"
topic = "c-raw"
quarantine_topic = "c-raw.quarantine"
dlq_topic = "c-raw.dlq"

[processing]
gap_timeout = "2s"
retry_initial = "50ms"
retry_max = "500ms"

[dedupe]
path = "{dedupe}"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.crm]
kind = "crm"
url = "{url}"
auth_header = "Authorization"
auth_env = "CRM_E2E_TOKEN"
template = "{template}"
timeout = "500ms"
attempts_per_call = 2
max_attempts = 8
backoff_initial = "20ms"
backoff_max = "100ms"

[[routes]]
name = "crm"
types = ["guest_connects", "guest_registered"]
sinks = ["crm"]
"#,
        brokers = broker.brokers(),
        dedupe = dir.path().join("dedupe.redb").display(),
        url = crm.url(),
        template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crm/salesforce-journey.json"
        ),
    );
    // SAFETY: set before the child starts; only the child reads it.
    unsafe { std::env::set_var("CRM_E2E_TOKEN", SECRET) };
    let processor = Processor::start(&config);
    let venue = b"v-crm".to_vec();
    // c1-c5 are guest_connects (routed to the CRM); c6 a device event
    // (not routed: it must never reach the CRM).
    let records: Vec<_> = (1..=6)
        .map(|s| {
            let id = format!("c{s}");
            let mut body = e2e::purple_event(&id, "v-crm", s);
            if s <= 5 {
                let text = String::from_utf8(body).unwrap();
                body = text
                    .replace("device_connected", "guest_connects")
                    .into_bytes();
            }
            (venue.clone(), purple_envelope(&id, "v-crm", s, Some(body)))
        })
        .collect();
    produce(&broker.brokers(), "c-raw", &records).await;

    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let applied = crm.state.lock().unwrap().applied.len();
        let dead = processor.metric("processors_dead_lettered_total").await;
        let unrouted = processor.metric("processors_unrouted_total").await;
        if applied >= 4 && dead >= 1.0 && unrouted >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied {applied}, dead-lettered {dead}:\n{}",
            processor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let s = crm.state.lock().unwrap();
        for id in ["c1", "c2", "c3", "c4"] {
            assert_eq!(s.applied_count(&format!("purple:{id}")), 1, "{id}");
        }
        assert_eq!(s.applied.len(), 4, "c5 refused, c6 not routed");
        assert!(s.requests.iter().all(|r| r.key != "purple:c6"));
        assert_eq!(
            s.repeats.get("purple:c4"),
            Some(&1),
            "the hung one, retried with its key"
        );
        let (_, body) = s.applied.iter().find(|(k, _)| k == "purple:c1").unwrap();
        assert_eq!(body["ContactKey"], "g_77");
        assert_eq!(body["Data"]["VenueId"], "v-crm");
        assert!(s.requests.iter().all(|r| r.auth == SECRET));
    }
    let dlq = read_topic(&broker.brokers(), "c-raw.dlq").await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("event-id").as_deref(), Some("c5"));
    assert_eq!(dlq[0].header("sink").as_deref(), Some("crm"));
    let reason = dlq[0].header("reason").unwrap_or_default();
    assert!(reason.starts_with("HTTP 400"), "{reason}");
    assert!(reason.contains("invalid token"), "{reason}");
    let log = processor.log();
    assert!(log.contains("HTTP 401: invalid token"), "{log}");
    assert!(
        !log.contains("s3cr3t"),
        "the token leaked into the log:\n{log}"
    );
    for r in &dlq {
        for n in ["reason", "sink", "source", "event-id"] {
            let v = r.header(n).unwrap_or_default();
            assert!(!v.contains("s3cr3t"), "the token leaked into {n}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_older_than_max_event_age_sends_no_crm_request_but_lands_in_analytics() {
    let broker = Broker::start();
    let pg = e2e::Postgres::start();
    broker.create_topic("c-old", 1).await;
    broker.create_topic("c-old.quarantine", 1).await;
    broker.create_topic("c-old.dlq", 1).await;
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-crm-old"
topic = "c-old"
quarantine_topic = "c-old.quarantine"
dlq_topic = "c-old.dlq"

[processing]
gap_timeout = "2s"
retry_initial = "50ms"
retry_max = "500ms"

[dedupe]
path = "{dedupe}"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.audit]
kind = "jsonl"
path = "{audit}"

[sinks.analytics]
kind = "analytics"
url = "{pg}"

[sinks.crm]
kind = "crm"
url = "{url}"
auth_header = "Authorization"
auth_env = "CRM_OLD_TOKEN"
template = "{template}"
timeout = "2s"

[[routes]]
name = "everything"
sinks = ["audit", "analytics"]

[[routes]]
name = "welcome"
types = ["guest_connects"]
max_event_age = "15m"
sinks = ["crm"]
"#,
        brokers = broker.brokers(),
        dedupe = dir.path().join("dedupe.redb").display(),
        audit = audit.display(),
        pg = pg.url(),
        url = crm.url(),
        template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crm/salesforce-journey.json"
        ),
    );
    // SAFETY: set before the child starts; only the child reads it.
    unsafe { std::env::set_var("CRM_OLD_TOKEN", SECRET) };
    // A backlog, as after an outage: five arrivals that happened a week
    // ago (the fixture's 2026-11-22), then two that happen now, all of one
    // venue (so the fresh ones are routed after the old ones).
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let records: Vec<_> = (1..=7)
        .map(|s| {
            let id = format!("o{s}");
            let mut text = String::from_utf8(e2e::purple_event(&id, "v-old", s))
                .unwrap()
                .replace("device_connected", "guest_connects");
            if s > 5 {
                text = text.replace("2026-11-22T18:03:11.123Z", &now);
            }
            (
                b"v-old".to_vec(),
                purple_envelope(&id, "v-old", s, Some(text.into_bytes())),
            )
        })
        .collect();
    let processor = Processor::start(&config);
    produce(&broker.brokers(), "c-old", &records).await;

    let deadline = Instant::now() + Duration::from_secs(45);
    while e2e::sink_lines(&audit).len() < 7 || crm.state.lock().unwrap().applied.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "audit {} of 7, CRM applied {} of 2:\n{}",
            e2e::sink_lines(&audit).len(),
            crm.state.lock().unwrap().applied.len(),
            processor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let s = crm.state.lock().unwrap();
        let keys: Vec<&str> = s.requests.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["purple:o6", "purple:o7"],
            "only the fresh arrivals may reach the CRM"
        );
    }
    let ids: Vec<String> = e2e::sink_lines(&audit)
        .iter()
        .map(|l| l["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["o1", "o2", "o3", "o4", "o5", "o6", "o7"]);
    // The analysts' store has the whole backlog: too old to greet, not too
    // old to count.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = pg.psql("select string_agg(event_id, ',' order by sequence) from events");
        if stored.trim().split(',').count() == 7 || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stored.trim(), "o1,o2,o3,o4,o5,o6,o7", "{}", processor.log());
    assert_eq!(
        processor.metric("processors_route_skipped_total").await,
        5.0
    );
    let scrape = e2e::scrape(processor.metrics_addr).await;
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("processors_route_skipped_total{")
                && l.contains(r#"route="welcome""#)
                && l.contains(r#"reason="too_old""#)
                && l.ends_with(" 5")),
        "{scrape}"
    );
    // Nothing was unrouted or dead-lettered: the old ones went to the audit.
    assert_eq!(processor.metric("processors_unrouted_total").await, 0.0);
    assert_eq!(
        processor.metric("processors_dead_lettered_total").await,
        0.0
    );
    let log = processor.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("route skipped the event") && l.contains("too_old"))
            .count()
            == 5,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_crm_writes_loses_nothing_and_applies_each_event_once() {
    let broker = Broker::start();
    broker.create_topic("c-kill", 2).await;
    broker.create_topic("c-kill.quarantine", 1).await;
    broker.create_topic("c-kill.dlq", 1).await;
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A slow CRM (20 calls a second, a few failing first) so the kills land
    // while calls are in flight.
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-crm-kill"
topic = "c-kill"
quarantine_topic = "c-kill.quarantine"
dlq_topic = "c-kill.dlq"
# The killed and the restarted instance are different members (static
# membership off); the killed one's partitions move on after 6 s.
session_timeout = "6s"
instance_id = ""
options = {{ "heartbeat.interval.ms" = "1000" }}

[processing]
gap_timeout = "2s"
retry_initial = "50ms"
retry_max = "500ms"

[dedupe]
path = "{dedupe}"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.crm]
kind = "crm"
url = "{url}"
auth_header = "Authorization"
auth_env = "CRM_KILL_TOKEN"
template = "{template}"
timeout = "500ms"
rate_per_second = 20
max_concurrency = 2
backoff_initial = "20ms"
backoff_max = "100ms"

[[routes]]
name = "crm"
types = ["guest_connects"]
sinks = ["crm"]
"#,
        brokers = broker.brokers(),
        dedupe = dir.path().join("dedupe.redb").display(),
        url = crm.url(),
        template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crm/salesforce-journey.json"
        ),
    );
    // SAFETY: set before the children start; only they read it.
    unsafe { std::env::set_var("CRM_KILL_TOKEN", SECRET) };
    let total = 120u64;
    let mut keys = HashSet::new();
    let records: Vec<_> = (1..=total)
        .map(|s| {
            let venue = format!("v-kill-{}", s % 4);
            let seq = s.div_ceil(4);
            let id = format!("k{s}");
            keys.insert(format!("purple:{id}"));
            if s % 10 == 0 {
                crm.script(&format!("purple:{id}"), &[Reply::Status(503)]);
            }
            let body = String::from_utf8(e2e::purple_event(&id, &venue, seq))
                .unwrap()
                .replace("device_connected", "guest_connects")
                .into_bytes();
            (
                venue.clone().into_bytes(),
                purple_envelope(&id, &venue, seq, Some(body)),
            )
        })
        .collect();
    produce(&broker.brokers(), "c-kill", &records).await;

    let applied = || crm.state.lock().unwrap().applied.len();
    let mut partial_kills = 0;
    for round in 0..3 {
        let mut p = Processor::start(&config);
        let before = applied();
        let deadline = Instant::now() + Duration::from_secs(60);
        while applied() < before + 10 && applied() < keys.len() {
            assert!(
                Instant::now() < deadline,
                "no progress in round {round}:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.kill();
        if applied() < keys.len() {
            partial_kills += 1;
        }
    }
    assert!(
        partial_kills >= 1,
        "every kill came after the work was done"
    );
    let last = Processor::start(&config);
    let deadline = Instant::now() + Duration::from_secs(90);
    while applied() < keys.len() {
        assert!(
            Instant::now() < deadline,
            "applied {} of {}:\n{}",
            applied(),
            keys.len(),
            last.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let s = crm.state.lock().unwrap();
        let applied: HashSet<String> = s.applied.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(applied, keys, "every event, and nothing else");
        assert!(s.requests.iter().all(|r| keys.contains(&r.key)));
        let repeats: u32 = s.repeats.values().sum();
        eprintln!(
            "{} events applied once each over {} requests; {repeats} re-sent after the 3 kills (at most 2 in flight each)",
            keys.len(),
            s.requests.len()
        );
        // Each effect is recorded in the partition's state before its
        // request slot is freed: only what was in flight at a kill (at most
        // max_concurrency = 2) may be sent again.
        assert!(
            repeats <= 3 * 2,
            "{repeats} requests repeated an applied event after 3 kills with 2 in flight"
        );
    }
    assert_eq!(last.metric("processors_dead_lettered_total").await, 0.0);
}

#[tokio::test]
async fn https_crm_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (crm, ca) = FakeCrm::start_tls(dir.path()).await;
    assert!(crm.url().starts_with("https://"));

    // Trusting the CA: delivered, once, over TLS.
    let extra = format!("ca_file = \"{}\"", ca.display());
    let (trusting, _) = sink(&crm.url(), "CRM_TLS_TOKEN", &extra);
    let (accepted, rejected) = offer_until_settled(
        &trusting,
        vec![event("tls1")],
        Duration::from_millis(50),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(accepted, ["tls1"]);
    assert!(rejected.is_empty());
    assert_eq!(crm.state.lock().unwrap().applied_count("purple:tls1"), 1);

    // Not trusting it (Mozilla roots only): the handshake fails, nothing
    // reaches the CRM, and the event is not accepted.
    let (untrusting, _) = sink(&crm.url(), "CRM_TLS_TOKEN_2", "");
    let outcomes = untrusting.accept(&[event("tls2")]).await;
    assert!(matches!(&outcomes[..], [Outcome::Retry(_)]), "{outcomes:?}");
    assert_eq!(crm.state.lock().unwrap().requests.len(), 1);
}

/// A CRM outage that outlasts a welcome's `max_event_age`: the arrival
/// was fresh when routed, but the retries held it past its limit, so it is
/// dropped for the CRM rather than sent late when the CRM returns; a VIP
/// arrival in the same batch, which also reaches the CRM through a route
/// without a limit, is sent once the CRM is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_held_by_a_crm_outage_past_max_event_age_is_never_sent_late() {
    let broker = Broker::start();
    broker.create_topic("c-exp", 1).await;
    broker.create_topic("c-exp.quarantine", 1).await;
    broker.create_topic("c-exp.dlq", 1).await;
    let crm = FakeCrm::start().await;
    crm.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-crm-exp"
topic = "c-exp"
quarantine_topic = "c-exp.quarantine"
dlq_topic = "c-exp.dlq"

[processing]
gap_timeout = "1s"
retry_initial = "200ms"
retry_max = "1s"

[dedupe]
path = "{dedupe}"

[metrics]
listen = "127.0.0.1:0"

[sources.purple]
parser = "guest_wifi"

[sinks.audit]
kind = "jsonl"
path = "{audit}"

[sinks.crm]
kind = "crm"
url = "{url}"
auth_header = "Authorization"
auth_env = "CRM_EXP_TOKEN"
template = "{template}"
timeout = "2s"
max_attempts = 1000
attempts_per_call = 1
backoff_max = "500ms"
breaker_cooldown = "1s"

[[routes]]
name = "everything"
sinks = ["audit"]

[[routes]]
name = "welcome"
types = ["guest_connects"]
max_event_age = "8s"
sinks = ["crm"]

[[routes]]
name = "vip"
where = {{ "/guest/vip" = true }}
sinks = ["crm"]
"#,
        brokers = broker.brokers(),
        dedupe = dir.path().join("dedupe.redb").display(),
        audit = audit.display(),
        url = crm.url(),
        template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crm/salesforce-journey.json"
        ),
    );
    // SAFETY: set before the child starts; only the child reads it.
    unsafe { std::env::set_var("CRM_EXP_TOKEN", SECRET) };
    let processor = Processor::start(&config);
    // Ready (in the group, nothing restoring) before the arrivals happen,
    // so they are fresh when routed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("http://{}/readyz", processor.metrics_addr))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "{}", processor.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    // Two arrivals happening now at two venues: x1 an ordinary guest, x7 a
    // VIP (the fixture's guest is a VIP at sequences divisible by 7).
    let records: Vec<_> = [("x1", "v-exp-a", 1), ("x7", "v-exp-b", 7)]
        .into_iter()
        .map(|(id, venue, s)| {
            let text = String::from_utf8(e2e::purple_event(id, venue, s))
                .unwrap()
                .replace("device_connected", "guest_connects")
                .replace("2026-11-22T18:03:11.123Z", &now);
            (
                venue.as_bytes().to_vec(),
                purple_envelope(id, venue, s, Some(text.into_bytes())),
            )
        })
        .collect();
    produce(&broker.brokers(), "c-exp", &records).await;
    // Both are offered to the CRM while it is down, and offered again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys: HashSet<String> = crm
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|r| r.key.clone())
            .collect();
        if keys.contains("purple:x1") && keys.contains("purple:x7") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", processor.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The outage outlasts x1's limit (8 s after it occurred), then ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while processor.metric("processors_sink_expired_total").await < 1.0 {
        assert!(Instant::now() < deadline, "{}", processor.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crm.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while crm.state.lock().unwrap().applied_count("purple:x7") == 0 {
        assert!(Instant::now() < deadline, "{}", processor.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a wrongly kept x1 the time to be sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let s = crm.state.lock().unwrap();
        assert_eq!(s.applied_count("purple:x1"), 0, "a stale welcome was sent");
        assert_eq!(s.applied_count("purple:x7"), 1);
        let after_recovery = s
            .requests
            .iter()
            .filter(|r| r.key == "purple:x1" && r.status < 300)
            .count();
        assert_eq!(after_recovery, 0, "x1 offered after the CRM recovered");
    }
    // (Only the CRM has routes with a limit.)
    assert_eq!(processor.metric("processors_sink_expired_total").await, 1.0);
    // Both are in the audit sink: dropped for the CRM only.
    let ids: HashSet<String> = e2e::sink_lines(&audit)
        .iter()
        .map(|l| l["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, HashSet::from(["x1".to_string(), "x7".to_string()]));
    assert_eq!(
        processor.metric("processors_dead_lettered_total").await,
        0.0
    );
    let log = processor.log();
    assert!(
        log.contains("held the event past its routes' max_event_age"),
        "{log}"
    );
    assert!(
        !log.contains("a@example.com") && !log.contains("Ana"),
        "{log}"
    );
}
