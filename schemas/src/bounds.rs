//! A walk over Avro binary data, by its writer schema, that refuses any
//! length or item count larger than the bytes left to hold it.
//!
//! apache-avro reserves memory for an array or a map from the count the data
//! declares (up to 512 Mi items, several GB), before it reads a single item:
//! a 106-byte record found by the `envelope_decode` fuzz target made it
//! reserve 2.7 GB. A real datum cannot declare more items than it has bytes
//! left (every item of our schemas takes at least one byte), nor a string
//! longer than what follows it, so such data is refused here, before the
//! library sees it. The walk allocates nothing and reads each byte once.

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};

/// Why the data cannot be a datum of its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// The data ended inside a value.
    #[error("the data ends inside a value")]
    Truncated,
    /// A variable-length integer ran over ten bytes.
    #[error("a variable-length integer is too long")]
    BadVarint,
    /// A length, count or union index is negative or past what is left.
    #[error("a length or item count of {0} does not fit in the {1} bytes left")]
    TooLong(i64, usize),
    /// A union index names no branch.
    #[error("union branch {0} does not exist")]
    BadBranch(i64),
    /// A named type the schema refers to is not defined in it.
    #[error("the schema refers to an undefined type {0}")]
    UnknownName(String),
}

/// Checks that `data` can be read as one datum of `schema` without any
/// declared length or count exceeding the bytes that follow it. Returns the
/// bytes left after the datum.
pub fn check<'d>(schema: &Schema, data: &'d [u8]) -> Result<&'d [u8], BoundsError> {
    let mut walk = Walk {
        root: schema,
        at: Cursor { data },
    };
    walk.value(schema)?;
    Ok(walk.at.data)
}

/// Avro's primitive reads over a datum's bytes, each refusing what cannot
/// fit in the bytes left: the walk below and the direct envelope reader
/// ([`crate::envelope`]) share them, so both accept the same data.
pub(crate) struct Cursor<'d> {
    /// What is left to read.
    pub(crate) data: &'d [u8],
}

impl<'d> Cursor<'d> {
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), BoundsError> {
        self.take(n).map(drop)
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'d [u8], BoundsError> {
        if n > self.data.len() {
            return Err(BoundsError::Truncated);
        }
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(taken)
    }

    /// One zig-zag variable-length long of at most ten bytes (bits past
    /// the 64th dropped, as apache-avro does).
    pub(crate) fn long(&mut self) -> Result<i64, BoundsError> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let Some((&b, rest)) = self.data.split_first() else {
                return Err(BoundsError::Truncated);
            };
            self.data = rest;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(BoundsError::BadVarint)
    }

    /// A length or count: not negative, and at most the bytes left.
    pub(crate) fn bounded(&mut self) -> Result<usize, BoundsError> {
        let n = self.long()?;
        match usize::try_from(n) {
            Ok(len) if len <= self.data.len() => Ok(len),
            _ => Err(BoundsError::TooLong(n, self.data.len())),
        }
    }

    /// The count that opens a block of an array or map (negative: followed
    /// by the block's byte size, read and not needed); `None` for the zero
    /// count that ends it. Never more than the bytes left, since every item
    /// of our schemas takes at least one.
    pub(crate) fn block(&mut self) -> Result<Option<usize>, BoundsError> {
        let count = self.long()?;
        if count == 0 {
            return Ok(None);
        }
        let count = if count < 0 {
            let _size = self.long()?;
            count
                .checked_neg()
                .ok_or(BoundsError::TooLong(count, self.data.len()))?
        } else {
            count
        };
        let left = self.data.len();
        usize::try_from(count)
            .ok()
            .filter(|&c| c <= left)
            .map(Some)
            .ok_or(BoundsError::TooLong(count, left))
    }
}

struct Walk<'s, 'd> {
    /// The whole schema, where a named reference is looked up.
    root: &'s Schema,
    at: Cursor<'d>,
}

