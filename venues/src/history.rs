//! A venue's day from the analytics store: arrivals, median dwell and
//! footfall by local hour, today and on the same weekday last week.
//!
//! The live view (the changelog) knows who is here now and the last hour;
//! history is the analytics store's (the processors' analytics sink:
//! PostgreSQL, or the embedded SQLite file on a single host), read here
//! with the store's own definitions, so the page and an analyst's query
//! agree:
//!
//! - **footfall** of an hour: the visits that began in it (the store's
//!   `device_sessions`, whose starts `footfall_hourly.connections` counts
//!   per UTC hour: a device's first `device_connected`, `guest_connects`
//!   or `guest_registered` with no visit open), per local hour of
//!   the venue's time zone (`venues.<id>.time_zone`, else
//!   `view.time_zone`, else UTC). A day has 24 hours by label; on the day
//!   clocks go forward the skipped hour is empty, on the day they go back
//!   the repeated hour holds both.
//! - **arrivals**: distinct devices that began a visit that day.
//! - **median dwell**: of the sessions (`device_sessions`) that ended that
//!   day, so far.
//!
//! "Today" is the wall clock's date in the venue's time zone; "last week"
//! is the date seven days before it. Answers are cached per venue for
//! `history.refresh` (the page asks each minute; a wall of screens must
//! not become a query per screen), at most four queries run at once, and
//! each has five seconds: a slow or absent store leaves the venue's live
//! numbers served, with the history marked unavailable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::config::{HistoryConfig, HistoryKind};

/// Queries to the store at once.
const CONCURRENT: usize = 4;
/// What one venue's history may take.
const DEADLINE: Duration = Duration::from_secs(5);
/// Venues whose answers are cached at most.
const CACHED: usize = 4096;

/// One day of a venue, as counted by the analytics store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// The local date.
    pub date: String,
    /// Distinct devices that connected.
    pub arrivals: u64,
    /// Sessions that ended (so far, today).
    pub sessions_ended: u64,
    /// The median dwell of those sessions, in seconds; none without any.
    pub median_dwell_seconds: Option<f64>,
    /// Visits begun per local hour 0 to 23; today's hours
    /// that have not begun are null.
    pub footfall: Vec<Option<u64>>,
}

/// A venue's history as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VenueHistory {
    /// The venue's time zone (IANA name).
    pub time_zone: String,
    /// Today, so far.
    pub today: Day,
    /// The same weekday a week ago, whole.
    pub last_week: Day,
}

/// The UTC instants (Unix µs) bounding each local hour of `date` in `tz`:
/// 24 ranges `[start, end)` by hour label. The hour clocks skip has an
/// empty range; the hour they repeat spans both occurrences.
pub fn local_hours(date: Date, tz: &TimeZone) -> Result<Vec<(i64, i64)>, String> {
    let start = |h: i8| -> Result<i64, String> {
        let at = if h == 24 {
            date.tomorrow().map_err(|e| e.to_string())?.at(0, 0, 0, 0)
        } else {
            date.at(h, 0, 0, 0)
        };
        let zoned = at.to_zoned(tz.clone()).map_err(|e| e.to_string())?;
        Ok(zoned.timestamp().as_microsecond())
    };
    let mut hours = Vec::with_capacity(24);
    let mut lo = start(0)?;
    for h in 1..=24 {
        let hi = start(h)?;
        hours.push((lo, hi.max(lo)));
        lo = hi.max(lo);
    }
    Ok(hours)
}

/// What the store counted for one day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Visits begun per range asked for.
    pub hours: Vec<u64>,
    /// Distinct devices that began a visit over the day.
    pub arrivals: u64,
    /// Sessions ended over the day.
    pub sessions_ended: u64,
    /// Their median dwell, seconds.
    pub median_dwell: Option<f64>,
}

/// The analytics store, read-only.
pub struct History {
    store: Store,
    refresh: Duration,
    default_tz: String,
    zones: HashMap<String, String>,
    cache: Mutex<HashMap<String, (Instant, Arc<VenueHistory>)>>,
    permits: tokio::sync::Semaphore,
}

enum Store {
    Postgres {
        url: String,
        client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    },
    Sqlite {
        path: PathBuf,
    },
}

/// Why a history is not shown (said in the API; details in the log).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// The store failed or timed out.
    #[error("the analytics store did not answer")]
    Store,
    /// Too many venue pages asked at once.
    #[error("the analytics store is busy; try again shortly")]
    Busy,
}

