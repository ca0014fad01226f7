//! Apache's `lbmethod=byrequests`: weighted request counting.
//!
//! Each pick adds every candidate's load factor to its `lbstatus`, takes the candidate with the
//! highest (the first one on a tie), and subtracts the sum of the factors from the winner. For a
//! fixed candidate list this repeats with a period of `sum(factors) / gcd(factors)`, and every
//! `lbstatus` is back to zero at the end of a period, so one period, computed once, is the
//! whole schedule. Scaling all factors by a constant does not change the schedule, which is why
//! Apache's normalisation of factors is left out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{BalancedMember, Method, PickContext};

/// byrequests over one candidate set: one period of the schedule, computed once, walked by one
/// shared atomic counter so that the order holds across workers and connections. A new
/// candidate set gets a new schedule that starts from zero, as after an Apache restart.
#[derive(Debug)]
pub struct ByRequests {
    /// The candidates, in visiting order, and their load factors.
    candidates: Vec<u32>,
    factors: Vec<u32>,
    /// One period, as member indices.
    order: Vec<u32>,
    /// Picks made on this schedule.
    next: AtomicU64,
}

impl ByRequests {
    /// The schedule of `candidates` with `factors` (by member index).
    pub fn new(factors: &[u32], candidates: &[u32]) -> Self {
        let factors: Vec<u32> = candidates
            .iter()
            .map(|&i| factors.get(i as usize).copied().unwrap_or(1).max(1))
            .collect();
        let order = schedule(&factors)
            .into_iter()
            .map(|k| candidates[k as usize])
            .collect();
        ByRequests {
            candidates: candidates.to_vec(),
            factors,
            order,
            next: AtomicU64::new(0),
        }
    }
}

impl Method for ByRequests {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.order.len() as u64;
        if len == 0 {
            return None;
        }
        // A member this request failed on loses its turn; the rotation goes on past it.
        for _ in 0..len {
            let n = self.next.fetch_add(1, Relaxed);
            let index = self.order[(n % len) as usize] as usize;
            if !ctx.excluded(index) {
                return Some(index);
            }
        }
        // Only reached when other pickers kept taking the free turns: any free member will do.
        self.order
            .iter()
            .map(|&i| i as usize)
            .find(|&i| !ctx.excluded(i))
    }

    /// The schedule replayed up to the next pick: each candidate's `lbstatus` as Apache would
    /// show it.
    fn load(&self, _members: &[BalancedMember], load: &mut [i64]) {
        if self.order.is_empty() {
            return;
        }
        let steps = (self.next.load(Relaxed) % self.order.len() as u64) as usize;
        let divisor = i64::from(self.factors.iter().copied().fold(0, gcd).max(1));
        let total: i64 = self.factors.iter().map(|&f| i64::from(f) / divisor).sum();
        // After `steps` picks, lbstatus is steps * factor - total * (times picked so far).
        let mut picked: HashMap<u32, i64> = HashMap::new();
        for &i in &self.order[..steps] {
            *picked.entry(i).or_default() += 1;
        }
        let lb: Vec<i64> = self
            .candidates
            .iter()
            .zip(&self.factors)
            .map(|(i, &f)| {
                steps as i64 * (i64::from(f) / divisor)
                    - total * picked.get(i).copied().unwrap_or(0)
            })
            .collect();
        for (k, &i) in self.candidates.iter().enumerate() {
            if let Some(slot) = load.get_mut(i as usize) {
                *slot = lb[k];
            }
        }
    }
}

