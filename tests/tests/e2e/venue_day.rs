//! A venue's day end to end, the way venue operations see it: a simulated
//! week of history replayed into the raw topic, then live webhooks through
//! ingest; tansu, PostgreSQL, ingest, the processors (alerting sink with
//! its state changelog, both analytics stores) and two venue-view
//! replicas, one reading history from PostgreSQL, one from the embedded
//! store.
//!
//! - each replica's footfall by local hour (today and the same weekday
//!   last week), arrivals and median dwell equal the truth computed here
//!   from the events sent, in each venue's own time zone (one with a
//!   half-hour offset);
//! - a webhook sent through ingest changes the right zone's count on a
//!   live stream;
//! - a client that resumes on the *other* replica with `Last-Event-ID`
//!   gets exactly the changes the connected client got after that id;
//! - a client that never reads is dropped while another gets everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{
    Broker, Browser, Ingest, Postgres, Processor, SseClient, Venues, produce, purple_config,
    purple_envelope_received, send_purple,
};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

const TOPIC: &str = "day-raw";
const SECRET: &str = "venue-day-secret-0123456789";
const TOKEN: &str = "venue-day-token-0123456789";
const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
/// The venues with history, and their time zones (`annex` takes the
/// view's default).
const VENUES: [(&str, &str); 2] = [("hq", "America/New_York"), ("annex", "Asia/Kolkata")];
const ZONES: [&str; 3] = ["lobby", "bar", "terrace"];

/// The venue view's processors (`e2e::processors_alerting_config`, group
/// `venue-day`) with both analytics stores beside the alerting sink.
fn processors_config(brokers: &str, dir: &Path, pg: &str) -> String {
    // The view lists VIPs by first name (show_guest_names): the alerting
    // sink must be allowed it, or it keeps no names (issue 22, minimisation).
    let live = e2e::processors_alerting_config(brokers, TOPIC, "venue-day", dir, 1000).replace(
        "[sinks.alerts]\nkind = \"alerts\"",
        "[sinks.alerts]\nkind = \"alerts\"\nfields = [\"guest.id\", \"guest.first_name\", \"guest.vip\", \"device.id\"]",
    );
    assert!(live.contains("guest.first_name"), "{live}");
    format!(
        r#"{live}
[sinks.pg]
kind = "postgres"
url = "{pg}"

[sinks.lite]
kind = "analytics"
path = "{dir}/analytics.sqlite"

[[routes]]
name = "history"
sources = ["purple"]
sinks = ["pg", "lite"]
"#,
        dir = dir.display()
    )
}

/// Small batches: each writes a minute record per venue it touched, so the
/// crowd below makes thousands of live-stream changes.
const SMALL_BATCHES: [(&str, &str); 1] = [("PROCESSORS_PROCESSING__BATCH_MAX", "50")];

fn view_config(brokers: &str, history: &str, show_guest_names: bool) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
changelog_topic = "venue-day-state"
sink = "alerts"

[http]
listen = "127.0.0.1:0"
token_env = "VENUE_DAY_TOKEN"

[view]
time_zone = "Asia/Kolkata"
show_guest_names = {show_guest_names}

[venues.hq]
name = "Headquarters"
time_zone = "America/New_York"

# The view's time zone.
[venues.annex]
name = "Annex"

[history]
{history}
refresh = "1s"
"#
    )
}

/// One event sent: what the truth is computed from.
struct Sent {
    venue: String,
    kind: &'static str,
    device: String,
    at: i64,
}

#[derive(Default)]
struct Events {
    seq: BTreeMap<String, u64>,
    sent: Vec<Sent>,
}

impl Events {
    /// The event's body and its envelope as ingest would write it.
    fn body(
        &mut self,
        kind: &'static str,
        venue: &str,
        zone: &str,
        device: &str,
        at: i64,
    ) -> (u64, Vec<u8>) {
        let seq = self.seq.entry(venue.to_owned()).or_insert(0);
        *seq += 1;
        let id = format!("{venue}-{seq}");
        let body = json!({
            "id": id, "type": kind, "sequence": *seq,
            "occurred_at": Timestamp::from_microsecond(at).unwrap().to_string(),
            "venue": {"id": venue}, "zone": zone, "device": {"id": device},
        });
        self.sent.push(Sent {
            venue: venue.into(),
            kind,
            device: device.into(),
            at,
        });
        (*seq, body.to_string().into_bytes())
    }

