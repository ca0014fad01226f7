//! One cluster's live balancer: its members' views, the current schedule, and the counters.
//!
//! The request path loads the schedule through `ArcSwap` and advances one shared atomic: no
//! lock. The schedule is rebuilt (under a mutex that only rebuilders take) when a member's health
//! changes or when a failed member's retry time has come.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use arc_swap::ArcSwap;

use super::{MemberView, byrequests, candidates};
use crate::api::MemberState;

/// Live figures of one member. Shared by every snapshot that holds the same member, so a
/// configuration change does not reset them.
#[derive(Debug, Default)]
pub struct MemberStats {
    /// Requests sent to the member (Apache's "Elected").
    pub elected: AtomicU64,
    /// Requests in flight now.
    pub busy: AtomicI64,
    /// Request bytes sent to the member ("To").
    pub sent_bytes: AtomicU64,
    /// Response bytes received from the member ("From").
    pub received_bytes: AtomicU64,
    /// Failures: connection errors, timeouts, `failOnStatus` answers.
    pub errors: AtomicU64,
    /// The member is in error until this time (milliseconds on the process clock); 0 if never.
    pub error_until_ms: AtomicU64,
    /// The last failure, with its wall-clock time, for the balancer-manager.
    pub last_error: Mutex<Option<String>>,
}

