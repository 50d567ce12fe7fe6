//! The alerting sink's unit tests: rules, hysteresis, cooldowns, the
//! outbox and delivery against local fake receivers.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::event::{Guest, GuestWifi};

const MIN: i64 = 60_000_000;

fn engine(rules: &str) -> Engine {
    let text = format!(
        "path = \"/tmp/unused.sqlite\"\n{rules}\n[[receivers]]\nkind = \"log\"\n[[receivers]]\nkind = \"alertmanager\"\nurl = \"http://am:9093\"\n"
    );
    let c: AlertsConfig = toml::from_str(&text).unwrap();
    assert_eq!(c.problems("sinks.a"), Vec::<String>::new());
    Engine::new(&c)
}

fn ev(id: &str, kind: &str, venue: &str, zone: &str, device: &str, at: i64) -> Arc<Event> {
    ev_full(id, kind, venue, zone, device, at, false, false)
}

#[allow(clippy::too_many_arguments)]
fn ev_full(
    id: &str,
    kind: &str,
    venue: &str,
    zone: &str,
    device: &str,
    at: i64,
    vip: bool,
    late: bool,
) -> Arc<Event> {
    Arc::new(Event {
        source: "purple".into(),
        event_id: id.into(),
        event_type: kind.into(),
        ordering_key: Some(venue.into()),
        sequence: Some(1),
        received_at_micros: at,
        occurred_at_micros: Some(at),
        late,
        guest_wifi: Some(GuestWifi {
            event_type: kind.into(),
            sequence: Some(1),
            occurred_at_micros: at,
            venue_id: venue.into(),
            venue_name: None,
            zone: Some(zone.into()),
            device_id: Some(device.into()),
            guest: Some(Guest {
                id: format!("g-{device}"),
                email: None,
                first_name: Some("Ana".into()),
                vip,
            }),
        }),
        body: serde_json::json!({}),
    })
}

fn outbox(c: &Connection, receiver: &str) -> Vec<Notification> {
    let mut st = c
        .prepare("SELECT notification FROM outbox WHERE receiver = ?1 ORDER BY id")
        .unwrap();
    st.query_map([receiver], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|s| serde_json::from_str(&s.unwrap()).unwrap())
        .collect()
}

fn db() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(SCHEMA).unwrap();
    c
}

const OCC: &str = "[[rules]]\nkind = \"zone_occupancy\"\nthreshold = 2\ncooldown = \"10m\"\n";

/// A guest leaving the venue ends its device's presence as a disconnect
/// does, and resolves the alert; a type the platform added since only
/// says the device is still there.
#[test]
fn a_guest_leaving_the_venue_ends_the_presence_and_an_unknown_type_does_not() {
    let e = engine(OCC);
    let mut c = db();
    let t0 = now_micros();
    let con = |i: usize, d: &str| ev(&format!("c{i}"), "device_connected", "v1", "lobby", d, t0);
    e.apply(&mut c, &[con(1, "a"), con(2, "b"), con(3, "c")], t0)
        .unwrap();
    assert_eq!(outbox(&c, "log").len(), 1, "raised at 3 devices");
    let feedback = ev("f1", "guest_feedback", "v1", "lobby", "a", t0 + MIN);
    e.apply(&mut c, &[feedback], t0).unwrap();
    assert_eq!(devices_in(&c, "v1"), 3);
    let left = ev("l1", "venue_left", "v1", "lobby", "a", t0 + MIN);
    let s = e.apply(&mut c, &[left], t0).unwrap();
    assert_eq!(devices_in(&c, "v1"), 2);
    assert_eq!(s.resolved.get("zone_occupancy"), Some(&1));
    assert_eq!(outbox(&c, "log")[1].status, "resolved");
}

