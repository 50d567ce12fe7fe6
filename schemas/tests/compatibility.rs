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
