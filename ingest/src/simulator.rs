//! The provider simulator behind `ingest send`: realistic guest-WiFi
//! traffic, signed like the platform signs it, delivered the way real
//! providers deliver (duplicates, out of order, late, in bursts).
//!
//! - [`Generator`] makes the events in true order: venues with zones,
//!   devices arriving and leaving after plausible dwell times, some guests
//!   registered and some VIP, one increasing sequence per venue. Seeded, so
//!   a run can be repeated.
//! - [`Schedule`] turns that stream into a delivery order with the
//!   requested share of duplicates (the same id re-sent), swaps (out of
//!   order) and late deliveries.
//! - [`Bursts`] picks the deliveries sent in bursts: runs of back-to-back
//!   requests that ignore the rate, as a provider flushing a backlog does.
//! - [`run`] sends at a rate and concurrency, and counts what was
//!   acknowledged and what was refused, by status.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Semaphore;

/// One generated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The platform's event id (a retry re-sends the same one).
    pub id: String,
    /// The venue, the ordering key.
    pub venue: String,
    /// Per-venue sequence number.
    pub sequence: u64,
    /// Event type.
    pub kind: &'static str,
    /// The exact JSON body.
    pub body: Vec<u8>,
}

/// Shape of the generated traffic.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Number of venues.
    pub venues: usize,
    /// Zones per venue.
    pub zones: usize,
    /// Seed of the random generator.
    pub seed: u64,
    /// Simulated start, Unix milliseconds.
    pub start_ms: i64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            venues: 5,
            zones: 3,
            seed: 1,
            start_ms: 1_795_000_000_000,
        }
    }
}

/// A device currently at a venue.
struct Present {
    /// Device id.
    device: String,
    /// Zone it is in.
    zone: usize,
    /// Guest profile, if the device belongs to a known guest.
    guest: Option<(String, bool)>,
    /// Simulated time it leaves.
    leaves_at_ms: i64,
}

/// Per-venue state.
struct Venue {
    /// Venue id, e.g. `venue-003`.
    id: String,
    /// Display name.
    name: String,
    /// Next sequence number.
    next_seq: u64,
    /// Devices present now.
    present: Vec<Present>,
}

/// Makes guest-WiFi events in true order.
pub struct Generator {
    /// Shape of the traffic.
    config: GeneratorConfig,
    /// Seeded randomness.
    rng: StdRng,
    /// Venues and who is there.
    venues: Vec<Venue>,
    /// Simulated clock, Unix milliseconds.
    now_ms: i64,
    /// Counter for device and guest ids.
    next_device: u64,
}

const ZONES: &[&str] = &["lobby", "restaurant", "pool", "conference", "bar", "gym"];
const NAMES: &[&str] = &[
    "Ana", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hiro",
];

impl Generator {
    /// A generator for `config`.
    pub fn new(config: GeneratorConfig) -> Generator {
        let venues = (0..config.venues.max(1))
            .map(|i| Venue {
                id: format!("venue-{i:03}"),
                name: format!("Hotel {i}"),
                next_seq: 1,
                present: Vec::new(),
            })
            .collect();
        Generator {
            rng: StdRng::seed_from_u64(config.seed),
            now_ms: config.start_ms,
            venues,
            next_device: 0,
            config,
        }
    }

    fn iso(ms: i64) -> String {
        let secs = ms.div_euclid(1000);
        let millis = ms.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }

