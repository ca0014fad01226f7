//! What the request path counts of a member's traffic for `/metrics` and the balancer-manager:
//! answers by status code, the time to each answer head, connect times, requests sent again.
//!
//! Every worker adds to a shard of its own (a worker is one thread; shards are made the first
//! time a thread counts for the member), so workers never write the same cache line; a reader
//! sums the shards. Counting is a few relaxed atomic additions: no lock, no allocation after a
//! thread's first request to a member. The figures only grow (Prometheus counters): a reader
//! takes differences for rates.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the time buckets, in microseconds: from 100 µs (a proxy on the same machine
/// answers in tens of microseconds) to 10 s, roughly 1-2.5-5 per decade. Above the last: +Inf.
pub const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The status codes counted one by one; any other is counted as its class's "other".
pub const CODES: [u16; 26] = [
    100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408,
    409, 413, 429, 500, 502, 503, 504,
];

/// Slots: the codes above, then "other" for each class 1xx to 5xx, then one for anything
/// outside 100-599.
pub const SLOTS: usize = CODES.len() + 6;

/// Shards per member: workers beyond this many share shards (still correct: the additions are
/// atomic).
const SHARDS: usize = 16;

/// The slot counting `code`.
pub fn slot(code: u16) -> usize {
    match CODES.binary_search(&code) {
        Ok(i) => i,
        Err(_) if (100..600).contains(&code) => CODES.len() + usize::from(code / 100 - 1),
        Err(_) => SLOTS - 1,
    }
}

/// What a slot stands for: the code (`"503"`) and its class (`"5xx"`), or `"other"`.
pub fn slot_labels(slot: usize) -> (String, &'static str) {
    const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
    match CODES.get(slot) {
        Some(code) => (code.to_string(), CLASSES[usize::from(code / 100 - 1)]),
        None => {
            let class = CLASSES[(slot - CODES.len()).min(5)];
            ("other".to_owned(), class)
        }
    }
}

/// A classic histogram of times: a count per bucket (not cumulative), their sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn read(&self) -> HistogramRead {
        let mut read = HistogramRead::default();
        read.add(self);
        read
    }

    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Most answers fall in the first few buckets: a scan from the bottom is shortest.
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// One histogram read: counts per bucket (not cumulative; the last is +Inf) and the sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramRead {
    pub buckets: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl HistogramRead {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, h: &Histogram) {
        for (total, b) in self.buckets.iter_mut().zip(&h.buckets) {
            *total += b.load(Relaxed);
        }
        self.sum_us += h.sum_us.load(Relaxed);
    }

    /// What was recorded after `earlier` (a read of the same histogram).
    pub fn since(&self, earlier: &HistogramRead) -> HistogramRead {
        let mut delta = self.clone();
        for (n, before) in delta.buckets.iter_mut().zip(&earlier.buckets) {
            *n = n.saturating_sub(*before);
        }
        delta.sum_us = delta.sum_us.saturating_sub(earlier.sum_us);
        delta
    }

    fn merge(&mut self, other: &HistogramRead) {
        for (total, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *total += b;
        }
        self.sum_us += other.sum_us;
    }

    /// The time under which `q` (0 to 1) of the samples fall, interpolated within its bucket
    /// as Prometheus' `histogram_quantile` does; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { BUCKETS_US[i - 1] };
                let Some(&upper) = BUCKETS_US.get(i) else {
                    // In +Inf: the highest finite bound is all that can be said.
                    return Some(Duration::from_micros(lower));
                };
                let within = (rank - below as f64) / n as f64;
                let us = lower as f64 + (upper - lower) as f64 * within;
                return Some(Duration::from_micros(us as u64));
            }
            below += n;
        }
        None
    }
}

/// One worker's counts for a member.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    responses: [AtomicU64; SLOTS],
    /// Request start (this try) to the member's answer head.
    response_time: Histogram,
    /// New connections: the time to connect.
    connect_time: Histogram,
    /// Tries that failed on this member and were sent to another (failovers).
    failovers: AtomicU64,
}

/// A member's traffic figures, sharded per worker thread.
#[derive(Debug, Default)]
pub struct Traffic {
    shards: [OnceLock<Box<Shard>>; SHARDS],
}

/// Everything a [`Traffic`] holds, summed over its shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficRead {
    pub responses: [u64; SLOTS],
    pub response_time: HistogramRead,
    pub connect_time: HistogramRead,
    pub failovers: u64,
}

