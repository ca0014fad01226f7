//! The balancer-manager's rates: answers and 5xx answers per second and the answer-time
//! quantiles of each member over the last minute, as HAProxy's stats page and Envoy's admin show
//! them next to the totals since start.
//!
//! The counters only ever grow, so a rate is the difference between now and an earlier reading.
//! The admin server reads every member's counters every [`EVERY`] and keeps the readings of the
//! last [`WINDOW`]; a page compares the counters of the moment with the oldest reading kept. For
//! a member that joined since then (or the first minute after start), the window is as long as
//! the readings go back. A reading holds the member's key, two counts and the histogram's 17
//! buckets: about 250 bytes, so the seven readings of a minute hold about 9 MB for 5,000 members.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::balancer::traffic::{HistogramRead, TrafficRead};
use crate::plane::DataPlane;

/// How often the counters are read.
pub const EVERY: Duration = Duration::from_secs(10);

/// How far back the rates look.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A member, as long as its cluster and URL stay the same.
type MemberKey = (String, String);

/// One member's counters at one time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub answers: u64,
    pub server_errors: u64,
    pub times: HistogramRead,
}

impl Counts {
    pub fn of(read: &TrafficRead) -> Counts {
        Counts {
            answers: read.answers(),
            server_errors: read.server_errors(),
            times: read.response_time.clone(),
        }
    }

    /// What was counted after `earlier`; all of it when the counters started again since (a
    /// member removed and added back).
    fn since(&self, earlier: &Counts) -> Counts {
        if self.answers < earlier.answers {
            return self.clone();
        }
        Counts {
            answers: self.answers - earlier.answers,
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
            times: self.times.since(&earlier.times),
        }
    }
}

/// A member's rates over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    pub seconds: f64,
    pub answers_per_second: f64,
    pub errors_per_second: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

struct Reading {
    at_ms: u64,
    members: HashMap<MemberKey, Counts>,
}

/// The readings of the last minute.
#[derive(Default)]
pub struct Rates {
    readings: Mutex<VecDeque<Reading>>,
}

impl Rates {
    /// Reads every member's counters at `now_ms` and forgets the readings older than the window.
    pub fn sample(&self, plane: &DataPlane, now_ms: u64) {
        let snapshot = plane.snapshot_full();
        let mut members = HashMap::new();
        for cluster in &snapshot.clusters {
            for member in cluster.balancer.members() {
                members.insert(
                    (cluster.key.clone(), member.url.clone()),
                    Counts::of(&member.stats.traffic.read()),
                );
            }
        }
        self.record(Reading {
            at_ms: now_ms,
            members,
        });
    }

    fn record(&self, reading: Reading) {
        let Ok(mut readings) = self.readings.lock() else {
            return;
        };
        let horizon = reading.at_ms.saturating_sub(window_ms());
        while readings.front().is_some_and(|r| r.at_ms < horizon) {
            readings.pop_front();
        }
        readings.push_back(reading);
    }

    /// The rates of `member` of `cluster` whose counters read `now` at `now_ms`: against the
    /// oldest reading that has the member. None before any reading of it.
    pub fn rate(&self, cluster: &str, member: &str, now: &Counts, now_ms: u64) -> Option<Rate> {
        let readings = self.readings.lock().ok()?;
        let key = (cluster.to_owned(), member.to_owned());
        let (at_ms, then) = readings
            .iter()
            .find_map(|r| r.members.get(&key).map(|counts| (r.at_ms, counts)))?;
        let seconds = now_ms.saturating_sub(at_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return None;
        }
        let delta = now.since(then);
        Some(Rate {
            seconds,
            answers_per_second: delta.answers as f64 / seconds,
            errors_per_second: delta.server_errors as f64 / seconds,
            p50: delta.times.quantile(0.5),
            p99: delta.times.quantile(0.99),
        })
    }
}

fn window_ms() -> u64 {
    u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(answers: u64, server_errors: u64, fast: u64, slow: u64) -> Counts {
        let mut times = HistogramRead::default();
        // The first bucket (up to 100 µs) and the one up to 1 ms (the fourth bound).
        times.buckets[0] = fast;
        times.buckets[3] = slow;
        Counts {
            answers,
            server_errors,
            times,
        }
    }

    fn reading(at_ms: u64, counts: Counts) -> Reading {
        Reading {
            at_ms,
            members: [(("shop/web".to_owned(), "http://a".to_owned()), counts)].into(),
        }
    }

    #[test]
    fn a_rate_is_what_was_counted_since_the_oldest_reading_of_the_window() {
        let rates = Rates::default();
        rates.record(reading(0, counts(10, 1, 10, 0)));
        rates.record(reading(10_000, counts(50, 3, 50, 0)));
        // Since the reading at 0, over 20 s: 100 answers (99 fast, 1 slow), 9 of them 5xx.
        let now = counts(110, 10, 109, 1);
        let rate = rates
            .rate("shop/web", "http://a", &now, 20_000)
            .expect("a rate");
        assert_eq!(rate.seconds, 20.0);
        assert_eq!(rate.answers_per_second, 5.0);
        assert_eq!(rate.errors_per_second, 0.45);
        assert_eq!(rate.p50, Some(Duration::from_micros(50)));
        // The 99th of 100 falls in the fast bucket's top; the 100th alone is slow.
        assert_eq!(rate.p99, Some(Duration::from_micros(100)));
    }

    #[test]
    fn readings_older_than_the_window_are_forgotten() {
        let rates = Rates::default();
        rates.record(reading(0, counts(0, 0, 0, 0)));
        rates.record(reading(30_000, counts(30, 0, 30, 0)));
        rates.record(reading(70_000, counts(70, 0, 70, 0)));
        // The reading at 0 is gone: the window starts at 30 s.
        let rate = rates
            .rate("shop/web", "http://a", &counts(90, 0, 90, 0), 90_000)
            .expect("a rate");
        assert_eq!(rate.seconds, 60.0);
        assert_eq!(rate.answers_per_second, 1.0);
    }

    #[test]
    fn a_member_never_read_or_counters_that_started_again() {
        let rates = Rates::default();
        assert_eq!(
            rates.rate("shop/web", "http://a", &counts(1, 0, 1, 0), 5),
            None
        );
        rates.record(reading(0, counts(500, 0, 500, 0)));
        // Fewer answers than before: the member's counters are new, all of them count.
        let rate = rates
            .rate("shop/web", "http://a", &counts(20, 2, 20, 0), 10_000)
            .expect("a rate");
        assert_eq!(rate.answers_per_second, 2.0);
        assert_eq!(rate.errors_per_second, 0.2);
        assert_eq!(
            rates.rate("shop/web", "http://b", &counts(1, 0, 1, 0), 10_000),
            None
        );
        // No time since the reading: no rate to speak of.
        assert_eq!(
            rates.rate("shop/web", "http://a", &counts(500, 0, 500, 0), 0),
            None
        );
    }
}
