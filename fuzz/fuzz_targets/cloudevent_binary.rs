#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crmsync_fuzzing::cloudevent_binary(data));
