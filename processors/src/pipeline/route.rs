//! Routing: which sinks an event goes to.
//!
//! Rules come from the config (`[[routes]]`); each names sources, event
//! types and payload fields that must all match (an empty list matches
//! everything), whether late events are included, and the sinks. An event
//! goes to the union of the sinks of every rule it matches, each once, in
//! the order sinks are first named. No rule matched: the event is counted as
//! unrouted and its offset moves on.
//!
//! A rule with `max_event_age` skips an event whose `occurred_at` is further
//! in the past than that at the moment it is routed (wall clock, on the live
//! path and in a replay alike), so a marketing trigger never fires hours or
//! a week late. The skip is per rule: the event still goes to the sinks of
//! every other rule it matches. An event without `occurred_at` (a source
//! whose parser does not read one) is never skipped for its age. Skips are
//! returned in [`Routed::skipped`] for the caller to count and log
//! ([`crate::metrics::Metrics::route_skipped`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::event::Event;

/// One routing rule: every condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name, for metrics and logs.
    pub name: String,
    /// Sources matched (any of them); empty or absent: every source.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Event types matched (any of them); empty or absent: every type.
    #[serde(default)]
    pub types: Vec<String>,
    /// Payload fields that must equal the given JSON values, by pointer,
    /// e.g. `{ "/guest/vip" = true }`.
    #[serde(default, rename = "where")]
    pub where_: BTreeMap<String, serde_json::Value>,
    /// Whether late events (their slot in the sequence already passed) are
    /// routed too. Analytics wants them (flagged); live state does not.
    #[serde(default = "default_true")]
    pub include_late: bool,
    /// Events whose `occurred_at` is older than this when they are routed
    /// skip this route (counted and logged as `too_old`), e.g. `"15m"` on a
    /// route to a CRM: a welcome offer hours late is spam, and a backlog or
    /// a replay must not send one. Absent: no limit (analytics wants
    /// everything). Events without `occurred_at` are never skipped.
    #[serde(default, with = "humantime_serde")]
    pub max_event_age: Option<Duration>,
    /// Sinks the matching events go to.
    pub sinks: Vec<String>,
}

const fn default_true() -> bool {
    true
}

impl RouteConfig {
    /// This rule's own problems, named under `at` (`routes[i] (name)`),
    /// given the reorder's `gap_timeout`; whether its sinks exist is
    /// checked by the config that holds both.
    pub fn problems(&self, at: &str, gap_timeout: Duration) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(age) = self.max_event_age {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            if age < Duration::from_secs(1) {
                p.push(format!(
                    "{at}.max_event_age: must be at least 1s (got {})",
                    show(age)
                ));
            } else if age <= gap_timeout {
                p.push(format!(
                    "{at}.max_event_age: {} is not longer than processing.gap_timeout ({}): \
                     every event held back for a missing predecessor would skip this route",
                    show(age),
                    show(gap_timeout)
                ));
            }
        }
        for ptr in self.where_.keys() {
            if !ptr.starts_with('/') {
                p.push(format!(
                    "{at}.where: {ptr:?} is not a JSON pointer (must start with '/')"
                ));
            }
        }
        p
    }
}

/// Compiled routing rules over sinks numbered `0..sink_names.len()`.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    sources: Vec<String>,
    types: Vec<String>,
    fields: Vec<(String, Value)>,
    include_late: bool,
    /// `max_event_age` in microseconds; `None`: no limit.
    max_age_micros: Option<i64>,
    sinks: Vec<usize>,
}

/// Where one event goes, and which matching rules skipped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    /// The sinks, each once, in the order they are first named.
    pub sinks: Vec<usize>,
    /// Rules that matched the event but did not take it.
    pub skipped: Vec<Skip<'a>>,
    /// The sinks this event reaches only through routes with a
    /// `max_event_age`, each with when it stops being worth sending (Unix
    /// microseconds: `occurred_at` plus the longest such limit). A sink
    /// still retrying the event past then drops it rather than send it
    /// late. A sink also reached through a route without a limit is not
    /// here.
    pub expires: Vec<(usize, i64)>,
}

