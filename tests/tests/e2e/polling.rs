//! Polling and reconciliation end to end: the provider simulator (`ingest
//! send` with its REST history API) loses webhooks on purpose, the real
//! poller (`ingest poll`) reads the API into the raw topic on a real
//! broker, and the real processors de-duplicate webhook and polled copies
//! into their JSON-lines sink and the analytics store on a real
//! PostgreSQL, whose sessions and footfall are compared with the truth. Then the poller's manners, seen from the
//! provider's side (its own request log): 304 on a repeat with nothing new,
//! `Retry-After` honoured, the budget never exceeded, the cursor kept in
//! Kafka across a restart; bad pages counted and logged, never a crash; a
//! bad `poll` table refused by `check-config`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::{
    Broker, Ingest, Poller, Postgres, Processor, Provider, binary, json_log_lines,
    processors_config, purple_config, read_topic, sink_lines,
};
use ingest::simulator::{Generator, GeneratorConfig};
use schemas::Envelope;

const SECRET: &str = "polling-webhook-secret";
const TOKEN: &str = "polling-api-token-never-logged";

/// A poller config: the `purple` source (as ingest reads it) with `poll`.
fn poller_config(brokers: &str, topic: &str, cursors: &str, poll: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topic = "{topic}"
delivery_timeout = "30s"

[log]
format = "json"

[poller]
metrics_listen = "127.0.0.1:0"
cursor_topic = "{cursors}"

[sources.purple]
ordering_key = {{ pointer = "/venue/id" }}
sequence = {{ pointer = "/sequence" }}
signature = {{ scheme = "purple", secrets = [{{ id = "k1", env = "E2E_POLL_SECRET" }}] }}
poll = {{ token_env = "E2E_POLL_TOKEN", {poll} }}
"#
    )
}

const POLLER_ENV: &[(&str, &str)] = &[("E2E_POLL_SECRET", SECRET), ("E2E_POLL_TOKEN", TOKEN)];

/// The ids and bodies the simulator generates for `seed`, in true order.
fn truth(seed: u64, count: usize, venues: usize) -> Vec<(String, Vec<u8>)> {
    let mut g = Generator::new(GeneratorConfig {
        seed,
        venues,
        ..GeneratorConfig::default()
    });
    (0..count)
        .map(|_| {
            let e = g.next_event();
            (e.id, e.body)
        })
        .collect()
}

/// What the analytics store must hold for `events` (bodies in any order):
/// its `events` ids, `footfall_hourly` and `device_sessions`, one line per
/// row, in the shapes of [`ANALYTICS_SQL`]. Straight from the bodies, by
/// the store's documented rules: a device's arrivals (`device_connected`,
/// `guest_connects`, `guest_registered`) and departures
/// (`device_disconnected`, `venue_left`) in occurrence order make visits:
/// the first arrival with no visit open starts one, the next departure
/// ends it; footfall counts the visits begun per venue and UTC hour (and
/// their distinct devices).
fn analytics_truth(events: &[(String, Vec<u8>)]) -> [String; 3] {
    use std::collections::{BTreeMap, BTreeSet};
    struct Ev {
        id: String,
        kind: String,
        seq: i64,
        at: String,
        venue: String,
        device: String,
    }
    let evs: Vec<Ev> = events
        .iter()
        .map(|(id, body)| {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            let text = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap().to_string();
            Ev {
                id: id.clone(),
                kind: text("/type"),
                seq: v["sequence"].as_i64().unwrap(),
                at: text("/occurred_at"),
                venue: text("/venue/id"),
                device: text("/device/id"),
            }
        })
        .collect();
    let ids: BTreeSet<&str> = evs.iter().map(|e| e.id.as_str()).collect();
    const ARRIVALS: [&str; 3] = ["device_connected", "guest_connects", "guest_registered"];
    const DEPARTURES: [&str; 2] = ["device_disconnected", "venue_left"];
    let mut by_device: BTreeMap<(&str, &str), Vec<&Ev>> = BTreeMap::new();
    for e in evs
        .iter()
        .filter(|e| ARRIVALS.contains(&e.kind.as_str()) || DEPARTURES.contains(&e.kind.as_str()))
    {
        by_device.entry((&e.venue, &e.device)).or_default().push(e);
    }
    let mut sessions = BTreeSet::new();
    let mut footfall: BTreeMap<(&str, &str), (u64, BTreeSet<&str>)> = BTreeMap::new();
    for ((venue, device), mut list) in by_device {
        // Times of one shape (milliseconds, Z) sort as text.
        list.sort_by(|a, b| (&a.at, a.seq, &a.id).cmp(&(&b.at, b.seq, &b.id)));
        let mut open: Option<&Ev> = None;
        let mut visits: Vec<(&Ev, &str)> = Vec::new();
        for e in list {
            if DEPARTURES.contains(&e.kind.as_str()) {
                if let Some(start) = open.take() {
                    visits.push((start, e.id.as_str()));
                }
            } else if open.is_none() {
                open = Some(e);
            }
        }
        visits.extend(open.map(|start| (start, "")));
        for (start, end) in visits {
            sessions.insert(format!("{venue}|{device}|{}|{end}", start.id));
            let f = footfall.entry((venue, &start.at[..13])).or_default();
            f.0 += 1;
            f.1.insert(device);
        }
    }
    let lines = |rows: Vec<String>| rows.join("\n");
    [
        lines(ids.into_iter().map(str::to_string).collect()),
        lines(
            footfall
                .into_iter()
                .map(|((v, h), (n, d))| format!("{v}|{h}|{n}|{}", d.len()))
                .collect(),
        ),
        lines(sessions.into_iter().collect()),
    ]
}

