//! The values at a few JSON pointers (RFC 6901) of one request body, found
//! without building the document.
//!
//! Ingest needs three small values of each body (event id, ordering key,
//! sequence). Parsing the whole body into a `serde_json::Value` allocated a
//! string for every key and value and a map node for every member: the
//! most allocating step of a request. Here each object or array on a
//! pointer's way is read once, member by member, keeping only the raw text
//! (borrowed from the body) of the members a pointer goes through; only a
//! pointer's final value is parsed. The answer is what
//! `serde_json::Value::pointer` gives on the parsed body (the last of
//! duplicate keys, array indices without sign or leading zeros, `~0` and
//! `~1` unescaped): a property test below holds the two together. One
//! difference, on purpose: a number too large for a float (`1e400`)
//! elsewhere in the body does not hide the values the pointers name.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// `N` JSON pointers, parsed once (a source's three, when it is built) and
/// looked up in each body without allocating.
#[derive(Debug, Clone)]
pub struct Pointers<const N: usize> {
    /// Each pointer's reference tokens; `None` for no pointer, or text
    /// that is not one.
    tokens: [Option<Vec<String>>; N],
}

impl<const N: usize> Pointers<N> {
    /// Parses `pointers`; `None` entries, and text that is not a pointer,
    /// name nothing.
    pub fn new(pointers: [Option<&str>; N]) -> Self {
        Pointers {
            tokens: pointers.map(|p| p.and_then(parse)),
        }
    }

    /// The raw text (borrowed from `body`) of the value at each pointer,
    /// in order; `None` when the body is not JSON, a `None` entry where a
    /// pointer names nothing.
    pub fn raw_values<'b>(&self, body: &'b [u8]) -> Option<[Option<&'b RawValue>; N]> {
        let text = std::str::from_utf8(body).ok()?;
        let mut found = [None; N];
        let live = std::array::from_fn(|i| self.tokens[i].is_some());
        let (deeper, n, ends) = self.next_tokens(live, 0);
        if ends {
            // A pointer names the whole body: its raw text is the answer.
            let root: &RawValue = serde_json::from_str(text).ok()?;
            self.find(root, live, 0, &mut found);
        } else if n == 0 {
            // No pointer at all: only whether the body is JSON.
            serde_json::from_str::<IgnoredAny>(text).ok()?;
        } else {
            // The body's members read straight from it, without first
            // taking its raw text (which allocates for nested values).
            let mut de = serde_json::Deserializer::from_str(text);
            self.members(&mut de, &deeper[..n], live, 0, &mut found)
                .ok()?;
            de.end().ok()?;
        }
        Some(found)
    }

    /// The `depth`th token of pointer `i`, if it is live and that long.
    fn token(&self, i: usize, depth: usize) -> Option<&str> {
        self.tokens[i].as_ref()?.get(depth).map(String::as_str)
    }

    /// The distinct tokens the `live` pointers take at `depth`, how many,
    /// and whether a live pointer ends there.
    fn next_tokens(&self, live: [bool; N], depth: usize) -> ([&str; N], usize, bool) {
        let mut deeper = [""; N];
        let mut n = 0;
        let mut ends = false;
        for i in (0..N).filter(|&i| live[i]) {
            match self.token(i, depth) {
                None => ends = true,
                Some(t) => {
                    if !deeper[..n].contains(&t) {
                        deeper[n] = t;
                        n += 1;
                    }
                }
            }
        }
        (deeper, n, ends)
    }

    /// Follows the `live` pointers from `raw`, which their first `depth`
    /// tokens led to, filling `found`.
    fn find<'a>(
        &self,
        raw: &'a RawValue,
        live: [bool; N],
        depth: usize,
        found: &mut [Option<&'a RawValue>; N],
    ) {
        let (deeper, n, ends) = self.next_tokens(live, depth);
        if ends {
            for i in (0..N).filter(|&i| live[i] && self.token(i, depth).is_none()) {
                found[i] = Some(raw);
            }
        }
        if n == 0 {
            return;
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        // A member that is not an object or array simply has no members.
        let _ = self.members(&mut de, &deeper[..n], live, depth, found);
    }

    /// Reads, in one pass over the object or array `de` is at, the members
    /// `deeper` names, and follows the live pointers into them.
    fn members<'a>(
        &self,
        de: &mut serde_json::Deserializer<serde_json::de::StrRead<'a>>,
        deeper: &[&str],
        live: [bool; N],
        depth: usize,
        found: &mut [Option<&'a RawValue>; N],
    ) -> Result<(), serde_json::Error> {
        let members = (Members::<N> { tokens: deeper }).deserialize(de)?;
        for (k, token) in deeper.iter().enumerate() {
            let Some(member) = members[k] else { continue };
            let next = std::array::from_fn(|i| live[i] && self.token(i, depth) == Some(*token));
            self.find(member, next, depth + 1, found);
        }
        Ok(())
    }
}

