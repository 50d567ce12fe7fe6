//! Data minimisation: each sink receives only the guests' personal fields
//! it may (`fields = [...]` in its `[sinks.NAME]` section).
//!
//! Personal data lives in two objects of an event's body, `guest` (id,
//! e-mail, first name, VIP flag, and whatever else a provider sends there)
//! and `device` (its identifier), and in the typed guest-WiFi view made
//! from them. A sink's `fields` names the members it may receive as
//! `guest.<member>` or `device.<member>`; every other member of those two
//! objects is removed, from the body and from the typed view, before the
//! sink sees the event. The list is an allow-list, so a member a provider
//! adds later (a phone number, a surname) reaches no sink that did not ask
//! for it.
//!
//! Without `fields`, a sink gets what its kind needs by default (the sinks'
//! `SinkConfig::default_fields`): alerting no e-mail address and no name
//! (Slack and Alertmanager messages name a VIP by guest id), every other
//! kind the whole event. The quarantine and dead-letter topics keep the original envelope:
//! they are Kafka, like the raw topic, with its retention.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::event::Event;

/// The objects of a body that hold personal data.
const PERSONAL: [&str; 2] = ["guest", "device"];

/// Longest accepted member name.
const MAX_MEMBER_LEN: usize = 64;

/// What one sink may receive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Minimise {
    /// `None`: everything; else the `guest.*` and `device.*` members kept.
    keep: Option<BTreeSet<String>>,
}

impl Minimise {
    /// Everything passes (tests, and sinks whose kind needs it all).
    pub fn everything() -> Minimise {
        Minimise { keep: None }
    }

    /// Only `fields` pass, after [`problems`] found none.
    pub fn only<S: AsRef<str>>(fields: &[S]) -> Minimise {
        Minimise {
            keep: Some(fields.iter().map(|f| f.as_ref().to_owned()).collect()),
        }
    }

    /// Whether `field` (`guest.email`, ...) passes.
    pub fn allows(&self, field: &str) -> bool {
        self.keep.as_ref().is_none_or(|k| k.contains(field))
    }

    /// `event` with what this policy does not allow removed, or `None` when
    /// it holds nothing to remove (the caller shares the original).
    pub fn apply(&self, event: &Event) -> Option<Event> {
        let keep = self.keep.as_ref()?;
        if !self.removes_any(event, keep) {
            return None;
        }
        let mut e = event.clone();
        if let Value::Object(body) = &mut e.body {
            for object in PERSONAL {
                let Some(Value::Object(members)) = body.get_mut(object) else {
                    continue;
                };
                members.retain(|m, _| keep.contains(&format!("{object}.{m}")));
                if members.is_empty() {
                    body.remove(object);
                }
            }
        }
        if let Some(w) = &mut e.guest_wifi {
            if !keep.contains("device.id") {
                w.device_id = None;
            }
            if !keep.contains("guest.id") {
                w.guest = None;
            }
            if let Some(g) = &mut w.guest {
                if !keep.contains("guest.email") {
                    g.email = None;
                }
                if !keep.contains("guest.first_name") {
                    g.first_name = None;
                }
                if !keep.contains("guest.vip") {
                    g.vip = false;
                }
            }
        }
        Some(e)
    }

    fn removes_any(&self, event: &Event, keep: &BTreeSet<String>) -> bool {
        let body = PERSONAL.iter().any(|object| match event.body.get(object) {
            Some(Value::Object(members)) => members
                .keys()
                .any(|m| !keep.contains(&format!("{object}.{m}"))),
            Some(_) => false,
            None => false,
        });
        let typed = event.guest_wifi.as_ref().is_some_and(|w| {
            (w.device_id.is_some() && !keep.contains("device.id"))
                || w.guest.as_ref().is_some_and(|g| {
                    !keep.contains("guest.id")
                        || (g.email.is_some() && !keep.contains("guest.email"))
                        || (g.first_name.is_some() && !keep.contains("guest.first_name"))
                        || (g.vip && !keep.contains("guest.vip"))
                })
        });
        body || typed
    }
}

