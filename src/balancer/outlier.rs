//! Passive health checks (Envoy's outlier detection): the outcome of every request counts, and
//! a member whose requests keep failing is ejected for a while.
//!
//! Two rules, each optional: `consecutiveFailures` in a row, or `failurePercent` of at least
//! `minRequests` requests within one `interval`. An ejection lasts `baseEjectionTime` times the
//! number of ejections in a row, at most `maxEjectionTime`; a member that has stayed in for
//! longer than `maxEjectionTime` since its last ejection starts counting from one again. Pure
//! arithmetic over the member's atomics; the balancer applies the cap on how many members are
//! out at once.

use std::sync::atomic::Ordering::Relaxed;

use super::MemberStats;
use crate::discovery::OutlierConfig;

/// Counts one outcome. Returns why the member should be ejected, when it should.
pub fn record(
    config: &OutlierConfig,
    stats: &MemberStats,
    ok: bool,
    now_ms: u64,
) -> Option<String> {
    let mut verdict = None;
    if ok {
        if stats.consecutive_failures.load(Relaxed) != 0 {
            stats.consecutive_failures.store(0, Relaxed);
        }
    } else {
        let failures = stats.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if config.consecutive_failures > 0 && failures >= config.consecutive_failures {
            verdict = Some(format!("{failures} failures in a row"));
        }
    }
    if let Some(percent) = config.failure_percent {
        let interval = u64::try_from(config.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let start = stats.window_start_ms.load(Relaxed);
        if now_ms.saturating_sub(start) >= interval
            && stats
                .window_start_ms
                .compare_exchange(start, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            stats.window_requests.store(0, Relaxed);
            stats.window_failures.store(0, Relaxed);
        }
        let requests = stats.window_requests.fetch_add(1, Relaxed) + 1;
        let failures = if ok {
            stats.window_failures.load(Relaxed)
        } else {
            stats.window_failures.fetch_add(1, Relaxed) + 1
        };
        if !ok
            && verdict.is_none()
            && requests >= config.min_requests
            && u64::from(failures) * 100 >= u64::from(percent) * u64::from(requests)
        {
            verdict = Some(format!("{failures} of {requests} requests failed"));
        }
    }
    verdict.filter(|_| stats.ejected_until_ms.load(Relaxed) <= now_ms)
}

/// How many members of `total` may be out at once: `percent` of them, and always at least one.
pub fn allowed(total: usize, percent: u32) -> usize {
    (total * percent as usize / 100).max(1)
}

/// Ejects the member from `now_ms`; returns how long for, in milliseconds.
pub fn eject(config: &OutlierConfig, stats: &MemberStats, now_ms: u64) -> u64 {
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (base, max) = (millis(config.base_ejection), millis(config.max_ejection));
    let last_until = stats.ejected_until_ms.load(Relaxed);
    let in_a_row = if last_until == 0 || now_ms.saturating_sub(last_until) > max {
        1
    } else {
        stats.ejections.load(Relaxed).saturating_add(1)
    };
    let duration = base.saturating_mul(u64::from(in_a_row)).min(max).max(1);
    let until = now_ms.saturating_add(duration);
    stats.ejections.store(in_a_row, Relaxed);
    stats.ejections_total.fetch_add(1, Relaxed);
    stats.state_since_ms.store(now_ms, Relaxed);
    stats.ejected_until_ms.store(until, Relaxed);
    stats.ramp_from_ms.store(until, Relaxed);
    stats.consecutive_failures.store(0, Relaxed);
    stats.window_requests.store(0, Relaxed);
    stats.window_failures.store(0, Relaxed);
    stats.window_start_ms.store(until, Relaxed);
    duration
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            failure_percent: None,
            min_requests: 10,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(100),
            max_ejection_percent: 10,
        }
    }

    #[test]
    fn failures_in_a_row_eject_and_a_success_resets_the_count() {
        let s = MemberStats::default();
        let c = config();
        assert_eq!(record(&c, &s, false, 1), None);
        assert_eq!(record(&c, &s, false, 2), None);
        assert_eq!(record(&c, &s, true, 3), None);
        assert_eq!(record(&c, &s, false, 4), None);
        assert_eq!(record(&c, &s, false, 5), None);
        assert_eq!(
            record(&c, &s, false, 6).as_deref(),
            Some("3 failures in a row")
        );
    }

    #[test]
    fn ejections_in_a_row_last_longer_up_to_the_maximum_then_start_again() {
        let s = MemberStats::default();
        let c = config();
        assert_eq!(eject(&c, &s, 1_000), 30_000);
        // Back at 31 000, failing again soon after: twice as long, then capped at 100 s.
        assert_eq!(eject(&c, &s, 32_000), 60_000);
        assert_eq!(eject(&c, &s, 93_000), 90_000);
        assert_eq!(eject(&c, &s, 184_000), 100_000);
        assert_eq!(s.ejected_until_ms.load(Relaxed), 284_000);
        // In for longer than maxEjectionTime since: a first ejection again.
        assert_eq!(eject(&c, &s, 400_000), 30_000);
        assert_eq!(s.ramp_from_ms.load(Relaxed), 430_000);
    }

    #[test]
    fn failure_rate_counts_within_the_interval_only() {
        let s = MemberStats::default();
        let c = OutlierConfig {
            consecutive_failures: 0,
            failure_percent: Some(50),
            min_requests: 4,
            ..config()
        };
        for now in [1, 2, 3] {
            assert_eq!(record(&c, &s, now % 2 == 0, now), None);
        }
        // A new interval: the counts start over.
        assert_eq!(record(&c, &s, false, 20_000), None);
        assert_eq!(record(&c, &s, true, 20_001), None);
        assert_eq!(record(&c, &s, false, 20_002), None);
        assert_eq!(
            record(&c, &s, false, 20_003).as_deref(),
            Some("3 of 4 requests failed")
        );
    }

    #[test]
    fn at_least_one_member_may_be_ejected() {
        assert_eq!(allowed(2, 10), 1);
        assert_eq!(allowed(30, 10), 3);
        assert_eq!(allowed(4, 50), 2);
    }
}
