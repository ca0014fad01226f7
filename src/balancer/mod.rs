//! Choosing a member for a request.
//!
//! This module owns the selection rules and nothing else: no sockets, no clock (the caller hands
//! in `now`), no configuration parsing. It follows Apache's `ap_proxy_balancer_get_best_worker`:
//! lbsets are tried in order, hot spares replace unusable members of their set, hot standbys are
//! used only when nothing else in the set is usable, and the method (one file each) picks among
//! the members that take part.

pub mod byrequests;
pub mod cluster;

pub use cluster::{Balancer, MemberStats};

use crate::api::MemberState;

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
    fn usable(&self) -> bool {
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