/// The analytics store's rows in [`analytics_truth`]'s shapes: event ids
/// (each row once: the primary key), footfall per venue and UTC hour, and
/// sessions by their connect and disconnect event ids.
const ANALYTICS_SQL: [&str; 3] = [
    "select event_id from events order by 1",
    "select venue_id || '|' || to_char(hour at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24') || '|' \
     || connections || '|' || unique_devices from footfall_hourly order by 1",
    "select venue_id || '|' || device_id || '|' || connect_event_id || '|' \
     || coalesce(disconnect_event_id, '') from device_sessions order by 1",
];

/// The sink's event ids, each with how often it was written.
fn sink_ids(path: &std::path::Path) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for l in sink_lines(path) {
        *ids.entry(l["event_id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    ids
}

/// What a lossy run leaves: the JSON-lines sink's ids with their counts,
/// the truth, how many webhooks were lost, the raw topic's polled
/// envelopes and the analytics store's rows ([`ANALYTICS_SQL`], each
/// sorted).
struct Run {
    sink: HashMap<String, usize>,
    truth: Vec<(String, Vec<u8>)>,
    lost: u64,
    polled: Vec<Envelope>,
    analytics: [String; 3],
}

/// The lines only one side has, marked `-` (store) and `+` (truth).
fn diff_lines(have: &str, want: &str) -> String {
    let h: HashSet<&str> = have.lines().collect();
    let w: HashSet<&str> = want.lines().collect();
    let mut out: Vec<String> = h.difference(&w).map(|l| format!("- {l}")).collect();
    out.extend(w.difference(&h).map(|l| format!("+ {l}")));
    out.sort();
    out.join("\n")
}

/// Lines of `text`, sorted (PostgreSQL's collation need not be bytewise).
fn sorted(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// The headline run: 5 % of webhooks lost and 30 s with none at all
/// mid-stream, with or without the poller, into the JSON-lines sink and
/// the analytics store on PostgreSQL.
async fn lossy_run(name: &str, with_poller: bool) -> Run {
    const COUNT: usize = 1100;
    const SEED: u64 = 20;
    let broker = Broker::start();
    let raw = format!("{name}-raw");
    broker.create_topic(&raw, 3).await;
    broker.create_topic(&format!("{raw}.quarantine"), 1).await;
    broker.create_topic(&format!("{raw}.dlq"), 1).await;
    broker
        .create_topic_with(
            &format!("{name}-cursors"),
            1,
            &[("cleanup.policy", "compact")],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let pg = Postgres::start();
    let config = processors_config(
        &broker.brokers(),
        &raw,
        &format!("g-{name}"),
        &dir.path().join("dedupe.redb"),
        &sink,
        "gap_timeout = \"20s\"",
    )
    .replace("sinks = [\"test\"]", "sinks = [\"test\", \"analytics\"]");
    let processor = Processor::start(&format!(
        "{config}\n[sinks.analytics]\nkind = \"analytics\"\nurl = \"{}\"\n",
        pg.url()
    ));
    let ingest = Ingest::start(
        &purple_config(&broker.brokers(), &raw, &[("k1", "E2E_POLL_SECRET")], ""),
        &[("E2E_POLL_SECRET", SECRET)],
    );
    ingest.wait_ready().await;
    // 20 events a second for 55 s; the webhooks from the 300th on fall in
    // a 30 s pause (about 600), then delivery resumes; and 5 % of the
    // others are lost too.
    let provider = Provider::start(
        &ingest.url("/webhooks/purple"),
        SECRET,
        TOKEN,
        &[
            "--count",
            &COUNT.to_string(),
            "--rate",
            "20",
            "--venues",
            "3",
            "--seed",
            &SEED.to_string(),
            "--lose",
            "0.05",
            "--pause-after",
            "300",
            "--pause-for",
            "30s",
        ],
    );
    let poller = with_poller.then(|| {
        Poller::start(
            &poller_config(
                &broker.brokers(),
                &raw,
                &format!("{name}-cursors"),
                &format!(
                    "url = \"{}/api/v1/events\", interval = \"1s\", page_size = 200, max_requests_per_minute = 120",
                    provider.api
                ),
            ),
            POLLER_ENV,
        )
    });
    let stats = provider.wait_done(Duration::from_secs(120)).await;
    let truth = truth(SEED, COUNT, 3);
    assert_eq!(stats.recorded, COUNT);
    assert!(
        stats.lost > 550,
        "{} lost: the pause did not happen",
        stats.lost
    );
    // Everything that can arrive has arrived: all of it with the poller,
    // only the delivered webhooks without.
    let want = if with_poller {
        COUNT
    } else {
        COUNT - stats.lost as usize
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink_ids(&sink).len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} events in the sink:\n{}\n{}",
            sink_ids(&sink).len(),
            processor.log(),
            poller.as_ref().map(Poller::log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The analytics store commits its batches on its own schedule.
    while pg.psql("select count(*) from events").trim() != want.to_string() {
        assert!(
            Instant::now() < deadline,
            "{} of {want} events in the analytics store:\n{}",
            pg.psql("select count(*) from events"),
            processor.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let anything wrongly released twice show up before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let analytics = ANALYTICS_SQL.map(|q| sorted(&pg.psql(q)));
    let polled = read_topic(&broker.brokers(), &raw)
        .await
        .into_iter()
        .filter_map(|r| Envelope::decode(&r.value).ok())
        .filter(|e| e.verification.scheme == "polled")
        .collect();
    if let Some(p) = &poller {
        assert!(
            !p.log().contains(TOKEN),
            "the API token is in the poller's log"
        );
    }
    // Events applied whose first copy came from the poller: at least every
    // lost webhook (a polled copy can also beat its webhook).
    let recovered = processor.metric("processors_recovered_events_total").await;
    if with_poller {
        assert!(
            recovered >= stats.lost as f64 && recovered <= COUNT as f64,
            "{recovered} recovered, {} lost",
            stats.lost
        );
    } else {
        assert_eq!(recovered, 0.0, "nothing polled, nothing recovered");
    }
    Run {
        sink: sink_ids(&sink),
        truth,
        lost: stats.lost,
        polled,
        analytics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_webhooks_are_recovered_by_polling_exactly_once() {
    let Run {
        sink,
        truth,
        lost,
        polled,
        analytics,
    } = lossy_run("poll-on", true).await;
    // The analytics store: every event once, and sessions and footfall as
    // the provider's whole stream makes them.
    let want = analytics_truth(&truth).map(|t| sorted(&t));
    for (i, what) in ["events", "footfall_hourly", "device_sessions"]
        .iter()
        .enumerate()
    {
        assert!(
            analytics[i] == want[i],
            "{what} differs from the truth ({lost} webhooks lost):\n{}",
            diff_lines(&analytics[i], &want[i])
        );
    }
    let want: HashSet<&String> = truth.iter().map(|(id, _)| id).collect();
    let got: HashSet<&String> = sink.keys().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?} ({lost} webhooks lost)"
    );
    let twice: Vec<_> = sink.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    // The polled copies are the provider's exact bytes under the payload's
    // own id, keyed and sequenced like the webhooks.
    let bodies: HashMap<&String, &Vec<u8>> = truth.iter().map(|(id, b)| (id, b)).collect();
    assert!(
        polled.len() >= lost as usize,
        "{} polled of {lost} lost",
        polled.len()
    );
    for e in &polled {
        assert_eq!(Some(&&e.body), bodies.get(&e.event_id), "{}", e.event_id);
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(e.ordering_key.as_deref(), v["venue"]["id"].as_str());
        assert_eq!(e.sequence, v["sequence"].as_i64());
        assert_eq!(e.source, "purple");
        assert_eq!(e.request_id.len(), 36, "a UUID: {}", e.request_id);
        assert!(e.client_addr.is_none());
    }
}

/// The same run without the poller: the lost webhooks are missing, so the
/// test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_poller_the_lost_webhooks_stay_missing() {
    let Run {
        sink,
        truth,
        lost,
        polled,
        analytics,
    } = lossy_run("poll-off", false).await;
    assert!(polled.is_empty());
    // The store holds exactly the delivered events, so its footfall and
    // sessions are not the truth's.
    let delivered: Vec<(String, Vec<u8>)> = truth
        .iter()
        .filter(|(id, _)| sink.contains_key(id))
        .cloned()
        .collect();
    let partial = analytics_truth(&delivered).map(|t| sorted(&t));
    let whole = analytics_truth(&truth).map(|t| sorted(&t));
    assert_eq!(analytics, partial, "the store holds what was delivered");
    assert_ne!(analytics[1], whole[1], "footfall without the lost webhooks");
    assert_ne!(analytics[2], whole[2], "sessions without the lost webhooks");
    let missing = truth
        .iter()
        .filter(|(id, _)| !sink.contains_key(id))
        .count();
    assert_eq!(
        missing as u64, lost,
        "missing events are exactly the lost webhooks"
    );
}

/// Starts a broker with a raw and a cursor topic and a provider of `count`
/// events whose webhooks go nowhere (only the API is read).
async fn provider_only(name: &str, count: usize, api_args: &[&str]) -> (Broker, Provider) {
    let broker = Broker::start();
    broker.create_topic(&format!("{name}-raw"), 1).await;
    broker
        .create_topic_with(
            &format!("{name}-cursors"),
            1,
            &[("cleanup.policy", "compact")],
        )
        .await;
    let count = count.to_string();
    let mut args = vec!["--count", count.as_str(), "--timeout", "200ms"];
    args.extend_from_slice(api_args);
    let provider = Provider::start("http://127.0.0.1:1/webhooks/purple", SECRET, TOKEN, &args);
    provider.wait_done(Duration::from_secs(60)).await;
    (broker, provider)
}

fn polled_count(records: &[e2e::Record]) -> usize {
    records
        .iter()
        .filter_map(|r| Envelope::decode(&r.value).ok())
        .filter(|e| e.verification.scheme == "polled")
        .count()
}

/// A repeat poll with nothing new is conditional and answered 304, and
/// produces nothing; a restarted poller continues from the cursor it kept
/// in Kafka; `/readyz` says whether the brokers take its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_poll_is_304_and_a_restart_continues_from_the_kept_cursor() {
    let (broker, provider) = provider_only("p304", 30, &[]).await;
    let config = poller_config(
        &broker.brokers(),
        "p304-raw",
        "p304-cursors",
        &format!(
            "url = \"{}/api/v1/events\", interval = \"300ms\", page_size = 10",
            provider.api
        ),
    );
    let mut poller = Poller::start(&config, POLLER_ENV);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = provider.stats().await;
        if s.requests.iter().filter(|r| r.status == 304).count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 304s: {s:?}\n{}",
            poller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let records = read_topic(&broker.brokers(), "p304-raw").await;
    assert_eq!(polled_count(&records), 30, "the 304s produced nothing");
    assert_eq!(
        poller
            .metric("ingest_poll_events_total", &[("source", "purple")])
            .await,
        30.0
    );
    assert!(
        poller
            .metric("ingest_poll_requests_total", &[("outcome", "304")])
            .await
            >= 3.0
    );
    let before = provider.stats().await.requests.len();
    assert!(poller.stop(Duration::from_secs(10)).success());

    // A new poller asks from where the last one stopped: the end.
    let poller = Poller::start(&config, POLLER_ENV);
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let s = provider.stats().await;
        if let Some(r) = s.requests.get(before) {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the restarted poller sent nothing\n{}",
            poller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(first.uri.contains("cursor=p30"), "{first:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = read_topic(&broker.brokers(), "p304-raw").await;
    assert_eq!(
        polled_count(&records),
        30,
        "the restart produced nothing again"
    );
    // Ready while the brokers take its records; not once they are gone.
    let readyz = || async {
        reqwest::get(format!("http://{}/readyz", poller.metrics_addr))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(readyz().await, 200);
    let mut broker = broker;
    broker.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz().await != 503 {
        assert!(
            Instant::now() < deadline,
            "still ready without brokers:\n{}",
            poller.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `429` with `Retry-After: 5`: no request before 5 s have passed; and the
/// budget is never exceeded over the run, by the provider's own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_the_budget_never_exceeded() {
    const BUDGET: usize = 8;
    let (broker, provider) = provider_only(
        "p429",
        50,
        &["--api-limit-per-minute", "3", "--api-retry-after", "5s"],
    )
    .await;
    let poller = Poller::start(
        &poller_config(
            &broker.brokers(),
            "p429-raw",
            "p429-cursors",
            &format!(
                "url = \"{}/api/v1/events\", interval = \"100ms\", page_size = 10, max_requests_per_minute = {BUDGET}",
                provider.api
            ),
        ),
        POLLER_ENV,
    );
    tokio::time::sleep(Duration::from_secs(25)).await;
    let requests = provider.stats().await.requests;
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 2,
        "{statuses:?}\n{}",
        poller.log()
    );
    for pair in requests.windows(2) {
        if pair[0].status == 429 {
            let gap = pair[1].at_ms - pair[0].at_ms;
            assert!(
                gap >= 5000,
                "a request {gap} ms after a 429 with Retry-After 5: {requests:?}"
            );
        }
    }
    // The budget: at most BUDGET in any 60 s, and it was used up (so it,
    // not the interval, held the poller back).
    for (i, r) in requests.iter().enumerate() {
        let in_minute = requests[i..]
            .iter()
            .filter(|s| s.at_ms - r.at_ms < 60_000)
            .count();
        assert!(
            in_minute <= BUDGET,
            "{in_minute} requests in a minute: {requests:?}"
        );
    }
    assert_eq!(requests.len(), BUDGET, "{statuses:?}");
    assert_eq!(
        poller
            .metric("ingest_poll_budget_used_requests", &[("source", "purple")])
            .await,
        BUDGET as f64
    );
    assert_eq!(
        poller
            .metric("ingest_poll_requests_total", &[("outcome", "429")])
            .await,
        statuses.iter().filter(|s| **s == 429).count() as f64
    );
}

/// Malformed pages, items without an id and cursors that go backwards are
/// counted and logged with the source; the poller goes on, within its
/// budget, and never produces an item without an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pages_are_counted_and_logged_never_a_crash_or_a_loop() {
    let (broker, provider) = provider_only(
        "pbad",
        200,
        &[
            "--api-malformed",
            "0.3",
            "--api-missing-id",
            "0.05",
            "--api-cursor-back",
            "0.3",
            "--api-errors",
            "0.1",
        ],
    )
    .await;
    let mut poller = Poller::start(
        &poller_config(
            &broker.brokers(),
            "pbad-raw",
            "pbad-cursors",
            &format!(
                "url = \"{}/api/v1/events\", interval = \"200ms\", page_size = 10, max_requests_per_minute = 100",
                provider.api
            ),
        ),
        POLLER_ENV,
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let reasons = ["malformed_page", "item_without_id", "cursor_backwards"];
    loop {
        let mut all = true;
        for reason in reasons {
            all &= poller
                .metric(
                    "ingest_poll_problems_total",
                    &[("source", "purple"), ("reason", reason)],
                )
                .await
                > 0.0;
        }
        if all {
            break;
        }
        assert!(poller.is_running(), "the poller died:\n{}", poller.log());
        assert!(
            Instant::now() < deadline,
            "not every problem seen:\n{}",
            poller.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // It goes on (the counters lead their log lines by a moment).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(poller.is_running(), "the poller died:\n{}", poller.log());
    let log = poller.log();
    for line in [
        "malformed page",
        "item without an id skipped",
        "next cursor goes back",
    ] {
        assert!(
            json_log_lines(&log).iter().any(|l| l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(line))
                && l["fields"]["source"] == "purple"),
            "no {line:?} line naming the source:\n{log}"
        );
    }
    let requests = provider.stats().await.requests;
    for (i, r) in requests.iter().enumerate() {
        let in_minute = requests[i..]
            .iter()
            .filter(|s| s.at_ms - r.at_ms < 60_000)
            .count();
        assert!(in_minute <= 100, "{in_minute} requests in a minute");
    }
    // The poller's /metrics follows the naming rules, its labels are
    // bounded and never carry the token.
    let text = e2e::scrape(poller.metrics_addr).await;
    let families = e2e::exposition::parse(&text).unwrap();
    let problems = e2e::exposition::scrape_problems(&families, &[TOKEN.to_string()]);
    assert!(problems.is_empty(), "{problems:#?}\n{text}");
    for outcome in ["200", "5xx"] {
        assert!(
            e2e::metric_sum(&text, "ingest_poll_requests_total", &[("outcome", outcome)]) > 0.0,
            "no {outcome}:\n{text}"
        );
    }
    let truth: HashSet<String> = truth(1, 200, 5).into_iter().map(|(id, _)| id).collect();
    for r in read_topic(&broker.brokers(), "pbad-raw").await {
        let e = Envelope::decode(&r.value).unwrap();
        assert!(
            truth.contains(&e.event_id),
            "{} is no event of the provider",
            e.event_id
        );
    }
}

#[test]
fn a_bad_poll_table_gets_a_clear_error_from_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.toml");
    std::fs::write(
        &path,
        r#"
[sources.purple]
signature = { scheme = "purple", secrets = [{ id = "k1", env = "PATH" }] }
poll = { url = "not a url", token_env = "E2E_SURELY_UNSET_POLL_TOKEN", page_size = 5000, max_requests_per_minute = 0 }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(binary("ingest"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "sources.purple.poll.url: \"not a url\" is not a URL",
        "sources.purple.poll.page_size: 5000 must be between 1 and 1000",
        "sources.purple.poll.max_requests_per_minute: 0 must be between 1 and 100000",
        "sources.purple.poll: set `interval` (scheduled polling), `reconcile` (the sweep), `range_url` (gaps), or several",
        "sources.purple.poll.token_env: secret \"poll-token\": environment variable E2E_SURELY_UNSET_POLL_TOKEN is not set",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    // For `serve`, which never reads the API token (its container need
    // not hold it), the same file's table is judged but not the token.
    let check = |args: &[&str], text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(binary("ingest"))
            .args(["check-config", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = std::fs::read_to_string(&path).unwrap();
    let (ok, err) = check(&["--for", "serve"], &bad);
    assert!(!ok && err.contains("sources.purple.poll.url: "), "{err}");
    assert!(!err.contains("E2E_SURELY_UNSET_POLL_TOKEN"), "{err}");
    let good = bad
        .replace("not a url", "https://api.example.com/v1/events")
        .replace(
            "page_size = 5000, max_requests_per_minute = 0",
            "interval = \"1m\"",
        );
    assert_eq!(check(&["--for", "serve"], &good), (true, String::new()));
    let (ok, err) = check(&["--for", "poll"], &good);
    assert!(
        !ok && err.contains("E2E_SURELY_UNSET_POLL_TOKEN is not set"),
        "{err}"
    );
    // The poller verifies no webhook, so `--for poll` does not ask for the
    // signing secret (its container does not hold it); `serve` does.
    let unsigned = good
        .replace(
            "env = \"PATH\"",
            "env = \"E2E_SURELY_UNSET_SIGNING_SECRET\"",
        )
        .replace("E2E_SURELY_UNSET_POLL_TOKEN", "PATH");
    assert_eq!(check(&["--for", "poll"], &unsigned), (true, String::new()));
    let (ok, err) = check(&["--for", "serve"], &unsigned);
    assert!(
        !ok && err.contains("E2E_SURELY_UNSET_SIGNING_SECRET is not set"),
        "{err}"
    );
    // For `poll`, a file without a poll table is named.
    let receives: String = good
        .lines()
        .filter(|l| !l.starts_with("poll ="))
        .collect::<Vec<_>>()
        .join("\n");
    let (ok, err) = check(&["--for", "poll"], &receives);
    assert!(
        !ok && err.contains("sources: no source has a `poll` table; nothing to poll"),
        "{err}"
    );
    let (ok, err) = check(&["--for", "nonsense"], &good);
    assert!(!ok && err.contains("nonsense"), "{err}");
}

/// A source polled by the sweep alone (no scheduled polling) recovers
/// events lost at the end of a stream, where no later sequence reveals a
/// gap: every sweep reads the window by time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciliation_sweep_reads_its_window_and_recovers_the_tail() {
    let (broker, provider) = provider_only("psweep", 60, &[]).await;
    let poller = Poller::start(
        &poller_config(
            &broker.brokers(),
            "psweep-raw",
            "psweep-cursors",
            &format!(
                "url = \"{}/api/v1/events\", page_size = 25, reconcile = {{ window = \"10m\", interval = \"2s\" }}",
                provider.api
            ),
        ),
        POLLER_ENV,
    );
    let truth: HashSet<String> = truth(1, 60, 5).into_iter().map(|(id, _)| id).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let polled: HashSet<String> = read_topic(&broker.brokers(), "psweep-raw")
            .await
            .iter()
            .filter_map(|r| Envelope::decode(&r.value).ok())
            .map(|e| e.event_id)
            .collect();
        if polled == truth {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 60 events after the sweeps:\n{}",
            polled.len(),
            poller.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let requests = provider.stats().await.requests;
    assert!(
        requests
            .iter()
            .all(|r| r.uri.contains("since=") && r.uri.contains("until=")),
        "{requests:?}"
    );
    // Three pages a sweep (25 + 25 + 10), the first without a cursor.
    assert!(!requests[0].uri.contains("cursor="), "{:?}", requests[0]);
    assert!(requests[1].uri.contains("cursor=p25"), "{:?}", requests[1]);
    assert!(
        poller
            .metric("ingest_poll_events_total", &[("mode", "reconcile")])
            .await
            >= 60.0
    );
}

/// Gap-triggered reconciliation: webhooks lost mid-stream leave sequence
/// gaps; the processors skip each after `gap_timeout` and ask for it on
/// their reconcile topic; the poller (no scheduled polling, no sweep)
/// fetches exactly that range, and the events reach the sink once, late.
/// Gaps the provider forgot too are recorded as unfillable, once each,
/// and `ingest unfillable` lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_gaps_are_fetched_and_unfillable_ones_listed_once() {
    const COUNT: usize = 300;
    const SEED: u64 = 7;
    let broker = Broker::start();
    for (t, n) in [
        ("pgap-raw", 3),
        ("pgap-raw.quarantine", 1),
        ("pgap-raw.dlq", 1),
        ("pgap-reconcile", 1),
    ] {
        broker.create_topic(t, n).await;
    }
    for t in ["pgap-cursors", "pgap-unfillable"] {
        broker
            .create_topic_with(t, 1, &[("cleanup.policy", "compact")])
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let processor = Processor::start(
        &processors_config(
            &broker.brokers(),
            "pgap-raw",
            "g-pgap",
            &dir.path().join("dedupe.redb"),
            &sink,
            "gap_timeout = \"2s\"",
        )
        .replace(
            "dlq_topic = \"pgap-raw.dlq\"",
            "dlq_topic = \"pgap-raw.dlq\"\nreconcile_topic = \"pgap-reconcile\"",
        ),
    );
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            "pgap-raw",
            &[("k1", "E2E_POLL_SECRET")],
            "",
        ),
        &[("E2E_POLL_SECRET", SECRET)],
    );
    ingest.wait_ready().await;
    let provider = Provider::start(
        &ingest.url("/webhooks/purple"),
        SECRET,
        TOKEN,
        &[
            "--count",
            &COUNT.to_string(),
            "--rate",
            "30",
            "--venues",
            "2",
            "--seed",
            &SEED.to_string(),
            "--lose",
            "0.08",
            "--api-forget",
            "0.3",
        ],
    );
    let config = poller_config(
        &broker.brokers(),
        "pgap-raw",
        "pgap-cursors",
        &format!(
            "url = \"{api}/api/v1/events\", range_url = \"{api}/api/v1/venues/{{key}}/events\"",
            api = provider.api
        ),
    )
    .replace(
        "[poller]\n",
        "[poller]\nreconcile_topic = \"pgap-reconcile\"\nunfillable_topic = \"pgap-unfillable\"\n",
    );
    let poller = Poller::start(&config, POLLER_ENV);
    let stats = provider.wait_done(Duration::from_secs(60)).await;
    assert!(!stats.forgotten_ids.is_empty(), "{stats:?}");

    // What the processors can see as gaps: lost events between a venue's
    // first and last delivered sequence.
    let lost: HashSet<&String> = stats.lost_ids.iter().collect();
    let forgotten: HashSet<&String> = stats.forgotten_ids.iter().collect();
    let events: Vec<(String, String, i64)> = truth(SEED, COUNT, 2)
        .into_iter()
        .map(|(id, body)| {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let venue = v["venue"]["id"].as_str().unwrap().to_string();
            (id, venue, v["sequence"].as_i64().unwrap())
        })
        .collect();
    let mut bounds: HashMap<&str, (i64, i64)> = HashMap::new();
    for (id, venue, seq) in &events {
        if !lost.contains(id) {
            let b = bounds.entry(venue).or_insert((*seq, *seq));
            b.0 = b.0.min(*seq);
            b.1 = b.1.max(*seq);
        }
    }
    let revealed =
        |venue: &str, seq: i64| bounds.get(venue).is_some_and(|b| b.0 < seq && seq < b.1);
    let want: HashSet<&String> = events
        .iter()
        .filter(|(id, venue, seq)| {
            !lost.contains(id) || (revealed(venue, *seq) && !forgotten.contains(id))
        })
        .map(|(id, _, _)| id)
        .collect();
    let want_unfillable: HashSet<(String, i64)> = events
        .iter()
        .filter(|(id, venue, seq)| forgotten.contains(id) && revealed(venue, *seq))
        .map(|(_, venue, seq)| (venue.clone(), *seq))
        .collect();
    assert!(
        !want_unfillable.is_empty(),
        "no forgotten event inside a gap: pick another seed"
    );
    assert!(
        want.len() > COUNT - lost.len(),
        "no gap fillable: pick another seed"
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    while sink_ids(&sink).len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} events in the sink:\n{}\n{}",
            sink_ids(&sink).len(),
            want.len(),
            processor.log(),
            poller.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = sink_ids(&sink);
    let got_ids: HashSet<&String> = got.keys().collect();
    assert_eq!(
        got_ids, want,
        "the sink holds other events than the fillable ones"
    );
    assert!(got.values().all(|n| *n == 1), "an event written twice");
    // The poller asked only the venues' by-sequence endpoint.
    assert!(
        provider
            .stats()
            .await
            .requests
            .iter()
            .all(|r| r.uri.starts_with("/api/v1/venues/") && r.uri.contains("from_sequence=")),
    );

    // Every unfillable sequence is listed, each gap once.
    let cfg = dir.path().join("poller.toml");
    std::fs::write(&cfg, &config).unwrap();
    let out = std::process::Command::new(binary("ingest"))
        .args(["unfillable", "--config"])
        .arg(&cfg)
        .envs(POLLER_ENV.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let mut listed = Vec::new();
    for line in listing.lines().filter(|l| l.starts_with("purple ")) {
        // purple venue-000 sequences 12-14: missing 13
        let venue = line.split(' ').nth(1).unwrap().to_string();
        let missing = line.rsplit("missing ").next().unwrap();
        for s in missing.split(',') {
            listed.push((venue.clone(), s.parse::<i64>().unwrap()));
        }
    }
    let listed_set: HashSet<(String, i64)> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        listed_set.len(),
        "a sequence listed twice:\n{listing}"
    );
    assert_eq!(listed_set, want_unfillable, "{listing}");
    assert!(
        poller
            .metric("ingest_poll_gaps_total", &[("outcome", "unfillable")])
            .await
            >= 1.0
    );
    assert!(
        poller
            .metric("ingest_poll_gaps_total", &[("outcome", "filled")])
            .await
            >= 1.0
    );
}
