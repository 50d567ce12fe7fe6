//! Every change to the envelope schema must stay backward compatible: a
//! processor built with the newest schema reads every record any earlier
//! ingest wrote. Old versions are kept in `avro/envelope/` and never edited.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use schemas::ENVELOPE_SCHEMA_VERSIONS;
use schemas::envelope::{fingerprint_of, schema_versions};

/// Fingerprints of committed versions: CRC-64-AVRO of the specification's
/// Parsing Canonical Form, what Java and fastavro compute from the same
/// `.avsc`. A version, once committed, is frozen: records written with it
/// sit in Kafka for the retention period. Add a line here when you add a
/// version; never change one. (v1's changed once, from apache-avro's
/// non-conforming `0x53a26c09147b2ab5`, which stays readable as an alias.)
const FROZEN: &[(&str, u64)] = &[("v1", 0x81e6_67fd_9984_ac96)];

/// Fingerprints older builds wrote, still read (see
/// `schemas::envelope::LEGACY_FINGERPRINTS`).
const FROZEN_ALIASES: &[(&str, u64)] = &[("v1", 0x53a2_6c09_147b_2ab5)];

fn folder_versions() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/envelope");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort_by_key(|(n, _)| n.trim_start_matches('v').parse::<u32>().unwrap());
    out
}

#[test]
fn every_file_in_the_folder_is_a_known_version_in_order() {
    let on_disk = folder_versions();
    let compiled: Vec<(String, String)> = ENVELOPE_SCHEMA_VERSIONS
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(
        on_disk, compiled,
        "avro/envelope/*.avsc and ENVELOPE_SCHEMA_VERSIONS differ"
    );
}

#[test]
fn each_version_reads_every_older_version() {
    let versions = schema_versions();
    for (i, newer) in versions.iter().enumerate() {
        for older in &versions[..i] {
            SchemaCompatibility::can_read(&older.schema, &newer.schema).unwrap_or_else(|e| {
                panic!(
                    "{} cannot read data written with {}: {e}",
                    newer.name, older.name
                )
            });
        }
    }
}

#[test]
fn committed_versions_are_frozen() {
    let versions = schema_versions();
    assert_eq!(
        versions.len(),
        FROZEN.len(),
        "add the new version to FROZEN"
    );
    for (v, (name, fp)) in versions.iter().zip(FROZEN) {
        assert_eq!(v.name, *name);
        let text = ENVELOPE_SCHEMA_VERSIONS
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1;
        assert_eq!(fingerprint_of(text).unwrap(), v.fingerprint);
        let aliases: Vec<u64> = FROZEN_ALIASES
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, fp)| *fp)
            .collect();
        assert_eq!(v.aliases, aliases, "{name}: aliases");
        assert_eq!(
            v.fingerprint, *fp,
            "{name} changed: committed versions must not be edited, add a new one"
        );
    }
}

#[test]
fn guest_wifi_versions_match_the_folder_and_stay_readable() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/guest_wifi");
    let mut on_disk: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    on_disk.sort_by_key(|(n, _)| n.trim_start_matches('v').parse::<u32>().unwrap());
    let compiled: Vec<(String, String)> = schemas::GUEST_WIFI_SCHEMA_VERSIONS
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(
        on_disk, compiled,
        "avro/guest_wifi/*.avsc and GUEST_WIFI_SCHEMA_VERSIONS differ"
    );
    let parsed: Vec<Schema> = compiled
        .iter()
        .map(|(n, t)| Schema::parse_str(t).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect();
    for (i, newer) in parsed.iter().enumerate() {
        for older in &parsed[..i] {
            SchemaCompatibility::can_read(older, newer).unwrap();
        }
    }
}

/// The venue state's committed versions, frozen as the envelope's are:
/// the venue view reads records written with each of them.
const VENUE_STATE_FROZEN: &[(&str, u64)] = &[
    ("v1", 0xd878_f808_c967_4298),
    ("v2", 0xe9ab_d0ed_7766_1970),
    ("v3", 0x21f4_7ab6_2460_4b25),
    ("v4", 0x3841_0708_16e6_26cc),
];