impl History {
    /// A reader of the store `config` names; `time_zones` per venue,
    /// `default_tz` elsewhere (names checked by the config).
    pub fn new(
        config: &HistoryConfig,
        default_tz: &str,
        time_zones: HashMap<String, String>,
    ) -> Result<History, String> {
        let store = match config.kind {
            HistoryKind::Postgres => Store::Postgres {
                url: config.postgres_url()?,
                client: tokio::sync::Mutex::new(None),
            },
            HistoryKind::Sqlite => Store::Sqlite {
                path: config
                    .path
                    .clone()
                    .ok_or("history.path: the embedded store's file is not given")?,
            },
        };
        Ok(History {
            store,
            refresh: config.refresh,
            default_tz: default_tz.to_owned(),
            zones: time_zones,
            cache: Mutex::new(HashMap::new()),
            permits: tokio::sync::Semaphore::new(CONCURRENT),
        })
    }

    /// `venue`'s history as of `now`, cached for `history.refresh`.
    pub async fn venue(
        &self,
        venue: &str,
        now: Timestamp,
    ) -> Result<Arc<VenueHistory>, Unavailable> {
        if let Some(hit) = self.cached(venue) {
            return Ok(hit);
        }
        let _permit = tokio::time::timeout(Duration::from_secs(2), self.permits.acquire())
            .await
            .map_err(|_| Unavailable::Busy)?
            .map_err(|_| Unavailable::Busy)?;
        if let Some(hit) = self.cached(venue) {
            return Ok(hit);
        }
        let answer = tokio::time::timeout(DEADLINE, self.compute(venue, now))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r);
        match answer {
            Ok(h) => {
                let h = Arc::new(h);
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHED {
                    let refresh = self.refresh;
                    cache.retain(|_, (at, _)| at.elapsed() < refresh);
                }
                if cache.len() < CACHED {
                    cache.insert(venue.to_owned(), (Instant::now(), h.clone()));
                }
                Ok(h)
            }
            Err(e) => {
                tracing::warn!(venue, error = %e, "venue history: the analytics store failed");
                Err(Unavailable::Store)
            }
        }
    }

    fn cached(&self, venue: &str) -> Option<Arc<VenueHistory>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(venue)
            .filter(|(at, _)| at.elapsed() < self.refresh)
            .map(|(_, h)| h.clone())
    }

    async fn compute(&self, venue: &str, now: Timestamp) -> Result<VenueHistory, String> {
        let tz_name = self.zones.get(venue).unwrap_or(&self.default_tz);
        let tz = TimeZone::get(tz_name).map_err(|e| format!("time zone {tz_name:?}: {e}"))?;
        let today = now.to_zoned(tz.clone()).date();
        let last_week = today
            .checked_sub(jiff::Span::new().days(7))
            .map_err(|e| e.to_string())?;
        let now_us = now.as_microsecond();
        let mut days = Vec::with_capacity(2);
        for (date, is_today) in [(today, true), (last_week, false)] {
            let hours = local_hours(date, &tz)?;
            let day = (hours[0].0, hours[23].1);
            let counts = self.counts(venue, &hours, day).await?;
            let footfall = hours
                .iter()
                .zip(&counts.hours)
                .map(|((lo, _), n)| (!is_today || *lo <= now_us).then_some(*n))
                .collect();
            days.push(Day {
                date: date.to_string(),
                arrivals: counts.arrivals,
                sessions_ended: counts.sessions_ended,
                median_dwell_seconds: counts.median_dwell,
                footfall,
            });
        }
        let last_week = days.pop().ok_or("no day")?;
        let today = days.pop().ok_or("no day")?;
        Ok(VenueHistory {
            time_zone: tz_name.clone(),
            today,
            last_week,
        })
    }

    /// The store's counts for `venue` per range of `hours` and over `day`.
    pub async fn counts(
        &self,
        venue: &str,
        hours: &[(i64, i64)],
        day: (i64, i64),
    ) -> Result<Counts, String> {
        match &self.store {
            Store::Postgres { url, client } => {
                let client = {
                    let mut guard = client.lock().await;
                    match guard.as_ref().filter(|c| !c.is_closed()) {
                        Some(c) => c.clone(),
                        None => {
                            let c = Arc::new(connect(url).await?);
                            *guard = Some(c.clone());
                            c
                        }
                    }
                };
                postgres_counts(&client, venue, hours, day)
                    .await
                    .map_err(|e| describe(&e))
            }
            Store::Sqlite { path } => {
                let (path, venue, hours) = (path.clone(), venue.to_owned(), hours.to_vec());
                tokio::task::spawn_blocking(move || {
                    sqlite_counts(&path, &venue, &hours, day).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %describe(&e), "analytics store connection ended");
        }
    });
    Ok(client)
}

/// The server's message and SQLSTATE where there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

