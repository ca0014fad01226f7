//! A retry budget, after Linkerd's: requests that already reached a member and failed there
//! (reset, closed, a broken answer) are sent to another member only while the cluster's retries
//! stay under a share of its requests plus a few a second, counted over short windows. A
//! failing member then cannot multiply the load on the others.
//!
//! Touched only when a retry is wanted: the request path pays nothing for it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Retries allowed, in percent of the requests of the window.
pub const RATIO_PERCENT: u64 = 20;
/// Retries allowed every second whatever the traffic, so that a quiet cluster can retry too.
pub const MIN_PER_SECOND: u64 = 10;
/// How long a window lasts.
pub const WINDOW_MS: u64 = 10_000;

/// One cluster's budget. Approximate under races between workers, which is all a budget needs.
#[derive(Debug, Default)]
pub struct RetryBudget {
    /// When the current window began (0: none yet).
    window_ms: AtomicU64,
    /// The cluster's requests when it began.
    requests_at_start: AtomicU64,
    /// Retries taken in it.
    retries: AtomicU64,
}

impl RetryBudget {
    /// Takes a retry at `now_ms`, `requests` being all the cluster's requests so far. False when
    /// the budget is spent.
    pub fn try_take(&self, now_ms: u64, requests: u64) -> bool {
        let start = self.window_ms.load(Relaxed);
        if (start == 0 || now_ms >= start.saturating_add(WINDOW_MS))
            && self
                .window_ms
                .compare_exchange(start, now_ms.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            self.requests_at_start.store(requests, Relaxed);
            self.retries.store(0, Relaxed);
        }
        let start = self.window_ms.load(Relaxed);
        let seconds = now_ms.saturating_sub(start) / 1000 + 1;
        let requests = requests.saturating_sub(self.requests_at_start.load(Relaxed));
        let allowed = requests * RATIO_PERCENT / 100 + MIN_PER_SECOND * seconds;
        if self.retries.fetch_add(1, Relaxed) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_cluster_gets_ten_a_second_and_a_busy_one_a_fifth_of_its_requests() {
        let budget = RetryBudget::default();
        let taken = (0..30).filter(|_| budget.try_take(1_000, 0)).count();
        assert_eq!(taken, MIN_PER_SECOND as usize);
        // A second later, ten more.
        let taken = (0..30).filter(|_| budget.try_take(2_000, 0)).count();
        assert_eq!(taken, MIN_PER_SECOND as usize);
        // 1,000 requests in the window: 200 more.
        let taken = (0..500).filter(|_| budget.try_take(2_500, 1_000)).count();
        assert_eq!(taken, 200);
        // A new window starts afresh from the requests counted so far.
        let taken = (0..30).filter(|_| budget.try_take(12_000, 1_000)).count();
        assert_eq!(taken, MIN_PER_SECOND as usize);
    }
}