impl TrafficRead {
    /// Answers counted, whatever their status.
    pub fn answers(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// Answers with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.responses
            .iter()
            .enumerate()
            .filter(|&(slot, _)| slot_labels(slot).1 == "5xx")
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds another read (a member's into its cluster's total).
    pub fn merge(&mut self, other: &TrafficRead) {
        for (total, n) in self.responses.iter_mut().zip(&other.responses) {
            *total += n;
        }
        self.response_time.merge(&other.response_time);
        self.connect_time.merge(&other.connect_time);
        self.failovers += other.failovers;
    }
}

/// This thread's shard number, fixed the first time it counts.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl Traffic {
    fn shard(&self) -> &Shard {
        self.shards[shard_index()].get_or_init(Box::default)
    }

    /// A member's answer: its status, and the time from the try's start to its head.
    pub fn answered(&self, status: u16, took: Duration) {
        let shard = self.shard();
        shard.responses[slot(status)].fetch_add(1, Relaxed);
        shard.response_time.record(took);
    }

    /// An answer of the proxy's own on the member's behalf (a 502 or 504 after it failed).
    pub fn answered_for(&self, status: u16) {
        self.shard().responses[slot(status)].fetch_add(1, Relaxed);
    }

    /// A new connection to the member, and the time it took.
    pub fn connected(&self, took: Duration) {
        self.shard().connect_time.record(took);
    }

    /// A try failed on the member and the request went on to another.
    pub fn failed_over(&self) {
        self.shard().failovers.fetch_add(1, Relaxed);
    }

    pub fn read(&self) -> TrafficRead {
        let mut read = TrafficRead::default();
        for shard in self.shards.iter().filter_map(OnceLock::get) {
            for (total, n) in read.responses.iter_mut().zip(&shard.responses) {
                *total += n.load(Relaxed);
            }
            read.response_time.add(&shard.response_time);
            read.connect_time.add(&shard.connect_time);
            read.failovers += shard.failovers.load(Relaxed);
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_slot_and_labels_that_name_it() {
        assert_eq!(slot_labels(slot(200)), ("200".to_owned(), "2xx"));
        assert_eq!(slot_labels(slot(503)), ("503".to_owned(), "5xx"));
        assert_eq!(slot_labels(slot(418)), ("other".to_owned(), "4xx"));
        assert_eq!(slot_labels(slot(599)), ("other".to_owned(), "5xx"));
        assert_eq!(slot_labels(slot(99)), ("other".to_owned(), "other"));
        assert_eq!(slot_labels(slot(600)), ("other".to_owned(), "other"));
        let mut seen = std::collections::HashSet::new();
        for code in 0..1000u16 {
            assert!(slot(code) < SLOTS);
            seen.insert(slot(code));
        }
        assert_eq!(seen.len(), SLOTS, "every slot is used");
    }

    #[test]
    fn shards_of_several_threads_sum_to_what_was_counted() {
        let traffic = std::sync::Arc::new(Traffic::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let traffic = traffic.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        let status = if i % 10 == 0 { 503 } else { 200 };
                        traffic.answered(status, Duration::from_micros(i));
                    }
                    traffic.connected(Duration::from_micros(300));
                    traffic.failed_over();
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let read = traffic.read();
        assert_eq!(read.responses[slot(200)], 3600);
        assert_eq!(read.responses[slot(503)], 400);
        assert_eq!((read.answers(), read.server_errors()), (4000, 400));
        // 0..=100 µs in the first bucket, 101..=250 in the second, and so on.
        assert_eq!(read.response_time.buckets[0], 4 * 101);
        assert_eq!(read.response_time.buckets[1], 4 * 150);
        assert_eq!(read.response_time.buckets[2], 4 * 250);
        assert_eq!(read.response_time.buckets[3], 4 * 499);
        assert_eq!(read.response_time.sum_us, 4 * (999 * 1000 / 2));
        assert_eq!(read.connect_time.count(), 4);
        assert_eq!(read.connect_time.buckets[2], 4);
        assert_eq!(read.failovers, 4);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        let h = Histogram::default();
        for _ in 0..50 {
            h.record(Duration::from_micros(80));
        }
        for _ in 0..50 {
            h.record(Duration::from_micros(200));
        }
        let mut read = HistogramRead::default();
        read.add(&h);
        // Half the samples in (0, 100], half in (100, 250].
        assert_eq!(read.quantile(0.5), Some(Duration::from_micros(100)));
        assert_eq!(read.quantile(0.99), Some(Duration::from_micros(247)));
        assert_eq!(HistogramRead::default().quantile(0.5), None);
        let slow = Histogram::default();
        slow.record(Duration::from_secs(60));
        let mut read = HistogramRead::default();
        read.add(&slow);
        assert_eq!(read.quantile(0.99), Some(Duration::from_secs(10)));
    }
}
