//! What a CRM request carries: the JSON [`Template`] with `{{path}}`
//! placeholders, the event's [`view`] it is rendered against, and the
//! [`idempotency_key`] every attempt of one event shares.

use std::time::Duration;

use serde_json::Value;

use crate::event::Event;
/// The names a template path may start with (see [`view`]).
pub const VIEW_FIELDS: &[&str] = &[
    "event_id",
    "idempotency_key",
    "source",
    "event_type",
    "ordering_key",
    "sequence",
    "occurred_at",
    "occurred_at_micros",
    "received_at",
    "received_at_micros",
    "late",
    "venue_id",
    "venue_name",
    "zone",
    "device_id",
    "guest",
    "body",
];

/// What a template sees of an event: the normalized fields, the guest-WiFi
/// fields at the top level (`venue_id`, `guest.email`, ...), times as
/// RFC 3339 (`occurred_at`, `received_at`) and the parsed `body`.
pub fn view(e: &Event) -> Value {
    let rfc3339 = |micros: i64| {
        u64::try_from(micros).ok().map(|m| {
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_micros(m))
                .to_string()
        })
    };
    let mut v = serde_json::json!({
        "event_id": e.event_id,
        "idempotency_key": idempotency_key(e),
        "source": e.source,
        "event_type": e.event_type,
        "ordering_key": e.ordering_key,
        "sequence": e.sequence,
        "occurred_at": e.occurred_at_micros.and_then(rfc3339),
        "occurred_at_micros": e.occurred_at_micros,
        "received_at": rfc3339(e.received_at_micros),
        "received_at_micros": e.received_at_micros,
        "late": e.late,
        "body": e.body,
    });
    if let (Some(w), Some(obj)) = (&e.guest_wifi, v.as_object_mut()) {
        obj.insert("venue_id".into(), w.venue_id.clone().into());
        obj.insert("venue_name".into(), w.venue_name.clone().into());
        obj.insert("zone".into(), w.zone.clone().into());
        obj.insert("device_id".into(), w.device_id.clone().into());
        obj.insert(
            "guest".into(),
            serde_json::to_value(&w.guest).unwrap_or(Value::Null),
        );
    }
    v
}

/// `<source>:<event_id>`, sent as `Idempotency-Key` on every attempt.
pub fn idempotency_key(e: &Event) -> String {
    format!("{}:{}", e.source, e.event_id)
}

pub(super) fn check_path(path: &str) -> Result<(), String> {
    let root = path.split('.').next().unwrap_or("");
    if path.is_empty()
        || path.split('.').any(str::is_empty)
        || !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "{path:?} is not a dotted path of names (a-z A-Z 0-9 _ -)"
        ));
    }
    if !VIEW_FIELDS.contains(&root) {
        return Err(format!(
            "{path:?}: unknown field {root:?} (one of {})",
            VIEW_FIELDS.join(", ")
        ));
    }
    Ok(())
}

pub(super) fn lookup<'v>(view: &'v Value, path: &str) -> Option<&'v Value> {
    let mut at = view;
    for seg in path.split('.') {
        at = match at {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// A parsed template (see the module header).
#[derive(Debug, Clone)]
pub struct Template {
    doc: Value,
}

/// One piece of a template string.
enum Piece<'a> {
    Text(&'a str),
    Field(&'a str),
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{s:?}: \"{{{{\" without \"}}}}\""))?;
        out.push(Piece::Field(after[..end].trim()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

impl Template {
    /// Every placeholder's path, in document order (`guest.email`, ...).
    pub fn paths(&self) -> Vec<String> {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => {
                    for p in pieces(s).unwrap_or_default() {
                        if let Piece::Field(path) = p {
                            out.push(path.to_owned());
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                Value::Object(m) => m.values().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.doc, &mut out);
        out
    }

    /// Parses a JSON template and checks every placeholder's path.
    pub fn parse(text: &str) -> Result<Template, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        fn walk(v: &Value) -> Result<(), String> {
            match v {
                Value::String(s) => {
                    for p in pieces(s)? {
                        if let Piece::Field(path) = p {
                            check_path(path)?;
                        }
                    }
                    Ok(())
                }
                Value::Array(a) => a.iter().try_for_each(walk),
                Value::Object(m) => m.values().try_for_each(walk),
                _ => Ok(()),
            }
        }
        walk(&doc)?;
        Ok(Template { doc })
    }

    /// The document for one event's [view].
    pub fn render(&self, view: &Value) -> Value {
        fn go(t: &Value, view: &Value) -> Value {
            match t {
                Value::String(s) => {
                    let Ok(ps) = pieces(s) else {
                        return t.clone();
                    };
                    if let [Piece::Field(path)] = ps.as_slice() {
                        return lookup(view, path).cloned().unwrap_or(Value::Null);
                    }
                    let mut out = String::new();
                    for p in ps {
                        match p {
                            Piece::Text(x) => out.push_str(x),
                            Piece::Field(path) => match lookup(view, path) {
                                None | Some(Value::Null) => {}
                                Some(Value::String(x)) => out.push_str(x),
                                Some(other) => out.push_str(&other.to_string()),
                            },
                        }
                    }
                    Value::String(out)
                }
                Value::Array(a) => Value::Array(a.iter().map(|x| go(x, view)).collect()),
                Value::Object(m) => {
                    Value::Object(m.iter().map(|(k, x)| (k.clone(), go(x, view))).collect())
                }
                other => other.clone(),
            }
        }
        go(&self.doc, view)
    }
}