    /// The next event in true order.
    pub fn next_event(&mut self) -> Event {
        self.now_ms += self.rng.random_range(50..1500);
        let v = self.rng.random_range(0..self.venues.len());
        let zones = self.config.zones.clamp(1, ZONES.len());
        // Someone whose dwell is over leaves first; else mostly arrivals,
        // sometimes a move between zones.
        let leaving = self.venues[v]
            .present
            .iter()
            .position(|p| p.leaves_at_ms <= self.now_ms);
        let roll: f64 = self.rng.random();
        let (kind, device, zone, guest) = if let Some(i) = leaving {
            let p = self.venues[v].present.swap_remove(i);
            ("device_disconnected", p.device, p.zone, p.guest)
        } else if roll < 0.15 && !self.venues[v].present.is_empty() {
            let i = self.rng.random_range(0..self.venues[v].present.len());
            let zone = self.rng.random_range(0..zones);
            let p = &mut self.venues[v].present[i];
            p.zone = zone;
            ("zone_entered", p.device.clone(), zone, p.guest.clone())
        } else {
            self.next_device += 1;
            let n = self.next_device;
            let device = format!("dev_{n:06x}");
            let zone = self.rng.random_range(0..zones);
            let guest = (self.rng.random::<f64>() < 0.6).then(|| {
                let vip = self.rng.random::<f64>() < 0.05;
                (format!("g_{n}"), vip)
            });
            // Dwell: 5 minutes to 3 hours.
            let dwell = self.rng.random_range(5 * 60_000..3 * 3_600_000);
            let kind = match &guest {
                Some(_) if self.rng.random::<f64>() < 0.2 => "guest_registered",
                Some(_) => "guest_connects",
                None => "device_connected",
            };
            self.venues[v].present.push(Present {
                device: device.clone(),
                zone,
                guest: guest.clone(),
                leaves_at_ms: self.now_ms + dwell,
            });
            (kind, device, zone, guest)
        };
        let venue = &mut self.venues[v];
        let sequence = venue.next_seq;
        venue.next_seq += 1;
        let id = format!("evt_{:016x}{:08x}", self.rng.random::<u64>(), sequence);
        let mut body = json!({
            "id": id,
            "type": kind,
            "sequence": sequence,
            "occurred_at": Self::iso(self.now_ms),
            "venue": {"id": venue.id, "name": venue.name},
            "zone": ZONES[zone],
            "device": {"id": device},
        });
        if let Some((gid, vip)) = guest {
            let n: usize = gid[2..].parse().unwrap_or(0);
            let first = NAMES[n % NAMES.len()];
            body["guest"] = json!({
                "id": gid,
                "email": format!("{}.{n}@example.com", first.to_lowercase()),
                "first_name": first,
                "vip": vip,
            });
        }
        Event {
            id,
            venue: venue.id.clone(),
            sequence,
            kind,
            body: body.to_string().into_bytes(),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// How deliveries deviate from the true order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Share of events sent a second time, a little later (same id and body).
    pub duplicates: f64,
    /// Share of events swapped with one of the next few (out of order).
    pub out_of_order: f64,
    /// Share of events held back far behind their neighbours (late).
    pub late: f64,
}

/// Turns events in true order into a delivery order.
pub struct Schedule {
    /// Randomness for the faults.
    rng: StdRng,
    /// What to inject.
    faults: Faults,
    /// Deliveries waiting to be handed out: (events to wait, event).
    held: VecDeque<(usize, Event)>,
}

impl Schedule {
    /// A schedule injecting `faults`, seeded.
    pub fn new(faults: Faults, seed: u64) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            faults,
            held: VecDeque::new(),
        }
    }

    /// Feeds one event in true order; returns what is delivered now.
    pub fn push(&mut self, e: Event) -> Vec<Event> {
        let mut out = Vec::new();
        let roll: f64 = self.rng.random();
        if roll < self.faults.late {
            self.held
                .push_back((self.rng.random_range(50..200), e.clone()));
        } else if roll < self.faults.late + self.faults.out_of_order {
            self.held
                .push_back((self.rng.random_range(1..4), e.clone()));
        } else {
            out.push(e.clone());
        }
        if self.rng.random::<f64>() < self.faults.duplicates {
            self.held.push_back((self.rng.random_range(1..20), e));
        }
        for h in self.held.iter_mut() {
            h.0 = h.0.saturating_sub(1);
        }
        while let Some(pos) = self.held.iter().position(|h| h.0 == 0) {
            if let Some((_, e)) = self.held.remove(pos) {
                out.push(e);
            }
        }
        out
    }

    /// Everything still held back.
    pub fn drain(&mut self) -> Vec<Event> {
        self.held.drain(..).map(|(_, e)| e).collect()
    }
}

