//! Apache's `lbmethod=bybusyness`: the candidate with the fewest requests in flight.
//!
//! Ties go as in Apache: every pick adds each candidate's load factor to its `lbstatus`, the
//! tied candidate with the highest `lbstatus` wins and gives back the sum of the factors, so
//! equally busy members take turns in byrequests' weighted order. The `lbstatus` values are
//! atomics owned by this candidate set: concurrent picks may interleave their additions, but
//! every pick adds and removes the same total, so the turns stay fair.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use super::{BalancedMember, Method, PickContext};

#[derive(Debug)]
pub struct ByBusyness {
    /// `lbstatus` per candidate, in candidate order.
    lbstatus: Vec<AtomicI64>,
    candidates: Vec<u32>,
}

impl ByBusyness {
    pub fn new(candidates: &[u32]) -> Self {
        ByBusyness {
            lbstatus: candidates.iter().map(|_| AtomicI64::new(0)).collect(),
            candidates: candidates.to_vec(),
        }
    }
}

impl Method for ByBusyness {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        debug_assert_eq!(ctx.candidates, self.candidates.as_slice());
        let mut best: Option<(usize, i64, i64)> = None; // (position, busy, lbstatus)
        let mut total = 0i64;
        for (k, &i) in self.candidates.iter().enumerate() {
            let i = i as usize;
            if ctx.excluded(i) {
                continue;
            }
            let factor = i64::from(ctx.factor(i));
            total += factor;
            let lbstatus = self.lbstatus[k].fetch_add(factor, Relaxed) + factor;
            let busy = ctx.members[i].stats.busy.load(Relaxed);
            let better = match best {
                None => true,
                Some((_, b, l)) => busy < b || (busy == b && lbstatus > l),
            };
            if better {
                best = Some((k, busy, lbstatus));
            }
        }
        let (k, _, _) = best?;
        self.lbstatus[k].fetch_sub(total, Relaxed);
        Some(self.candidates[k] as usize)
    }

    fn load(&self, _members: &[BalancedMember], load: &mut [i64]) {
        for (k, &i) in self.candidates.iter().enumerate() {
            if let Some(slot) = load.get_mut(i as usize) {
                *slot = self.lbstatus[k].load(Relaxed);
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
    fn fewest_in_flight_wins() {
        let m = members(&[1, 1, 1]);
        m[0].stats.busy.store(3, Relaxed);
        m[1].stats.busy.store(1, Relaxed);
        m[2].stats.busy.store(2, Relaxed);
        let c = [0, 1, 2];
        let b = ByBusyness::new(&c);
        assert_eq!(b.pick(&context(&m, &c, &[])), Some(1));
        assert_eq!(b.pick(&context(&m, &c, &[1])), Some(2));
    }

    #[test]
    fn ties_take_turns_by_load_factor_like_byrequests() {
        // Nothing in flight: bybusyness takes byrequests' order (3:1 gives a a b a).
        let m = members(&[3, 1]);
        let c = [0, 1];
        let b = ByBusyness::new(&c);
        let order: Vec<usize> = (0..8)
            .map(|_| b.pick(&context(&m, &c, &[])).expect("member"))
            .collect();
        assert_eq!(order, [0, 0, 1, 0, 0, 0, 1, 0]);
        let byrequests: Vec<usize> = crate::balancer::byrequests::schedule(&[3, 1])
            .into_iter()
            .map(|i| i as usize)
            .collect();
        assert_eq!(order[..4], byrequests[..]);
        let mut load = vec![0; 2];
        b.load(&m, &mut load);
        assert_eq!(load, [0, 0]);
    }

    proptest! {
        #[test]
        fn never_picks_a_busier_member_when_a_less_busy_one_is_free(
            spec in prop::collection::vec((1u32..=10, 0i64..20), 1..8),
            excluded in prop::collection::vec(any::<bool>(), 8),
            rounds in 1usize..30,
        ) {
            let factors: Vec<u32> = spec.iter().map(|s| s.0).collect();
            let m = members(&factors);
            for (member, &(_, busy)) in m.iter().zip(&spec) {
                member.stats.busy.store(busy, Relaxed);
            }
            let c: Vec<u32> = (0..m.len() as u32).collect();
            let exclude: Vec<usize> = (0..m.len()).filter(|&i| excluded[i]).collect();
            let b = ByBusyness::new(&c);
            for _ in 0..rounds {
                match b.pick(&context(&m, &c, &exclude)) {
                    Some(i) => {
                        prop_assert!(!exclude.contains(&i));
                        let busy = m[i].stats.busy.load(Relaxed);
                        let least = (0..m.len())
                            .filter(|j| !exclude.contains(j))
                            .map(|j| m[j].stats.busy.load(Relaxed))
                            .min();
                        prop_assert_eq!(Some(busy), least);
                        // The request is now in flight there.
                        m[i].stats.busy.fetch_add(1, Relaxed);
                    }
                    None => prop_assert_eq!(exclude.len(), m.len()),
                }
            }
        }
    }
}
