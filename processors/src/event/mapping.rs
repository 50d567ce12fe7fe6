//! Field mapping for a guest-WiFi source whose payload names its fields
//! differently (`[sources.NAME.mapping]`): one RFC 6901 JSON pointer per
//! normalized field. The parser first rebuilds the body in the platform's
//! shape from those pointers, then reads it as it reads the platform's
//! own. Sinks see the rebuilt body: only the mapped fields, under the
//! platform's names (`guest`, `device` objects), so a sink's `fields`
//! minimisation finds the personal fields where it looks for them; the
//! raw topic keeps the body as received.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Where each normalized field is in the payload; an unset field is read
/// where the platform puts it (the pointer in its doc).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The event id (default `/id`); must equal the id ingest took.
    pub id: Option<String>,
    /// The event type (default `/type`).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The sequence (default `/sequence`).
    pub sequence: Option<String>,
    /// When it happened, RFC 3339 (default `/occurred_at`).
    pub occurred_at: Option<String>,
    /// The venue id (default `/venue/id`).
    pub venue_id: Option<String>,
    /// The venue's name (default `/venue/name`).
    pub venue_name: Option<String>,
    /// The zone (default `/zone`).
    pub zone: Option<String>,
    /// The device id (default `/device/id`).
    pub device_id: Option<String>,
    /// The guest id (default `/guest/id`).
    pub guest_id: Option<String>,
    /// The guest's e-mail (default `/guest/email`).
    pub guest_email: Option<String>,
    /// The guest's first name (default `/guest/first_name`).
    pub guest_first_name: Option<String>,
    /// Whether the guest is a VIP, a boolean (default `/guest/vip`).
    pub guest_vip: Option<String>,
}

impl Mapping {
    /// (field name, the platform's pointer, the configured pointer) for
    /// every field, in the platform's order.
    pub fn fields(&self) -> [(&'static str, &'static str, Option<&str>); 12] {
        [
            ("id", "/id", self.id.as_deref()),
            ("type", "/type", self.event_type.as_deref()),
            ("sequence", "/sequence", self.sequence.as_deref()),
            ("occurred_at", "/occurred_at", self.occurred_at.as_deref()),
            ("venue_id", "/venue/id", self.venue_id.as_deref()),
            ("venue_name", "/venue/name", self.venue_name.as_deref()),
            ("zone", "/zone", self.zone.as_deref()),
            ("device_id", "/device/id", self.device_id.as_deref()),
            ("guest_id", "/guest/id", self.guest_id.as_deref()),
            ("guest_email", "/guest/email", self.guest_email.as_deref()),
            (
                "guest_first_name",
                "/guest/first_name",
                self.guest_first_name.as_deref(),
            ),
            ("guest_vip", "/guest/vip", self.guest_vip.as_deref()),
        ]
    }

    /// Every problem, each naming its field under `at`
    /// (`sources.NAME.mapping`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        self.fields()
            .iter()
            .filter_map(|(name, _, ptr)| {
                let ptr = (*ptr)?;
                (!ptr.starts_with('/')).then(|| {
                    format!("{at}.{name}: {ptr:?} must be a JSON pointer starting with '/'")
                })
            })
            .collect()
    }

    /// `body` rebuilt in the platform's shape: each field read at its
    /// pointer and written at the platform's place. A body that is not an
    /// object is returned as it is (the parser names that).
    pub fn apply(&self, body: &Value) -> Value {
        if !body.is_object() {
            return body.clone();
        }
        let mut out = Map::new();
        for (_, platform, ptr) in self.fields() {
            let Some(v) = body.pointer(ptr.unwrap_or(platform)) else {
                continue;
            };
            if v.is_null() {
                continue;
            }
            let mut parts = platform.trim_start_matches('/').split('/').peekable();
            let mut at = &mut out;
            while let Some(part) = parts.next() {
                if parts.peek().is_none() {
                    at.insert(part.to_owned(), v.clone());
                    break;
                }
                let next = at
                    .entry(part.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(next) = next else {
                    break;
                };
                at = next;
            }
        }
        Value::Object(out)
    }

    /// `detail` (a parser's quarantine detail naming the platform's
    /// pointers) with the configured pointer named beside each mapped one
    /// it mentions, so the reader finds the field in the source's payload.
    pub fn explain(&self, source: &str, detail: &str) -> String {
        let mut out = detail.to_owned();
        for (name, platform, ptr) in self.fields() {
            if let Some(ptr) = ptr
                && mentions(detail, platform)
            {
                out.push_str(&format!(" (sources.{source}.mapping.{name} = {ptr:?})"));
            }
        }
        out
    }
}

/// Whether `detail` names `pointer` itself (not a longer one it is part
/// of: `/id` is not in `/venue/id`, `/guest` is not in `/guest/id`).
fn mentions(detail: &str, pointer: &str) -> bool {
    let pointer_char = |c: char| c == '/' || c == '_' || c.is_alphanumeric();
    detail.match_indices(pointer).any(|(i, _)| {
        !detail[..i].chars().next_back().is_some_and(pointer_char)
            && !detail[i + pointer.len()..]
                .chars()
                .next()
                .is_some_and(pointer_char)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> Mapping {
        toml::from_str(
            r#"
            id = "/event_id"
            type = "/event/kind"
            sequence = "/seq"
            occurred_at = "/ts"
            venue_id = "/site/code"
            device_id = "/client/mac"
            guest_id = "/user/id"
            guest_email = "/user/mail"
            guest_vip = "/user/flags/vip"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_payload_is_rebuilt_in_the_platforms_shape_with_only_its_fields() {
        let body = serde_json::json!({
            "event_id": "e1", "event": {"kind": "device_connected"}, "seq": 7,
            "ts": "2026-11-22T18:03:11Z", "site": {"code": "v1", "tz": "UTC"},
            "zone": "lobby", "client": {"mac": "aa:bb"},
            "user": {"id": "u1", "mail": "a@example.com", "phone": "+1", "flags": {"vip": true}}
        });
        assert_eq!(
            acme().apply(&body),
            serde_json::json!({
                "id": "e1", "type": "device_connected", "sequence": 7,
                "occurred_at": "2026-11-22T18:03:11Z", "venue": {"id": "v1"},
                "zone": "lobby", "device": {"id": "aa:bb"},
                "guest": {"id": "u1", "email": "a@example.com", "vip": true}
            })
        );
        // Unmapped fields are read where the platform puts them; a
        // non-object body stays as it is.
        assert_eq!(Mapping::default().apply(&body)["zone"], "lobby");
        assert_eq!(
            acme().apply(&serde_json::json!([1])),
            serde_json::json!([1])
        );
    }

    #[test]
    fn problems_and_explanations_name_the_configured_field() {
        let mut m = acme();
        m.zone = Some("area".into());
        assert_eq!(
            m.problems("sources.acme.mapping"),
            ["sources.acme.mapping.zone: \"area\" must be a JSON pointer starting with '/'"]
        );
        assert_eq!(
            acme().explain("acme", "/venue/id is missing"),
            "/venue/id is missing (sources.acme.mapping.venue_id = \"/site/code\")"
        );
        // /guest is not /guest/id.
        assert_eq!(
            acme().explain("acme", "/guest is missing (required for guest_connects)"),
            "/guest is missing (required for guest_connects)"
        );
    }
}
