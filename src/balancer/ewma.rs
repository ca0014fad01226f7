//! `lbMethod: ewma`: the power of two random choices over a peak-EWMA of latency.
//!
//! Each member keeps an exponentially weighted moving average of the time to its response
//! heads, with a time constant of [`DECAY_MS`]. A slower answer than the average replaces it at
//! once (the peak), so a member that turns slow is avoided from its first slow answer, while a
//! faster one pulls it down gradually. A member that gets no answers sees its average fade
//! towards zero, so it is tried again after a while.
//!
//! A pick draws two distinct candidates at random and takes the one with the lower cost:
//! `(average + 1µs) × (requests in flight + 1) / load factor`. Two choices rather than the best
//! of all keep many balancers (workers, replicas) from all piling onto the same member.

use std::sync::atomic::Ordering::Relaxed;

use super::{MemberStats, Method, PickContext};

/// Time constant of the average, in milliseconds.
pub const DECAY_MS: f64 = 10_000.0;

#[derive(Debug)]
pub struct Ewma;

/// Records the time a member took to send its response head.
pub fn observe(stats: &MemberStats, latency_ns: u64, now_ms: u64) {
    let sample = latency_ns as f64;
    let before = f64::from_bits(stats.latency_ns.load(Relaxed));
    let at = stats.latency_at_ms.load(Relaxed);
    let next = if sample >= before || at == 0 {
        sample
    } else {
        let elapsed = now_ms.saturating_sub(at) as f64;
        let keep = (-elapsed / DECAY_MS).exp();
        before * keep + sample * (1.0 - keep)
    };
    // Racing updates may lose a sample: an average does not need every one.
    stats.latency_ns.store(next.to_bits(), Relaxed);
    stats.latency_at_ms.store(now_ms.max(1), Relaxed);
}

/// The member's average latency in nanoseconds at `now_ms`, faded by the time since its last
/// answer; zero before its first.
pub fn estimate(stats: &MemberStats, now_ms: u64) -> f64 {
    let at = stats.latency_at_ms.load(Relaxed);
    if at == 0 {
        return 0.0;
    }
    let value = f64::from_bits(stats.latency_ns.load(Relaxed));
    let idle = now_ms.saturating_sub(at) as f64;
    value * (-idle / DECAY_MS).exp()
}

fn cost(ctx: &PickContext<'_>, index: usize) -> f64 {
    let stats = &ctx.members[index].stats;
    let in_flight = stats.busy.load(Relaxed).max(0) as f64;
    (estimate(stats, ctx.now_ms) + 1_000.0) * (in_flight + 1.0) / f64::from(ctx.factor(index))
}

impl Method for Ewma {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let free = |i: &&u32| !ctx.excluded(**i as usize);
        let n = if ctx.exclude.is_empty() {
            ctx.candidates.len()
        } else {
            ctx.candidates.iter().filter(free).count()
        };
        let nth = |k: usize| {
            ctx.candidates
                .iter()
                .filter(free)
                .nth(k)
                .map(|&i| i as usize)
        };
        match n {
            0 => None,
            1 => nth(0),
            _ => {
                let n64 = n as u64;
                let first = (ctx.random % n64) as usize;
                // A second, different one: an offset of 1..n from the first.
                let second = (first + 1 + ((ctx.random >> 32) % (n64 - 1)) as usize) % n;
                let (a, b) = (nth(first)?, nth(second)?);
                if cost(ctx, b) < cost(ctx, a) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{context, members};
    use proptest::prelude::*;

    #[test]
    fn a_slow_answer_raises_the_average_at_once_and_fast_ones_lower_it_slowly() {
        let m = members(&[1]);
        let s = &m[0].stats;
        assert_eq!(estimate(s, 5), 0.0);
        observe(s, 1_000_000, 10);
        assert_eq!(estimate(s, 10), 1_000_000.0);
        observe(s, 50_000_000, 20);
        assert_eq!(estimate(s, 20), 50_000_000.0);
        observe(s, 1_000_000, 1_020);
        let after = estimate(s, 1_020);
        assert!(after < 50_000_000.0 && after > 40_000_000.0, "{after}");
        // Ten time constants without an answer: nearly forgotten.
        assert!(estimate(s, 101_020) < 100_000.0);
    }

    #[test]
    fn the_cheaper_of_the_two_drawn_wins_and_load_factor_counts() {
        let m = members(&[1, 1]);
        observe(&m[0].stats, 50_000_000, 1);
        observe(&m[1].stats, 1_000_000, 1);
        let c = [0, 1];
        for random in [0, 1, 7, u64::MAX] {
            let mut ctx = context(&m, &c, &[]);
            ctx.random = random;
            ctx.now_ms = 1;
            assert_eq!(Ewma.pick(&ctx), Some(1));
        }
        // Busy enough, the fast member costs more than the idle slow one.
        m[1].stats.busy.store(60, Relaxed);
        let mut ctx = context(&m, &c, &[]);
        ctx.now_ms = 1;
        assert_eq!(Ewma.pick(&ctx), Some(0));
        // Excluded members are never drawn.
        let ctx = context(&m, &c, &[0]);
        assert_eq!(Ewma.pick(&ctx), Some(1));
        assert_eq!(Ewma.pick(&context(&m, &c, &[0, 1])), None);
    }

    proptest! {
        /// Requests arrive faster than the slow member answers: the fast member ends up with
        /// most of them, and never fewer than the slow one.
        #[test]
        fn prefers_a_fast_member_under_load(seed in any::<u64>(), slow_ms in 20u64..200, fast_ms in 1u64..5) {
            let m = members(&[1, 1, 1]);
            let latency = [slow_ms, fast_ms, fast_ms * 2];
            let c = [0u32, 1, 2];
            let mut random = seed | 1;
            // (finish time, member) of requests in flight.
            let mut in_flight: Vec<(u64, usize)> = Vec::new();
            let mut picked = [0u32; 3];
            for now in 1..=2_000u64 {
                in_flight.retain(|&(done, i)| {
                    if done <= now {
                        m[i].stats.busy.fetch_sub(1, Relaxed);
                        observe(&m[i].stats, latency[i] * 1_000_000, now);
                        false
                    } else {
                        true
                    }
                });
                // xorshift: a new random number per pick.
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let mut ctx = context(&m, &c, &[]);
                ctx.random = random;
                ctx.now_ms = now;
                let i = Ewma.pick(&ctx).expect("a member");
                picked[i] += 1;
                m[i].stats.busy.fetch_add(1, Relaxed);
                in_flight.push((now + latency[i], i));
            }
            prop_assert!(picked[1] > picked[0] * 3, "{picked:?}");
            prop_assert!(picked[2] > picked[0], "{picked:?}");
        }
    }
}