/// One period of the byrequests schedule for the given load factors, as indices into `factors`.
///
/// Apache's loop compares every member on every pick, which is quadratic for a large Service
/// (5,000 pods of equal weight: 25 million steps). Members with equal factors only ever differ in
/// how often they have been picked, so among them the next winner is always the one picked least
/// often, lowest index first: they take turns in index order. One queue per distinct factor
/// therefore gives the same sequence, comparing only the queues' heads on each pick.
pub fn schedule(factors: &[u32]) -> Vec<u32> {
    let divisor = factors.iter().copied().fold(0, gcd).max(1);
    let mut by_factor: BTreeMap<u32, VecDeque<u32>> = BTreeMap::new();
    for (i, &f) in factors.iter().enumerate() {
        // Indices fit: a cluster has far fewer than u32::MAX members.
        by_factor
            .entry(f / divisor)
            .or_default()
            .push_back(i as u32);
    }
    let total: i64 = factors.iter().map(|&f| i64::from(f / divisor)).sum();
    let mut groups: Vec<(i64, VecDeque<u32>)> = by_factor
        .into_iter()
        .map(|(f, queue)| (i64::from(f), queue))
        .collect();
    let mut picks = vec![0i64; factors.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for t in 1..=total {
        // After t rounds of adding, member i's lbstatus is t * factor - total * picks[i].
        let mut best: Option<(i64, u32, usize)> = None;
        for (g, (factor, queue)) in groups.iter().enumerate() {
            let Some(&head) = queue.front() else { continue };
            let status = t * factor - total * picks[head as usize];
            if best.is_none_or(|(s, i, _)| status > s || (status == s && head < i)) {
                best = Some((status, head, g));
            }
        }
        let Some((_, winner, g)) = best else { break };
        picks[winner as usize] += 1;
        let queue = &mut groups[g].1;
        queue.rotate_left(1);
        order.push(winner);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seventy_thirty_gives_seven_to_three_in_every_ten() {
        let s = schedule(&[70, 30]);
        assert_eq!(s.len(), 10);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 7);
        // On the tie at the fifth pick the first member wins, as in Apache.
        assert_eq!(s, vec![0, 1, 0, 0, 0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn equal_factors_take_turns_in_order() {
        assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(schedule(&[5, 5]), vec![0, 1]);
    }

    #[test]
    fn apache_textbook_schedule() {
        // Factors a=5, b=1, c=1: Apache's documented smooth sequence.
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn empty_schedule_for_no_members() {
        assert!(schedule(&[]).is_empty());
    }

    /// Apache's loop as written, every member compared on every pick: the first `steps` picks,
    /// and each member's lbstatus after them.
    fn apache(factors: &[u32], steps: usize) -> (Vec<u32>, Vec<i64>) {
        let divisor = factors.iter().copied().fold(0, gcd).max(1);
        let factors: Vec<i64> = factors.iter().map(|&f| i64::from(f / divisor)).collect();
        let total: i64 = factors.iter().sum();
        let mut lbstatus = vec![0i64; factors.len()];
        let mut order = Vec::new();
        for _ in 0..steps {
            let mut best = 0usize;
            for (i, f) in factors.iter().enumerate() {
                lbstatus[i] += f;
                if lbstatus[i] > lbstatus[best] {
                    best = i;
                }
            }
            lbstatus[best] -= total;
            order.push(best as u32);
        }
        (order, lbstatus)
    }

    /// One period of Apache's schedule.
    fn apache_schedule(factors: &[u32]) -> Vec<u32> {
        let divisor = factors.iter().copied().fold(0, gcd).max(1);
        let period = factors.iter().map(|&f| (f / divisor) as usize).sum();
        let (order, lbstatus) = apache(factors, period);
        assert!(
            lbstatus.iter().all(|&s| s == 0),
            "a period ends where it started"
        );
        order
    }

    #[test]
    fn five_thousand_equal_members_take_turns_in_order() {
        let s = schedule(&vec![3; 5_000]);
        assert_eq!(s, (0..5_000).collect::<Vec<u32>>());
    }

    proptest! {
        #[test]
        fn same_sequence_as_apaches_loop(factors in prop::collection::vec(1u32..=12, 1..40)) {
            prop_assert_eq!(schedule(&factors), apache_schedule(&factors));
        }

        #[test]
        fn same_sequence_as_apaches_loop_for_wide_factors(factors in prop::collection::vec(1u32..=100, 1..8)) {
            prop_assert_eq!(schedule(&factors), apache_schedule(&factors));
        }

        #[test]
        fn load_is_apaches_lbstatus(factors in prop::collection::vec(1u32..=9, 1..10), steps in 0usize..200) {
            let candidates: Vec<u32> = (0..factors.len() as u32).collect();
            let b = ByRequests::new(&factors, &candidates);
            let period = b.order.len();
            b.next.store(steps as u64, Relaxed);
            let mut load = vec![0i64; factors.len()];
            b.load(&[], &mut load);
            prop_assert_eq!(load, apache(&factors, steps % period).1);
        }

        #[test]
        fn every_member_gets_its_share_in_any_window(factors in prop::collection::vec(1u32..=100, 1..12)) {
            let s = schedule(&factors);
            let divisor = factors.iter().copied().fold(0, gcd);
            let period = s.len();
            prop_assert_eq!(period as u32, factors.iter().map(|f| f / divisor).sum::<u32>());
            // Any window of one period, wrapping around, holds each member exactly factor/gcd times.
            for start in 0..period {
                let mut counts = vec![0u32; factors.len()];
                for k in 0..period {
                    counts[s[(start + k) % period] as usize] += 1;
                }
                for (i, f) in factors.iter().enumerate() {
                    prop_assert_eq!(counts[i], f / divisor);
                }
            }
        }
    }
}