impl MemberStats {
    pub fn healthy(&self, now_ms: u64) -> bool {
        self.error_until_ms.load(Relaxed) <= now_ms
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// One member as the balancer sees it: configured shape plus shared live figures.
#[derive(Debug, Clone)]
pub struct BalancedMember {
    pub lbset: u32,
    pub load_factor: u32,
    pub state: MemberState,
    pub stats: Arc<MemberStats>,
}

#[derive(Debug)]
struct Schedule {
    /// Members taking part, in visiting order.
    candidates: Vec<u32>,
    order: Vec<u32>,
    /// Sequence number at which this schedule starts.
    base: u64,
    /// Health generation the schedule was built from.
    generation: u64,
    /// When a member now in error becomes eligible again: the schedule is stale from then on.
    stale_at_ms: u64,
}

/// The balancer of one cluster, for one snapshot of its members.
#[derive(Debug)]
pub struct Balancer {
    members: Vec<BalancedMember>,
    schedule: ArcSwap<Schedule>,
    seq: AtomicU64,
    generation: AtomicU64,
    rebuild: Mutex<()>,
}

impl Balancer {
    pub fn new(members: Vec<BalancedMember>, now_ms: u64) -> Self {
        let schedule = build_schedule(&members, 0, 0, now_ms);
        Balancer {
            members,
            schedule: ArcSwap::from_pointee(schedule),
            seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            rebuild: Mutex::new(()),
        }
    }

    pub fn members(&self) -> &[BalancedMember] {
        &self.members
    }

    /// Picks a member for a new request, skipping `exclude` (members this request already
    /// failed on). Returns `None` when no member is usable.
    pub fn pick(&self, now_ms: u64, exclude: &[usize]) -> Option<usize> {
        // Each round either returns or rebuilds the schedule; a few rounds cover races with
        // other rebuilders and the members excluded by this request.
        for _ in 0..(4 + exclude.len() * 2) {
            let schedule = self.schedule.load();
            let fresh = schedule.generation == self.generation.load(Relaxed)
                && now_ms < schedule.stale_at_ms;
            if !fresh {
                self.rebuild(now_ms);
                continue;
            }
            if schedule.order.is_empty() {
                return None;
            }
            let n = self.seq.fetch_add(1, Relaxed).wrapping_sub(schedule.base);
            let len = schedule.order.len() as u64;
            let index = schedule.order[(n % len) as usize] as usize;
            let member = &self.members[index];
            if !member.stats.healthy(now_ms) {
                // Marked in error by a peer since the schedule was built.
                self.rebuild(now_ms);
                continue;
            }
            if exclude.contains(&index) {
                if schedule
                    .order
                    .iter()
                    .all(|i| exclude.contains(&(*i as usize)))
                {
                    return None;
                }
                continue;
            }
            return Some(index);
        }
        None
    }

    /// Each member's `lbstatus` now, as Apache's balancer-manager shows it in its Load column:
    /// the current schedule replayed up to the next pick. Zero for members not taking part.
    pub fn lbstatus(&self) -> Vec<i64> {
        let schedule = self.schedule.load();
        let mut status = vec![0i64; self.members.len()];
        if schedule.order.is_empty() {
            return status;
        }
        let steps =
            self.seq.load(Relaxed).wrapping_sub(schedule.base) % schedule.order.len() as u64;
        let factors: Vec<i64> = schedule
            .candidates
            .iter()
            .map(|&i| i64::from(self.members[i as usize].load_factor.max(1)))
            .collect();
        let divisor = factors.iter().fold(0i64, |a, &b| gcd(a, b)).max(1);
        let total: i64 = factors.iter().map(|f| f / divisor).sum();
        let mut lb = vec![0i64; factors.len()];
        for _ in 0..steps {
            let mut best = 0;
            for (k, f) in factors.iter().enumerate() {
                lb[k] += f / divisor;
                if lb[k] > lb[best] {
                    best = k;
                }
            }
            lb[best] -= total;
        }
        for (k, &i) in schedule.candidates.iter().enumerate() {
            status[i as usize] = lb[k];
        }
        status
    }

    /// Puts a member in error until `retry_ms` from now, as Apache does on a failed connection.
    pub fn mark_error(&self, index: usize, now_ms: u64, retry_ms: u64, cause: String) {
        let Some(member) = self.members.get(index) else {
            return;
        };
        member.stats.errors.fetch_add(1, Relaxed);
        member
            .stats
            .error_until_ms
            .store(now_ms.saturating_add(retry_ms.max(1)), Relaxed);
        if let Ok(mut last) = member.stats.last_error.lock() {
            *last = Some(cause);
        }
        self.generation.fetch_add(1, Relaxed);
    }

    /// Whether any member takes requests now.
    pub fn has_usable(&self, now_ms: u64) -> bool {
        !candidates(&self.views(now_ms)).is_empty()
    }

    /// Members that would take part in the next pick.
    pub fn usable_count(&self, now_ms: u64) -> usize {
        candidates(&self.views(now_ms)).len()
    }

    fn views(&self, now_ms: u64) -> Vec<MemberView> {
        self.members
            .iter()
            .map(|m| MemberView {
                lbset: m.lbset,
                load_factor: m.load_factor,
                state: m.state,
                healthy: m.stats.healthy(now_ms),
            })
            .collect()
    }

    fn rebuild(&self, now_ms: u64) {
        // A poisoned lock only means another rebuilder panicked; rebuilding again is safe.
        let _guard = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.schedule.load();
        let generation = self.generation.load(Relaxed);
        let all_healthy_as_built = current
            .order
            .iter()
            .all(|&i| self.members[i as usize].stats.healthy(now_ms));
        if current.generation == generation && now_ms < current.stale_at_ms && all_healthy_as_built
        {
            return; // another thread rebuilt it meanwhile
        }
        let base = self.seq.load(Relaxed);
        let schedule = build_schedule(&self.members, base, generation, now_ms);
        self.schedule.store(Arc::new(schedule));
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn build_schedule(members: &[BalancedMember], base: u64, generation: u64, now_ms: u64) -> Schedule {
    let views: Vec<MemberView> = members
        .iter()
        .map(|m| MemberView {
            lbset: m.lbset,
            load_factor: m.load_factor,
            state: m.state,
            healthy: m.stats.healthy(now_ms),
        })
        .collect();
    let chosen = candidates(&views);
    let factors: Vec<u32> = chosen
        .iter()
        .map(|&i| views[i].load_factor.max(1))
        .collect();
    let order = byrequests::schedule(&factors)
        .into_iter()
        .map(|k| chosen[k as usize] as u32)
        .collect();
    let stale_at_ms = members
        .iter()
        .map(|m| m.stats.error_until_ms.load(Relaxed))
        .filter(|&t| t > now_ms)
        .min()
        .unwrap_or(u64::MAX);
    let candidates = chosen.iter().map(|&i| i as u32).collect();
    Schedule {
        candidates,
        order,
        base,
        generation,
        stale_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(lbset: u32, load_factor: u32, state: MemberState) -> BalancedMember {
        BalancedMember {
            lbset,
            load_factor,
            state,
            stats: Arc::default(),
        }
    }

    fn picks(b: &Balancer, n: usize, now: u64) -> Vec<usize> {
        (0..n)
            .map(|_| b.pick(now, &[]).expect("a usable member"))
            .collect()
    }

    #[test]
    fn disabled_member_is_left_out_of_the_rotation() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Disabled),
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        // a c d a c d
        assert_eq!(picks(&b, 6, 0), vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn member_in_error_is_skipped_until_its_retry_time() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        assert_eq!(b.pick(0, &[]), Some(0));
        b.mark_error(1, 10, 60_000, "connect: refused".into());
        assert_eq!(picks(&b, 4, 20), vec![0, 0, 0, 0]);
        assert_eq!(b.members()[1].stats.errors.load(Relaxed), 1);
        // After the retry time the member is back in the rotation.
        let after = picks(&b, 4, 60_010);
        assert_eq!(after.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn no_usable_member_gives_none() {
        let b = Balancer::new(vec![member(0, 1, MemberState::Enabled)], 0);
        b.mark_error(0, 0, 1_000, "refused".into());
        assert_eq!(b.pick(5, &[]), None);
        assert!(!b.has_usable(5));
        assert_eq!(b.pick(1_000, &[]), Some(0));
    }

    #[test]
    fn excluded_members_are_not_picked_again() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        for _ in 0..5 {
            assert_eq!(b.pick(0, &[0]), Some(1));
        }
        assert_eq!(b.pick(0, &[0, 1]), None);
    }

    #[test]
    fn hot_standby_takes_over_when_the_set_fails() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::HotStandby),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        assert_eq!(picks(&b, 3, 0), vec![1, 1, 1]);
        b.mark_error(1, 0, 1_000, "refused".into());
        assert_eq!(picks(&b, 3, 1), vec![0, 0, 0]);
    }

    #[test]
    fn lbstatus_replays_apache_counters() {
        let b = Balancer::new(
            vec![
                member(0, 70, MemberState::Enabled),
                member(0, 30, MemberState::Enabled),
            ],
            0,
        );
        assert_eq!(b.lbstatus(), vec![0, 0]);
        b.pick(0, &[]);
        // After one pick of 7:3: a = 7 - 10 = -3, b = 3.
        assert_eq!(b.lbstatus(), vec![-3, 3]);
    }

    #[test]
    fn weights_hold_across_many_picks() {
        let b = Balancer::new(
            vec![
                member(0, 70, MemberState::Enabled),
                member(0, 30, MemberState::Enabled),
            ],
            0,
        );
        let p = picks(&b, 1000, 0);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 700);
    }

    fn state() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            Just(MemberState::Enabled),
            Just(MemberState::Disabled),
            Just(MemberState::Stopped),
            Just(MemberState::Drain),
            Just(MemberState::HotStandby),
            Just(MemberState::HotSpare),
        ]
    }

