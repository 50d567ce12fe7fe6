//! A Prometheus registry that also remembers what was declared in it.
//!
//! The `prometheus` crate renders a labelled family only once one of its
//! series exists, so a scrape alone cannot tell which metrics a binary
//! exports. [`Catalogue`] registers each metric and records its name, help,
//! type and label names: the naming test, the alert rules check and the
//! dashboard check compare against [`Catalogue::families`], so a renamed
//! or mistyped metric fails the build even if no traffic touched it.

use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    /// The word on the exposition's `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric type the catalogue knows the [`Kind`] of.
pub trait Typed: Collector + Clone + 'static {
    /// Its Prometheus type.
    const KIND: Kind;
}

macro_rules! typed {
    ($kind:ident: $($t:ty),*) => { $(impl Typed for $t { const KIND: Kind = Kind::$kind; })* };
}
typed!(Counter: prometheus::IntCounter, prometheus::IntCounterVec, prometheus::Counter, prometheus::CounterVec);
typed!(Gauge: prometheus::IntGauge, prometheus::IntGaugeVec, prometheus::Gauge, prometheus::GaugeVec);
typed!(Histogram: prometheus::Histogram, prometheus::HistogramVec);

/// One declared metric family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Its full name, e.g. `ingest_requests_total`.
    pub name: String,
    /// Its `# HELP` text.
    pub help: String,
    /// Its type.
    pub kind: Kind,
    /// Its label names.
    pub labels: Vec<String>,
}

/// One registry per process, and the list of what is in it.
#[derive(Clone, Default)]
pub struct Catalogue {
    /// What `/metrics` renders.
    registry: Registry,
    /// Every family registered through [`Catalogue::add`], in order.
    families: Arc<Mutex<Vec<Family>>>,
}

impl Catalogue {
    /// An empty registry.
    pub fn new() -> Catalogue {
        Catalogue::default()
    }

    /// Registers `metric` and records its name, help, type and labels.
    pub fn add<C: Typed>(&self, metric: &C) -> prometheus::Result<()> {
        self.registry.register(Box::new(metric.clone()))?;
        let mut families = self
            .families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in metric.desc() {
            families.push(Family {
                name: d.fq_name.clone(),
                help: d.help.clone(),
                kind: C::KIND,
                labels: d.variable_labels.clone(),
            });
        }
        Ok(())
    }

    /// The registry (for collectors registered directly, which the
    /// catalogue does not list).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every family declared through [`Catalogue::add`].
    pub fn families(&self) -> Vec<Family> {
        self.families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The Prometheus text exposition of every series that exists.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_listed_before_it_has_a_series() {
        let c = Catalogue::new();
        let v = prometheus::IntCounterVec::new(
            prometheus::Opts::new("x_things_total", "Things."),
            &["source"],
        )
        .unwrap();
        c.add(&v).unwrap();
        assert!(!c.render().contains("x_things_total"));
        assert_eq!(
            c.families(),
            vec![Family {
                name: "x_things_total".into(),
                help: "Things.".into(),
                kind: Kind::Counter,
                labels: vec!["source".into()],
            }]
        );
        // Registering the same name twice is refused, as by the registry.
        assert!(c.add(&v).is_err());
    }
}
