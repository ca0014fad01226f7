//! From a `BalancerCluster` (and, in a cluster, its endpoints) to the member list the data plane
//! serves. Pure: no I/O, no clock. Controller and standalone mode both feed their resources
//! through here, so a member looks the same whichever front door it came from.

pub mod endpoints;

use std::time::Duration;

use crate::api::{
    BalancerCluster, BalancerClusterSpec, LbMethod, MemberOverride, MemberState, RouteSpec,
};

/// A member as the data plane serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberConfig {
    /// `http://HOST:PORT`, the member's identity.
    pub url: String,
    /// `HOST:PORT` to connect to.
    pub authority: String,
    /// The pod behind the member, when it came from an EndpointSlice.
    pub pod: Option<String>,
    pub load_factor: u32,
    pub lbset: u32,
    pub route: Option<String>,
    pub state: MemberState,
}

/// A cluster as the data plane serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub namespace: String,
    pub name: String,
    pub routes: Vec<RouteSpec>,
    pub lb_method: LbMethod,
    pub max_attempts: u32,
    pub no_failover: bool,
    pub fail_on_status: Vec<u16>,
    pub retry_after_error: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub members: Vec<MemberConfig>,
}

impl ClusterConfig {
    /// `namespace/name`, the cluster's identity in logs, metrics and the balancer-manager.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A member URL that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct MemberError {
    pub field: String,
    pub message: String,
}

/// Builds the served cluster from a resource's spec, its static members plus `discovered` ones,
/// with `spec.memberOverrides` applied on top.
pub fn cluster_config(
    bc: &BalancerCluster,
    discovered: Vec<MemberConfig>,
) -> Result<ClusterConfig, MemberError> {
    let spec = &bc.spec;
    let mut members = static_members(spec)?;
    members.extend(discovered);
    apply_overrides(&mut members, &spec.member_overrides);
    Ok(ClusterConfig {
        namespace: bc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: bc.metadata.name.clone().unwrap_or_default(),
        routes: spec.routes.clone(),
        lb_method: spec.lb_method,
        max_attempts: spec.failover.max_attempts,
        no_failover: spec.failover.no_failover,
        fail_on_status: spec.failover.fail_on_status.clone(),
        retry_after_error: spec.failover.retry_after_error.into(),
        connect_timeout: spec.timeouts.connect.into(),
        response_timeout: spec.timeouts.response.into(),
        idle_timeout: spec.timeouts.idle.into(),
        members,
    })
}

fn static_members(spec: &BalancerClusterSpec) -> Result<Vec<MemberConfig>, MemberError> {
    spec.members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let authority = authority_of(&m.url).ok_or_else(|| MemberError {
                field: format!("spec.members[{i}].url"),
                message: format!("{:?} is not of the form http://HOST:PORT", m.url),
            })?;
            Ok(MemberConfig {
                url: format!("http://{authority}"),
                authority,
                pod: None,
                load_factor: m.load_factor,
                lbset: m.lbset,
                route: m.route.clone(),
                state: m.state,
            })
        })
        .collect()
}

/// `HOST:PORT` of an `http://` URL, with port 80 when none is given.
pub fn authority_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let has_port = match rest.rfind(']') {
        Some(end) => rest[end..].contains(':'),
        None => rest.contains(':'),
    };
    if has_port {
        let (_, port) = rest.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        Some(rest.to_owned())
    } else {
        Some(format!("{rest}:80"))
    }
}

fn apply_overrides(members: &mut [MemberConfig], overrides: &[MemberOverride]) {
    for o in overrides {
        for m in members.iter_mut() {
            let hit = match (&o.pod, &o.address) {
                (Some(pod), _) => m.pod.as_deref() == Some(pod.as_str()),
                (None, Some(address)) => m.authority == *address || m.url == *address,
                (None, None) => false,
            };
            if hit {
                if let Some(state) = o.state {
                    m.state = state;
                }
                if let Some(f) = o.load_factor {
                    m.load_factor = f;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemberSpec;

    fn cluster(members: &[&str]) -> BalancerCluster {
        let spec: BalancerClusterSpec = serde_json::from_value(serde_json::json!({
            "members": members.iter().map(|u| serde_json::json!({"url": u})).collect::<Vec<_>>(),
        }))
        .expect("valid spec");
        let mut bc = BalancerCluster::new("mycluster", spec);
        bc.metadata.namespace = Some("shop".into());
        bc
    }

    #[test]
    fn static_members_keep_their_order_and_defaults() {
        let c = cluster_config(
            &cluster(&["http://127.0.0.1:8080", "http://localhost/"]),
            vec![],
        )
        .expect("ok");
        assert_eq!(c.key(), "shop/mycluster");
        let urls: Vec<_> = c
            .members
            .iter()
            .map(|m| (m.url.as_str(), m.authority.as_str(), m.load_factor))
            .collect();
        assert_eq!(
            urls,
            vec![
                ("http://127.0.0.1:8080", "127.0.0.1:8080", 1),
                ("http://localhost:80", "localhost:80", 1)
            ]
        );
        assert_eq!(c.retry_after_error, Duration::from_secs(60));
        assert_eq!(c.max_attempts, 1);
    }

    #[test]
    fn overrides_by_address_change_state_and_factor() {
        let mut bc = cluster(&["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
        bc.spec.member_overrides = vec![MemberOverride {
            pod: None,
            address: Some("127.0.0.1:8081".into()),
            state: Some(MemberState::Drain),
            load_factor: Some(5),
        }];
        let c = cluster_config(&bc, vec![]).expect("ok");
        assert_eq!(c.members[0].state, MemberState::Enabled);
        assert_eq!(
            (c.members[1].state, c.members[1].load_factor),
            (MemberState::Drain, 5)
        );
    }

    #[test]
    fn authority_parsing() {
        assert_eq!(
            authority_of("http://[::1]:9000/").as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(authority_of("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(authority_of("http://a:99999"), None);
        assert_eq!(authority_of("https://a:1"), None);
        assert_eq!(authority_of("http://a/path"), None);
    }

    #[test]
    fn bad_url_names_the_member() {
        let mut bc = cluster(&["http://127.0.0.1:8080"]);
        bc.spec.members.push(MemberSpec {
            url: "ftp://x".into(),
            load_factor: 1,
            lbset: 0,
            route: None,
            state: MemberState::Enabled,
        });
        let e = cluster_config(&bc, vec![]).expect_err("refused");
        assert_eq!(e.field, "spec.members[1].url");
    }
}
