//! Parsing Canonical Form and the CRC-64-AVRO fingerprint, as the Avro
//! specification defines them ("Parsing Canonical Form for Schemas",
//! "Schema Fingerprints").
//!
//! Written here rather than taken from apache-avro: its 0.21 canonical form
//! keeps a logical type's primitive as `{"type":"long"}` where the
//! specification (and Java's `SchemaNormalization`, fastavro) reduce it to
//! `"long"`, so its fingerprint of the envelope differs from the one every
//! JVM consumer computes from the same `.avsc` file.
//!
//! The rules, over the schema's JSON:
//!
//! - PRIMITIVES: a primitive is written as its name (`"long"`), whatever
//!   other attributes (`logicalType`, ...) its object form carries;
//! - FULLNAMES: names of records, enums and fixeds, and references to them,
//!   become full names (namespace inherited from the enclosing named type);
//! - STRIP: only `type`, `name`, `fields`, `symbols`, `items`, `values` and
//!   `size` are kept (no `doc`, `aliases`, `default`, `namespace`, ...);
//! - ORDER: in that order: `name`, `type`, `fields`, `symbols`, `items`,
//!   `values`, `size`;
//! - STRINGS: escapes replaced by the UTF-8 characters they stand for;
//! - INTEGERS: `size` without quotes or leading zeros;
//! - WHITESPACE: none outside string literals.
//!
//! A named type already written is referred to by its full name, as Java's
//! `SchemaNormalization` does.

use std::collections::HashSet;

use serde_json::{Map, Value};

/// The Avro primitive type names.
const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Why a schema text has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// The text is not JSON.
    #[error("schema is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is not an Avro schema.
    #[error("not an Avro schema: {0}")]
    Invalid(String),
}

/// The Parsing Canonical Form of an `.avsc` text.
pub fn parsing_canonical_form(avsc: &str) -> Result<String, CanonicalError> {
    let schema: Value = serde_json::from_str(avsc)?;
    let mut out = String::new();
    write_schema(&schema, "", &mut HashSet::new(), &mut out)?;
    Ok(out)
}

/// The CRC-64-AVRO fingerprint of an `.avsc` text's Parsing Canonical Form:
/// what single-object encoding writes, little-endian, after `C3 01`.
pub fn fingerprint_of(avsc: &str) -> Result<u64, CanonicalError> {
    Ok(crc64_avro(parsing_canonical_form(avsc)?.as_bytes()))
}

/// CRC-64-AVRO (the specification's "Rabin" fingerprint) of some bytes.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    let mut fp = CRC64_EMPTY;
    for b in bytes {
        fp = (fp >> 8) ^ CRC64_TABLE[((fp ^ u64::from(*b)) & 0xff) as usize];
    }
    fp
}

/// The fingerprint of the empty string, and the polynomial.
const CRC64_EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const CRC64_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (CRC64_EMPTY & (0u64.wrapping_sub(fp & 1)));
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

fn invalid(what: impl Into<String>) -> CanonicalError {
    CanonicalError::Invalid(what.into())
}

fn write_str(s: &str, out: &mut String) {
    // serde_json escapes only `"`, `\` and control characters and writes
    // every other character as UTF-8: the STRINGS rule.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // Serialising a &str cannot fail; keep the output well-formed anyway.
        Err(_) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
    }
}

/// `name` resolved against an explicit `namespace` attribute and the
/// enclosing namespace.
fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        Some(_) => name.to_string(),
        None if !enclosing.is_empty() => format!("{enclosing}.{name}"),
        None => name.to_string(),
    }
}

/// The namespace part of a full name.
fn namespace_of(full: &str) -> &str {
    full.rsplit_once('.').map_or("", |(ns, _)| ns)
}

fn write_schema(
    schema: &Value,
    enclosing: &str,
    seen: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), CanonicalError> {
    match schema {
        Value::String(name) => {
            if PRIMITIVES.contains(&name.as_str()) {
                write_str(name, out);
            } else {
                write_str(&full_name(name, None, enclosing), out);
            }
            Ok(())
        }
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_schema(branch, enclosing, seen, out)?;
            }
            out.push(']');
            Ok(())
        }
        Value::Object(o) => write_object(o, enclosing, seen, out),
        other => Err(invalid(format!("{other} is not a schema"))),
    }
}