#[test]
fn venue_state_versions_are_frozen_and_each_reads_the_older_ones() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/venue_state");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let compiled: Vec<String> = schemas::venue_state::VENUE_STATE_SCHEMA_VERSIONS
        .iter()
        .map(|(n, _)| format!("{n}.avsc"))
        .collect();
    assert_eq!(on_disk, compiled);
    let parsed: Vec<Schema> = schemas::venue_state::VENUE_STATE_SCHEMA_VERSIONS
        .iter()
        .map(|(_, t)| Schema::parse_str(t).unwrap())
        .collect();
    for (i, newer) in parsed.iter().enumerate() {
        for older in &parsed[..i] {
            SchemaCompatibility::can_read(older, newer).unwrap();
        }
    }
    for ((name, text), (frozen_name, fp)) in schemas::venue_state::VENUE_STATE_SCHEMA_VERSIONS
        .iter()
        .zip(VENUE_STATE_FROZEN)
    {
        assert_eq!(name, frozen_name);
        assert_eq!(fingerprint_of(text).unwrap(), *fp, "{name} changed");
    }
    assert_eq!(
        VENUE_STATE_FROZEN.len(),
        schemas::venue_state::VENUE_STATE_SCHEMA_VERSIONS.len()
    );
}

/// The guest-WiFi event's committed versions, frozen as the envelope's
/// are: sinks and replay tools read records written with each of them.
const GUEST_WIFI_FROZEN: &[(&str, u64)] =
    &[("v1", 0x9d08_da45_8322_d35d), ("v2", 0x870e_a994_25d3_44aa)];

fn guest_wifi(version: &str) -> Schema {
    let (_, text) = schemas::GUEST_WIFI_SCHEMA_VERSIONS
        .iter()
        .find(|(n, _)| *n == version)
        .unwrap();
    Schema::parse_str(text).unwrap()
}

/// One guest-WiFi record of `schema`'s shape: v1's fields, plus v2's
/// `type_name` and optional `sequence` when `v2`.
fn wifi_record(v2: bool, symbol: (u32, &str), sequence: Option<i64>) -> apache_avro::types::Value {
    use apache_avro::types::Value as A;
    let null = || A::Union(0, Box::new(A::Null));
    let some = |s: &str| A::Union(1, Box::new(A::String(s.into())));
    let mut fields = vec![
        ("event_id".to_string(), A::String("evt_1".into())),
        ("source".to_string(), A::String("purple".into())),
        ("type".to_string(), A::Enum(symbol.0, symbol.1.into())),
    ];
    if v2 {
        fields.push(("type_name".into(), some(symbol.1)));
        fields.push((
            "sequence".into(),
            match sequence {
                Some(s) => A::Union(1, Box::new(A::Long(s))),
                None => null(),
            },
        ));
    } else {
        fields.push(("sequence".into(), A::Long(sequence.unwrap())));
    }
    fields.extend([
        (
            "occurred_at".to_string(),
            A::TimestampMicros(1_795_370_591_123_000),
        ),
        (
            "received_at".to_string(),
            A::TimestampMicros(1_795_370_592_000_000),
        ),
        ("late".to_string(), A::Boolean(false)),
        ("venue_id".to_string(), A::String("venue-017".into())),
        ("venue_name".to_string(), null()),
        ("zone".to_string(), some("lobby")),
        ("device_id".to_string(), some("dev_9f2c")),
        ("guest".to_string(), null()),
    ]);
    A::Record(fields)
}

fn field(v: &apache_avro::types::Value, name: &str) -> apache_avro::types::Value {
    let apache_avro::types::Value::Record(fields) = v else {
        panic!("not a record: {v:?}")
    };
    fields.iter().find(|(k, _)| k == name).unwrap().1.clone()
}

