//! A configuration file's bytes: refused with a message or taken, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kube_balancer::standalone::parse("fuzz.yaml", text);
    }
});
