//! The live venue view end to end: tansu, the `processors` binary with
//! the alerting sink and its partition state, and the `venues` binary
//! following the state changelog. The view's counts must equal the truth
//! computed from the events sent, after a processor instance is killed and
//! its partitions restored on another "host", in a second view replica
//! started from nothing, and after a broker restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use e2e::{
    Broker, Browser, Processor, Venues, guest_wifi_event, processors_alerting_config, produce,
    purple_envelope_received,
};

const TOPIC: &str = "venues-raw";

fn config(brokers: &str, dir: &Path) -> String {
    config_with(brokers, dir, 1000)
}

/// With the zone_occupancy rule at `threshold`.
fn config_with(brokers: &str, dir: &Path, threshold: u32) -> String {
    processors_alerting_config(brokers, TOPIC, "venues-e2e", dir, threshold)
}

fn view_config(brokers: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
changelog_topic = "venues-e2e-state"
sink = "alerts"

[http]
listen = "127.0.0.1:0"
token_env = "VENUES_E2E_TOKEN"
basic_env = "VENUES_E2E_BASIC"

[capacity]
zone = 4

[venues.hall-0]
name = "Hall Zero"
zones = {{ lobby = 2 }}
"#
    )
}

const TOKEN: &str = "e2e-token-0123456789";
const BASIC: &str = "duty:wall-screen-pass";
const ENV: [(&str, &str); 2] = [("VENUES_E2E_TOKEN", TOKEN), ("VENUES_E2E_BASIC", BASIC)];

/// The simulated stream and the occupancy it leaves, by venue and zone.
#[derive(Default)]
struct Stream {
    seq: BTreeMap<String, u64>,
    /// device -> (venue, zone) of the devices present.
    present: BTreeMap<String, (String, String)>,
    n: u64,
}

impl Stream {
    fn event(&mut self, kind: &str, venue: &str, zone: &str, device: &str) -> (Vec<u8>, Vec<u8>) {
        self.n += 1;
        let seq = self.seq.entry(venue.to_owned()).or_insert(0);
        *seq += 1;
        let mut zone = zone.to_owned();
        match kind {
            "device_disconnected" => {
                if let Some((_, was)) = self.present.remove(device) {
                    zone = was;
                }
            }
            _ => {
                self.present
                    .insert(device.to_owned(), (venue.to_owned(), zone.clone()));
            }
        }
        let id = format!("e{}", self.n);
        let at = SystemTime::now();
        let body = guest_wifi_event(&id, kind, venue, &zone, device, *seq, at);
        let micros = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        (
            venue.as_bytes().to_vec(),
            purple_envelope_received(&id, venue, *seq, Some(body), micros),
        )
    }

    /// venue -> zone -> devices.
    fn truth(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut t: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (venue, zone) in self.present.values() {
            *t.entry(venue.clone())
                .or_default()
                .entry(zone.clone())
                .or_default() += 1;
        }
        t
    }
}

/// A round of events over six venues: connects into three zones, moves,
/// and disconnects.
fn round(s: &mut Stream, r: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let zones = ["lobby", "bar", "terrace"];
    let mut out = Vec::new();
    for v in 0..6 {
        let venue = format!("hall-{v}");
        for d in 0..(3 + v) {
            let device = format!("r{r}-v{v}-d{d}");
            out.push(s.event("device_connected", &venue, zones[(d + r) % 3], &device));
        }
        // One moves, one leaves.
        out.push(s.event("zone_entered", &venue, "terrace", &format!("r{r}-v{v}-d0")));
        out.push(s.event("device_disconnected", &venue, "", &format!("r{r}-v{v}-d1")));
    }
    out
}