#[test]
fn occupancy_raises_once_holds_and_resolves_with_a_cooldown() {
    let e = engine(OCC);
    let mut c = db();
    let t0 = now_micros();
    let con = |i: usize, d: &str| ev(&format!("c{i}"), "device_connected", "v1", "lobby", d, t0);
    let dis = |i: usize, d: &str| {
        ev(
            &format!("d{i}"),
            "device_disconnected",
            "v1",
            "lobby",
            d,
            t0 + MIN,
        )
    };
    // 1, 2: at the threshold, nothing. 3: over. 4: still over, no repeat.
    let s = e
        .apply(
            &mut c,
            &[con(1, "a"), con(2, "b"), con(3, "c"), con(4, "d")],
            t0,
        )
        .unwrap();
    assert_eq!(s.raised.get("zone_occupancy"), Some(&1));
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].status, "firing");
    assert_eq!(o[0].alert.alertname, "ZoneOverCapacity");
    assert_eq!(o[0].alert.labels["zone"], "lobby");
    assert!(
        o[0].alert.annotations["summary"].contains("3 devices"),
        "{o:?}"
    );
    // The alertmanager receiver got its own row.
    assert_eq!(outbox(&c, "alertmanager").len(), 1);
    // Down to 3 (still over), then 2: resolved.
    e.apply(&mut c, &[dis(1, "a")], t0).unwrap();
    assert_eq!(outbox(&c, "log").len(), 1);
    let s = e.apply(&mut c, &[dis(2, "b")], t0).unwrap();
    assert_eq!(s.resolved.get("zone_occupancy"), Some(&1));
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 2);
    assert_eq!(o[1].status, "resolved");
    assert_eq!(o[1].alert.ends_at, Some(t0 + MIN));
    assert_ne!(o[0].key, o[1].key);
    // Over again 2 minutes later: inside the cooldown, suppressed.
    let back = ev("c5", "device_connected", "v1", "lobby", "e", t0 + 2 * MIN);
    let s = e.apply(&mut c, &[back], t0).unwrap();
    assert_eq!(s.suppressed.get("zone_occupancy"), Some(&1));
    assert_eq!(outbox(&c, "log").len(), 2);
    // Still over after the cooldown: raised again, a new key.
    let later = ev("c6", "zone_entered", "v1", "lobby", "e", t0 + 11 * MIN);
    let s = e.apply(&mut c, &[later], t0 + 11 * MIN).unwrap();
    assert_eq!(s.raised.get("zone_occupancy"), Some(&1));
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 3);
    assert!(o[2].key.ends_with("-2-firing"), "{}", o[2].key);
}

#[test]
fn a_batch_offered_again_changes_nothing() {
    let e = engine(OCC);
    let mut c = db();
    let t0 = now_micros();
    let batch: Vec<_> = (0..5)
        .map(|i| {
            ev(
                &format!("c{i}"),
                "device_connected",
                "v1",
                "lobby",
                &format!("d{i}"),
                t0,
            )
        })
        .collect();
    e.apply(&mut c, &batch, t0).unwrap();
    let before = outbox(&c, "log");
    let s = e.apply(&mut c, &batch, t0).unwrap();
    assert_eq!(s.ignored.get("duplicate"), Some(&5));
    assert_eq!(s.enqueued, 0);
    assert_eq!(outbox(&c, "log"), before);
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
}

#[test]
fn late_and_stale_events_do_not_drive_live_state() {
    let e = engine(&format!("{OCC}[[rules]]\nkind = \"vip_arrival\"\n"));
    let mut c = db();
    let now = now_micros();
    let week_ago = now - 7 * 24 * 60 * MIN;
    let mut batch = Vec::new();
    for i in 0..5 {
        // A replay of last week: VIP guests, over the threshold.
        batch.push(ev_full(
            &format!("old{i}"),
            "guest_connects",
            "v1",
            "lobby",
            &format!("d{i}"),
            week_ago,
            true,
            false,
        ));
        // Late events of now.
        batch.push(ev_full(
            &format!("late{i}"),
            "guest_connects",
            "v1",
            "lobby",
            &format!("l{i}"),
            now,
            true,
            true,
        ));
    }
    let s = e.apply(&mut c, &batch, now).unwrap();
    assert_eq!(s.ignored.get("stale"), Some(&5));
    assert_eq!(s.ignored.get("late"), Some(&5));
    assert!(outbox(&c, "log").is_empty());
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn vip_arrivals_notify_once_per_cooldown_and_never_resolve() {
    let e = engine("[[rules]]\nkind = \"vip_arrival\"\ncooldown = \"1h\"\n");
    let mut c = db();
    let t0 = now_micros();
    let vip = |id: &str, at: i64| ev_full(id, "guest_connects", "v1", "bar", "x", at, true, false);
    let plain = ev_full("p", "guest_connects", "v1", "bar", "y", t0, false, false);
    e.apply(&mut c, &[vip("a", t0), plain, vip("b", t0 + MIN)], t0)
        .unwrap();
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 1);
    assert!(o[0].alert.one_shot);
    assert_eq!(o[0].alert.labels["guest"], "g-x");
    assert_eq!(o[0].alert.labels["alertname"], "VipArrival");
    // Disconnect: no resolve for a one-shot.
    e.apply(
        &mut c,
        &[ev(
            "d",
            "device_disconnected",
            "v1",
            "bar",
            "x",
            t0 + 2 * MIN,
        )],
        t0,
    )
    .unwrap();
    assert_eq!(outbox(&c, "log").len(), 1);
    // Past the cooldown: a new arrival notifies again.
    e.apply(&mut c, &[vip("c", t0 + 61 * MIN)], t0 + 61 * MIN)
        .unwrap();
    assert_eq!(outbox(&c, "log").len(), 2);
}

