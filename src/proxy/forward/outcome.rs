//! A try's outcome: whether the request goes on to another member, and what the outcome tells
//! the balancer and the telemetry (a failure put against the member or not, an answer's
//! latency and status, the proxy's own answer when the tries end).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;

use super::again::{Call, deadline_of, may_go_again, rebuild};
use super::retry::Plan;
use crate::api::LbMethod;
use crate::balancer::{MemberStats, ewma};
use crate::clock;
use crate::plane::Cluster;
use crate::plane::routes::Retry;
use crate::proxy::error::ProxyError;
use crate::proxy::headers::{Forwarding, TRACEPARENT};
use crate::proxy::upstream::Upstream;
use crate::proxy::upstream::body::{Answer, RequestBody};
use crate::proxy::upstream::exchange::{Connected, Failure, Replay, Stage};
use crate::proxy::worker::Worker;
use crate::telemetry::Observed;

/// One try, as its outcome is weighed: the member, the client that carried it, when it began,
/// whether attempts remain, and the route's retries.
pub struct Try<'a> {
    pub worker: &'a Worker,
    pub cluster: &'a Cluster,
    pub index: usize,
    pub kind: Upstream,
    pub started: Instant,
    pub more: bool,
    pub retry: Option<&'a Retry>,
}

impl<'a> Try<'a> {
    /// The try after `tried` tries (this one counted) of the request's `plan`.
    pub fn new(
        worker: &'a Worker,
        cluster: &'a Cluster,
        index: usize,
        kind: Upstream,
        started: Instant,
        plan: &Plan<'a>,
        tried: usize,
    ) -> Self {
        Try {
            worker,
            cluster,
            index,
            kind,
            started,
            more: tried < plan.tries,
            retry: plan.retry,
        }
    }
}

/// A try failed: the error to keep while the request goes to the next member (`Ok`), or the
/// one to answer with (`Err`) when it may not go again or cannot be sent again.
pub fn go_again(
    at: &Try<'_>,
    failure: Failure,
    req: &mut Request<RequestBody>,
    replay: Option<&Replay>,
    call: Option<&Call>,
    observed: &mut Option<Box<Observed>>,
) -> Result<ProxyError, ProxyError> {
    let Try {
        worker,
        cluster,
        index,
        kind,
        ..
    } = *at;
    let stage = failure.stage;
    if let Some(span) = observed.as_deref_mut().and_then(|o| o.span.as_mut()) {
        span.tried(Err(&failure.cause));
    }
    let given_back = failure.unsent.is_some();
    let client_deadline =
        stage == Stage::TimedOut && deadline_of(call).is_some_and(|at| Instant::now() >= at);
    // A route's retries take a try that timed out again (not a gRPC call past its deadline).
    let timeouts_again = at.retry.is_some() && !client_deadline;
    let error = failed(
        cluster,
        index,
        failure,
        req,
        client_deadline,
        timeouts_again,
    )
    .map_err(|e| gave_up(worker, cluster, Some(index), e))?;
    let again = at.more
        && may_go_again(cluster, stage, kind, req, replay, call, timeouts_again)
        && (given_back
            || kind == Upstream::Lean
            || (kind == Upstream::Hyper && stage == Stage::Unsent)
            || rebuild(req, replay, call));
    let stats = &cluster.balancer.members()[index].stats;
    if !again {
        if Call::is_grpc(call)
            && let Some(code) = error.grpc_status()
        {
            stats.count_grpc_status(code);
        }
        return Err(gave_up(worker, cluster, Some(index), error));
    }
    if worker.telemetry.request_metrics {
        stats.traffic.failed_over();
    }
    Ok(error)
}

/// A member answered: the answer is counted and reported; true when its status is listed in
/// `failOnStatus` (which puts the member in error) or in the route's retry `codes`, and the
/// request, built again, goes to the next try.
pub fn fails_over(
    at: &Try<'_>,
    observed: &mut Option<Box<Observed>>,
    response: &Response<Answer>,
    req: &mut Request<RequestBody>,
    replay: Option<&Replay>,
    call: Option<&Call>,
) -> bool {
    let Try {
        worker,
        cluster,
        index,
        started,
        ..
    } = *at;
    let stats = &cluster.balancer.members()[index].stats;
    if worker.telemetry.request_metrics || observed.is_some() {
        answered(worker, observed.as_deref_mut(), stats, started, response);
    }
    observe(cluster, index, started, response.status());
    let status = response.status();
    let failed = failed_on_status(cluster, index, status);
    let again = (failed || at.retry.is_some_and(|r| r.on_status(status.as_u16())))
        && at.more
        && rebuild(req, replay, call);
    if again && worker.telemetry.request_metrics {
        stats.traffic.failed_over();
    }
    again
}