/// What the view serves: venue -> zone -> devices (zones with none left
/// out), and each venue's total.
async fn served(
    view: &Venues,
) -> Option<(
    BTreeMap<String, BTreeMap<String, u64>>,
    BTreeMap<String, u64>,
)> {
    let client = reqwest::Client::new();
    let list: serde_json::Value = client
        .get(view.url("/api/venues?sort=name"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mut zones = BTreeMap::new();
    let mut totals = BTreeMap::new();
    for v in list["venues"].as_array()? {
        let id = v["id"].as_str()?.to_owned();
        let detail: serde_json::Value = client
            .get(view.url(&format!("/api/venues/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let mut by_zone = BTreeMap::new();
        for z in detail["zones"].as_array()? {
            let n = z["devices"].as_u64()?;
            if n > 0 {
                by_zone.insert(z["zone"].as_str()?.to_owned(), n);
            }
        }
        totals.insert(id.clone(), v["devices"].as_u64()?);
        if !by_zone.is_empty() {
            zones.insert(id, by_zone);
        }
    }
    Some((zones, totals))
}

async fn wait_for_truth(what: &str, view: &Venues, s: &Stream, logs: &[&Processor]) {
    let truth = s.truth();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    loop {
        if let Some((zones, totals)) = served(view).await {
            let totals_ok = truth
                .iter()
                .all(|(v, z)| totals.get(v) == Some(&z.values().sum::<u64>()));
            if zones == truth && totals_ok {
                return;
            }
            last = Some(zones);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!(
                "{what}: the view never matched the truth\ntruth {truth:?}\nview  {last:?}\n{}\n---\n{}",
                view.log(),
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_counts_what_the_events_left_across_a_kill_and_in_a_new_replica() {
    let broker = Broker::start();
    for (t, n) in [
        (TOPIC, 4),
        ("venues-raw.quarantine", 1),
        ("venues-raw.dlq", 1),
    ] {
        broker.create_topic(t, n).await;
    }
    let (host_a, host_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Processor::start(&config(&broker.brokers(), host_a.path()));
    let view = Venues::start(&view_config(&broker.brokers()), &ENV);
    let mut s = Stream::default();
    for r in 0..2 {
        let records = round(&mut s, r);
        produce(&broker.brokers(), TOPIC, &records).await;
    }
    wait_for_truth("after two rounds", &view, &s, &[&a]).await;
    let ready = reqwest::get(view.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "caught up by now");
    // Without the token: 401, and the configured venue's name is served.
    let denied = reqwest::get(view.url("/api/venues")).await.unwrap();
    assert_eq!(denied.status(), 401);
    let hall: serde_json::Value = reqwest::Client::new()
        .get(view.url("/api/venues/hall-0"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hall["venue"]["name"], "Hall Zero");
    // A is killed; B, on another "host", restores every partition and
    // carries on: the view follows whoever owns each partition.
    a.kill();
    let b = Processor::start(&config(&broker.brokers(), host_b.path()));
    for r in 2..4 {
        let records = round(&mut s, r);
        produce(&broker.brokers(), TOPIC, &records).await;
    }
    wait_for_truth("after the kill and two more rounds", &view, &s, &[&b]).await;
    // A second replica, started from nothing, builds the same view.
    let replica = Venues::start(&view_config(&broker.brokers()), &ENV);
    wait_for_truth("in a new replica", &replica, &s, &[&b]).await;
    // Every claim was read (each restore appends one per partition: A's
    // four, B's four at least): the fencing sees every owner change.
    let metrics = reqwest::get(replica.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let claims: f64 = metrics
        .lines()
        .find(|l| l.starts_with("venues_changelog_records_total{outcome=\"claim\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(claims >= 8.0, "claims read: {claims}\n{metrics}");
    println!(
        "venue view: {} events, {} devices present in {} venues, matched by two replicas",
        s.n,
        s.present.len(),
        s.truth().len()
    );
}

/// The broker `kill -9`ed and started again 4 s later (same port and
/// data) under a running processor and view: both reconnect by themselves,
/// and the view matches the truth again after two more rounds, ready all
/// along once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_follows_the_events_again_after_a_broker_restart() {
    let mut broker = Broker::start();
    for (t, n) in [
        (TOPIC, 4),
        ("venues-raw.quarantine", 1),
        ("venues-raw.dlq", 1),
    ] {
        broker.create_topic(t, n).await;
    }
    let host = tempfile::tempdir().unwrap();
    let p = Processor::start(&config(&broker.brokers(), host.path()));
    let view = Venues::start(&view_config(&broker.brokers()), &ENV);
    let mut s = Stream::default();
    let records = round(&mut s, 0);
    produce(&broker.brokers(), TOPIC, &records).await;
    wait_for_truth("before the restart", &view, &s, &[&p]).await;
    broker.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.restart();
    for r in 1..3 {
        let records = round(&mut s, r);
        produce(&broker.brokers(), TOPIC, &records).await;
    }
    wait_for_truth("after the broker restart", &view, &s, &[&p]).await;
    let ready = reqwest::get(view.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", view.log());
    println!(
        "venue view through a broker restart: {} events, {} devices present, matched",
        s.n,
        s.present.len()
    );
}

/// The venue count a board tile shows, by venue.
const TILE_COUNTS: &str = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('.tile')].map(t => [t.dataset.key, parseInt(t.querySelector('.count').firstChild.textContent.replace(/,/g, ''))])))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_board_and_a_venue_page_show_the_api_and_follow_new_events_live() {
    use base64::Engine;
    let broker = Broker::start();
    for (t, n) in [
        (TOPIC, 4),
        ("venues-raw.quarantine", 1),
        ("venues-raw.dlq", 1),
    ] {
        broker.create_topic(t, n).await;
    }
    let host = tempfile::tempdir().unwrap();
    // The rule fires above 4 devices in a zone, the view's capacity.
    let p = Processor::start(&config_with(&broker.brokers(), host.path(), 4));
    let view = Venues::start(&view_config(&broker.brokers()), &ENV);
    let mut s = Stream::default();
    for r in 0..2 {
        let records = round(&mut s, r);
        produce(&broker.brokers(), TOPIC, &records).await;
    }
    wait_for_truth("before the browser", &view, &s, &[&p]).await;
    let (_, totals) = served(&view).await.expect("the API");
    let mut b = Browser::start(1600, 1000).await;
    let basic = base64::engine::general_purpose::STANDARD.encode(BASIC);
    b.headers(serde_json::json!({"Authorization": format!("Basic {basic}")}))
        .await;
    // The board: a tile per venue, each showing the API's count.
    b.open(&view.url("/")).await;
    b.wait_for(
        "document.querySelectorAll('.tile').length === 6 && document.getElementById('status').textContent === 'live'",
        Duration::from_secs(20),
    )
    .await;
    let shown: BTreeMap<String, u64> =
        serde_json::from_str(b.eval(TILE_COUNTS).await.as_str().unwrap()).unwrap();
    assert_eq!(shown, totals, "the board shows the API's numbers");
    let screens = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    b.screenshot(&screens.join("venue-board.png")).await;
    // Three devices join hall-2's bar (capacity 4, two there): its tile
    // counts them without a reload, and the bar is flagged over capacity.
    let truth = s.truth();
    assert_eq!(truth["hall-2"]["bar"], 2, "the bar starts under capacity");
    b.eval("window.sameDocument = true").await;
    let mut records = Vec::new();
    for d in 0..3 {
        records.push(s.event("device_connected", "hall-2", "bar", &format!("late-{d}")));
    }
    produce(&broker.brokers(), TOPIC, &records).await;
    let expected = totals["hall-2"] + 3;
    b.wait_for(
        &format!("document.querySelector('[data-key=\"hall-2\"] .count').firstChild.textContent.trim() === '{expected}'"),
        Duration::from_secs(30),
    )
    .await;
    b.wait_for(
        "[...document.querySelectorAll('[data-key=\"hall-2\"] .chip.over')].some(c => c.textContent === 'bar')",
        Duration::from_secs(10),
    )
    .await;
    // The processors' alert for the bar reaches the tile.
    b.wait_for(
        "[...document.querySelectorAll('[data-key=\"hall-2\"] .chip.over')].some(c => c.textContent === '1 alert')",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        b.eval("window.sameDocument === true").await,
        true,
        "no reload"
    );
    // The venue page: a tile per zone with the API's counts, and the
    // last hour's line.
    b.open(&view.url("/venues/hall-2")).await;
    b.wait_for(
        "document.querySelectorAll('.tile').length === 3 && document.querySelector('#chart polyline') !== null",
        Duration::from_secs(20),
    )
    .await;
    b.wait_for(
        "[...document.querySelectorAll('#alerts li.firing')].some(li => li.textContent.includes('ZoneOverCapacity · bar'))",
        Duration::from_secs(10),
    )
    .await;
    let zones: BTreeMap<String, u64> =
        serde_json::from_str(b.eval(TILE_COUNTS).await.as_str().unwrap()).unwrap();
    let truth = s.truth();
    assert_eq!(
        zones, truth["hall-2"],
        "the venue page shows each zone's count"
    );
    b.screenshot(&screens.join("venue-page.png")).await;
    println!("screenshots in {}", screens.display());
}