const PG_HOURS: &str = "
    select count(s.device_id)::int8
    from unnest($2::int8[], $3::int8[]) with ordinality as k(lo, hi, i)
    left join device_sessions s
      on s.venue_id = $1
     and s.connected_at >= timestamptz 'epoch' + k.lo * interval '1 microsecond'
     and s.connected_at < timestamptz 'epoch' + k.hi * interval '1 microsecond'
    group by k.i order by k.i";

const PG_ARRIVALS: &str = "
    select count(distinct device_id)::int8 from device_sessions
    where venue_id = $1
      and connected_at >= timestamptz 'epoch' + $2::int8 * interval '1 microsecond'
      and connected_at < timestamptz 'epoch' + $3::int8 * interval '1 microsecond'";

const PG_DWELL: &str = "
    select count(*)::int8, percentile_cont(0.5) within group (order by dwell_seconds)
    from device_sessions
    where venue_id = $1 and dwell_seconds is not null
      and disconnected_at >= timestamptz 'epoch' + $2::int8 * interval '1 microsecond'
      and disconnected_at < timestamptz 'epoch' + $3::int8 * interval '1 microsecond'";

async fn postgres_counts(
    client: &tokio_postgres::Client,
    venue: &str,
    hours: &[(i64, i64)],
    (lo, hi): (i64, i64),
) -> Result<Counts, tokio_postgres::Error> {
    let los: Vec<i64> = hours.iter().map(|h| h.0).collect();
    let his: Vec<i64> = hours.iter().map(|h| h.1).collect();
    let by_hour_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&venue, &los, &his];
    let day_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&venue, &lo, &hi];
    let (by_hour, arrivals, dwell) = futures::try_join!(
        client.query(PG_HOURS, &by_hour_params),
        client.query_one(PG_ARRIVALS, &day_params),
        client.query_one(PG_DWELL, &day_params),
    )?;
    Ok(Counts {
        hours: by_hour.iter().map(|r| r.get::<_, i64>(0) as u64).collect(),
        arrivals: arrivals.get::<_, i64>(0) as u64,
        sessions_ended: dwell.get::<_, i64>(0) as u64,
        median_dwell: dwell.get(1),
    })
}

