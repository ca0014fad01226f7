//! The balancer-manager view of a cluster, computed from a snapshot and the live counters. Pure:
//! the admin page, the metrics and the controller's `.status` all read it from here.

use std::sync::atomic::Ordering::Relaxed;

use crate::api::{MemberState, MemberStatus};
use crate::balancer::Health;
use crate::plane::Cluster;

/// Apache's status word for a member: its administrative state, or why it is down:
/// `HealthCheckFailed` while it fails its active health checks, `Error` while it is in error
/// or ejected by passive health checking.
pub fn state_word(state: MemberState, health: Health) -> &'static str {
    match (state, health) {
        (MemberState::Disabled, _) => "Disabled",
        (MemberState::Stopped, _) => "Stopped",
        (MemberState::Drain, _) => "Drain",
        (_, Health::HealthCheckFailed) => "HealthCheckFailed",
        (_, Health::Error | Health::Ejected) => "Error",
        (MemberState::Enabled, Health::Ok) => "Ok",
        (MemberState::HotStandby, Health::Ok) => "HotStandby",
        (MemberState::HotSpare, Health::Ok) => "HotSpare",
    }
}

/// One row per member, in the cluster's member order.
pub fn member_rows(cluster: &Cluster, now_ms: u64) -> Vec<MemberStatus> {
    cluster
        .config
        .members
        .iter()
        .zip(cluster.balancer.members())
        .map(|(config, live)| {
            let stats = &live.stats;
            MemberStatus {
                url: config.url.clone(),
                pod: config.pod.clone(),
                route: config.route.clone(),
                load_factor: config.load_factor,
                lbset: config.lbset,
                state: state_word(config.state, stats.health(now_ms)).to_owned(),
                elected: stats.elected.load(Relaxed),
                busy: u64::try_from(stats.busy.load(Relaxed)).unwrap_or(0),
                sent_bytes: stats.sent_bytes.load(Relaxed),
                received_bytes: stats.received_bytes.load(Relaxed),
                last_error: stats.last_error(),
            }
        })
        .collect()
}

/// Members that take new requests now, and all members.
pub fn ready_counts(cluster: &Cluster, now_ms: u64) -> (usize, usize) {
    let usable = cluster
        .config
        .members
        .iter()
        .zip(cluster.balancer.members())
        .filter(|(c, live)| {
            matches!(
                c.state,
                MemberState::Enabled | MemberState::HotStandby | MemberState::HotSpare
            ) && live.stats.healthy(now_ms)
        })
        .count();
    (usable, cluster.config.members.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_say_why_a_member_is_down() {
        assert_eq!(state_word(MemberState::Enabled, Health::Ok), "Ok");
        assert_eq!(
            state_word(MemberState::Enabled, Health::HealthCheckFailed),
            "HealthCheckFailed"
        );
        assert_eq!(
            state_word(MemberState::HotSpare, Health::HealthCheckFailed),
            "HealthCheckFailed"
        );
        assert_eq!(state_word(MemberState::Enabled, Health::Error), "Error");
        assert_eq!(state_word(MemberState::Enabled, Health::Ejected), "Error");
        assert_eq!(
            state_word(MemberState::Drain, Health::HealthCheckFailed),
            "Drain"
        );
        assert_eq!(state_word(MemberState::Stopped, Health::Error), "Stopped");
    }
}
