//! Choosing a member for a request.
//!
//! This module owns the selection rules and nothing else: no sockets, no clock (the caller hands
//! in `now`), no configuration parsing. It follows Apache's `ap_proxy_balancer_get_best_worker`:
//! lbsets are tried in order, hot spares replace unusable members of their set, hot standbys are
//! used only when nothing else in the set is usable, and the method (one file each) picks among
//! the members that take part.
//!
//! Around the method sit the rules every method shares: sticky sessions (`sticky`), passive
//! outlier ejection (`outlier`), slow start (`slow_start`) and forced recovery (in `cluster`).

pub mod budget;
pub mod bybusyness;
pub mod byrequests;
pub mod bytraffic;
pub mod cluster;
pub mod ewma;
pub mod hash;
pub mod outlier;
pub mod slow_start;
pub mod sticky;

pub use cluster::{BalancedMember, Balancer, GRPC_STATUS_NAMES, Health, MemberStats, Settings};

use crate::api::{LbMethod, MemberState};

/// What a request brings to the choice of its member, read once before the first pick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The sticky cookie's or parameter's value, as the client sent it (`abc.web1`).
    pub sticky: Option<String>,
    /// The hash of the request's key, for `lbMethod: hash`.
    pub key: Option<u64>,
}

/// Everything a method may look at for one pick.
#[derive(Debug)]
pub struct PickContext<'a> {
    pub members: &'a [BalancedMember],
    /// The members taking part (see [`candidates`]), in visiting order.
    pub candidates: &'a [u32],
    /// Load factors in effect, by member (slow start lowers a ramping member's); empty: the
    /// members' own.
    pub factors: &'a [u32],
    /// Members this request must not go to (it already failed on them).
    pub exclude: &'a [usize],
    /// The request's hash key, if it has one.
    pub key: Option<u64>,
    /// A random number, fresh for each pick (tests hand in their own).
    pub random: u64,
    pub now_ms: u64,
}

impl PickContext<'_> {
    /// The member's load factor in effect, at least 1.
    pub fn factor(&self, index: usize) -> u32 {
        self.factors
            .get(index)
            .copied()
            .unwrap_or(self.members[index].load_factor)
            .max(1)
    }

    pub fn excluded(&self, index: usize) -> bool {
        self.exclude.contains(&index)
    }
}

/// A balancing method. One is built for each candidate set (when the snapshot is built and
/// when the usable set changes), so per-set structures are computed there, not per request.
pub trait Method: Send + Sync + std::fmt::Debug {
    /// A member among `ctx.candidates` that is not excluded, or `None` if there is none.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;

    /// Apache's `lbstatus` for the balancer-manager's Load column, written into `load` (one
    /// slot per member). Methods without such a figure leave it at zero.
    fn load(&self, _members: &[BalancedMember], _load: &mut [i64]) {}
}

/// Builds the method for one candidate set, with the load factors in effect (by member).
pub fn build_method(
    method: LbMethod,
    members: &[BalancedMember],
    factors: &[u32],
    candidates: &[u32],
    bounded_load: Option<u32>,
) -> Box<dyn Method> {
    match method {
        LbMethod::ByRequests => Box::new(byrequests::ByRequests::new(factors, candidates)),
        LbMethod::ByTraffic => Box::new(bytraffic::ByTraffic),
        LbMethod::ByBusyness => Box::new(bybusyness::ByBusyness::new(candidates)),
        LbMethod::Ewma => Box::new(ewma::Ewma),
        LbMethod::Hash => Box::new(hash::Maglev::new(
            members,
            factors,
            candidates,
            bounded_load,
        )),
    }
}

/// What selection needs to know about one member at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub lbset: u32,
    pub load_factor: u32,
    pub state: MemberState,
    /// False while the member is in error (a failed connection or a `failOnStatus` answer) and
    /// its `retryAfterError` has not passed yet.
    pub healthy: bool,
}

impl MemberView {
    /// Apache's PROXY_WORKER_IS_USABLE: takes new requests as far as its own state goes.
    pub fn usable(&self) -> bool {
        self.healthy
            && matches!(
                self.state,
                MemberState::Enabled | MemberState::HotStandby | MemberState::HotSpare
            )
    }
}