/// The values at `pointers` in `body`, parsed, in order; `None` when the
/// body is not JSON, a `None` entry where a pointer names nothing (or is
/// not a pointer).
pub fn values_at<const N: usize>(body: &[u8], pointers: [&str; N]) -> Option<[Option<Value>; N]> {
    let raw = Pointers::new(pointers.map(Some)).raw_values(body)?;
    Some(raw.map(|r| r.and_then(|r| serde_json::from_str(r.get()).ok())))
}

/// A pointer's reference tokens; `None` when it is not a pointer.
fn parse(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// One pass over an object or array: the raw text of the member each of
/// at most `N` tokens names (the last, for a key that repeats), nothing for
/// other values.
struct Members<'t, const N: usize> {
    tokens: &'t [&'t str],
}

impl<'de, const N: usize> DeserializeSeed<'de> for Members<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Members<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = [None; N];
        while let Some(hit) = map.next_key_seed(Key {
            tokens: self.tokens,
        })? {
            match hit {
                Some(i) => out[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted: [Option<usize>; N] = std::array::from_fn(|i| {
            self.tokens
                .get(i)
                .and_then(|t| plumbing::json_pointer::array_index(t))
        });
        let last = wanted.iter().flatten().max().copied();
        let mut out = [None; N];
        let mut at = 0usize;
        loop {
            if last.is_some_and(|l| at <= l) {
                let Some(item) = seq.next_element::<&'de RawValue>()? else {
                    break;
                };
                for (i, w) in wanted.iter().enumerate() {
                    if *w == Some(at) {
                        out[i] = Some(item);
                    }
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            at += 1;
        }
        Ok(out)
    }

    // Scalars have no members.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok([None; N])
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok([None; N])
    }
}

/// An object key: which token it is, if any (compared unescaped, without
/// allocating when the key has no escapes).
struct Key<'t> {
    tokens: &'t [&'t str],
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.tokens.iter().position(|t| *t == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-z~/0-9\"\\\\ é]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(("[a-z~/0-9]{0,3}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Every pointer into `v`, plus some that name nothing.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let t = k.replace('~', "~0").replace('/', "~1");
                    pointers(x, format!("{at}/{t}"), out);
                }
                out.push(format!("{at}/missing"));
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    pointers(x, format!("{at}/{i}"), out);
                }
                out.push(format!("{at}/{}", a.len()));
                out.push(format!("{at}/01"));
                out.push(format!("{at}/+0"));
                out.push(format!("{at}/-"));
            }
            _ => out.push(format!("{at}/0")),
        }
    }

    proptest! {
        /// Whatever the document and pointers, the values are those
        /// `Value::pointer` finds on the parsed document.
        #[test]
        fn finds_what_value_pointer_finds(doc in json(), pick in proptest::collection::vec(any::<prop::sample::Index>(), 1..5)) {
            let text = serde_json::to_vec(&doc).unwrap();
            let mut all = Vec::new();
            pointers(&doc, String::new(), &mut all);
            all.push("no-slash".into());
            let chosen: [&str; 4] = std::array::from_fn(|k| all[pick[k % pick.len()].index(all.len())].as_str());
            let got = values_at(&text, chosen).unwrap();
            let parsed: Value = serde_json::from_slice(&text).unwrap();
            for (p, g) in chosen.iter().zip(&got) {
                prop_assert_eq!(g.as_ref(), parsed.pointer(p), "pointer {:?} in {}", p, String::from_utf8_lossy(&text));
            }
        }
    }

    #[test]
    fn the_last_of_repeated_keys_wins_as_in_serde_json() {
        let body = br#"{"id":"a","venue":{"id":"v1"},"id":"b","venue":{"id":"v2"}}"#;
        let got = values_at(body, ["/id", "/venue/id"]).unwrap();
        assert_eq!(got, [Some(Value::from("b")), Some(Value::from("v2"))]);
    }

    #[test]
    fn a_body_that_is_not_json_has_no_values() {
        assert_eq!(values_at(b"{\"id\":", ["/id"]), None);
        assert_eq!(values_at(b"{\"id\":1} x", ["/id"]), None);
        assert_eq!(values_at(b"", ["/id"]), None);
    }

    #[test]
    fn escaped_keys_and_tokens_match() {
        let body = br#"{"a\/b":{"c~d":7},"\u0069d":"x"}"#;
        let got = values_at(body, ["/a~1b/c~0d", "/id"]).unwrap();
        assert_eq!(got, [Some(Value::from(7)), Some(Value::from("x"))]);
    }
}
