//! The network namespace of the test run, and the pod IPs in it.
//!
//! EndpointSlice validation refuses loopback addresses, so pod IPs come from 10.244.0.0/24.
//! scripts/test.sh creates a network namespace for the run, puts 10.244.0.0/24 on its `lo` (which
//! makes every address in it local), and runs the tests inside it. A fresh namespace has no other
//! interface and no route, so traffic to a pod IP never leaves it. This module checks that the
//! process really is inside that namespace before any test sends traffic to a pod IP.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// Names the namespace that scripts/test.sh created for the run.
pub const NETNS_ENV: &str = "KB_TESTENV_NETNS";

/// The node's address: the first of the range, on the namespace's `lo`.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// Pod IPs are handed out from here up to .254, once each per test binary.
const FIRST_POD_HOST: u8 = 10;

/// Panics, saying why and what to run, unless this process runs inside the network namespace that
/// scripts/test.sh created (named by `KB_TESTENV_NETNS`) and 10.244.0.0/24 is local there.
pub fn require() -> &'static str {
    match require_checked() {
        Ok(name) => name,
        Err(why) => panic!("{why}"),
    }
}

/// `require`, returning the reason instead of panicking.
pub fn require_checked() -> Result<&'static str, String> {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    CHECKED
        .get_or_init(check)
        .as_ref()
        .map(String::as_str)
        .map_err(Clone::clone)
}

fn check() -> Result<String, String> {
    let how = "The Kubernetes tests run inside a network namespace that scripts/test.sh creates; \
               run scripts/test.sh, or see docs/testenv.md to run one test by hand.";
    let name = std::env::var(NETNS_ENV).map_err(|_| {
        format!("{NETNS_ENV} is not set, so this is not the test network namespace. {how}")
    })?;
    let ours = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| format!("cannot read /proc/self/ns/net: {e}"))?;
    let theirs = std::fs::metadata(format!("/run/netns/{name}")).map_err(|e| {
        format!("network namespace {name} (from {NETNS_ENV}) is absent: {e}. {how}")
    })?;
    if (ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino()) {
        return Err(format!(
            "{NETNS_ENV}={name}, but this process is not inside that network namespace. {how}"
        ));
    }
    TcpListener::bind((NODE_IP, 0)).map_err(|e| {
        format!("cannot bind {NODE_IP} inside network namespace {name} ({e}): is 10.244.0.0/24 on lo? {how}")
    })?;
    Ok(name)
}

/// A pod IP not yet handed out in this test binary. Only valid inside the namespace (`require`).
pub fn next_pod_ip() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(FIRST_POD_HOST);
    let host = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(
        (FIRST_POD_HOST..255).contains(&host),
        "this test binary used up the pod IPs of 10.244.0.0/24"
    );
    Ipv4Addr::new(10, 244, 0, host)
}

/// Binds a listener on `ip`, which proves the address is local to this namespace, so that traffic
/// to it stays here. The port is ephemeral.
pub fn bind_local(ip: Ipv4Addr) -> std::io::Result<std::net::TcpListener> {
    require();
    let listener = TcpListener::bind(SocketAddr::from((ip, 0)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
