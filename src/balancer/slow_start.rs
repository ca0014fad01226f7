//! Slow start: a member that joins or comes back (from an error, a failed health check or an
//! ejection) takes a growing share of what its method would give it, from a tenth at first to
//! all of it at the end of the window.
//!
//! While slow start is on, load factors count in tenths: a member's factor in effect is ten
//! times its own, and a ramping member's is one to nine times its own, one more each tenth of
//! the window (the schedule is rebuilt at each step). byrequests, ewma and hash weigh members
//! by factor, so a ramping member's share follows. bytraffic and bybusyness pick the least
//! loaded member whatever its factor, so there factors stay as they are and a ramping member
//! instead keeps only its ramp's share of the requests that come to it (decided by a credit,
//! so the share is exact, not left to chance); the others go to the next best member.

use std::sync::atomic::Ordering::Relaxed;

use super::MemberStats;

/// The share a ramping member starts from, in thousandths.
pub const FLOOR_PERMILLE: u64 = 100;

/// The member's share in thousandths at `now_ms`, or `None` when it is not ramping.
pub fn ramp(stats: &MemberStats, window_ms: u64, now_ms: u64) -> Option<u64> {
    if window_ms == 0 {
        return None;
    }
    let from = stats.ramp_from_ms.load(Relaxed);
    let elapsed = now_ms.checked_sub(from)?;
    (from != 0 && elapsed < window_ms).then(|| (elapsed * 1000 / window_ms).max(FLOOR_PERMILLE))
}

/// The load factor in effect (in tenths of `load_factor`), and when it next changes.
pub fn factor(stats: &MemberStats, load_factor: u32, window_ms: u64, now_ms: u64) -> (u32, u64) {
    if window_ms == 0 {
        return (load_factor.max(1), u64::MAX);
    }
    let from = stats.ramp_from_ms.load(Relaxed);
    match ramp(stats, window_ms, now_ms) {
        Some(permille) => {
            let tenths = (permille / 100).clamp(1, 9);
            let next = from.saturating_add((tenths + 1) * window_ms / 10);
            // Tenths fit: at most 9.
            (load_factor.max(1).saturating_mul(tenths as u32), next)
        }
        // Not back yet: it ramps from `from` on.
        None if from > now_ms => (load_factor.max(1).saturating_mul(10), from),
        None => (load_factor.max(1).saturating_mul(10), u64::MAX),
    }
}

/// Whether a ramping member at `permille` keeps a request that came to it.
pub fn admit(stats: &MemberStats, permille: u64) -> bool {
    let credit = stats.ramp_credit.fetch_add(permille, Relaxed) + permille;
    if credit >= 1000 {
        stats.ramp_credit.fetch_sub(1000, Relaxed);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_from_a_tenth_to_all_over_the_window() {
        let s = MemberStats::default();
        assert_eq!(ramp(&s, 10_000, 5), None, "never joined late");
        s.ramp_from_ms.store(1_000, Relaxed);
        assert_eq!(ramp(&s, 0, 1_000), None, "no slow start");
        assert_eq!(ramp(&s, 10_000, 500), None, "not back yet");
        assert_eq!(ramp(&s, 10_000, 1_000), Some(100));
        assert_eq!(ramp(&s, 10_000, 6_000), Some(500));
        assert_eq!(ramp(&s, 10_000, 10_999), Some(999));
        assert_eq!(ramp(&s, 10_000, 11_000), None);
    }

    #[test]
    fn factors_count_in_tenths_while_slow_start_is_on() {
        let s = MemberStats::default();
        assert_eq!(
            factor(&s, 3, 0, 5),
            (3, u64::MAX),
            "no slow start: unchanged"
        );
        assert_eq!(factor(&s, 3, 10_000, 5), (30, u64::MAX));
        s.ramp_from_ms.store(1_000, Relaxed);
        assert_eq!(factor(&s, 3, 10_000, 500), (30, 1_000));
        assert_eq!(factor(&s, 3, 10_000, 1_000), (3, 3_000));
        assert_eq!(factor(&s, 3, 10_000, 3_500), (6, 4_000));
        assert_eq!(factor(&s, 3, 10_000, 10_999), (27, 11_000));
        assert_eq!(factor(&s, 3, 10_000, 11_000), (30, u64::MAX));
    }

    #[test]
    fn admission_keeps_exactly_the_share() {
        let s = MemberStats::default();
        let kept = (0..1000).filter(|_| admit(&s, 250)).count();
        assert_eq!(kept, 250);
        let s = MemberStats::default();
        let pattern: Vec<bool> = (0..4).map(|_| admit(&s, 500)).collect();
        assert_eq!(pattern, [false, true, false, true]);
    }
}
