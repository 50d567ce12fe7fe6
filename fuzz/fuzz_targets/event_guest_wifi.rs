#![no_main]
//! The processors' `guest_wifi` parser on an arbitrary body from a verified
//! sender (malformed JSON, wrong types, huge numbers, deep nesting, invalid
//! UTF-8): an event or a quarantine with a reason, never a panic.

use libfuzzer_sys::fuzz_target;
use processors::event::ParserKind;

fuzz_target!(|data: &[u8]| pipeline_fuzz::check_parser(ParserKind::GuestWifi, data));