/// A rule that matched an event but did not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip<'a> {
    /// The rule's name.
    pub route: &'a str,
    /// Why, as the metric label: `too_old` (older than `max_event_age`).
    pub reason: &'static str,
    /// How old the event was when it was routed.
    pub age: Duration,
}

impl Router {
    /// Compiles `routes` against the sink names; a route naming an unknown
    /// sink is an error (config checking reports it first).
    pub fn new(routes: &[RouteConfig], sink_names: &[String]) -> Result<Router, String> {
        let mut rules = Vec::with_capacity(routes.len());
        for r in routes {
            let mut sinks = Vec::with_capacity(r.sinks.len());
            for s in &r.sinks {
                let i = sink_names
                    .iter()
                    .position(|n| n == s)
                    .ok_or_else(|| format!("route {}: no sink named {s:?}", r.name))?;
                sinks.push(i);
            }
            rules.push(Rule {
                name: r.name.clone(),
                sources: r.sources.clone(),
                types: r.types.clone(),
                fields: r
                    .where_
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                include_late: r.include_late,
                max_age_micros: r
                    .max_event_age
                    .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
                sinks,
            });
        }
        Ok(Router { rules })
    }

    /// The sinks `event` goes to, each once, when routed at `now_micros`
    /// (Unix microseconds, the wall clock), and the rules that matched it
    /// but skipped it for its age.
    pub fn route(&self, event: &Event, now_micros: i64) -> Routed<'_> {
        let mut out = Routed {
            sinks: Vec::new(),
            skipped: Vec::new(),
            expires: Vec::new(),
        };
        // Per sink reached: the latest deadline of the routes taking the
        // event there, `None` once a route without a limit does.
        let mut deadlines: Vec<(usize, Option<i64>)> = Vec::new();
        for rule in &self.rules {
            if !rule.matches(event) {
                continue;
            }
            if let (Some(max), Some(at)) = (rule.max_age_micros, event.occurred_at_micros) {
                let age = now_micros.saturating_sub(at);
                if age > max {
                    out.skipped.push(Skip {
                        route: &rule.name,
                        reason: "too_old",
                        age: Duration::from_micros(age.unsigned_abs()),
                    });
                    continue;
                }
            }
            let deadline = match (rule.max_age_micros, event.occurred_at_micros) {
                (Some(max), Some(at)) => Some(at.saturating_add(max)),
                _ => None,
            };
            for &s in &rule.sinks {
                if !out.sinks.contains(&s) {
                    out.sinks.push(s);
                    deadlines.push((s, deadline));
                } else if let Some(d) = deadlines.iter_mut().find(|(x, _)| *x == s) {
                    d.1 = match (d.1, deadline) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
            }
        }
        out.expires = deadlines
            .into_iter()
            .filter_map(|(s, d)| d.map(|d| (s, d)))
            .collect();
        out
    }
}

impl Router {
    /// How old `event` is when it no longer goes to `sink` only because
    /// every route that would take it there has a `max_event_age` it is
    /// past (a dead letter re-driven days later); `None` when a route
    /// still takes it there, or none ever would.
    pub fn expired_for(&self, event: &Event, sink: usize, now_micros: i64) -> Option<Duration> {
        let routed = self.route(event, now_micros);
        if routed.sinks.contains(&sink) {
            return None;
        }
        routed
            .skipped
            .iter()
            .filter(|skip| {
                self.rules
                    .iter()
                    .any(|r| r.name == skip.route && r.sinks.contains(&sink))
            })
            .map(|skip| skip.age)
            .min()
    }
}