fn write_object(
    o: &Map<String, Value>,
    enclosing: &str,
    seen: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), CanonicalError> {
    let ty = o
        .get("type")
        .ok_or_else(|| invalid("an object schema without \"type\""))?;
    let Value::String(ty) = ty else {
        // `{"type": {...}}` or `{"type": [...]}`: the inner schema.
        return write_schema(ty, enclosing, seen, out);
    };
    match ty.as_str() {
        "record" | "error" | "enum" | "fixed" => {}
        "array" => {
            let items = o
                .get("items")
                .ok_or_else(|| invalid("an array without \"items\""))?;
            out.push_str(r#"{"type":"array","items":"#);
            write_schema(items, enclosing, seen, out)?;
            out.push('}');
            return Ok(());
        }
        "map" => {
            let values = o
                .get("values")
                .ok_or_else(|| invalid("a map without \"values\""))?;
            out.push_str(r#"{"type":"map","values":"#);
            write_schema(values, enclosing, seen, out)?;
            out.push('}');
            return Ok(());
        }
        // A primitive (its logical type and other attributes stripped) or
        // a reference to a named type.
        _ => return write_schema(&Value::String(ty.clone()), enclosing, seen, out),
    }

    let name = match o.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n,
        _ => return Err(invalid(format!("a {ty} without a name"))),
    };
    let namespace = match o.get("namespace") {
        None | Some(Value::Null) => None,
        Some(Value::String(ns)) => Some(ns.as_str()),
        Some(other) => return Err(invalid(format!("namespace {other} is not a string"))),
    };
    let full = full_name(name, namespace, enclosing);
    if !seen.insert(full.clone()) {
        write_str(&full, out);
        return Ok(());
    }
    out.push_str(r#"{"name":"#);
    write_str(&full, out);
    match ty.as_str() {
        "enum" => {
            out.push_str(r#","type":"enum","symbols":["#);
            let symbols = match o.get("symbols") {
                Some(Value::Array(s)) => s,
                _ => return Err(invalid(format!("enum {full} without symbols"))),
            };
            for (i, symbol) in symbols.iter().enumerate() {
                let Value::String(symbol) = symbol else {
                    return Err(invalid(format!(
                        "enum {full}: symbol {symbol} is not a string"
                    )));
                };
                if i > 0 {
                    out.push(',');
                }
                write_str(symbol, out);
            }
            out.push_str("]}");
        }
        "fixed" => {
            let size = match o.get("size") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            }
            .ok_or_else(|| invalid(format!("fixed {full} without a valid size")))?;
            out.push_str(r#","type":"fixed","size":"#);
            out.push_str(&size.to_string());
            out.push('}');
        }
        // "record" and "error": both are records to a reader.
        _ => {
            out.push_str(r#","type":"record","fields":["#);
            let fields = match o.get("fields") {
                Some(Value::Array(f)) => f,
                _ => return Err(invalid(format!("record {full} without fields"))),
            };
            let inner = namespace_of(&full).to_string();
            for (i, field) in fields.iter().enumerate() {
                let (Some(Value::String(field_name)), Some(field_type)) =
                    (field.get("name"), field.get("type"))
                else {
                    return Err(invalid(format!(
                        "record {full}: field {i} lacks name or type"
                    )));
                };
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"name":"#);
                write_str(field_name, out);
                out.push_str(r#","type":"#);
                write_schema(field_type, &inner, seen, out)?;
                out.push('}');
            }
            out.push_str("]}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published vector.
    #[test]
    fn crc64_avro_matches_the_specification() {
        assert_eq!(crc64_avro(br#""int""#), 0x7275_d51a_3f39_5c8f);
        assert_eq!(crc64_avro(b""), CRC64_EMPTY);
    }

    /// Each committed schema's Parsing Canonical Form and fingerprint,
    /// written out. Checked independently with fastavro 1.13.1
    /// (`fastavro.schema.to_parsing_canonical_form` and
    /// `fastavro.schema.fingerprint(..., "CRC-64-AVRO")`), which gives the
    /// same strings and the same fingerprint bytes (little-endian).
    #[test]
    fn committed_schemas_have_the_specifications_canonical_form() {
        let envelope_v1 = concat!(
            r#"{"name":"pipeline.webhooks.Envelope","type":"record","fields":["#,
            r#"{"name":"event_id","type":"string"},{"name":"source","type":"string"},"#,
            r#"{"name":"received_at","type":"long"},{"name":"body","type":"bytes"},"#,
            r#"{"name":"headers","type":{"type":"array","items":"#,
            r#"{"name":"pipeline.webhooks.Header","type":"record","fields":["#,
            r#"{"name":"name","type":"string"},{"name":"value","type":"string"}]}}},"#,
            r#"{"name":"content_type","type":["null","string"]},"#,
            r#"{"name":"client_addr","type":["null","string"]},"#,
            r#"{"name":"verification","type":"#,
            r#"{"name":"pipeline.webhooks.Verification","type":"record","fields":["#,
            r#"{"name":"scheme","type":"string"},{"name":"secret_id","type":"string"}]}},"#,
            r#"{"name":"ordering_key","type":["null","string"]},"#,
            r#"{"name":"sequence","type":["null","long"]},"#,
            r#"{"name":"request_id","type":"string"}]}"#,
        );
        let guest_wifi_v1 = concat!(
            r#"{"name":"pipeline.events.GuestWifiEvent","type":"record","fields":["#,
            r#"{"name":"event_id","type":"string"},{"name":"source","type":"string"},"#,
            r#"{"name":"type","type":{"name":"pipeline.events.GuestWifiEventType","type":"enum","#,
            r#""symbols":["guest_connects","guest_registered","device_connected","#,
            r#""device_disconnected","zone_entered"]}},"#,
            r#"{"name":"sequence","type":"long"},{"name":"occurred_at","type":"long"},"#,
            r#"{"name":"received_at","type":"long"},{"name":"late","type":"boolean"},"#,
            r#"{"name":"venue_id","type":"string"},{"name":"venue_name","type":["null","string"]},"#,
            r#"{"name":"zone","type":["null","string"]},{"name":"device_id","type":["null","string"]},"#,
            r#"{"name":"guest","type":["null",{"name":"pipeline.events.Guest","type":"record","fields":["#,
            r#"{"name":"id","type":"string"},{"name":"email","type":["null","string"]},"#,
            r#"{"name":"first_name","type":["null","string"]},{"name":"vip","type":"boolean"}]}]}]}"#,
        );
        let guest_wifi_v2 = concat!(
            r#"{"name":"pipeline.events.GuestWifiEvent","type":"record","fields":["#,
            r#"{"name":"event_id","type":"string"},{"name":"source","type":"string"},"#,
            r#"{"name":"type","type":{"name":"pipeline.events.GuestWifiEventType","type":"enum","#,
            r#""symbols":["guest_connects","guest_registered","device_connected","#,
            r#""device_disconnected","zone_entered","venue_left","guest_opted_in","#,
            r#""guest_opted_out","other"]}},"#,
            r#"{"name":"type_name","type":["null","string"]},"#,
            r#"{"name":"sequence","type":["null","long"]},{"name":"occurred_at","type":"long"},"#,
            r#"{"name":"received_at","type":"long"},{"name":"late","type":"boolean"},"#,
            r#"{"name":"venue_id","type":"string"},{"name":"venue_name","type":["null","string"]},"#,
            r#"{"name":"zone","type":["null","string"]},{"name":"device_id","type":["null","string"]},"#,
            r#"{"name":"guest","type":["null",{"name":"pipeline.events.Guest","type":"record","fields":["#,
            r#"{"name":"id","type":"string"},{"name":"email","type":["null","string"]},"#,
            r#"{"name":"first_name","type":["null","string"]},{"name":"vip","type":"boolean"}]}]}]}"#,
        );
        let committed = [
            (
                "envelope v1",
                crate::ENVELOPE_SCHEMA_VERSIONS[0].1,
                envelope_v1,
                0x81e6_67fd_9984_ac96,
            ),
            (
                "guest_wifi v1",
                crate::GUEST_WIFI_SCHEMA_VERSIONS[0].1,
                guest_wifi_v1,
                0x9d08_da45_8322_d35d,
            ),
            (
                "guest_wifi v2",
                crate::GUEST_WIFI_SCHEMA_VERSIONS[1].1,
                guest_wifi_v2,
                0x870e_a994_25d3_44aa,
            ),
        ];
        for (name, avsc, canonical, fingerprint) in committed {
            assert_eq!(parsing_canonical_form(avsc).unwrap(), canonical, "{name}");
            assert_eq!(fingerprint_of(avsc).unwrap(), fingerprint, "{name}");
        }
        assert_eq!(
            crate::ENVELOPE_SCHEMA_VERSIONS.len(),
            1,
            "add the new version here"
        );
        assert_eq!(
            crate::GUEST_WIFI_SCHEMA_VERSIONS.len(),
            2,
            "add the new version here"
        );
    }

    /// Every rule on a schema that exercises it. fastavro 1.13.1 gives the
    /// same string for the same text but for the size, which it writes as
    /// `0016`, against the INTEGERS rule.
    #[test]
    fn each_rule_of_the_specification() {
        let avsc = r#"{
          "doc": "stripped", "fields": [
            {"type": {"type": "int", "logicalType": "date"}, "name": "day", "default": 0},
            {"name": "id", "type": {"type": "fixed", "name": "Id", "size": "0016",
                                    "namespace": "other.ns", "aliases": ["X"]}},
            {"name": "again", "type": "other.ns.Id"},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["a", "\u0062"]}},
            {"name": "kind2", "type": "Kind"},
            {"name": "tags", "type": {"values": {"type": "array", "items": "string"}, "type": "map"}},
            {"name": "nested", "type": {"type": "record", "name": "x.y.Inner", "namespace": "ignored",
              "fields": [{"name": "k", "type": ["null", {"type": "enum", "name": "Kind2", "symbols": ["z"]}]}]}},
            {"name": "k2", "type": "x.y.Kind2"},
            {"name": "e", "type": {"type": "error", "name": "Oops", "fields": []}}
          ],
          "type": "record", "name": "Top", "namespace": "com.example"
        }"#;
        let expected = concat!(
            r#"{"name":"com.example.Top","type":"record","fields":["#,
            r#"{"name":"day","type":"int"},"#,
            r#"{"name":"id","type":{"name":"other.ns.Id","type":"fixed","size":16}},"#,
            r#"{"name":"again","type":"other.ns.Id"},"#,
            r#"{"name":"kind","type":{"name":"com.example.Kind","type":"enum","symbols":["a","b"]}},"#,
            r#"{"name":"kind2","type":"com.example.Kind"},"#,
            r#"{"name":"tags","type":{"type":"map","values":{"type":"array","items":"string"}}},"#,
            r#"{"name":"nested","type":{"name":"x.y.Inner","type":"record","fields":["#,
            r#"{"name":"k","type":["null",{"name":"x.y.Kind2","type":"enum","symbols":["z"]}]}]}},"#,
            r#"{"name":"k2","type":"x.y.Kind2"},"#,
            r#"{"name":"e","type":{"name":"com.example.Oops","type":"record","fields":[]}}]}"#,
        );
        assert_eq!(parsing_canonical_form(avsc).unwrap(), expected);
        assert_eq!(
            parsing_canonical_form(r#"{"type":"long"}"#).unwrap(),
            r#""long""#
        );
        assert_eq!(
            parsing_canonical_form(
                r#" [ "null" , {"type":"string","avro.java.string":"String"} ] "#
            )
            .unwrap(),
            r#"["null","string"]"#
        );
    }

    #[test]
    fn what_is_not_a_schema_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "42",
            "{}",
            r#"{"type":"record","fields":[]}"#,
            r#"{"type":"enum","name":"E"}"#,
            r#"{"type":"fixed","name":"F","size":"x"}"#,
            r#"{"type":"array"}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a"}]}"#,
        ] {
            assert!(parsing_canonical_form(bad).is_err(), "{bad}");
        }
    }
}
