//! A client's bytes: the lean HTTP/1 server must take a head only as hyper's server would.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(difference) = kube_balancer::proxy::differential::request(data) {
        panic!("{difference}");
    }
});