    proptest! {
        #[test]
        fn never_picks_an_unusable_member(
            spec in prop::collection::vec((0u32..3, 1u32..=100, state(), any::<bool>()), 1..10),
        ) {
            let members: Vec<BalancedMember> = spec.iter().map(|&(s, f, st, _)| member(s, f, st)).collect();
            let b = Balancer::new(members, 0);
            for (i, &(_, _, _, failed)) in spec.iter().enumerate() {
                if failed { b.mark_error(i, 0, 1_000, "down".into()); }
            }
            let views = b.views(1);
            let allowed = candidates(&views);
            for _ in 0..50 {
                match b.pick(1, &[]) {
                    Some(i) => {
                        let v = views[i];
                        prop_assert!(v.healthy);
                        prop_assert!(!matches!(v.state, MemberState::Disabled | MemberState::Stopped | MemberState::Drain));
                        prop_assert!(allowed.contains(&i));
                        // lbset order: no usable ordinary member or standby in a lower set (a
                        // spare only ever replaces a member of its own set).
                        prop_assert!(!views.iter().any(|o| o.lbset < v.lbset && o.usable() && o.state != MemberState::HotSpare));
                        // Hot standby only when no ordinary member of its set is usable.
                        if v.state == MemberState::HotStandby {
                            prop_assert!(!views.iter().any(|o| o.lbset == v.lbset && o.usable() && o.state == MemberState::Enabled));
                        }
                    }
                    None => prop_assert!(allowed.is_empty()),
                }
            }
        }
    }
}
