//! Reading and judging what the binaries export: the Prometheus text
//! format, the naming rules, and the metric names a PromQL expression uses.
//!
//! - [`parse`]: a scrape into families (HELP, TYPE, samples).
//! - [`declared_problems`] and [`scrape_problems`]: the conventions
//!   (`_total` counters, base units, low-cardinality labels), as a list of
//!   problems, each naming the metric.
//! - [`declared`]: every family ingest and the processors declare, and
//!   [`series_names`]: the names a query may use for them.
//! - [`promql_names`]: the metric names an expression refers to.

use std::collections::{BTreeMap, BTreeSet};

pub use plumbing::metrics::{Family, Kind};

/// One metric family as scraped.
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    /// The family name.
    pub name: String,
    /// Its `# HELP` text, if any.
    pub help: Option<String>,
    /// Its `# TYPE`, if any.
    pub kind: Option<String>,
    /// Its samples: sample name (with `_bucket`, `_sum`, `_count` for
    /// histograms), labels, value.
    pub samples: Vec<Sample>,
}

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The sample's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Scraped {
    /// The sum of the samples named exactly `name` whose labels include
    /// every `(label, value)` given.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// Parses the Prometheus text format (version 0.0.4) into families, in
/// order. Samples are attached to the family of the last `# TYPE` or
/// `# HELP` line whose name they extend.
pub fn parse(text: &str) -> Result<Vec<Scraped>, String> {
    let mut out: Vec<Scraped> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(what), Some(name)) = (parts.next(), parts.next()) else {
                return Err(format!("line {}: {line:?}", n + 1));
            };
            let value = parts.next().unwrap_or("").to_string();
            if out.last().is_none_or(|f| f.name != name) {
                out.push(Scraped {
                    name: name.to_string(),
                    ..Scraped::default()
                });
            }
            let f = out.last_mut().expect("just pushed");
            match what {
                "HELP" => f.help = Some(value),
                "TYPE" => f.kind = Some(value),
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?;
        match out.last_mut() {
            Some(f) if sample.name.starts_with(&f.name) => f.samples.push(sample),
            _ => out.push(Scraped {
                name: sample.name.clone(),
                samples: vec![sample],
                ..Scraped::default()
            }),
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let (head, value) = line.rsplit_once(' ').ok_or("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| "value is not a number")?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').ok_or("labels not closed")?;
            (name.to_string(), parse_labels(body)?)
        }
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"").ok_or("label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("label value not closed".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("dangling escape".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(k.trim_start_matches(',').to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

/// Label names that would carry unbounded or personal values.
const FORBIDDEN_LABEL_WORDS: &[&str] = &[
    "id", "ids", "addr", "address", "ip", "path", "url", "uri", "key", "email", "venue", "device",
    "guest", "host", "user", "body", "type",
];

/// Words that say a value is a duration or a size: the name must then end
/// in the base unit.
const TIME_WORDS: &[&str] = &["latency", "duration", "time", "delay", "age", "elapsed"];
const SIZE_WORDS: &[&str] = &["size", "bytes"];

/// Every family ingest (its server and its poller) and the processors
/// declare.
pub fn declared() -> Vec<Family> {
    let mut all = ingest::metrics::Metrics::new()
        .expect("ingest metrics register")
        .families();
    all.extend(
        ingest::poller::PollMetrics::new()
            .expect("poller metrics register")
            .catalogue
            .families(),
    );
    all.extend(
        processors::metrics::Metrics::new()
            .expect("processors metrics register")
            .families(),
    );
    all
}

/// The names a query may use for these families (a histogram's
/// `_bucket`, `_sum` and `_count`).
pub fn series_names(families: &[Family]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for f in families {
        if f.kind == Kind::Histogram {
            for s in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{s}", f.name));
            }
        } else {
            names.insert(f.name.clone());
        }
    }
    names
}

fn name_problems(name: &str, kind: &str, help: Option<&str>, out: &mut Vec<String>) {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_chars || !(name.starts_with("ingest_") || name.starts_with("processors_")) {
        out.push(format!(
            "{name}: not `ingest_` or `processors_` then snake_case"
        ));
    }
    let words: Vec<&str> = name.split('_').collect();
    match kind {
        "counter" if !name.ends_with("_total") => {
            out.push(format!("{name}: a counter's name ends in _total"))
        }
        "gauge" | "histogram" if name.ends_with("_total") => {
            out.push(format!("{name}: only counters end in _total"))
        }
        "histogram" if !(name.ends_with("_seconds") || name.ends_with("_bytes")) => out.push(
            format!("{name}: a histogram observes a base unit: end in _seconds or _bytes"),
        ),
        "counter" | "gauge" | "histogram" => {}
        other => out.push(format!(
            "{name}: type {other:?} (counter, gauge, histogram)"
        )),
    }
    let base = name.strip_suffix("_total").unwrap_or(name);
    if words.iter().any(|w| TIME_WORDS.contains(w)) && !base.ends_with("_seconds") {
        out.push(format!("{name}: a duration is in _seconds"));
    }
    if words.iter().any(|w| SIZE_WORDS.contains(w)) && !base.ends_with("_bytes") {
        out.push(format!("{name}: a size is in _bytes"));
    }
    for w in [
        "milliseconds",
        "ms",
        "millis",
        "us",
        "kb",
        "mb",
        "kib",
        "mib",
        "minutes",
    ] {
        if words.contains(&w) {
            out.push(format!("{name}: {w} is not a base unit"));
        }
    }
    match help {
        None => out.push(format!("{name}: no HELP")),
        Some(h) if h.trim().len() < 10 => out.push(format!("{name}: HELP {h:?} says nothing")),
        Some(_) => {}
    }
}

fn label_name_problems(name: &str, label: &str, out: &mut Vec<String>) {
    if label.split('_').any(|w| FORBIDDEN_LABEL_WORDS.contains(&w)) {
        out.push(format!(
            "{name}: label {label:?} would carry unbounded or personal values"
        ));
    }
}

/// Convention problems of declared families (whether or not they have
/// series).
pub fn declared_problems(families: &[Family]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for f in families {
        if !seen.insert(&f.name) {
            out.push(format!("{}: declared twice", f.name));
        }
        name_problems(&f.name, f.kind.as_str(), Some(&f.help), &mut out);
        for l in &f.labels {
            label_name_problems(&f.name, l, &mut out);
        }
    }
    out
}

/// Whether a label value looks like something unbounded: a UUID, an
/// address, a long opaque id.
pub fn looks_unbounded(v: &str) -> bool {
    let uuid = v.len() == 36
        && v.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    let ipv4 = v.split('.').count() == 4 && v.split('.').all(|p| p.parse::<u8>().is_ok());
    let ipv6 = v.contains(':') && v.parse::<std::net::Ipv6Addr>().is_ok();
    let long_hex = v.len() >= 16 && v.bytes().all(|b| b.is_ascii_hexdigit());
    uuid || ipv4 || ipv6 || long_hex || v.len() > 64 || v.contains('/')
}

/// Most series one family may have (histogram buckets count once).
pub const MAX_SERIES_PER_FAMILY: usize = 64;

/// Convention problems of a scrape: HELP and TYPE on every family, the
/// naming rules, label values that look like ids or addresses or contain
/// one of `never`, and series counts.
pub fn scrape_problems(families: &[Scraped], never: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for f in families {
        let kind = f.kind.clone().unwrap_or_default();
        if f.kind.is_none() {
            out.push(format!("{}: no TYPE", f.name));
        }
        name_problems(&f.name, &kind, f.help.as_deref(), &mut out);
        let mut series = BTreeSet::new();
        for s in &f.samples {
            let mut labels = s.labels.clone();
            labels.remove("le");
            for (k, v) in &labels {
                label_name_problems(&f.name, k, &mut out);
                if looks_unbounded(v) {
                    out.push(format!("{}: label {k}={v:?} looks unbounded", f.name));
                }
                if let Some(n) = never.iter().find(|n| v.contains(n.as_str())) {
                    out.push(format!("{}: label {k}={v:?} carries {n:?}", f.name));
                }
            }
            series.insert(labels);
        }
        if series.len() > MAX_SERIES_PER_FAMILY {
            out.push(format!(
                "{}: {} series (at most {MAX_SERIES_PER_FAMILY})",
                f.name,
                series.len()
            ));
        }
    }
    out
}

/// The `ingest_*` and `processors_*` metric names a PromQL expression (or
/// any text) refers to.
pub fn promql_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut in_string = None;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if let Some(q) = in_string {
            if c == q {
                in_string = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("ingest_") || word.starts_with("processors_") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
        if c == '"' || c == '\'' || c == '`' {
            in_string = Some(c);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_help_type_and_labels() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\n\
                    # HELP h_seconds Hist.\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 0.5\nh_seconds_count 2\n";
        let f = parse(text).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].samples[0].labels["y"], "q\"z");
        assert_eq!(f[0].sum("a_total", &[("x", "1")]), 3.0);
        assert_eq!(f[1].samples.len(), 3);
        assert_eq!(f[1].kind.as_deref(), Some("histogram"));
    }

    #[test]
    fn names_in_promql_skip_strings_and_functions() {
        let n = promql_names(
            "histogram_quantile(0.99, sum by (le, source) (rate(ingest_ack_latency_seconds_bucket{source!=\"ingest_x\"}[5m]))) > 1 and on() processors_up",
        );
        assert_eq!(
            n.into_iter().collect::<Vec<_>>(),
            ["ingest_ack_latency_seconds_bucket", "processors_up"]
        );
    }

    #[test]
    fn the_rules_catch_bad_names() {
        let mut p = Vec::new();
        name_problems(
            "ingest_requests",
            "counter",
            Some("Requests answered."),
            &mut p,
        );
        name_problems(
            "ingest_latency_ms",
            "histogram",
            Some("Request latency."),
            &mut p,
        );
        name_problems("processors_x_total", "gauge", None, &mut p);
        label_name_problems("ingest_x_total", "event_id", &mut p);
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(looks_unbounded("0193a0f2-7c1e-7d3a-9b1e-0123456789ab"));
        assert!(looks_unbounded("10.1.2.3"));
        assert!(looks_unbounded("2001:db8::1"));
        assert!(!looks_unbounded("signature_invalid"));
        assert!(!looks_unbounded("503"));
    }
}