/// Decides which deliveries go out in bursts: a share of all deliveries,
/// in runs of `size` sent back to back without pacing.
pub struct Bursts {
    /// Randomness for the burst starts.
    rng: StdRng,
    /// Chance that a paced delivery starts a burst, chosen so that about
    /// `share` of all deliveries are in bursts.
    start: f64,
    /// Deliveries per burst.
    size: usize,
    /// Deliveries left in the current burst.
    remaining: usize,
    /// Bursts started so far.
    pub started: u64,
    /// Deliveries sent in bursts so far.
    pub delivered: u64,
}

impl Bursts {
    /// About `share` (0-1) of deliveries in bursts of `size`, seeded.
    pub fn new(share: f64, size: usize, seed: u64) -> Bursts {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let size = size.max(1);
        // A burst starts at a paced delivery with chance p and covers
        // `size` deliveries, so the share in bursts is
        // p*size / (p*size + 1 - p); solved for p:
        let start = share / (size as f64 * (1.0 - share) + share);
        Bursts {
            rng: StdRng::seed_from_u64(seed ^ 0xb0257),
            start,
            size,
            remaining: 0,
            started: 0,
            delivered: 0,
        }
    }

    /// Whether the next delivery is part of a burst (sent without pacing).
    pub fn next_in_burst(&mut self) -> bool {
        if self.remaining == 0 && self.start > 0.0 && self.rng.random::<f64>() < self.start {
            self.remaining = self.size;
            self.started += 1;
        }
        if self.remaining > 0 {
            self.remaining -= 1;
            self.delivered += 1;
            true
        } else {
            false
        }
    }
}

fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `hex(HMAC-SHA256(secret, body))`: the guest-WiFi platform's signature.
pub fn purple_signature(secret: &[u8], body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, &[body]))
}

/// How the simulator signs: the sending side of each verification scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Signer {
    /// `X-Purple-Signature: hex(HMAC-SHA256(body))`.
    Purple,
    /// `X-Hub-Signature-256: sha256=<hex>`, id in `X-GitHub-Delivery`.
    Github,
    /// `Stripe-Signature: t=<unix>,v1=<hex of HMAC(t.body)>`.
    Stripe,
    /// `X-Shopify-Hmac-Sha256: <base64>`, id in `X-Shopify-Webhook-Id`.
    Shopify,
    /// `X-Slack-Signature: v0=<hex of HMAC(v0:ts:body)>`.
    Slack,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature: v1,<base64 of HMAC(id.ts.body)>`; the secret is
    /// `whsec_<base64 key>`.
    Standard,
}

impl Signer {
    /// The headers that sign `body` as event `id` at `now_unix`.
    pub fn headers(
        &self,
        secret: &[u8],
        body: &[u8],
        id: &str,
        now_unix: i64,
    ) -> Vec<(&'static str, String)> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let ts = now_unix.to_string();
        match self {
            Signer::Purple => vec![("x-purple-signature", purple_signature(secret, body))],
            Signer::Github => vec![
                (
                    "x-hub-signature-256",
                    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body]))),
                ),
                ("x-github-delivery", id.to_string()),
            ],
            Signer::Stripe => vec![(
                "stripe-signature",
                format!(
                    "t={ts},v1={}",
                    hex::encode(hmac_sha256(secret, &[ts.as_bytes(), b".", body]))
                ),
            )],
            Signer::Shopify => vec![
                (
                    "x-shopify-hmac-sha256",
                    STANDARD.encode(hmac_sha256(secret, &[body])),
                ),
                ("x-shopify-webhook-id", id.to_string()),
            ],
            Signer::Slack => vec![
                ("x-slack-request-timestamp", ts.clone()),
                (
                    "x-slack-signature",
                    format!(
                        "v0={}",
                        hex::encode(hmac_sha256(secret, &[b"v0:", ts.as_bytes(), b":", body]))
                    ),
                ),
            ],
            Signer::Standard => {
                let key = secret
                    .strip_prefix(b"whsec_")
                    .and_then(|k| STANDARD.decode(k).ok())
                    .unwrap_or_default();
                let sig = hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
                vec![
                    ("webhook-id", id.to_string()),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", format!("v1,{}", STANDARD.encode(sig))),
                ]
            }
        }
    }
}

/// What a run sends and how.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// `http://host:port/webhooks/{source}`.
    pub url: String,
    /// The signing secret.
    pub secret: Vec<u8>,
    /// How to sign.
    pub signer: Signer,
    /// Events (in true order) to generate; duplicates come on top.
    pub count: usize,
    /// Requests per second across all workers; 0 for as fast as possible.
    pub rate: f64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Stop after this long, whatever the count.
    pub duration: Option<Duration>,
    /// Traffic shape.
    pub generator: GeneratorConfig,
    /// Delivery faults.
    pub faults: Faults,
    /// Share of deliveries sent in bursts (0-1), ignoring `rate`.
    pub bursts: f64,
    /// Deliveries per burst.
    pub burst_size: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Webhooks lost on purpose: a share of them, never sent (0-1). The
    /// events stay in the provider's history ([`crate::provider_api`]).
    pub lose: f64,
    /// A stretch with no webhooks at all: after this many deliveries,
    /// every webhook due within [`SendConfig::pause_for`] is lost.
    pub pause_after: Option<usize>,
    /// How long that stretch lasts.
    pub pause_for: Duration,
    /// Share of the lost webhooks whose events the provider's history
    /// forgets too (0-1): gaps nobody can fill.
    pub forget: f64,
}

