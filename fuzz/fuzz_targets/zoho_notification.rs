#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crmsync_fuzzing::zoho_notification(data));
