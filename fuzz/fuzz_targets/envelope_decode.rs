#![no_main]
//! The envelope decoder on arbitrary record values: never a panic, the
//! direct reader accepts exactly what apache-avro's path accepts and reads
//! the same envelope, and whatever is accepted re-encodes to an envelope
//! that decodes the same.

use libfuzzer_sys::fuzz_target;
use schemas::Envelope;

fuzz_target!(|data: &[u8]| {
    let direct = Envelope::decode(data);
    let generic = Envelope::decode_with_apache_avro(data);
    match (&direct, &generic) {
        (Ok(d), Ok(g)) => assert_eq!(d, g),
        (Err(_), Err(_)) => {}
        _ => panic!("direct {direct:?}, apache-avro {generic:?}"),
    }
    if let Ok(envelope) = direct {
        let again = envelope.encode().expect("a decoded envelope encodes");
        assert_eq!(Envelope::decode(&again).expect("re-decodes"), envelope);
    }
});