/// What a run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Requests sent (including duplicates).
    pub sent: u64,
    /// Requests answered 2xx.
    pub acknowledged: u64,
    /// Requests answered otherwise, by status ("0" = no answer).
    pub refused: BTreeMap<String, u64>,
    /// Distinct event ids acknowledged at least once.
    pub distinct_acknowledged: u64,
    /// Bursts sent.
    pub bursts: u64,
    /// Requests sent inside bursts (counted in `sent` too).
    pub burst_requests: u64,
    /// Webhooks lost on purpose (`--lose`, `--pause-for`): never sent.
    pub lost: u64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

/// Sends the generated traffic and reports the outcome.
pub async fn run(config: SendConfig) -> anyhow::Result<Report> {
    run_with(config, None).await
}

/// [`run`], recording every generated event in `history` (the provider's
/// REST API serves it) whether its webhook is sent or lost.
pub async fn run_with(
    config: SendConfig,
    history: Option<Arc<crate::provider_api::History>>,
) -> anyhow::Result<Report> {
    let mut loss = StdRng::seed_from_u64(config.generator.seed ^ 0x1055);
    let mut events_made = 0usize;
    let mut pause_until: Option<tokio::time::Instant> = None;
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .pool_max_idle_per_host(config.concurrency.max(1))
        .build()?;
    let mut generator = Generator::new(config.generator.clone());
    let mut schedule = Schedule::new(config.faults, config.generator.seed);
    let mut bursts = Bursts::new(config.bursts, config.burst_size, config.generator.seed);
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, u16)>(1024);
    let started = std::time::Instant::now();
    let interval = (config.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / config.rate));
    let mut next_at = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let secret: Arc<[u8]> = Arc::from(config.secret.as_slice());
    let mut produced = 0usize;
    let mut finishing = false;
    let mut report = Report::default();
    let mut acked = std::collections::HashSet::new();
    'outer: loop {
        let batch = if produced < config.count && !finishing {
            produced += 1;
            let event = generator.next_event();
            if let Some(h) = &history {
                h.record(&event.venue, event.sequence, &event.body);
            }
            schedule.push(event)
        } else if !finishing {
            finishing = true;
            schedule.drain()
        } else {
            break;
        };
        for event in batch {
            if config.duration.is_some_and(|d| started.elapsed() >= d) {
                break 'outer;
            }
            if bursts.next_in_burst() {
                // Back to back; pacing resumes from the end of the burst
                // rather than catching up with a second burst.
                next_at = tokio::time::Instant::now();
            } else if let Some(iv) = interval {
                tokio::time::sleep_until(next_at).await;
                next_at += iv;
            }
            events_made += 1;
            if pause_until.is_none() && config.pause_after.is_some_and(|n| events_made > n) {
                pause_until = Some(tokio::time::Instant::now() + config.pause_for);
            }
            let paused = pause_until.is_some_and(|u| tokio::time::Instant::now() < u);
            if paused || (config.lose > 0.0 && loss.random::<f64>() < config.lose) {
                report.lost += 1;
                if let Some(h) = &history {
                    let forget = config.forget > 0.0 && loss.random::<f64>() < config.forget;
                    h.lose(&event.id, forget);
                }
                continue;
            }
            let permit = slots.clone().acquire_owned().await?;
            let (client, url, secret, tx) = (
                client.clone(),
                config.url.clone(),
                secret.clone(),
                tx.clone(),
            );
            let signer = config.signer;
            tasks.spawn(async move {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let mut request = client.post(&url).header("content-type", "application/json");
                for (name, value) in signer.headers(&secret, &event.body, &event.id, now) {
                    request = request.header(name, value);
                }
                let status = match request.body(event.body).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                let _ = tx.send((event.id, status)).await;
                drop(permit);
            });
            report.sent += 1;
            while let Ok((id, status)) = rx.try_recv() {
                tally(&mut report, &mut acked, id, status);
            }
        }
    }
    drop(tx);
    while tasks.join_next().await.is_some() {}
    while let Some((id, status)) = rx.recv().await {
        tally(&mut report, &mut acked, id, status);
    }
    report.distinct_acknowledged = acked.len() as u64;
    report.bursts = bursts.started;
    report.burst_requests = bursts.delivered;
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(h) = &history {
        h.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(report)
}

