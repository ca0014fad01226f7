//! Forwarding with failover: the members the cluster picks are tried in turn until one answers
//! or the attempts run out (Apache's `maxattempts`), each outcome reported to the balancer.
//!
//! This file is the loop; [`again`] keeps what a request needs to go to another member,
//! [`outcome`] weighs each try's outcome (goes on or not) and tells the balancer and the
//! telemetry, and [`answer`] readies a member's answer for the client.

mod again;
mod answer;
mod outcome;
mod retry;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http_body::Body;
use tokio::time::Instant;

use self::again::{Call, deadline_of, keep_for_http2, replay_of};
use self::answer::deliver;
use self::outcome::{Try, fails_over, gave_up, go_again, trying};
use self::retry::{Plan, pause};
use super::client::ClientRequest;
use super::deadline::Deadline;
use super::error::ProxyError;
use super::filters::Applied;
use super::headers::Forwarding;
use super::upstream::body::RequestBody;
use super::upstream::lease::Lease;
use super::upstream::{self, Upstream};
use super::worker::Worker;
use crate::balancer::Affinity;
use crate::clock;
use crate::discovery::ClusterConfig;
use crate::plane::Cluster;
use crate::telemetry::Observed;

/// A request on its way to a cluster's members.
pub struct Routed {
    pub cluster: Arc<Cluster>,
    pub req: Box<ClientRequest>,
    pub forwarding: Forwarding,
    pub affinity: Affinity,
    /// The route's filters and timeouts, when it has any.
    pub filters: Option<Box<Applied>>,
}

/// Sends the request to the members the cluster picks, in turn, until one answers or the
/// attempts run out. `routed` is borrowed, not moved: every value an async function takes is
/// stored twice in its future (as an argument, then as a local), and this future is copied
/// whole when the request starts (see docs/benchmarks.md, "Copies"). For the same reason its
/// fields are borrowed one binding each (every binding kept across an await takes room in the
/// future, shadowed ones too), and what is rare is boxed (the last failure). The members tried
/// and failed are listed only when a try fails: a request answered at its first try allocates
/// nothing for them. The member's answer is written into the request's box
/// ([`ClientRequest::answer`]), where it stays until it is out: returned, it was copied in
/// every frame on its way.
pub async fn forward(
    worker: &Worker,
    routed: &mut Routed,
    deadline: Option<&Deadline>,
) -> Result<(), ProxyError> {
    let (cluster, affinity) = (&routed.cluster, &routed.affinity);
    let forwarding = &mut routed.forwarding;
    // Field by field from the box's place: `deliver` writes its answer with no binding here.
    let ClientRequest {
        ref mut req,
        ref mut lean,
        ref mut observed,
        ref mut grpc,
        ..
    } = *routed.req;
    let config = &cluster.config;
    let plan = Plan::of(config, routed.filters.as_deref());
    let upgrade = routed.req.upgrade.is_some();
    let base = Upstream::for_request(worker.http1, req.body().is_end_stream(), upgrade);
    let mut replay = replay_of(cluster, base, upgrade, req, plan.retry.is_some());
    let mut call = Call::of(config, req, *grpc);
    let mut tried: Vec<usize> = Vec::new();
    let mut last_failure: Option<Box<ProxyError>> = None;
    loop {
        pause(plan.retry, tried.len()).await;
        let Some((started, index)) = pick(cluster, &tried, affinity, plan.retry.is_some()) else {
            let error = none_left(worker, cluster, &tried, last_failure, call.as_deref());
            return Err(error);
        };
        let kind = Upstream::for_member(base, &config.members[index], upgrade);
        keep_for_http2(kind, req, lean, &mut replay, &mut call, plan.tries, upgrade);
        let lease = elected(cluster, index, req, observed.as_deref_mut(), forwarding);
        let key = upstream::member(&worker.pool, cluster, &config.members[index]);
        let until = try_until(routed.filters.as_deref(), config, call.as_deref(), started);
        let limits = config.policy.limits_of(index);
        let outcome = upstream::send(
            kind, &key, config, limits, req, lean, forwarding, started, until, deadline,
        )
        .await;
        let made = tried.len() + 1; // those that failed, and this one
        let at = Try::new(worker, cluster, index, kind, started, &plan, made);
        let (replay, call_ref) = (replay.as_deref(), call.as_deref());
        match outcome {
            Err(failure) => {
                let error = go_again(&at, failure, req, replay, call_ref, observed)?;
                last_failure = Some(Box::new(error));
                tried.push(index);
            }
            Ok((held, response)) => {
                if fails_over(&at, observed, &response, req, replay, call_ref) {
                    tried.push(index);
                    continue;
                }
                let conn = (key, held);
                deliver(&at, affinity, &mut routed.req, response, lease, conn, call);
                return Ok(());
            }
        }
    }
}