/// Every problem of a `fields` list, each naming `at` (`sinks.NAME.fields`).
pub fn problems(at: &str, fields: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    for f in fields {
        let ok = f.split_once('.').is_some_and(|(object, member)| {
            PERSONAL.contains(&object)
                && !member.is_empty()
                && member.len() <= MAX_MEMBER_LEN
                && member
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !ok {
            p.push(format!(
                "{at}: {f:?} is not a personal field: write guest.<member> or device.<member>, e.g. guest.email, device.id"
            ));
        }
    }
    let guest_other = fields
        .iter()
        .any(|f| f.starts_with("guest.") && f != "guest.id");
    if guest_other && !fields.iter().any(|f| f == "guest.id") {
        p.push(format!(
            "{at}: guest fields without guest.id: a guest's other fields reach a sink only with their id"
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{Guest, GuestWifi};

    fn event() -> Event {
        Event {
            source: "purple".into(),
            event_id: "e1".into(),
            event_type: "device_connected".into(),
            ordering_key: Some("v1".into()),
            sequence: Some(1),
            received_at_micros: 1,
            occurred_at_micros: Some(1),
            late: false,
            guest_wifi: Some(GuestWifi {
                event_type: "device_connected".into(),
                sequence: Some(1),
                occurred_at_micros: 1,
                venue_id: "v1".into(),
                venue_name: Some("Lobby Hotel".into()),
                zone: Some("lobby".into()),
                device_id: Some("dev_1".into()),
                guest: Some(Guest {
                    id: "g_77".into(),
                    email: Some("ana@example.com".into()),
                    first_name: Some("Ana".into()),
                    vip: true,
                }),
            }),
            body: json!({
                "id": "e1", "type": "device_connected", "sequence": 1,
                "venue": {"id": "v1", "name": "Lobby Hotel"}, "zone": "lobby",
                "device": {"id": "dev_1", "mac": "aa:bb"},
                "guest": {"id": "g_77", "email": "ana@example.com", "first_name": "Ana",
                          "vip": true, "phone": "+44 20 0000 0000"}
            }),
        }
    }

    #[test]
    fn only_the_listed_members_reach_the_sink_in_the_body_and_the_typed_view() {
        let m = Minimise::only(&["guest.id", "guest.vip", "device.id"]);
        let e = m.apply(&event()).expect("something to remove");
        assert_eq!(e.body["guest"], json!({"id": "g_77", "vip": true}));
        assert_eq!(e.body["device"], json!({"id": "dev_1"}));
        let text = serde_json::to_string(&e).unwrap();
        for personal in ["ana@example.com", "Ana", "+44", "aa:bb"] {
            assert!(!text.contains(personal), "{personal} left in {text}");
        }
        let g = e.guest_wifi.as_ref().unwrap().guest.as_ref().unwrap();
        assert_eq!((g.id.as_str(), g.vip), ("g_77", true));
        assert_eq!(e.body["venue"], event().body["venue"], "not personal");
        assert_eq!(
            e.guest_wifi.as_ref().unwrap().zone.as_deref(),
            Some("lobby")
        );
    }

    #[test]
    fn no_guest_fields_removes_the_guest_and_device_objects() {
        let e = Minimise::only::<&str>(&[]).apply(&event()).unwrap();
        assert!(e.body.get("guest").is_none() && e.body.get("device").is_none());
        let w = e.guest_wifi.unwrap();
        assert!(w.guest.is_none() && w.device_id.is_none());
    }

    #[test]
    fn nothing_to_remove_shares_the_original() {
        assert_eq!(Minimise::everything().apply(&event()), None);
        let all = [
            "guest.id",
            "guest.email",
            "guest.first_name",
            "guest.vip",
            "guest.phone",
            "device.id",
            "device.mac",
        ];
        assert_eq!(Minimise::only(&all).apply(&event()), None);
        let mut plain = event();
        plain.body = json!({"id": "e1"});
        plain.guest_wifi = None;
        assert_eq!(Minimise::only::<&str>(&[]).apply(&plain), None);
    }

    #[test]
    fn bad_fields_are_named() {
        let p = problems(
            "sinks.crm.fields",
            &[
                "email".into(),
                "guest.".into(),
                "venue.id".into(),
                "guest.e mail".into(),
            ],
        );
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p[0].starts_with("sinks.crm.fields: \"email\" is not a personal field"));
        assert!(p[4].contains("without guest.id"));
        assert!(problems("x", &["guest.id".into(), "guest.email".into()]).is_empty());
        assert!(problems("x", &["device.id".into()]).is_empty());
    }
}
