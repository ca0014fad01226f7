//! A member's bytes: the lean HTTP/1 client must read an answer as hyper's client would.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(difference) = kube_balancer::proxy::differential::answer(data) {
        panic!("{difference}");
    }
});
