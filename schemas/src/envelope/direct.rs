//! Reads a v1 envelope datum directly into an [`Envelope`]: one pass over
//! the bytes, one allocation per string, no generic `Value` tree and no
//! schema resolution per record (apache-avro's path took about 4 µs of a
//! 1 KiB envelope; BENCHMARKS.md).
//!
//! It reads through the bounds check's own primitives
//! ([`crate::bounds::Cursor`]), accepts exactly the data apache-avro's path
//! accepts after that check, and returns the same envelope: a property test
//! and the `envelope_decode` fuzz target compare the two on arbitrary and
//! mutated records. It is tied to v1 the way the direct encoder is: a test
//! fails when `v1.avsc` stops being the current version.

use super::{DecodeError, Envelope, Header, Verification};
use crate::bounds::{BoundsError, Cursor};

/// Decodes one v1 datum (the bytes after the single-object header).
pub(super) fn decode_v1(datum: &[u8]) -> Result<Envelope, DecodeError> {
    let mut r = Reader {
        at: Cursor { data: datum },
    };
    let event_id = r.string("event_id")?;
    let source = r.string("source")?;
    let received_at_micros = r.long()?;
    let body = r.bytes()?.to_vec();
    let headers = r.headers()?;
    let content_type = r.opt_string("content_type")?;
    let client_addr = r.opt_string("client_addr")?;
    let scheme = r.string("verification.scheme")?;
    let secret_id = r.string("verification.secret_id")?;
    let ordering_key = r.opt_string("ordering_key")?;
    let sequence = match r.branch()? {
        0 => None,
        _ => Some(r.long()?),
    };
    let request_id = r.string("request_id")?;
    if !r.at.data.is_empty() {
        return Err(DecodeError::Trailing(r.at.data.len()));
    }
    Ok(Envelope {
        event_id,
        source,
        received_at_micros,
        body,
        headers,
        content_type,
        client_addr,
        verification: Verification { scheme, secret_id },
        ordering_key,
        sequence,
        request_id,
    })
}

struct Reader<'d> {
    at: Cursor<'d>,
}

impl Reader<'_> {
    fn long(&mut self) -> Result<i64, DecodeError> {
        Ok(self.at.long()?)
    }

    fn bytes(&mut self) -> Result<&[u8], DecodeError> {
        let len = self.at.bounded()?;
        Ok(self.at.take(len)?)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::Utf8(field)),
        }
    }

    /// The branch of a two-branch union, `["null", T]`.
    fn branch(&mut self) -> Result<u8, DecodeError> {
        match self.long()? {
            0 => Ok(0),
            1 => Ok(1),
            n => Err(BoundsError::BadBranch(n).into()),
        }
    }

    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        match self.branch()? {
            0 => Ok(None),
            _ => self.string(field).map(Some),
        }
    }

    /// The `headers` array, in blocks ([`Cursor::block`]); nothing is
    /// reserved beyond what the bytes left can hold (each item takes at
    /// least two, two empty strings).
    fn headers(&mut self) -> Result<Vec<Header>, DecodeError> {
        let mut headers = Vec::new();
        while let Some(count) = self.at.block()? {
            headers.reserve(count.min(self.at.data.len() / 2));
            for _ in 0..count {
                let name = self.string("headers.name")?;
                let value = self.string("headers.value")?;
                headers.push(Header { name, value });
            }
        }
        Ok(headers)
    }
}