#[test]
fn dwell_raises_as_the_venue_clock_passes_the_threshold_and_resolves_on_leave() {
    let e = engine("[[rules]]\nkind = \"dwell\"\nthreshold = \"30m\"\n");
    let mut c = db();
    let t0 = now_micros() - 40 * MIN;
    let now = now_micros();
    let big = Duration::from_secs(3600);
    let e = Engine {
        max_event_age: big,
        ..e
    };
    e.apply(
        &mut c,
        &[ev("a", "device_connected", "v1", "pool", "x", t0)],
        now,
    )
    .unwrap();
    e.apply(
        &mut c,
        &[ev(
            "b",
            "device_connected",
            "v1",
            "pool",
            "y",
            t0 + 20 * MIN,
        )],
        now,
    )
    .unwrap();
    assert!(outbox(&c, "log").is_empty());
    // Another device's event moves the venue clock past x's threshold.
    e.apply(
        &mut c,
        &[ev(
            "c",
            "device_connected",
            "v1",
            "pool",
            "z",
            t0 + 31 * MIN,
        )],
        now,
    )
    .unwrap();
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].alert.labels["device"], "x");
    assert_eq!(o[0].alert.starts_at, t0 + 30 * MIN);
    // More events: no repeat.
    e.apply(
        &mut c,
        &[ev(
            "d",
            "guest_registered",
            "v1",
            "pool",
            "z",
            t0 + 32 * MIN,
        )],
        now,
    )
    .unwrap();
    assert_eq!(outbox(&c, "log").len(), 1);
    e.apply(
        &mut c,
        &[ev(
            "e",
            "device_disconnected",
            "v1",
            "pool",
            "x",
            t0 + 33 * MIN,
        )],
        now,
    )
    .unwrap();
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 2);
    assert_eq!(o[1].status, "resolved");
}

#[test]
fn sessions_not_heard_of_expire_and_stop_counting() {
    let e = engine(OCC);
    let e = Engine {
        session_timeout: Duration::from_secs(600),
        max_event_age: Duration::from_secs(3600),
        ..e
    };
    let mut c = db();
    let now = now_micros();
    let t0 = now - 30 * MIN;
    let batch: Vec<_> = (0..3)
        .map(|i| {
            ev(
                &format!("c{i}"),
                "device_connected",
                "v1",
                "lobby",
                &format!("d{i}"),
                t0,
            )
        })
        .collect();
    e.apply(&mut c, &batch, now).unwrap();
    assert_eq!(outbox(&c, "log").len(), 1);
    // 20 minutes later another zone's event: the three sessions expire.
    e.apply(
        &mut c,
        &[ev("x", "device_connected", "v1", "bar", "q", t0 + 20 * MIN)],
        now,
    )
    .unwrap();
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 2, "{o:?}");
    assert_eq!(o[1].status, "resolved");
}

fn devices_in(c: &Connection, venue: &str) -> i64 {
    c.query_row(
        "SELECT COUNT(*) FROM devices WHERE venue = ?1",
        [venue],
        |r| r.get(0),
    )
    .unwrap()
}