fn sqlite_counts(
    path: &std::path::Path,
    venue: &str,
    hours: &[(i64, i64)],
    (lo, hi): (i64, i64),
) -> rusqlite::Result<Counts> {
    use plumbing::utc_text;
    use rusqlite::{OpenFlags, params};
    // Read-write (a WAL file needs its shared memory), never created: the
    // processors own the file; `query_only` makes this reader harmless.
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(2))?;
    conn.pragma_update(None, "query_only", true)?;
    let mut count = conn.prepare(
        "select count(*), count(distinct device_id) from device_sessions
         where venue_id = ?1 and connected_at >= ?2 and connected_at < ?3",
    )?;
    let mut by_hour = Vec::with_capacity(hours.len());
    for (a, b) in hours {
        let n: i64 = count.query_row(params![venue, utc_text(*a), utc_text(*b)], |r| r.get(0))?;
        by_hour.push(n as u64);
    }
    let arrivals: i64 =
        count.query_row(params![venue, utc_text(lo), utc_text(hi)], |r| r.get(1))?;
    let ended = "from device_sessions
         where venue_id = ?1 and dwell_seconds is not null
           and disconnected_at >= ?2 and disconnected_at < ?3";
    let (lo_t, hi_t) = (utc_text(lo), utc_text(hi));
    let n: i64 = conn.query_row(
        &format!("select count(*) {ended}"),
        params![venue, lo_t, hi_t],
        |r| r.get(0),
    )?;
    let median = if n == 0 {
        None
    } else {
        let mut middle = conn.prepare(&format!(
            "select dwell_seconds {ended} order by dwell_seconds limit ?5 offset ?4"
        ))?;
        let take = if n % 2 == 0 { 2 } else { 1 };
        let values: Vec<f64> = middle
            .query_map(params![venue, lo_t, hi_t, (n - 1) / 2, take], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Some(values.iter().sum::<f64>() / values.len().max(1) as f64)
    };
    Ok(Counts {
        hours: by_hour,
        arrivals: arrivals as u64,
        sessions_ended: n as u64,
        median_dwell: median,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_microsecond()
    }

    #[test]
    fn a_plain_day_has_24_hours_of_one_hour_each_from_local_midnight() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let h = local_hours(jiff::civil::date(2026, 11, 30), &tz).unwrap();
        assert_eq!(h.len(), 24);
        assert_eq!(h[0].0, us("2026-11-30T05:00:00Z"));
        assert_eq!(h[23].1, us("2026-12-01T05:00:00Z"));
        assert!(h.iter().all(|(a, b)| b - a == 3_600_000_000));
        assert!(h.windows(2).all(|w| w[0].1 == w[1].0));
    }

    #[test]
    fn the_skipped_hour_is_empty_and_the_repeated_one_holds_both() {
        let tz = TimeZone::get("Europe/London").unwrap();
        // 2026-03-29: 01:00 GMT becomes 02:00 BST.
        let spring = local_hours(jiff::civil::date(2026, 3, 29), &tz).unwrap();
        assert_eq!(spring[1].0, spring[1].1, "01:00-02:00 does not exist");
        assert_eq!(spring[0].0, us("2026-03-29T00:00:00Z"));
        assert_eq!(spring[23].1, us("2026-03-29T23:00:00Z"));
        // 2026-10-25: 02:00 BST becomes 01:00 GMT; 01:00-02:00 happens twice.
        let autumn = local_hours(jiff::civil::date(2026, 10, 25), &tz).unwrap();
        assert_eq!(
            autumn[1],
            (us("2026-10-25T00:00:00Z"), us("2026-10-25T02:00:00Z"))
        );
        assert_eq!(autumn[23].1 - autumn[0].0, 25 * 3_600_000_000);
        // Half-hour offsets bucket by the local hour, not the UTC one.
        let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
        let k = local_hours(jiff::civil::date(2026, 11, 30), &kolkata).unwrap();
        assert_eq!(k[0].0, us("2026-11-29T18:30:00Z"));
    }

    /// The columns the queries read, as the processors' embedded store
    /// has them (the end-to-end test reads a real one): visits begun
    /// (venue, start, device) and visits ended (end, dwell; begun days
    /// before).
    fn store(visits: &[(&str, &str, &str)], ended: &[(&str, f64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let c = rusqlite::Connection::open(dir.path().join("a.db")).unwrap();
        c.execute_batch(
            "create table device_sessions (venue_id text, device_id text, connected_at text,
                                           disconnected_at text, dwell_seconds real);",
        )
        .unwrap();
        for (venue, at, device) in visits {
            c.execute(
                "insert into device_sessions values (?1, ?2, ?3, null, null)",
                rusqlite::params![venue, device, plumbing::utc_text(us(at))],
            )
            .unwrap();
        }
        for (at, dwell) in ended {
            c.execute(
                "insert into device_sessions values ('v', 'x', ?1, ?2, ?3)",
                rusqlite::params![
                    plumbing::utc_text(us("2026-11-20T00:00:00Z")),
                    plumbing::utc_text(us(at)),
                    dwell
                ],
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn the_embedded_store_counts_visits_per_hour_distinct_arrivals_and_the_median_dwell() {
        let dir = store(
            &[
                ("v", "2026-11-30T00:10:00Z", "a"),
                ("v", "2026-11-30T00:59:59.999999Z", "b"),
                ("v", "2026-11-30T01:00:00Z", "a"),
                ("w", "2026-11-30T01:30:00Z", "c"),
                ("v", "2026-12-01T00:00:00Z", "d"),
            ],
            &[
                ("2026-11-30T02:00:00Z", 600.0),
                ("2026-11-30T03:00:00Z", 60.0),
                ("2026-11-30T04:00:00Z", 6000.0),
                ("2026-11-29T23:59:59Z", 1.0),
            ],
        );
        let tz = TimeZone::UTC;
        let hours = local_hours(jiff::civil::date(2026, 11, 30), &tz).unwrap();
        let day = (hours[0].0, hours[23].1);
        let c = sqlite_counts(&dir.path().join("a.db"), "v", &hours, day).unwrap();
        assert_eq!(&c.hours[..3], &[2, 1, 0]);
        assert_eq!(
            c.hours.iter().sum::<u64>(),
            3,
            "the next day's visit is not today's"
        );
        assert_eq!(c.arrivals, 2, "a and b; a twice is one arrival");
        assert_eq!(c.sessions_ended, 3);
        assert_eq!(c.median_dwell, Some(600.0));
        // An even count: the mean of the middle two.
        let dir = store(
            &[],
            &[
                ("2026-11-30T02:00:00Z", 100.0),
                ("2026-11-30T03:00:00Z", 300.0),
            ],
        );
        let c = sqlite_counts(&dir.path().join("a.db"), "v", &hours, day).unwrap();
        assert_eq!((c.sessions_ended, c.median_dwell), (2, Some(200.0)));
        let dir = store(&[], &[]);
        let c = sqlite_counts(&dir.path().join("a.db"), "v", &hours, day).unwrap();
        assert_eq!((c.arrivals, c.median_dwell), (0, None));
    }
}