    /// [`Events::body`] of a guest's device: `vip` and a first name.
    fn guest_body(
        &mut self,
        venue: &str,
        zone: &str,
        device: &str,
        at: i64,
        name: &str,
    ) -> Vec<u8> {
        let (_, body) = self.body("device_connected", venue, zone, device, at);
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v["guest"] = json!({"id": format!("g-{device}"), "first_name": name, "vip": true,
                            "email": format!("{name}@example.com")});
        v.to_string().into_bytes()
    }

    fn record(
        &mut self,
        kind: &'static str,
        venue: &str,
        zone: &str,
        device: &str,
        at: i64,
    ) -> (Vec<u8>, Vec<u8>) {
        let (seq, body) = self.body(kind, venue, zone, device, at);
        let id = format!("{venue}-{seq}");
        (
            venue.as_bytes().to_vec(),
            purple_envelope_received(&id, venue, seq, Some(body), at),
        )
    }

    /// What the analytics store must say of `venue` on `date` in `tz`:
    /// `device_connected` per local hour, distinct arrivals, sessions
    /// ended and their median dwell (seconds).
    fn day(&self, venue: &str, date: &str, tz: &str) -> (Vec<u64>, u64, u64, Option<f64>) {
        let tz = TimeZone::get(tz).unwrap();
        let date: jiff::civil::Date = date.parse().unwrap();
        let local = |at: i64| {
            Timestamp::from_microsecond(at)
                .unwrap()
                .to_zoned(tz.clone())
        };
        let mut hours = vec![0u64; 24];
        let mut arrivals = BTreeSet::new();
        let mut connected: BTreeMap<&str, i64> = BTreeMap::new();
        let mut dwell = Vec::new();
        for e in self.sent.iter().filter(|e| e.venue == venue) {
            let z = local(e.at);
            match e.kind {
                "device_connected" => {
                    connected.insert(&e.device, e.at);
                    if z.date() == date {
                        hours[z.hour() as usize] += 1;
                        arrivals.insert(e.device.clone());
                    }
                }
                "device_disconnected" => {
                    let from = connected.remove(e.device.as_str());
                    if let Some(from) = from.filter(|_| z.date() == date) {
                        dwell.push((e.at - from) as f64 / 1e6);
                    }
                }
                _ => {}
            }
        }
        dwell.sort_by(f64::total_cmp);
        let median = match dwell.len() {
            0 => None,
            n if n % 2 == 1 => Some(dwell[n / 2]),
            n => Some((dwell[n / 2 - 1] + dwell[n / 2]) / 2.0),
        };
        (hours, arrivals.len() as u64, dwell.len() as u64, median)
    }
}

/// A simulated week (and a day) of sessions at each venue with history,
/// one every 37 minutes, 7 to 94 minutes long, all ended three hours ago.
fn history(events: &mut Events, now: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for (v, (venue, _)) in VENUES.iter().enumerate() {
        let mut k = 0i64;
        loop {
            let at = now - 8 * 24 * HOUR + k * 37 * MIN + v as i64 * 11 * MIN;
            let dwell = (7 + (k * 13) % 88) * MIN;
            if at + dwell > now - 3 * HOUR {
                break;
            }
            let device = format!("{venue}-h{k}");
            let zone = ZONES[k as usize % 3];
            out.push(events.record("device_connected", venue, zone, &device, at));
            out.push(events.record("device_disconnected", venue, zone, &device, at + dwell));
            k += 1;
        }
    }
    out
}