/// An event dated years ahead must not move the venue clock there: that
/// would expire every session of the venue at once, and keep expiring the
/// new ones, for good.
#[test]
fn an_event_dated_years_ahead_leaves_the_venue_clock_and_its_devices_alone() {
    let e = engine(OCC);
    let mut c = db();
    let now = now_micros();
    let batch: Vec<_> = (0..3)
        .map(|i| {
            ev(
                &format!("c{i}"),
                "device_connected",
                "v1",
                "lobby",
                &format!("d{i}"),
                now,
            )
        })
        .collect();
    e.apply(&mut c, &batch, now).unwrap();
    assert_eq!(devices_in(&c, "v1"), 3);
    assert_eq!(outbox(&c, "log").len(), 1, "over the threshold of 2");
    let years = 3 * 365 * 24 * 60 * MIN;
    // Received now, dated three years ahead (a provider clock gone wrong).
    let mut ahead = ev("f1", "guest_registered", "v1", "lobby", "d0", now + years);
    Arc::make_mut(&mut ahead).received_at_micros = now;
    // Received and dated three years ahead (ingest's clock gone wrong):
    // the wall clock bounds it.
    let both_ahead = ev("f2", "device_connected", "v1", "bar", "z", now + years);
    let s = e.apply(&mut c, &[ahead, both_ahead], now).unwrap();
    let lobby: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM devices WHERE venue = 'v1' AND zone = 'lobby'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(lobby, 3, "the lobby's devices are still counted: {s:?}");
    assert_eq!(devices_in(&c, "v1"), 3, "and no device was added");
    assert_eq!(s.ignored.get("future"), Some(&2), "{s:?}");
    assert_eq!(
        outbox(&c, "log").len(),
        1,
        "nothing resolved: {:?}",
        outbox(&c, "log")
    );
    // The next ordinary event still sees the three devices.
    let s = e
        .apply(
            &mut c,
            &[ev("c9", "device_connected", "v1", "lobby", "d9", now + MIN)],
            now + MIN,
        )
        .unwrap();
    assert!(s.ignored.is_empty(), "{s:?}");
    assert_eq!(devices_in(&c, "v1"), 4);
    let wm: i64 = c
        .query_row("SELECT watermark FROM venues WHERE venue = 'v1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(wm, now + MIN);
    // A clock stored ahead (before this bound existed) is pulled back to
    // the wall clock plus the skew instead of expiring the devices.
    c.execute(
        "UPDATE venues SET watermark = ?1 WHERE venue = 'v1'",
        [now + years],
    )
    .unwrap();
    let later = now + 2 * MIN;
    e.apply(
        &mut c,
        &[ev("c10", "zone_entered", "v1", "lobby", "d1", later)],
        later,
    )
    .unwrap();
    assert_eq!(devices_in(&c, "v1"), 4);
    let wm: i64 = c
        .query_row("SELECT watermark FROM venues WHERE venue = 'v1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(wm, later + 5 * MIN, "the default skew past the wall clock");
}

#[test]
fn check_names_bad_fields_without_quoting_secrets() {
    // SAFETY: single-threaded use of a variable only this test reads.
    unsafe {
        std::env::set_var(
            "ALERTS_TEST_SLACK_URL",
            "ftp://hooks.example/T000/B000/s3cr3t",
        );
    }
    let text = r#"
        path = "/tmp/x.sqlite"
        alert_ttl = "30s"
        max_clock_skew = "13h"
        [[rules]]
        kind = "zone_occupancy"
        threshold = 0
        [[rules]]
        kind = "zone_occupancy"
        threshold = -3
        [[rules]]
        kind = "dwell"
        name = "long stay"
        threshold = "0s"
        [[rules]]
        kind = "vip_arrival"
        types = ["guest_arrives"]
        [[receivers]]
        kind = "slack"
        url_env = "ALERTS_TEST_SLACK_URL"
        [[receivers]]
        kind = "slack"
        name = "ops"
        url_env = "ALERTS_TEST_UNSET_VARIABLE"
        [[receivers]]
        kind = "alertmanager"
        url = "am:9093"
    "#;
    let c: AlertsConfig = toml::from_str(text).unwrap();
    let all = c.problems("sinks.alerts").join("\n");
    for needle in [
        "sinks.alerts.rules[0] (zone_occupancy).threshold: must be at least 1 (got 0)",
        "sinks.alerts.rules[1] (zone_occupancy).name: another rule has this name",
        "threshold: must be at least 1 (got -3)",
        "sinks.alerts.rules[2] (long stay).name: must be 1-64",
        "sinks.alerts.rules[2] (long stay).threshold: must be above 0",
        "\"guest_arrives\" is not a guest-WiFi event type",
        "sinks.alerts.receivers[0] (slack).url_env: the value of ALERTS_TEST_SLACK_URL must be an https:// or http:// URL",
        "sinks.alerts.receivers[1] (ops).url_env: environment variable ALERTS_TEST_UNSET_VARIABLE is not set",
        "sinks.alerts.receivers[2] (alertmanager).url: must be an https:// or http:// URL",
        "sinks.alerts.alert_ttl: must be longer than resend_interval",
        "sinks.alerts.max_clock_skew: must be shorter than session_timeout",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("s3cr3t"), "{all}");
    let bad: Result<AlertsConfig, _> =
        toml::from_str("path = \"x\"\n[[rules]]\nkind = \"zone_temperature\"\n");
    let bad = bad.unwrap_err().to_string();
    assert!(
        bad.contains("rules[0]") && bad.contains("zone_temperature"),
        "{bad}"
    );
}

#[test]
fn alertmanager_bodies_carry_labels_and_times() {
    let doc = AlertDoc {
        alertname: "ZoneOverCapacity".into(),
        labels: BTreeMap::from([("alertname".into(), "ZoneOverCapacity".into())]),
        annotations: summary("3 devices".into()),
        starts_at: 1_000_000,
        ends_at: Some(61_000_000),
        one_shot: false,
    };
    let firing = Notification {
        key: "k".into(),
        status: "firing".into(),
        alert: doc.clone(),
    };
    let resolved = Notification {
        status: "resolved".into(),
        ..firing.clone()
    };
    let now = 3_600_000_000;
    let b = alertmanager_body(&[&firing, &resolved], now, Duration::from_secs(300));
    assert_eq!(b[0]["startsAt"], "1970-01-01T00:00:01.000Z");
    assert_eq!(b[0]["endsAt"], "1970-01-01T01:05:00.000Z");
    assert_eq!(b[1]["endsAt"], "1970-01-01T00:01:01.000Z");
    assert_eq!(b[0]["labels"]["alertname"], "ZoneOverCapacity");
    assert!(slack_text(&firing).contains("FIRING"));
    let sneaky = Notification {
        alert: AlertDoc {
            annotations: summary("<!channel> & co".into()),
            ..doc
        },
        ..firing
    };
    assert!(slack_text(&sneaky).contains("&lt;!channel&gt; &amp; co"));
}

#[test]
fn a_version_1_file_opens_keeping_its_outbox_and_dropping_per_host_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.sqlite");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE devices (venue TEXT NOT NULL, device TEXT NOT NULL, zone TEXT,
                connected_at INTEGER NOT NULL, last_seen INTEGER NOT NULL,
                PRIMARY KEY (venue, device)) WITHOUT ROWID;
             CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, receiver TEXT NOT NULL,
                notification TEXT NOT NULL, created_at INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0);
             INSERT INTO devices VALUES ('v', 'd', 'lobby', 1, 1);
             INSERT INTO outbox (receiver, notification, created_at) VALUES ('log', '{}', 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let c = open_db(&path).unwrap();
    let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(n("SELECT COUNT(*) FROM outbox"), 1);
    assert_eq!(n("SELECT COUNT(*) FROM devices"), 0);
    assert_eq!(n("PRAGMA user_version"), 3);
    // Opening again changes nothing more.
    drop(c);
    let c = open_db(&path).unwrap();
    assert_eq!(
        c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn finish_sends_what_the_last_batches_raised_before_it_returns() {
    // An Alertmanager that takes 200 ms per request and counts them.
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "path = {:?}\nresend_interval = \"1h\"\nalert_ttl = \"2h\"\n[[rules]]\nkind = \"vip_arrival\"\n[[receivers]]\nkind = \"alertmanager\"\nurl = \"http://{addr}\"\n",
        dir.path().join("a.sqlite")
    );
    let config: AlertsConfig = toml::from_str(&text).unwrap();
    let metrics = Metrics::new().unwrap();
    let sink = AlertsSink::start("alerts", &config, &metrics).unwrap();
    let now = now_micros();
    let batch: Vec<Arc<Event>> = (0..3)
        .map(|i| {
            let id = format!("g{i}");
            ev_full(&id, "guest_connects", "v", "lobby", &id, now, true, false)
        })
        .collect();
    let outcomes = sink.accept(&batch).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Accepted));
    sink.finish().await;
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn a_resolved_alert_past_its_retention_is_forgotten_with_a_tombstone_in_the_changelog() {
    let e = engine("[[rules]]\nkind = \"vip_arrival\"\n");
    assert_eq!(e.alert_retention, Duration::from_secs(72 * 3600));
    let mut c = db();
    let t0 = 1_790_000_000_000_000;
    let vip = ev_full("g1", "guest_connects", "v", "lobby", "d1", t0, true, false);
    let first = e.apply_in(&mut c, 0, &[vip], t0).unwrap();
    let alert_keys = |changes: &[crate::sinks::KeyedChange]| -> Vec<bool> {
        changes
            .iter()
            .filter(|(k, _)| k.first() == Some(&ALERT_KEY))
            .map(|(_, v)| v.is_some())
            .collect()
    };
    assert_eq!(
        alert_keys(&first.changes),
        [true],
        "the VIP arrival's record"
    );
    // 73 hours later another event of the partition: the one-shot alert
    // (stored resolved) is past the retention and goes, in the changelog
    // too; the guest's name no longer sits there.
    let later = t0 + 73 * 60 * MIN;
    let plain = ev("x", "device_connected", "v", "lobby", "d2", later);
    let second = e.apply_in(&mut c, 0, &[plain], later).unwrap();
    assert_eq!(alert_keys(&second.changes), [false], "its tombstone");
    let left: i64 = c
        .query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn each_batch_writes_the_occupancy_of_every_venue_it_touched_for_its_minute() {
    use schemas::venue_state::{Entry, Key, VenueState};
    let e = engine(OCC);
    let mut c = db();
    let t0 = 1_790_000_000_000_000 - 1_790_000_000_000_000 % MIN + 10_000_000;
    let batch = [
        ev("1", "device_connected", "v", "lobby", "d1", t0),
        ev("2", "device_connected", "v", "lobby", "d2", t0 + 1),
        ev("3", "device_connected", "v", "bar", "d3", t0 + 2),
        ev("4", "device_connected", "w", "lobby", "d9", t0 + 3),
    ];
    let minutes = |changes: &[crate::sinks::KeyedChange]| -> Vec<(Key, Entry)> {
        changes
            .iter()
            .filter_map(|(k, v)| match Key::decode(k)? {
                k @ Key::Minute { .. } => Some((k, VenueState::decode(v.as_ref()?).unwrap().entry)),
                _ => None,
            })
            .collect()
    };
    let first = e.apply_in(&mut c, 0, &batch, t0).unwrap();
    let minute = t0 - t0 % MIN;
    assert_eq!(
        minutes(&first.changes),
        [
            (
                Key::minute("v", minute),
                Entry::Minute {
                    minute,
                    devices: 3,
                    zones: BTreeMap::from([("bar".into(), 1), ("lobby".into(), 2)]),
                }
            ),
            (
                Key::minute("w", minute),
                Entry::Minute {
                    minute,
                    devices: 1,
                    zones: BTreeMap::from([("lobby".into(), 1)]),
                }
            ),
        ]
    );
    // Two minutes later d2 leaves v and d3 moves to the lobby: v's new
    // minute, w untouched.
    let later = t0 + 2 * MIN;
    let batch = [
        ev("5", "device_disconnected", "v", "lobby", "d2", later),
        ev("6", "zone_entered", "v", "lobby", "d3", later + 1),
    ];
    let second = e.apply_in(&mut c, 0, &batch, later).unwrap();
    assert_eq!(
        minutes(&second.changes),
        [(
            Key::minute("v", minute + 2 * MIN),
            Entry::Minute {
                minute: minute + 2 * MIN,
                devices: 2,
                zones: BTreeMap::from([("lobby".into(), 2)]),
            }
        )]
    );
}

#[test]
fn a_vips_device_carries_its_guest_to_the_changelog_and_back_and_ends_with_it() {
    use schemas::venue_state::{Entry, Key, VenueState, VipGuest};
    let e = engine(OCC);
    let mut c = db();
    let t0 = 1_790_000_000_000_000;
    let devices =
        |changes: &[crate::sinks::KeyedChange]| -> Vec<(String, Option<Option<VipGuest>>)> {
            changes
                .iter()
                .filter_map(|(k, v)| match Key::decode(k)? {
                    Key::Device { device, .. } => Some((
                        device,
                        v.as_ref()
                            .map(|v| match VenueState::decode(v).unwrap().entry {
                                Entry::Device { vip, .. } => vip,
                                other => panic!("{other:?}"),
                            }),
                    )),
                    _ => None,
                })
                .collect()
        };
    let ana = Some(Some(VipGuest {
        id: "g-d1".into(),
        name: Some("Ana".into()),
    }));
    let first = e
        .apply_in(
            &mut c,
            0,
            &[
                ev_full("1", "guest_connects", "v", "lobby", "d1", t0, true, false),
                ev_full(
                    "2",
                    "device_connected",
                    "v",
                    "lobby",
                    "d2",
                    t0,
                    false,
                    false,
                ),
            ],
            t0,
        )
        .unwrap();
    assert_eq!(
        devices(&first.changes),
        [("d1".into(), ana.clone()), ("d2".into(), Some(None))]
    );
    // A restore on another host keeps the VIP: its next record says so.
    let mut other = db();
    restore_records(&mut other, 0, &first.changes).unwrap();
    let mut plain = (*ev("3", "zone_entered", "v", "bar", "d1", t0 + 1)).clone();
    if let Some(w) = plain.guest_wifi.as_mut() {
        w.guest = None;
    }
    let moved = e
        .apply_in(&mut other, 0, &[Arc::new(plain)], t0 + 1)
        .unwrap();
    assert_eq!(
        devices(&moved.changes),
        [("d1".into(), ana)],
        "an event naming no guest keeps the device's VIP"
    );
    // The same device now named for a guest who is no VIP: no VIP.
    let demoted = e
        .apply_in(
            &mut other,
            0,
            &[ev_full(
                "4",
                "zone_entered",
                "v",
                "bar",
                "d1",
                t0 + 2,
                false,
                false,
            )],
            t0 + 2,
        )
        .unwrap();
    assert_eq!(devices(&demoted.changes), [("d1".into(), Some(None))]);
    // Leaving ends it (the device's tombstone).
    let gone = e
        .apply_in(
            &mut other,
            0,
            &[ev("5", "device_disconnected", "v", "bar", "d1", t0 + 3)],
            t0 + 3,
        )
        .unwrap();
    assert_eq!(devices(&gone.changes), [("d1".into(), None)]);
}

#[test]
fn a_version_2_file_gains_the_devices_vip_columns_keeping_its_devices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.sqlite");
    {
        let c = open_db(&path).unwrap();
        // As version 2 made it: no VIP columns.
        c.execute_batch(
            "DROP TABLE devices;
             CREATE TABLE devices (
                partition INTEGER NOT NULL, venue TEXT NOT NULL, device TEXT NOT NULL, zone TEXT,
                connected_at INTEGER NOT NULL, last_seen INTEGER NOT NULL,
                PRIMARY KEY (partition, venue, device)) WITHOUT ROWID;
             INSERT INTO devices VALUES (0, 'v', 'd', 'lobby', 1, 1);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let c = open_db(&path).unwrap();
    let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(n("PRAGMA user_version"), 3);
    assert_eq!(n("SELECT COUNT(*) FROM devices WHERE vip_id IS NULL"), 1);
    drop(c);
    let c = open_db(&path).unwrap();
    assert_eq!(
        c.query_row("SELECT COUNT(*) FROM devices", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
}

#[test]
fn a_restore_passes_over_the_minute_records_without_counting_them_unreadable() {
    let e = engine(OCC);
    let mut c = db();
    let t0 = 1_790_000_000_000_000;
    let batch = [ev("1", "device_connected", "v", "lobby", "d1", t0)];
    let applied = e.apply_in(&mut c, 0, &batch, t0).unwrap();
    assert!(
        applied
            .changes
            .iter()
            .any(|(k, _)| k.first() == Some(&b'M')),
        "a minute record to restore"
    );
    let mut fresh = db();
    assert_eq!(restore_records(&mut fresh, 0, &applied.changes).unwrap(), 0);
    assert_eq!(devices_in(&fresh, "v"), 1);
}

#[test]
fn the_venue_view_gets_each_alert_without_a_guests_name_and_its_tombstone_when_forgotten() {
    use schemas::venue_state::{Entry, Key, VenueState};
    let e = engine(
        "[[rules]]\nkind = \"vip_arrival\"\n[[rules]]\nkind = \"zone_occupancy\"\nthreshold = 1\n",
    );
    let mut c = db();
    let t0 = 1_790_000_000_000_000;
    let views = |changes: &[crate::sinks::KeyedChange]| -> Vec<Option<Entry>> {
        changes
            .iter()
            .filter(|(k, _)| matches!(Key::decode(k), Some(Key::Alert { .. })))
            .map(|(_, v)| v.as_ref().map(|b| VenueState::decode(b).unwrap().entry))
            .collect()
    };
    let vip = ev_full("g1", "guest_connects", "v", "lobby", "d1", t0, true, false);
    let other = ev("c2", "device_connected", "v", "lobby", "d9", t0 + 1);
    let first = e.apply_in(&mut c, 0, &[vip, other], t0 + 1).unwrap();
    let mut got = views(&first.changes);
    got.sort_by_key(|e| format!("{e:?}"));
    let names: Vec<(String, bool, String, Option<String>)> = got
        .iter()
        .map(|e| match e {
            Some(Entry::Alert {
                name,
                firing,
                summary,
                guest,
                ..
            }) => (name.clone(), *firing, summary.clone(), guest.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            (
                "VipArrival".to_string(),
                false,
                "VIP guest arrived at venue v, zone lobby".to_string(),
                Some("g-d1".to_string())
            ),
            (
                "ZoneOverCapacity".to_string(),
                true,
                "2 devices in zone lobby at venue v (threshold 1)".to_string(),
                None
            ),
        ]
    );
    assert!(
        !format!("{names:?}").contains("Ana"),
        "no first name in the view's records"
    );
    // 73 hours later the VIP arrival is forgotten: its view record too.
    let later = t0 + 73 * 60 * MIN;
    let plain = ev("x", "device_connected", "w", "lobby", "d2", later);
    let second = e.apply_in(&mut c, 0, &[plain], later).unwrap();
    assert!(views(&second.changes).contains(&None), "a tombstone");
}

/// A guest who registers on the captive portal is at the venue: every
/// arrival type puts a device in its zone (as the analytics store's
/// visits begin with it), so occupancy counts them.
#[test]
fn every_arrival_type_puts_the_device_in_its_zone() {
    let e = engine(OCC);
    let mut c = db();
    let t0 = now_micros();
    let arrivals = [
        ev("a1", "device_connected", "v1", "lobby", "a", t0),
        ev("a2", "guest_connects", "v1", "lobby", "b", t0),
        ev("a3", "guest_registered", "v1", "lobby", "c", t0),
    ];
    let s = e.apply(&mut c, &arrivals, t0).unwrap();
    assert_eq!(s.raised.get("zone_occupancy"), Some(&1), "3 devices over 2");
    let present: i64 = c
        .query_row("SELECT count(*) FROM devices WHERE venue = 'v1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(present, 3);
}

/// Events dated a little ahead of the wall clock (a provider's clock):
/// the alert starts no later than when it was raised, and its firing and
/// its resolution carry the same start, whenever each is posted, so
/// Alertmanager and a webhook receiver see one condition.
#[test]
fn an_alert_raised_by_events_from_a_clock_ahead_starts_when_raised_and_resolves_with_the_same_start()
 {
    let e = engine(OCC);
    let mut c = db();
    let t0 = now_micros();
    let ahead = t0 + 2 * MIN;
    let con = |i: usize, d: &str| {
        ev(
            &format!("c{i}"),
            "device_connected",
            "v1",
            "lobby",
            d,
            ahead,
        )
    };
    e.apply(&mut c, &[con(1, "a"), con(2, "b"), con(3, "c")], t0)
        .unwrap();
    let dis = ev("d1", "device_disconnected", "v1", "lobby", "a", ahead + MIN);
    e.apply(&mut c, &[dis], t0 + 5 * MIN).unwrap();
    let o = outbox(&c, "log");
    assert_eq!(o.len(), 2, "{o:?}");
    assert_eq!(o[0].status, "firing");
    assert_eq!(o[1].status, "resolved");
    assert_eq!(o[0].alert.starts_at, t0, "not after it was raised");
    assert_eq!(o[1].alert.starts_at, o[0].alert.starts_at);
    let firing = deliver::alertmanager_body(&[&o[0]], t0 + MIN, Duration::from_secs(300));
    let resolved = deliver::alertmanager_body(&[&o[1]], t0 + 10 * MIN, Duration::from_secs(300));
    assert_eq!(firing[0]["startsAt"], resolved[0]["startsAt"]);
}
