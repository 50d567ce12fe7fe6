//! A record as the consumer read it from the raw topic, with its share of
//! the byte budget.

use std::sync::Arc;

use super::budget;

/// One record as read from the raw topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The Avro envelope.
    pub payload: Arc<Vec<u8>>,
    /// Its share of the instance's byte budget, given back when the last
    /// copy of the record is dropped (`None` where nothing is budgeted:
    /// replay, tests).
    pub charge: Option<Arc<budget::Charge>>,
}
