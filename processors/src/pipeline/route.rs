//! Routing: which sinks an event goes to.
//!
//! Rules come from the config (`[[routes]]`); each names sources, event
//! types and payload fields that must all match (an empty list matches
//! everything), whether late events are included, and the sinks. An event
//! goes to the union of the sinks of every rule it matches, each once, in
//! the order sinks are first named. No rule matched: the event is counted as
//! unrouted and its offset moves on.

use std::collections::BTreeMap;

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
    /// Sinks the matching events go to.
    pub sinks: Vec<String>,
}

const fn default_true() -> bool {
    true
}

impl RouteConfig {
    /// This rule's own problems, named under `at` (`routes[i] (name)`);
    /// whether its sinks exist is checked by the config that holds both.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
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
    sources: Vec<String>,
    types: Vec<String>,
    fields: Vec<(String, Value)>,
    include_late: bool,
    sinks: Vec<usize>,
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
                sources: r.sources.clone(),
                types: r.types.clone(),
                fields: r
                    .where_
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                include_late: r.include_late,
                sinks,
            });
        }
        Ok(Router { rules })
    }

    /// The sinks `event` goes to, each once.
    pub fn route(&self, event: &Event) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for rule in &self.rules {
            if rule.matches(event) {
                for &s in &rule.sinks {
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }
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
            r.route(&event("purple", "guest_connects", vip.clone(), false)),
            vec![idx("analytics"), idx("crm"), idx("alerts")]
        );
        // Late: only the rule that includes late events.
        assert_eq!(
            r.route(&event("purple", "guest_connects", vip, true)),
            vec![idx("analytics")]
        );
        let not_vip = serde_json::json!({"guest": {"vip": false}});
        assert_eq!(
            r.route(&event("purple", "device_connected", not_vip, false)),
            vec![idx("analytics")]
        );
        assert_eq!(
            r.route(&event("github", "guest_connects", Value::Null, false)),
            vec![idx("analytics")]
        );
    }
}