fn tally(
    report: &mut Report,
    acked: &mut std::collections::HashSet<String>,
    id: String,
    status: u16,
) {
    if (200..300).contains(&status) {
        report.acknowledged += 1;
        acked.insert(id);
    } else {
        *report.refused.entry(status.to_string()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn events(n: usize) -> Vec<Event> {
        let mut g = Generator::new(GeneratorConfig::default());
        (0..n).map(|_| g.next_event()).collect()
    }

    #[test]
    fn sequences_increase_per_venue_and_bodies_parse() {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut kinds = HashSet::new();
        for e in events(2000) {
            let prev = last.insert(e.venue.clone(), e.sequence).unwrap_or(0);
            assert_eq!(e.sequence, prev + 1);
            let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
            assert_eq!(v["id"], e.id.as_str());
            assert_eq!(v["venue"]["id"], e.venue.as_str());
            assert_eq!(v["sequence"], e.sequence);
            kinds.insert(e.kind);
        }
        for k in [
            "guest_connects",
            "guest_registered",
            "device_connected",
            "device_disconnected",
            "zone_entered",
        ] {
            assert!(kinds.contains(k), "no {k} in 2000 events");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        assert_eq!(events(50), events(50));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(Generator::iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Generator::iso(1_763_834_591_123),
            "2025-11-22T18:03:11.123Z"
        );
        assert_eq!(Generator::iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn schedule_delivers_every_event_with_the_asked_faults() {
        let faults = Faults {
            duplicates: 0.1,
            out_of_order: 0.2,
            late: 0.01,
        };
        let mut s = Schedule::new(faults, 7);
        let input = events(5000);
        let mut out = Vec::new();
        for e in input.clone() {
            out.extend(s.push(e));
        }
        out.extend(s.drain());
        let ids: HashSet<_> = input.iter().map(|e| e.id.clone()).collect();
        let delivered: HashSet<_> = out.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, delivered, "every event is delivered at least once");
        let dups = out.len() - input.len();
        assert!((350..650).contains(&dups), "{dups} duplicates for 10%");
        // Out of order: a venue's sequence goes down somewhere.
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut inversions = 0;
        for e in &out {
            if let Some(prev) = last.insert(&e.venue, e.sequence)
                && e.sequence < prev
            {
                inversions += 1;
            }
        }
        assert!(inversions > 500, "{inversions} inversions");
    }

    #[test]
    fn bursts_cover_the_asked_share_in_runs_of_the_asked_size() {
        let mut b = Bursts::new(0.3, 10, 7);
        let flags: Vec<bool> = (0..20_000).map(|_| b.next_in_burst()).collect();
        let in_bursts = flags.iter().filter(|f| **f).count();
        assert_eq!(in_bursts as u64, b.delivered);
        assert!(
            (5_000..7_000).contains(&in_bursts),
            "{in_bursts} of 20000 for 30%"
        );
        // Runs are whole bursts (back-to-back bursts join into longer runs).
        let mut run = 0;
        let mut runs = Vec::new();
        for f in flags.iter().chain([&false]) {
            if *f {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        assert!(
            runs[..runs.len() - 1].iter().all(|r| r % 10 == 0),
            "{runs:?}"
        );
        assert!(b.started >= runs.len() as u64);
        // The edges: none, and everything.
        let mut none = Bursts::new(0.0, 10, 7);
        assert!((0..1000).all(|_| !none.next_in_burst()));
        assert_eq!(none.started, 0);
        let mut all = Bursts::new(1.0, 4, 7);
        assert!((0..1000).all(|_| all.next_in_burst()));
        assert_eq!(all.started, 250);
    }

    #[test]
    fn every_signer_is_accepted_by_its_verifier() {
        use crate::config::Config;
        use crate::source::Source;
        use axum::http::{HeaderMap, HeaderName};
        let schemes = [
            (Signer::Purple, "purple", "s3cret"),
            (Signer::Github, "github", "s3cret"),
            (Signer::Stripe, "stripe", "whsec_s3cret"),
            (Signer::Shopify, "shopify", "s3cret"),
            (Signer::Slack, "slack", "s3cret"),
            (
                Signer::Standard,
                "standard",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ];
        for (signer, scheme, secret) in schemes {
            let var = format!("SIM_TEST_SECRET_{}", scheme.to_uppercase());
            // SAFETY: each scheme uses its own variable, set before it is read.
            unsafe { std::env::set_var(&var, secret) };
            let config = Config::from_toml(&format!(
                "[sources.s]\nsignature = {{ scheme = \"{scheme}\", secrets = [{{ id = \"a\", env = \"{var}\" }}] }}\n"
            ))
            .unwrap();
            let source = Source::build("s", &config.sources["s"]).unwrap();
            let body = br#"{"id":"evt_1"}"#;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let mut headers = HeaderMap::new();
            for (n, v) in signer.headers(secret.as_bytes(), body, "msg_1", now) {
                headers.insert(HeaderName::from_static(n), v.parse().unwrap());
            }
            let verified = source.scheme.verify(&headers, body);
            assert!(verified.is_ok(), "{scheme}: {verified:?}");
            assert!(
                source
                    .scheme
                    .verify(&headers, br#"{"id":"evt_2"}"#)
                    .is_err()
            );
        }
    }

    fn send_config(count: usize) -> SendConfig {
        SendConfig {
            // Nothing listens on port 1: every webhook sent is refused ("0").
            url: "http://127.0.0.1:1/webhooks/purple".into(),
            secret: b"s".to_vec(),
            signer: Signer::Purple,
            count,
            rate: 0.0,
            concurrency: 8,
            duration: None,
            generator: GeneratorConfig::default(),
            faults: Faults::default(),
            bursts: 0.0,
            burst_size: 1,
            timeout: Duration::from_secs(1),
            lose: 0.0,
            pause_after: None,
            pause_for: Duration::ZERO,
            forget: 0.0,
        }
    }

    /// Lost webhooks are never sent, yet every event is in the history.
    #[tokio::test]
    async fn lost_webhooks_are_not_sent_but_stay_in_the_history() {
        let history = crate::provider_api::History::new(Default::default(), "t".into(), 1);
        let report = run_with(
            SendConfig {
                lose: 0.1,
                ..send_config(400)
            },
            Some(history.clone()),
        )
        .await
        .unwrap();
        assert!(
            (20..70).contains(&report.lost),
            "{} lost of 400",
            report.lost
        );
        assert_eq!(report.sent + report.lost, 400);
        assert_eq!(report.refused.get("0"), Some(&report.sent));
        assert_eq!(
            history.lost.load(std::sync::atomic::Ordering::Relaxed),
            report.lost
        );
        assert!(history.done.load(std::sync::atomic::Ordering::Relaxed));

        // A pause longer than the rest of the run: everything after the
        // first 50 deliveries is lost.
        let report = run_with(
            SendConfig {
                rate: 200.0,
                pause_after: Some(50),
                pause_for: Duration::from_secs(30),
                ..send_config(150)
            },
            None,
        )
        .await
        .unwrap();
        assert_eq!((report.sent, report.lost), (50, 100));
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // python3: hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).hexdigest()
        assert_eq!(
            purple_signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