/// A failed exchange. The client's broken request body is the client's fault: 400, and
/// nothing held against the member. Otherwise it is reported to the balancer (unless it was a
/// gRPC call's own deadline that passed) and, unless the answer only came late (504), the
/// member is put in error. Gives the error and whether the
/// request may go to another member (a late answer only with `timeouts_again`); the request is
/// put back when hyper's client had taken it.
fn failed(
    cluster: &Cluster,
    index: usize,
    failure: Failure,
    req: &mut Request<RequestBody>,
    client_deadline: bool,
    timeouts_again: bool,
) -> Result<ProxyError, ProxyError> {
    let member = &cluster.config.members[index];
    let Failure {
        cause,
        stage,
        unsent,
    } = failure;
    if stage == Stage::ClientBody {
        return Err(ProxyError::ClientBody { cause });
    }
    if stage == Stage::ClientTimeout {
        return Err(ProxyError::ClientTimeout { cause });
    }
    if let Some(back) = unsent {
        *req = *back;
    }
    if let Stage::QueueFull | Stage::QueueTimeout = stage {
        return Ok(overloaded(cluster, index, stage, cause));
    }
    // A gRPC call's own deadline passing says nothing of the member.
    if !client_deadline {
        cluster.balancer.report(index, false, clock::now_ms());
    }
    if stage == Stage::TimedOut {
        let error = ProxyError::Timeout {
            cluster: cluster.key.clone(),
            member: member.url.clone(),
            after: cluster.config.response_timeout,
        };
        return if timeouts_again {
            Ok(error)
        } else {
            Err(error)
        };
    }
    cluster
        .balancer
        .mark_error(index, clock::now_ms(), cluster.retry_ms, error_note(&cause));
    let error = ProxyError::MemberFailed {
        cluster: cluster.key.clone(),
        member: member.url.clone(),
        cause,
    };
    Ok(error)
}

/// The member's own limit (its queue full, or the wait in it too long): nothing reached it, and
/// it says nothing of its health; counted.
fn overloaded(cluster: &Cluster, index: usize, stage: Stage, cause: String) -> ProxyError {
    let stats = &cluster.balancer.members()[index].stats;
    let counter = match stage {
        Stage::QueueFull => &stats.queue_full,
        _ => &stats.queue_timeouts,
    };
    counter.fetch_add(1, Relaxed);
    ProxyError::Overloaded {
        cluster: cluster.key.clone(),
        member: cluster.config.members[index].url.clone(),
        cause,
    }
}

/// A try begins on member `index`: the record names it, and with tracing, the member gets a
/// `traceparent` naming the try's span.
pub fn trying(
    observed: &mut Observed,
    cluster: &Arc<Cluster>,
    index: usize,
    forwarding: &mut Forwarding,
    method: &http::Method,
) {
    let record = &mut observed.record;
    record.attempts += 1;
    if record.cluster.is_none() {
        record.cluster = Some(cluster.clone());
        if let Some(span) = &observed.span {
            span.routed(&cluster.key);
        }
    }
    record.member = index;
    record.connect = None;
    record.upstream = None;
    if let Some(span) = &mut observed.span {
        let url = &cluster.config.members[index].url;
        let traceparent = span.try_on(url, method.as_str(), record.attempts - 1);
        forwarding.extra_mut().set(&TRACEPARENT, traceparent);
    }
}

/// A member's answer head came: counted by status with the time it took, and the time to
/// connect when the try opened a connection.
fn answered(
    worker: &Worker,
    observed: Option<&mut Observed>,
    stats: &MemberStats,
    started: Instant,
    response: &Response<Answer>,
) {
    let took = Instant::now().saturating_duration_since(started);
    let status = response.status().as_u16();
    let connected = response.extensions().get::<Connected>().map(|c| c.0);
    if worker.telemetry.request_metrics {
        stats.traffic.answered(status, took);
        if let Some(connect) = connected {
            stats.traffic.connected(connect);
        }
    }
    if let Some(observed) = observed {
        observed.record.upstream = Some(took);
        observed.record.connect = connected;
        if let Some(span) = &mut observed.span {
            span.tried(Ok(status));
        }
    }
}

/// The request ends in the proxy's own answer after a try on member `index` (a 502, a 504):
/// counted as that member's answer, since it is the one the client got for it.
pub fn gave_up(
    worker: &Worker,
    cluster: &Cluster,
    index: Option<usize>,
    error: ProxyError,
) -> ProxyError {
    if worker.telemetry.request_metrics
        && !matches!(
            error,
            ProxyError::ClientBody { .. } | ProxyError::ClientTimeout { .. }
        )
        && let Some(member) = index.and_then(|i| cluster.balancer.members().get(i))
    {
        member.stats.traffic.answered_for(error.status().as_u16());
    }
    error
}

/// What the answer's time tells the balancer: the latency sample (ewma) and outlier
/// detection. The clock is read again only for those.
fn observe(cluster: &Cluster, index: usize, started: Instant, status: StatusCode) {
    let ewma = cluster.config.lb_method == LbMethod::Ewma;
    if !ewma && !cluster.balancer.detects_outliers() {
        return;
    }
    let answered = Instant::now();
    let now = clock::ms_at(answered.into_std());
    if ewma {
        let took = answered.saturating_duration_since(started).as_nanos();
        let stats = &cluster.balancer.members()[index].stats;
        ewma::observe(stats, u64::try_from(took).unwrap_or(u64::MAX), now);
    }
    cluster
        .balancer
        .report(index, !status.is_server_error(), now);
}

/// Apache's `failonstatus`: an answer with a listed status puts the member in error.
fn failed_on_status(cluster: &Cluster, index: usize, status: StatusCode) -> bool {
    if !cluster.config.fail_on_status.contains(&status.as_u16()) {
        return false;
    }
    let cause = format!("answered {status}, listed in failOnStatus");
    cluster
        .balancer
        .mark_error(index, clock::now_ms(), cluster.retry_ms, error_note(&cause));
    true
}

/// A member's last error as the balancer-manager shows it: the cause and when.
fn error_note(cause: &str) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("{cause} ({})", now.strftime("%Y-%m-%dT%H:%M:%SZ"))
}