impl Walk<'_, '_> {
    /// The blocks of an array or map, each item read by `item`.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), BoundsError>,
    ) -> Result<(), BoundsError> {
        while let Some(count) = self.at.block()? {
            for _ in 0..count {
                item(self)?;
            }
        }
        Ok(())
    }

    fn value(&mut self, schema: &Schema) -> Result<(), BoundsError> {
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.at.skip(1),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Enum(_) => self.at.long().map(drop),
            Schema::Float => self.at.skip(4),
            Schema::Double => self.at.skip(8),
            Schema::Duration => self.at.skip(12),
            Schema::Fixed(f) => self.at.skip(f.size),
            Schema::Bytes | Schema::String | Schema::Uuid | Schema::BigDecimal => {
                let len = self.at.bounded()?;
                self.at.skip(len)
            }
            Schema::Decimal(d) => self.value(&d.inner),
            Schema::Array(a) => self.blocks(|w| w.value(&a.items)),
            Schema::Map(m) => self.blocks(|w| {
                let len = w.at.bounded()?;
                w.at.skip(len)?;
                w.value(&m.types)
            }),
            Schema::Union(u) => {
                let index = self.at.long()?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or(BoundsError::BadBranch(index))?;
                self.value(branch)
            }
            Schema::Record(r) => r.fields.iter().try_for_each(|f| self.value(&f.schema)),
            Schema::Ref { name } => {
                let target = self.lookup(name)?;
                self.value(&target)
            }
        }
    }

    /// The named type a reference points to. Our schemas define each named
    /// type once and refer to none, so this rare path may take its time.
    fn lookup(&self, name: &Name) -> Result<Schema, BoundsError> {
        let unknown = || BoundsError::UnknownName(name.to_string());
        let resolved = ResolvedSchema::try_from(self.root).map_err(|_| unknown())?;
        resolved
            .get_names()
            .get(name)
            .map(|s| (*s).clone())
            .ok_or_else(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(n: i64) -> Vec<u8> {
        let mut v = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn schema(text: &str) -> Schema {
        Schema::parse_str(text).unwrap()
    }

    #[test]
    fn a_huge_declared_count_is_refused_before_any_item() {
        let s = schema(r#"{"type":"array","items":"string"}"#);
        let mut data = zigzag(67_000_000);
        data.extend_from_slice(b"\x02a\x00");
        assert_eq!(check(&s, &data), Err(BoundsError::TooLong(67_000_000, 3)));
        // The same with a negative (sized) block count.
        let mut data = zigzag(-67_000_000);
        data.extend_from_slice(&zigzag(10));
        assert!(matches!(
            check(&s, &data),
            Err(BoundsError::TooLong(67_000_000, _))
        ));
    }

    #[test]
    fn lengths_past_the_end_and_negative_lengths_are_refused() {
        let s = schema(r#""bytes""#);
        let mut data = zigzag(5);
        data.extend_from_slice(b"abcd");
        assert_eq!(check(&s, &data), Err(BoundsError::TooLong(5, 4)));
        assert_eq!(check(&s, &zigzag(-1)), Err(BoundsError::TooLong(-1, 0)));
        assert_eq!(check(&s, &[0xff; 11]), Err(BoundsError::BadVarint));
    }

    #[test]
    fn well_formed_data_passes_and_the_rest_is_returned() {
        let s = schema(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"array","items":{"type":"record","name":"H","fields":[{"name":"n","type":"string"}]}}},
                {"name":"b","type":["null","long"]},
                {"name":"c","type":{"type":"map","values":"H"}},
                {"name":"d","type":{"type":"fixed","name":"F","size":2}}
            ]}"#,
        );
        let value = apache_avro::types::Value::Record(vec![
            (
                "a".into(),
                apache_avro::types::Value::Array(vec![apache_avro::types::Value::Record(vec![(
                    "n".into(),
                    apache_avro::types::Value::String("x".into()),
                )])]),
            ),
            (
                "b".into(),
                apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Long(-7))),
            ),
            (
                "c".into(),
                apache_avro::types::Value::Map(
                    [(
                        "k".to_string(),
                        apache_avro::types::Value::Record(vec![(
                            "n".into(),
                            apache_avro::types::Value::String("v".into()),
                        )]),
                    )]
                    .into(),
                ),
            ),
            ("d".into(), apache_avro::types::Value::Fixed(2, vec![1, 2])),
        ]);
        let mut data = apache_avro::to_avro_datum(&s, value).unwrap();
        data.push(0xaa);
        assert_eq!(check(&s, &data), Ok(&[0xaa][..]));
        assert_eq!(
            check(&s, &data[..data.len() - 2]),
            Err(BoundsError::Truncated)
        );
        // A union index past its branches.
        let u = schema(r#"["null","long"]"#);
        assert_eq!(check(&u, &zigzag(2)), Err(BoundsError::BadBranch(2)));
    }
}
