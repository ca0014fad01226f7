//! Apache's `lbmethod=bytraffic`: the candidate with the least traffic (request bytes sent plus
//! response bytes received) divided by its load factor; the first one on a tie.
//!
//! The byte counters are the members' own, which outlive snapshots, so a configuration change
//! does not hand a busy member a fresh start. Traffic is compared by cross-multiplying
//! (`a / fa < b / fb` as `a * fb < b * fa`), so no rounding decides a pick.

use std::sync::atomic::Ordering::Relaxed;

use super::{Method, PickContext};

#[derive(Debug)]
pub struct ByTraffic;

impl Method for ByTraffic {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let mut best: Option<(usize, u128, u128)> = None;
        for &i in ctx.candidates {
            let i = i as usize;
            if ctx.excluded(i) {
                continue;
            }
            let stats = &ctx.members[i].stats;
            let traffic = u128::from(stats.sent_bytes.load(Relaxed))
                + u128::from(stats.received_bytes.load(Relaxed));
            let factor = u128::from(ctx.factor(i));
            match best {
                Some((_, best_traffic, best_factor))
                    if traffic * best_factor >= best_traffic * factor => {}
                _ => best = Some((i, traffic, factor)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{context, members};
    use proptest::prelude::*;

    #[test]
    fn least_traffic_per_factor_wins_and_the_first_on_a_tie() {
        let m = members(&[1, 2, 1]);
        m[0].stats.sent_bytes.store(100, Relaxed);
        m[1].stats.received_bytes.store(150, Relaxed); // 75 per factor
        m[2].stats.sent_bytes.store(75, Relaxed);
        let candidates = [0, 1, 2];
        assert_eq!(ByTraffic.pick(&context(&m, &candidates, &[])), Some(1));
        // Equal traffic per factor: the first in visiting order.
        m[2].stats.sent_bytes.store(75, Relaxed);
        m[1].stats.received_bytes.store(150, Relaxed);
        assert_eq!(ByTraffic.pick(&context(&m, &[2, 1], &[])), Some(2));
        assert_eq!(ByTraffic.pick(&context(&m, &candidates, &[1])), Some(2));
        assert_eq!(ByTraffic.pick(&context(&m, &candidates, &[0, 1, 2])), None);
    }

    proptest! {
        /// Whatever sizes requests have, the bytes each member carried, divided by its factor,
        /// stay within one request of each other.
        #[test]
        fn bytes_are_balanced_by_factor(
            factors in prop::collection::vec(1u32..=10, 2..6),
            sizes in prop::collection::vec(1u64..=10_000, 50..400),
        ) {
            let m = members(&factors);
            let candidates: Vec<u32> = (0..factors.len() as u32).collect();
            for &size in &sizes {
                let i = ByTraffic.pick(&context(&m, &candidates, &[])).expect("a member");
                m[i].stats.sent_bytes.fetch_add(size / 3, Relaxed);
                m[i].stats.received_bytes.fetch_add(size - size / 3, Relaxed);
            }
            let largest = *sizes.iter().max().expect("sizes") as f64;
            let per_factor: Vec<f64> = m
                .iter()
                .zip(&factors)
                .map(|(m, &f)| {
                    (m.stats.sent_bytes.load(Relaxed) + m.stats.received_bytes.load(Relaxed)) as f64
                        / f64::from(f)
                })
                .collect();
            let high = per_factor.iter().cloned().fold(f64::MIN, f64::max);
            let low = per_factor.iter().cloned().fold(f64::MAX, f64::min);
            // The least loaded always gets the next request, so the gap never exceeds one
            // request's bytes per unit of factor.
            prop_assert!(high - low <= largest, "{per_factor:?}");
        }
    }
}