/// The wall clock as Unix microseconds: what an event's age is measured
/// against when it is routed.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl Rule {
    fn matches(&self, e: &Event) -> bool {
        (self.include_late || !e.late)
            && (self.sources.is_empty() || self.sources.contains(&e.source))
            && (self.types.is_empty() || self.types.contains(&e.event_type))
            && self
                .fields
                .iter()
                .all(|(ptr, want)| e.body.pointer(ptr) == Some(want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn event(source: &str, t: &str, body: Value, late: bool) -> Event {
        Event {
            source: source.into(),
            event_id: "e".into(),
            event_type: t.into(),
            ordering_key: None,
            sequence: None,
            received_at_micros: 0,
            occurred_at_micros: None,
            late,
            guest_wifi: None,
            body,
        }
    }

    #[test]
    fn expired_for_names_a_sink_every_route_to_which_is_too_old() {
        let c = Config::from_toml(
            r#"
            [kafka]
            brokers = "b:9092"
            [dedupe]
            path = "d"
            [sinks.crm]
            kind = "log"
            [sinks.analytics]
            kind = "log"
            [sinks.chat]
            kind = "log"
            [[routes]]
            name = "welcome"
            types = ["guest_connects"]
            max_event_age = "15m"
            sinks = ["crm", "chat"]
            [[routes]]
            name = "welcome-late"
            types = ["guest_connects"]
            max_event_age = "1h"
            sinks = ["chat"]
            [[routes]]
            name = "all"
            sinks = ["analytics"]
            "#,
        )
        .unwrap();
        let names: Vec<String> = c.sinks.keys().cloned().collect();
        let r = Router::new(&c.routes, &names).unwrap();
        let idx = |n: &str| names.iter().position(|x| x == n).unwrap();
        let mut e = event("purple", "guest_connects", Value::Null, false);
        let minute = 60_000_000;
        e.occurred_at_micros = Some(0);
        // 30 min old: past the CRM's only route, not chat's second one.
        let now = 30 * minute;
        assert_eq!(
            r.expired_for(&e, idx("crm"), now),
            Some(Duration::from_secs(30 * 60))
        );
        assert_eq!(r.expired_for(&e, idx("chat"), now), None);
        assert_eq!(r.expired_for(&e, idx("analytics"), now), None);
        assert_eq!(r.expired_for(&e, idx("crm"), 10 * minute), None);
        // A type no route takes to the CRM is not "expired" there.
        let other = event("purple", "device_connected", Value::Null, false);
        assert_eq!(r.expired_for(&other, idx("crm"), now), None);
    }

    #[test]
    fn union_of_matching_rules_each_sink_once() {
        let c = Config::from_toml(
            r#"
            [kafka]
            brokers = "b:9092"
            [dedupe]
            path = "d"
            [sinks.analytics]
            kind = "log"
            [sinks.crm]
            kind = "log"
            [sinks.alerts]
            kind = "log"
            [[routes]]
            name = "all"
            sinks = ["analytics"]
            [[routes]]
            name = "welcome"
            sources = ["purple"]
            types = ["guest_connects"]
            include_late = false
            sinks = ["crm", "analytics"]
            [[routes]]
            name = "vip"
            sources = ["purple"]
            where = { "/guest/vip" = true }
            include_late = false
            sinks = ["alerts"]
            "#,
        )
        .unwrap();
        let names: Vec<String> = c.sinks.keys().cloned().collect();
        let r = Router::new(&c.routes, &names).unwrap();
        let idx = |n: &str| names.iter().position(|x| x == n).unwrap();
        let vip = serde_json::json!({"guest": {"vip": true}});
        assert_eq!(
            r.route(&event("purple", "guest_connects", vip.clone(), false), 0)
                .sinks,
            vec![idx("analytics"), idx("crm"), idx("alerts")]
        );
        // Late: only the rule that includes late events.
        assert_eq!(
            r.route(&event("purple", "guest_connects", vip, true), 0)
                .sinks,
            vec![idx("analytics")]
        );
        let not_vip = serde_json::json!({"guest": {"vip": false}});
        assert_eq!(
            r.route(&event("purple", "device_connected", not_vip, false), 0)
                .sinks,
            vec![idx("analytics")]
        );
        assert_eq!(
            r.route(&event("github", "guest_connects", Value::Null, false), 0)
                .sinks,
            vec![idx("analytics")]
        );
    }

    #[test]
    fn an_event_older_than_a_routes_max_event_age_skips_that_route_only() {
        let c = Config::from_toml(
            r#"
            [kafka]
            brokers = "b:9092"
            [dedupe]
            path = "d"
            [sinks.analytics]
            kind = "log"
            [sinks.crm]
            kind = "log"
            [[routes]]
            name = "all"
            sinks = ["analytics"]
            [[routes]]
            name = "welcome"
            types = ["guest_connects"]
            max_event_age = "15m"
            sinks = ["crm"]
            [[routes]]
            name = "vip-audit"
            where = { "/guest/vip" = true }
            sinks = ["crm"]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = c.sinks.keys().cloned().collect();
        let r = Router::new(&c.routes, &names).unwrap();
        let idx = |n: &str| names.iter().position(|x| x == n).unwrap();
        let now = 1_795_370_591_000_000_i64;
        let min = 60_000_000_i64;
        let at = |ago: Option<i64>, body: Value| {
            let mut e = event("purple", "guest_connects", body, false);
            e.occurred_at_micros = ago.map(|a| now - a);
            e
        };
        // 14 minutes old: both routes; the CRM only for one more minute
        // (a retry past then drops it), analytics without a limit.
        let fresh = r.route(&at(Some(14 * min), Value::Null), now);
        assert_eq!(fresh.sinks, vec![idx("analytics"), idx("crm")]);
        assert!(fresh.skipped.is_empty());
        assert_eq!(fresh.expires, vec![(idx("crm"), now + min)]);
        // 16 minutes old: the welcome route skips it, analytics still has it.
        let old = r.route(&at(Some(16 * min), Value::Null), now);
        assert_eq!(old.sinks, vec![idx("analytics")]);
        assert_eq!(
            old.skipped,
            vec![Skip {
                route: "welcome",
                reason: "too_old",
                age: Duration::from_secs(16 * 60),
            }]
        );
        // Exactly the limit is not older than it.
        assert!(
            r.route(&at(Some(15 * min), Value::Null), now)
                .skipped
                .is_empty()
        );
        // In the future (a provider's clock ahead): not old.
        assert!(
            r.route(&at(Some(-min), Value::Null), now)
                .skipped
                .is_empty()
        );
        // No occurred_at: never skipped for its age.
        let unknown = r.route(&at(None, Value::Null), now);
        assert_eq!(unknown.sinks, vec![idx("analytics"), idx("crm")]);
        assert!(unknown.skipped.is_empty());
        // The skip is per route: another route to the same sink still takes
        // the event (and the skip is still reported for the one that did not).
        let vip = r.route(
            &at(
                Some(24 * 60 * min),
                serde_json::json!({"guest": {"vip": true}}),
            ),
            now,
        );
        assert_eq!(vip.sinks, vec![idx("analytics"), idx("crm")]);
        assert_eq!(vip.skipped.len(), 1);
        // A fresh VIP arrival reaches the CRM through both routes: the
        // vip-audit route has no limit, so the CRM has none for it.
        let fresh_vip = r.route(
            &at(Some(min), serde_json::json!({"guest": {"vip": true}})),
            now,
        );
        assert_eq!(fresh_vip.sinks, vec![idx("analytics"), idx("crm")]);
        assert!(fresh_vip.expires.is_empty(), "{fresh_vip:?}");
        // Without occurred_at: no deadline.
        assert!(unknown.expires.is_empty());
        // A route that does not match is not "skipped".
        let mut other = at(Some(60 * min), Value::Null);
        other.event_type = "device_connected".into();
        let other = r.route(&other, now);
        assert_eq!(other.sinks, vec![idx("analytics")]);
        assert!(other.skipped.is_empty());
    }
}