/// The next member to try, and when the try starts: one clock reading serves the pick, the
/// pooled connection's age, the response deadline and the latency sample. A member not tried
/// yet comes first; with a route's retries (`again`), one tried already when none is left.
#[inline]
fn pick(
    cluster: &Cluster,
    tried: &[usize],
    affinity: &Affinity,
    again: bool,
) -> Option<(Instant, usize)> {
    let started = Instant::now();
    let now = clock::ms_at(started.into_std());
    let index = match cluster.balancer.pick_for(now, tried, affinity) {
        Some(index) => index,
        None if again && !tried.is_empty() => pick_again(cluster, affinity, now)?,
        None => return None,
    };
    Some((started, index))
}

/// With a route's retries, every member was tried: any may be tried again.
#[cold]
fn pick_again(cluster: &Cluster, affinity: &Affinity, now: u64) -> Option<usize> {
    cluster.balancer.pick_for(now, &[], affinity)
}

/// Member `index` was picked: counted as elected, its lease taken (the request's body counted
/// against it as it goes), and the try named in the request's record and trace.
fn elected(
    cluster: &Arc<Cluster>,
    index: usize,
    req: &mut http::Request<RequestBody>,
    observed: Option<&mut Observed>,
    forwarding: &mut Forwarding,
) -> Lease {
    let stats = &cluster.balancer.members()[index].stats;
    stats.elected.fetch_add(1, Relaxed);
    let lease = Lease::new(stats.clone());
    if !req.body().is_end_stream() {
        req.body_mut().count_for(stats.clone());
    }
    if let Some(observed) = observed {
        trying(observed, cluster, index, forwarding, req.method());
    }
    lease
}

/// When a try gives up waiting: the route's limit for each try (HTTPRoute
/// `timeouts.backendRequest`), or the cluster's; a gRPC call's deadline when it comes sooner.
fn try_until(
    filters: Option<&Applied>,
    config: &ClusterConfig,
    call: Option<&Call>,
    started: Instant,
) -> Instant {
    let timeout = filters
        .and_then(|f| f.backend_timeout())
        .unwrap_or(config.response_timeout);
    deadline_of(call).map_or(started + timeout, |at| at.min(started + timeout))
}

/// The picks ran out: the last failure (or, when no member could be picked, that there was
/// none) is the answer, counted as the last member's.
fn none_left(
    worker: &Worker,
    cluster: &Cluster,
    tried: &[usize],
    last_failure: Option<Box<ProxyError>>,
    call: Option<&Call>,
) -> ProxyError {
    let error = last_failure.map_or_else(
        || ProxyError::NoMember {
            cluster: cluster.key.clone(),
        },
        |failure| *failure,
    );
    if Call::is_grpc(call)
        && let Some(&last) = tried.last()
    {
        let stats = &cluster.balancer.members()[last].stats;
        if let Some(code) = error.grpc_status() {
            stats.count_grpc_status(code);
        }
    }
    gave_up(worker, cluster, tried.last().copied(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::exchange::{Exchanged, Failure};

    /// What is moved from hand to hand on every request stays small: the request and the
    /// member connection go as pointers, and a failed exchange's result does not carry the
    /// request inline (each move of a value over about 128 bytes is a call to memcpy).
    #[test]
    fn what_moves_on_every_request_stays_small() {
        use std::mem::size_of;
        assert_eq!(
            size_of::<crate::proxy::http1::conn::Conn>(),
            size_of::<usize>()
        );
        assert!(
            size_of::<Routed>() <= 160,
            "Routed: {}",
            size_of::<Routed>()
        );
        assert!(
            size_of::<Failure>() <= 64,
            "Failure: {}",
            size_of::<Failure>()
        );
        // The answer head goes boxed (`Exchanged`): by value (about 200 bytes) it was copied in
        // every frame between the member's client and `forward`.
        let exchanged = size_of::<Result<Exchanged, Failure>>();
        eprintln!("an exchange's result takes {exchanged} bytes");
        assert!(exchanged <= 64, "an exchange's result: {exchanged}");
    }
}