async fn get(view: &Venues, path: &str) -> Value {
    reqwest::Client::new()
        .get(view.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `view`'s history of every venue equals the truth.
async fn wait_for_history(what: &str, view: &Venues, events: &Events) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut wrong = Vec::new();
        for (venue, tz) in VENUES {
            let h = &get(view, &format!("/api/venues/{venue}")).await["history"];
            assert_eq!(h["time_zone"], tz, "{what}: {venue}'s time zone");
            for day in ["today", "last_week"] {
                let Some(date) = h[day]["date"].as_str() else {
                    wrong.push(format!("{venue} {day}: {h}"));
                    continue;
                };
                let (hours, arrivals, ended, median) = events.day(venue, date, tz);
                let footfall: Vec<u64> = h[day]["footfall"]
                    .as_array()
                    .map(|a| a.iter().map(|n| n.as_u64().unwrap_or(0)).collect())
                    .unwrap_or_default();
                let got = (
                    footfall,
                    h[day]["arrivals"].as_u64(),
                    h[day]["sessions_ended"].as_u64(),
                    h[day]["median_dwell_seconds"].as_f64(),
                );
                let want = (hours, Some(arrivals), Some(ended), median);
                if got != want {
                    wrong.push(format!("{venue} {day} {date}: got {got:?}, want {want:?}"));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the history never matched the truth\n{}\n{}",
            wrong.join("\n"),
            view.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A zone's devices in an occupancy event's data.
fn zone_count(data: &Value, zone: &str) -> u64 {
    data["zones"]
        .as_array()
        .and_then(|zs| zs.iter().find(|z| z["zone"] == zone))
        .and_then(|z| z["devices"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_history_then_live_webhooks_reach_both_stores_pages_and_streams() {
    let broker = Broker::start();
    for (t, n) in [(TOPIC, 4), ("day-raw.quarantine", 1), ("day-raw.dlq", 1)] {
        broker.create_topic(t, n).await;
    }
    let pg = Postgres::start();
    let host = tempfile::tempdir().unwrap();
    let p = Processor::start_with_env(
        &processors_config(&broker.brokers(), host.path(), &pg.url()),
        &SMALL_BATCHES,
    );
    let lite = host.path().join("analytics.sqlite");
    assert!(
        lite.is_file(),
        "the processors made the embedded store at start"
    );
    let env = [("VENUE_DAY_TOKEN", TOKEN)];
    let a = Venues::start(
        &view_config(
            &broker.brokers(),
            &format!("kind = \"postgres\"\nurl = \"{}\"", pg.url()),
            false,
        ),
        &env,
    );
    let b = Venues::start(
        &view_config(
            &broker.brokers(),
            &format!("kind = \"sqlite\"\npath = \"{}\"", lite.display()),
            true,
        ),
        &env,
    );
    let auth = vec![format!("authorization: Bearer {TOKEN}")];
    // Streams open once a replica has caught up (503 before).
    a.wait_ready(Duration::from_secs(60)).await;
    b.wait_ready(Duration::from_secs(60)).await;

    // Two clients on replica A: one reads everything, one never reads
    // (a small receive buffer: a wall screen on a bad link).
    let (code, mut reading) = SseClient::open(a.addr, "/api/venues/events", None, &auth).await;
    assert_eq!(code, 200);
    assert_eq!(reading.next().await.0, "snapshot");
    let (code, stuck) =
        SseClient::open_with(a.addr, "/api/venues/events", None, &auth, Some(4096)).await;
    assert_eq!(code, 200);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(ev) = reading.next_within(Duration::from_secs(60)).await {
            if seen_tx.send(ev).is_err() {
                break;
            }
        }
    });

    // The week of history, replayed into the raw topic.
    let now = Timestamp::now().as_microsecond();
    let mut events = Events::default();
    let week = history(&mut events, now);
    produce(&broker.brokers(), TOPIC, &week).await;
    // A crowd: 1,000 venues, four rounds of arrivals, each round thousands
    // of changes on the live stream.
    let mut changes: Vec<(String, Value)> = Vec::new();
    for r in 0..4 {
        let mut round = Vec::new();
        for c in 0..1000 {
            let venue = format!("crowd-{c:04}");
            let zone = format!("{}-{r}", "concourse-".repeat(12));
            round.push(events.record(
                "device_connected",
                &venue,
                &zone,
                &format!("{venue}-d{r}"),
                now,
            ));
        }
        produce(&broker.brokers(), TOPIC, &round).await;
    }
    // The reading client gets the crowd's last arrival...
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_crowd = BTreeSet::new();
    while last_crowd.len() < 1000 {
        let (event, id, data) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            seen.recv(),
        )
        .await
        .unwrap_or_else(|_| panic!("the reading client stalled\n{}\n{}", a.log(), p.log()))
        .expect("the reading client's stream ended");
        assert_eq!(event, "occupancy", "{event} {data}");
        let data: Value = serde_json::from_str(&data).unwrap();
        let venue = data["venue"]["id"].as_str().unwrap().to_owned();
        if venue.starts_with("crowd-") && data["venue"]["devices"] == 4 {
            last_crowd.insert(venue.clone());
        }
        changes.push((id, data));
    }
    // ...and the one that never read was dropped, its connection closed.
    assert!(
        changes.len() > 3 * 1024,
        "enough changes to leave the stuck client behind: {}",
        changes.len()
    );
    assert!(
        stuck.closed_within(Duration::from_secs(10)).await,
        "the client that never reads was not closed"
    );
    let metrics = reqwest::get(a.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "venues_stream_dropped_total 1"),
        "one client dropped\n{metrics}"
    );

    // Both replicas' history equals the truth, each from its own store.
    wait_for_history("replica A (PostgreSQL)", &a, &events).await;
    wait_for_history("replica B (embedded store)", &b, &events).await;

    // Live, through ingest: a guest connects in hq's bar.
    let ingest = Ingest::start(
        &purple_config(
            &broker.brokers(),
            TOPIC,
            &[("current", "VENUE_DAY_SECRET")],
            "",
        ),
        &[("VENUE_DAY_SECRET", SECRET)],
    );
    ingest.wait_ready().await;
    let before = get(&a, "/api/venues/hq").await;
    let zone_now = |d: &Value, zone: &str| zone_count(d, zone);
    let bar_before = zone_now(&before, "bar");
    let lobby_before = zone_now(&before, "lobby");
    // Drain what came meanwhile: the id the resumed client starts after.
    let mut resume_from = changes.last().map(|c| c.0.clone()).unwrap();
    while let Ok(Some((_, id, data))) =
        tokio::time::timeout(Duration::from_millis(500), seen.recv()).await
    {
        changes.push((id.clone(), serde_json::from_str(&data).unwrap()));
        resume_from = id;
    }
    let client = reqwest::Client::new();
    let url = ingest.url("/webhooks/purple");
    let live_at = Timestamp::now().as_microsecond();
    let (_, body) = events.body("device_connected", "hq", "bar", "live-0", live_at);
    let answer = send_purple(&client, &url, SECRET, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let mut after = Vec::new();
    let change = loop {
        let (_, id, data) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .expect("the webhook's change on the stream")
            .expect("stream open");
        let data: Value = serde_json::from_str(&data).unwrap();
        after.push((id, data.clone()));
        if data["venue"]["id"] == "hq" {
            break data;
        }
    };
    assert_eq!(
        zone_count(&change, "bar"),
        bar_before + 1,
        "the bar counts the guest: {change}"
    );
    assert_eq!(
        zone_count(&change, "lobby"),
        lobby_before,
        "the lobby does not: {change}"
    );
    // Two more, then resume on replica B from before the first.
    for (d, zone) in [(1, "lobby"), (2, "terrace")] {
        let (_, body) = events.body(
            "device_connected",
            "hq",
            zone,
            &format!("live-{d}"),
            live_at,
        );
        assert_eq!(send_purple(&client, &url, SECRET, body).await.status, 200);
    }
    let terrace_before = zone_count(&before, "terrace");
    // One change or two (both may land in one batch): until hq shows both.
    while !after.last().is_some_and(|(_, d)| {
        d["venue"]["id"] == "hq"
            && zone_count(d, "lobby") == lobby_before + 1
            && zone_count(d, "terrace") == terrace_before + 1
    }) {
        let (_, id, data) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .expect("the webhooks' changes")
            .expect("stream open");
        after.push((id, serde_json::from_str(&data).unwrap()));
    }
    let (code, mut resumed) =
        SseClient::open(b.addr, "/api/venues/events", Some(&resume_from), &auth).await;
    assert_eq!(code, 200);
    for (id, data) in &after {
        let (event, got_id, got) = resumed.next().await;
        assert_eq!(
            event, "occupancy",
            "a resume within the ring is not a snapshot"
        );
        assert_eq!(
            (&got_id, &serde_json::from_str::<Value>(&got).unwrap()),
            (id, data)
        );
    }
    let hq = get(&b, "/api/venues/hq").await;
    for zone in ["bar", "lobby", "terrace"] {
        assert!(zone_count(&hq, zone) >= 1, "{zone}: {hq}");
    }
    assert!(
        hq["trend"]["devices"]
            .as_array()
            .and_then(|t| t.last())
            .and_then(Value::as_u64)
            >= Some(3),
        "the last hour's trend ends with the live guests: {hq}"
    );
    // A VIP arrives through ingest: listed on both replicas, masked on A,
    // by first name on B (show_guest_names), and in no log.
    let body = events.guest_body("hq", "lobby", "live-vip", live_at, "Marguerite");
    assert_eq!(send_purple(&client, &url, SECRET, body).await.status, 200);
    let vip_on = |data: &Value| -> Option<String> {
        data["vips"].as_array()?.first()?["guest"]
            .as_str()
            .map(str::to_owned)
    };
    let change = loop {
        let (_, _, data) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .expect("the VIP's change on the stream")
            .expect("stream open");
        let data: Value = serde_json::from_str(&data).unwrap();
        if data["venue"]["id"] == "hq" && data["venue"]["vips_present"] == 1 {
            break data;
        }
    };
    assert_eq!(vip_on(&change).as_deref(), Some("(masked)"), "{change}");
    assert_eq!(change["vips"][0]["zone"], "lobby");
    let deadline = Instant::now() + Duration::from_secs(30);
    let named = loop {
        let hq = get(&b, "/api/venues/hq").await;
        if let Some(name) = vip_on(&hq) {
            break name;
        }
        assert!(Instant::now() < deadline, "B never listed the VIP: {hq}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(named, "Marguerite");
    for (who, log) in [("A", a.log()), ("B", b.log()), ("processors", p.log())] {
        assert!(!log.contains("Marguerite"), "{who}'s log names the guest");
    }
    wait_for_history("after the live webhooks", &b, &events).await;

    // The venue page in a real browser, on replica B: the footfall bars
    // are the API's, the VIP is listed by name.
    let hq = get(&b, "/api/venues/hq").await;
    let mut browser = Browser::start(1600, 1400).await;
    browser
        .headers(json!({"Authorization": format!("Bearer {TOKEN}")}))
        .await;
    browser.open(&b.url("/venues/hq")).await;
    browser
        .wait_for(
            "document.querySelectorAll('#footfall rect.last').length === 24 && [...document.querySelectorAll('#vips strong')].some(s => s.textContent === 'Marguerite')",
            Duration::from_secs(20),
        )
        .await;
    let bars = browser
        .eval("JSON.stringify([...document.querySelectorAll('#footfall rect.today')].map(r => [Number(r.dataset.hour), Number(r.dataset.count)]))")
        .await;
    let bars: Vec<(usize, u64)> = serde_json::from_str(bars.as_str().unwrap()).unwrap();
    let api: Vec<(usize, u64)> = hq["history"]["today"]["footfall"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter_map(|(h, n)| Some((h, n.as_u64()?)))
        .collect();
    assert_eq!(bars, api, "the page's bars are the API's hours");
    let screens = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    browser.screenshot(&screens.join("venue-day.png")).await;
    reader.abort();
    println!(
        "venue day: {} events ({} crowd changes on the stream), history equal in both stores, resume on the other replica exact",
        events.sent.len(),
        changes.len()
    );
}
