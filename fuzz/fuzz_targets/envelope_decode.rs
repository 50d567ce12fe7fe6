#![no_main]
//! The envelope decoder on arbitrary record values: never a panic, and
//! whatever it accepts re-encodes to an envelope that decodes the same.

use libfuzzer_sys::fuzz_target;
use schemas::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let again = envelope.encode().expect("a decoded envelope encodes");
        assert_eq!(Envelope::decode(&again).expect("re-decodes"), envelope);
    }
});
