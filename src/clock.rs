//! The process clock: milliseconds, monotonic. The core takes `now` as an argument;
//! only the edges (proxy, admin) read this.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Where the process clock starts: far from zero (about 50 days), so that 0 can stand for
/// "never" in the counters and a time before the start (a member that began ramping up an hour
/// ago, in a test) is still a valid reading.
pub const ORIGIN_MS: u64 = 1 << 32;

/// Milliseconds on the process clock: [`ORIGIN_MS`] when it started, growing since.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] for a reading of the clock the caller took anyway (for its own timing too).
pub fn ms_at(at: Instant) -> u64 {
    let since = at.saturating_duration_since(start());
    ORIGIN_MS.saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}