/// The members that take part in the next pick, in the order the method must visit them.
///
/// Within the first lbset that has any: the usable ordinary members, then as many usable hot
/// spares as the set has unusable members (a draining, disabled, stopped or failed member counts
/// as unusable), and only when that is empty, the usable hot standbys.
pub fn candidates(members: &[MemberView]) -> Vec<usize> {
    let Some(max_lbset) = members.iter().map(|m| m.lbset).max() else {
        return Vec::new();
    };
    let mut lbsets: Vec<u32> = members.iter().map(|m| m.lbset).collect();
    lbsets.sort_unstable();
    lbsets.dedup();
    debug_assert!(lbsets.last() == Some(&max_lbset));

    for lbset in lbsets {
        let mut chosen = Vec::new();
        let mut spares = Vec::new();
        let mut standbys = Vec::new();
        let mut unusable = 0usize;
        for (i, m) in members.iter().enumerate().filter(|(_, m)| m.lbset == lbset) {
            match m.state {
                MemberState::HotSpare if m.usable() => spares.push(i),
                MemberState::HotStandby if m.usable() => standbys.push(i),
                MemberState::HotSpare | MemberState::HotStandby => {}
                MemberState::Enabled if m.usable() => chosen.push(i),
                MemberState::Enabled
                | MemberState::Disabled
                | MemberState::Stopped
                | MemberState::Drain => unusable += 1,
            }
        }
        chosen.extend(spares.into_iter().take(unusable));
        if chosen.is_empty() {
            chosen = standbys;
        }
        if !chosen.is_empty() {
            return chosen;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(lbset: u32, state: MemberState) -> MemberView {
        MemberView {
            lbset,
            load_factor: 1,
            state,
            healthy: true,
        }
    }

    #[test]
    fn lower_lbset_wins_while_it_has_a_usable_member() {
        let members = [
            m(1, MemberState::Enabled),
            m(0, MemberState::Enabled),
            m(0, MemberState::Enabled),
        ];
        assert_eq!(candidates(&members), vec![1, 2]);
    }

    #[test]
    fn higher_lbset_is_used_when_the_lower_has_none() {
        let mut members = [m(1, MemberState::Enabled), m(0, MemberState::Enabled)];
        members[1].healthy = false;
        assert_eq!(candidates(&members), vec![0]);
    }

    #[test]
    fn hot_standby_only_when_nothing_else_in_the_set() {
        let mut members = [m(0, MemberState::HotStandby), m(0, MemberState::Enabled)];
        assert_eq!(candidates(&members), vec![1]);
        members[1].state = MemberState::Stopped;
        assert_eq!(candidates(&members), vec![0]);
    }

    #[test]
    fn hot_spare_replaces_exactly_the_unusable_members() {
        let mut members = [
            m(0, MemberState::Enabled),
            m(0, MemberState::Enabled),
            m(0, MemberState::HotSpare),
            m(0, MemberState::HotSpare),
        ];
        assert_eq!(candidates(&members), vec![0, 1]);
        members[0].state = MemberState::Drain;
        assert_eq!(candidates(&members), vec![1, 2]);
        members[1].healthy = false;
        assert_eq!(candidates(&members), vec![2, 3]);
    }

    #[test]
    fn nothing_usable_gives_no_candidate() {
        let members = [
            m(0, MemberState::Disabled),
            m(3, MemberState::Stopped),
            m(0, MemberState::Drain),
        ];
        assert!(candidates(&members).is_empty());
        assert!(candidates(&[]).is_empty());
    }
}

/// Builders the method tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{BalancedMember, PickContext};
    use crate::api::MemberState;

    /// Enabled members in lbset 0 with these load factors and fresh counters.
    pub fn members(factors: &[u32]) -> Vec<BalancedMember> {
        factors
            .iter()
            .enumerate()
            .map(|(i, &f)| BalancedMember {
                url: format!("http://10.0.0.{}:8080", i + 1),
                route: Some(format!("r{i}")),
                lbset: 0,
                load_factor: f,
                state: MemberState::Enabled,
                stats: Arc::default(),
            })
            .collect()
    }

    pub fn context<'a>(
        members: &'a [BalancedMember],
        candidates: &'a [u32],
        exclude: &'a [usize],
    ) -> PickContext<'a> {
        PickContext {
            members,
            candidates,
            factors: &[],
            exclude,
            key: None,
            random: 0,
            now_ms: 0,
        }
    }
}
