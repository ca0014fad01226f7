//! A route's retries (HTTPRoute `rules[].retry`) inside the failover loop: how many tries a
//! request gets, whether a member may be tried twice, and the wait before a try again. The loop
//! is the cluster's failover ([`super::forward`]); a route's retries only widen what it tries
//! again, so there is one loop for both. Without them, the cluster's failover alone decides
//! (Apache's `maxattempts`, `nofailover` and `failonstatus`).

use crate::discovery::ClusterConfig;
use crate::plane::routes::Retry;
use crate::proxy::filters::Applied;

/// What the request may try: `tries` in all, and the route's retries when it has them.
pub struct Plan<'a> {
    pub tries: usize,
    pub retry: Option<&'a Retry>,
}

impl<'a> Plan<'a> {
    pub fn of(config: &ClusterConfig, filters: Option<&'a Applied>) -> Plan<'a> {
        let retry = filters.and_then(Applied::retry);
        let tries = match retry {
            Some(retry) => 1 + retry.attempts as usize,
            None => tries(config),
        };
        Plan { tries, retry }
    }
}

/// How many members a request may try without a route's retries: one, or one more than the
/// cluster's `maxAttempts`.
fn tries(config: &ClusterConfig) -> usize {
    if config.no_failover {
        1
    } else {
        1 + config.max_attempts as usize
    }
}

/// Waits the route's `backoff` before a try again (`tried` tries were made); nothing before the
/// first try, or without one. The request's own time limit (`timeouts.request`) cuts it short.
pub async fn pause(retry: Option<&Retry>, tried: usize) {
    if tried > 0
        && let Some(backoff) = retry.and_then(|r| r.backoff)
    {
        // Boxed: the timer is large, and few requests wait.
        Box::pin(tokio::time::sleep(backoff)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::api::BalancerCluster;
    use crate::discovery::cluster_config;
    use crate::plane::filters::Filters;
    use crate::plane::routes::{Backend, Rule};

    fn config(failover: serde_json::Value) -> ClusterConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "routes": [],
            "members": [{"url": "http://10.0.0.1:8080"}],
            "failover": failover,
        }))
        .expect("a spec");
        cluster_config(&BalancerCluster::new("c", spec), Vec::new()).expect("a cluster")
    }

    fn applied(retry: Option<Retry>) -> Option<Box<Applied>> {
        let backend = Backend {
            cluster: Some(0),
            weight: 1,
            filters: Filters::default(),
        };
        let mut rule = Rule::new("r".into(), Filters::default(), vec![backend]);
        rule.retry = retry;
        Applied::of(&Arc::new(rule), 0)
    }

    /// A route's `attempts` replace the cluster's `maxAttempts`, `noFailover` too; without
    /// retries the cluster's failover decides.
    #[test]
    fn a_routes_attempts_replace_the_clusters() {
        let retry = Retry {
            codes: vec![500],
            attempts: 3,
            backoff: Some(Duration::from_millis(10)),
        };
        let with = applied(Some(retry.clone()));
        for failover in [
            serde_json::json!({"maxAttempts": 1}),
            serde_json::json!({"noFailover": true}),
        ] {
            let plan = Plan::of(&config(failover.clone()), with.as_deref());
            assert_eq!((plan.tries, plan.retry), (4, Some(&retry)), "{failover}");
        }
        let without = applied(None);
        assert!(
            without.is_none(),
            "a rule with nothing to do is not applied"
        );
        let cases = [
            (serde_json::json!({"maxAttempts": 2}), 3),
            (serde_json::json!({"maxAttempts": 2, "noFailover": true}), 1),
        ];
        for (failover, tries) in cases {
            let plan = Plan::of(&config(failover.clone()), None);
            assert_eq!((plan.tries, plan.retry), (tries, None), "{failover}");
        }
    }

    /// The first try never waits; a try again waits the backoff, and without one, nothing.
    #[tokio::test(start_paused = true)]
    async fn a_try_again_waits_the_backoff() {
        let retry = Retry {
            codes: Vec::new(),
            attempts: 1,
            backoff: Some(Duration::from_millis(250)),
        };
        let started = tokio::time::Instant::now();
        pause(Some(&retry), 0).await;
        pause(None, 1).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        pause(Some(&retry), 1).await;
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }
}
