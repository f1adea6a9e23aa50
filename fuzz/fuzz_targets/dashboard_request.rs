#![no_main]
// The property is the crate's own (shared with its property test in `cargo test`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| dualbus_engines::fuzzing::dashboard_request(data));