#[test]
fn guest_wifi_versions_are_frozen() {
    assert_eq!(
        GUEST_WIFI_FROZEN.len(),
        schemas::GUEST_WIFI_SCHEMA_VERSIONS.len(),
        "add the new version to GUEST_WIFI_FROZEN"
    );
    for ((name, text), (frozen_name, fp)) in schemas::GUEST_WIFI_SCHEMA_VERSIONS
        .iter()
        .zip(GUEST_WIFI_FROZEN)
    {
        assert_eq!(name, frozen_name);
        assert_eq!(
            fingerprint_of(text).unwrap(),
            *fp,
            "{name} changed: committed versions must not be edited, add a new one"
        );
    }
}

/// A record any v1 writer wrote reads with v2: same type, its sequence,
/// no `type_name` (v1's type is exact).
#[test]
fn guest_wifi_v2_reads_a_v1_record() {
    use apache_avro::types::Value as A;
    let (v1, v2) = (guest_wifi("v1"), guest_wifi("v2"));
    for (i, symbol) in ["guest_connects", "device_disconnected", "zone_entered"]
        .iter()
        .enumerate()
    {
        let index = [0, 3, 4][i];
        let bytes =
            apache_avro::to_avro_datum(&v1, wifi_record(false, (index, symbol), Some(1042)))
                .unwrap();
        let read = apache_avro::from_avro_datum(&v1, &mut bytes.as_slice(), Some(&v2)).unwrap();
        assert_eq!(field(&read, "type"), A::Enum(index, (*symbol).into()));
        assert_eq!(
            field(&read, "sequence"),
            A::Union(1, Box::new(A::Long(1042)))
        );
        assert_eq!(field(&read, "type_name"), A::Union(0, Box::new(A::Null)));
        assert_eq!(field(&read, "venue_id"), A::String("venue-017".into()));
    }
}

/// A later version that names another type: a v2 reader reads its records
/// as `other` (the enum's default) and `type_name` still has the type.
#[test]
fn guest_wifi_v2_reads_a_type_added_later_as_other_with_its_name() {
    use apache_avro::types::Value as A;
    let v2 = guest_wifi("v2");
    let (_, text) = schemas::GUEST_WIFI_SCHEMA_VERSIONS[1];
    let later_text = text.replace(r#""other"],"#, r#""other", "guest_teleported"],"#);
    assert_ne!(later_text, text, "the symbol list moved; update this test");
    let later = Schema::parse_str(&later_text).unwrap();
    // apache-avro 0.21's checker ignores enum defaults (it wants every
    // writer symbol in the reader) though its reader applies them, as the
    // specification says ("Schema Resolution", enums): the data decides.
    assert!(SchemaCompatibility::can_read(&later, &v2).is_err());
    let bytes =
        apache_avro::to_avro_datum(&later, wifi_record(true, (9, "guest_teleported"), None))
            .unwrap();
    let read = apache_avro::from_avro_datum(&later, &mut bytes.as_slice(), Some(&v2)).unwrap();
    assert_eq!(field(&read, "type"), A::Enum(8, "other".into()));
    assert_eq!(
        field(&read, "type_name"),
        A::Union(1, Box::new(A::String("guest_teleported".into())))
    );
    assert_eq!(field(&read, "sequence"), A::Union(0, Box::new(A::Null)));
}

/// Readers move first: a v1 reader reads a v2 record of one of v1's types
/// with a sequence, and refuses (an error, not a wrong symbol) one of a
/// type v1 does not name.
#[test]
fn guest_wifi_v1_reads_v2_records_only_of_its_own_types() {
    use apache_avro::types::Value as A;
    let (v1, v2) = (guest_wifi("v1"), guest_wifi("v2"));
    let bytes =
        apache_avro::to_avro_datum(&v2, wifi_record(true, (2, "device_connected"), Some(7)))
            .unwrap();
    let read = apache_avro::from_avro_datum(&v2, &mut bytes.as_slice(), Some(&v1)).unwrap();
    assert_eq!(field(&read, "type"), A::Enum(2, "device_connected".into()));
    assert_eq!(field(&read, "sequence"), A::Long(7));
    let left =
        apache_avro::to_avro_datum(&v2, wifi_record(true, (5, "venue_left"), Some(8))).unwrap();
    assert!(apache_avro::from_avro_datum(&v2, &mut left.as_slice(), Some(&v1)).is_err());
}
