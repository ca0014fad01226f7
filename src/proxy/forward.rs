//! Forwarding with failover: the members the cluster picks are tried in turn until one answers
//! or the attempts run out (Apache's `maxattempts`), each outcome reported to the balancer.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;

use super::client::ClientRequest;
use super::deadline::Deadline;
use super::error::ProxyError;
use super::filters::Applied;
use super::grpc;
use super::headers::{Forwarding, TRACEPARENT, strip_hop_by_hop};
use super::http1::client::idempotent;
use super::response::ResponseBody;
use super::tunnel::tunnel;
use super::upstream::body::{Answer, Kept, RequestBody};
use super::upstream::exchange::{Connected, Failure, Replay, Stage};
use super::upstream::lease::Lease;
use super::upstream::{self, Upstream};
use super::worker::Worker;
use crate::api::LbMethod;
use crate::balancer::{Affinity, ewma, sticky};
use crate::clock;
use crate::discovery::MemberConfig;
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
/// whole when the request starts (see docs/benchmarks.md, "Copies").
pub async fn forward(
    worker: &Worker,
    routed: &mut Routed,
    deadline: Option<&Deadline>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // One binding each, borrowed field by field: every binding an async function keeps across
    // an await takes room in its future, shadowed ones too.
    let cluster = &routed.cluster;
    let affinity = &routed.affinity;
    let forwarding = &mut routed.forwarding;
    let filters = &routed.filters;
    let ClientRequest {
        req,
        lean,
        upgrade: client_upgrade,
        observed,
    } = &mut *routed.req;
    let config = &cluster.config;
    let tries = if config.no_failover {
        1
    } else {
        1 + config.max_attempts as usize
    };
    let upgrade = client_upgrade.is_some();
    let base = Upstream::for_request(worker.http1, req.body().is_end_stream(), upgrade);
    let mut replay = replay_of(cluster, base, upgrade, req);
    // A gRPC call's deadline and safety, and the request's kept body (boxed: most requests
    // have neither).
    let mut call = grpc::is_grpc(req.headers()).then(|| {
        Box::new(Call {
            grpc: Some(GrpcCall {
                deadline: grpc::timeout(req.headers()).map(|t| Instant::now() + t),
                safe: config.policy.is_safe_grpc_method(req.uri().path()),
            }),
            kept: None,
        })
    });
    let mut tried: Vec<usize> = Vec::new();
    // Boxed, as rare: a smaller request future fits the allocator's small size classes.
    let mut last_failure: Option<Box<ProxyError>> = None;
    loop {
        // One clock reading serves the pick, the pooled connection's age, the response
        // deadline and the latency sample.
        let started = Instant::now();
        let now = clock::ms_at(started.into_std());
        let Some(index) = cluster.balancer.pick_for(now, &tried, affinity) else {
            let error = last_failure.map_or_else(
                || ProxyError::NoMember {
                    cluster: cluster.key.clone(),
                },
                |failure| *failure,
            );
            if call.as_ref().is_some_and(|c| c.grpc.is_some())
                && let Some(&last) = tried.last()
            {
                let stats = &cluster.balancer.members()[last].stats;
                if let Some(code) = error.grpc_status() {
                    stats.count_grpc_status(code);
                }
            }
            return Err(gave_up(worker, cluster, tried.last().copied(), error));
        };
        tried.push(index);
        let kind = Upstream::for_member(base, &config.members[index], upgrade);
        if matches!(kind, Upstream::Http2 { .. }) {
            keep_for_http2(req, lean, &mut replay, &mut call, tries, upgrade);
        }
        let stats = &cluster.balancer.members()[index].stats;
        stats.elected.fetch_add(1, Relaxed);
        let mut lease = Lease::new(stats.clone());
        if !req.body().is_end_stream() {
            req.body_mut().count_for(stats.clone());
        }
        if let Some(observed) = observed.as_deref_mut() {
            trying(observed, cluster, index, forwarding, req.method());
        }
        let key = upstream::member(&worker.pool, cluster, &config.members[index]);
        // The route's limit for each try (HTTPRoute `timeouts.backendRequest`), or the
        // cluster's; a gRPC call's deadline when it comes sooner.
        let timeout = filters
            .as_ref()
            .and_then(|f| f.backend_timeout())
            .unwrap_or(config.response_timeout);
        let until = deadline_of(&call).map_or(started + timeout, |at| at.min(started + timeout));
        let sent = upstream::send(
            kind,
            &key,
            config,
            config.policy.limits_of(index),
            req,
            lean,
            forwarding,
            started,
            until,
            deadline,
        );
        match sent.await {
            Err(failure) => {
                let stage = failure.stage;
                if let Some(span) = observed.as_mut().and_then(|o| o.span.as_mut()) {
                    span.tried(Err(&failure.cause));
                }
                let given_back = failure.unsent.is_some();
                let client_deadline = stage == Stage::TimedOut
                    && deadline_of(&call).is_some_and(|at| Instant::now() >= at);
                let error = failed(cluster, index, failure, req, client_deadline)
                    .map_err(|e| gave_up(worker, cluster, Some(index), e))?;
                let again = tried.len() < tries
                    && may_go_again(cluster, stage, kind, req, &replay, call.as_deref())
                    && (given_back
                        || kind == Upstream::Lean
                        || (kind == Upstream::Hyper && stage == Stage::Unsent)
                        || rebuild(req, replay.as_deref(), call.as_deref()));
                if !again {
                    if call.as_ref().is_some_and(|c| c.grpc.is_some())
                        && let Some(code) = error.grpc_status()
                    {
                        stats.count_grpc_status(code);
                    }
                    return Err(gave_up(worker, cluster, Some(index), error));
                }
                if worker.telemetry.request_metrics {
                    stats.traffic.failed_over();
                }
                last_failure = Some(Box::new(error));
            }
            Ok((held, mut response)) => {
                if worker.telemetry.request_metrics || observed.is_some() {
                    answered(worker, observed.as_deref_mut(), stats, started, &response);
                }
                observe(cluster, index, started, response.status());
                if failed_on_status(cluster, index, response.status())
                    && tried.len() < tries
                    && rebuild(req, replay.as_deref(), call.as_deref())
                {
                    if worker.telemetry.request_metrics {
                        stats.traffic.failed_over();
                    }
                    continue;
                }
                let member = &config.members[index];
                insert_sticky_cookie(cluster, member, affinity, response.headers_mut());
                // Delivered here rather than by a function: the answer is moved once less.
                let mut response = if response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_upgrade) = client_upgrade.take()
                {
                    tunnelled(worker, client_upgrade, response, lease)
                } else {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    lease.reuse(key, held);
                    Response::from_parts(parts, ResponseBody::upstream(body, lease))
                };
                if let Some(Call {
                    grpc: Some(grpc_call),
                    kept,
                }) = call.map(|c| *c)
                {
                    if let Some(code) = grpc::status_of(response.headers()) {
                        stats.count_grpc_status(code);
                    }
                    response.body_mut().grpc(grpc_call.deadline, kept);
                }
                return Ok(response);
            }
        }
    }
}

/// A gRPC call's deadline (from its `grpc-timeout`), and whether its method may run twice
/// (`failover.safeGrpcMethods`).
struct GrpcCall {
    deadline: Option<Instant>,
    safe: bool,
}

/// What a request needs beyond the common case: it is a gRPC call, or its body is kept, where
/// it may have to go again (to another member, after an HTTP/2 stream failed) or be cut off (at
/// a gRPC call's deadline).
struct Call {
    grpc: Option<GrpcCall>,
    kept: Option<Rc<Kept>>,
}

/// A gRPC call's deadline.
fn deadline_of(call: &Option<Box<Call>>) -> Option<Instant> {
    call.as_ref()
        .and_then(|c| c.grpc.as_ref())
        .and_then(|g| g.deadline)
}

/// Readies a request for an HTTP/2 member, whose client takes it: its head is kept when it
/// may have to be sent again (a body-less idempotent request, or any request while attempts
/// remain), and its body too, as are a gRPC call's (so that its deadline can cut it off).
fn keep_for_http2(
    req: &mut Request<RequestBody>,
    lean: &mut Option<super::http1::LeanHead>,
    replay: &mut Option<Box<Replay>>,
    call: &mut Option<Box<Call>>,
    tries: usize,
    upgrade: bool,
) {
    if upgrade {
        return;
    }
    if let Some(head) = lean.take() {
        head.fields.fill(req.headers_mut());
    }
    let bodyless = req.body().is_end_stream();
    if replay.is_none() && (tries > 1 || (bodyless && idempotent(req.method()))) {
        *replay = Some(Box::new(Replay::of(req)));
    }
    let grpc = call.as_ref().is_some_and(|c| c.grpc.is_some());
    let kept = call.as_ref().is_some_and(|c| c.kept.is_some());
    if !kept && !bodyless && (tries > 1 || grpc) {
        call.get_or_insert_with(|| {
            Box::new(Call {
                grpc: None,
                kept: None,
            })
        })
        .kept = req.body_mut().keep();
    }
}

/// Builds the request again for another attempt, from its kept head and body: false when they
/// were not kept, or part of the body that went was not.
fn rebuild(req: &mut Request<RequestBody>, replay: Option<&Replay>, call: Option<&Call>) -> bool {
    let kept = call.and_then(|c| c.kept.as_ref());
    let Some(replay) = replay else {
        return false;
    };
    let body = match kept {
        Some(kept) => match RequestBody::again(kept) {
            Some(body) => body,
            None => return false,
        },
        None if req.body().is_end_stream() => RequestBody::empty(),
        None => return false,
    };
    *req = replay.request();
    *req.body_mut() = body;
    true
}

/// A failed exchange. The client's broken request body is the client's fault: 400, and
/// nothing held against the member. Otherwise it is reported to the balancer (unless it was a
/// gRPC call's own deadline that passed) and, unless the answer only came late (504), the
/// member is put in error. Gives the error and whether the
/// request may go to another member; the request is put back when hyper's client had taken
/// it.
fn failed(
    cluster: &Cluster,
    index: usize,
    failure: Failure,
    req: &mut Request<RequestBody>,
    client_deadline: bool,
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
    if let Stage::QueueFull | Stage::QueueTimeout = stage {
        // The member's own limit: nothing reached it, and it says nothing of its health.
        let stats = &cluster.balancer.members()[index].stats;
        let counter = match stage {
            Stage::QueueFull => &stats.queue_full,
            _ => &stats.queue_timeouts,
        };
        counter.fetch_add(1, Relaxed);
        if let Some(back) = unsent {
            *req = *back;
        }
        return Ok(ProxyError::Overloaded {
            cluster: cluster.key.clone(),
            member: member.url.clone(),
            cause,
        });
    }
    // A gRPC call's own deadline passing says nothing of the member.
    if !client_deadline {
        cluster.balancer.report(index, false, clock::now_ms());
    }
    if stage == Stage::TimedOut {
        return Err(ProxyError::Timeout {
            cluster: cluster.key.clone(),
            member: member.url.clone(),
            after: cluster.config.response_timeout,
        });
    }
    cluster
        .balancer
        .mark_error(index, clock::now_ms(), cluster.retry_ms, error_note(&cause));
    if let Some(back) = unsent {
        *req = *back;
    }
    let error = ProxyError::MemberFailed {
        cluster: cluster.key.clone(),
        member: member.url.clone(),
        cause,
    };
    Ok(error)
}

/// A try begins on member `index`: the record names it, and with tracing, the member gets a
/// `traceparent` naming the try's span.
fn trying(
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
    stats: &crate::balancer::MemberStats,
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
fn gave_up(
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

/// Whether a request that failed on a member may go to another: one that never reached it
/// always; one that reached it and got no whole answer head (reset, closed, a broken head) only
/// when sending it twice changes nothing (an idempotent method, no body; nothing has gone to
/// the client yet), and while the cluster's retry budget lasts, as nginx's
/// `proxy_next_upstream error` does.
///
/// A gRPC call is POST, which is not idempotent: it goes to another member only when nothing
/// of it reached the first (a connection that did not open, a stream the member refused
/// unprocessed), unless its method is listed in `failover.safeGrpcMethods`; then also when its
/// stream broke before the answer began, if its body was kept whole.
fn may_go_again(
    cluster: &Cluster,
    stage: Stage,
    kind: Upstream,
    req: &Request<RequestBody>,
    replay: &Option<Box<Replay>>,
    call: Option<&Call>,
) -> bool {
    let kept = call.and_then(|c| c.kept.as_ref());
    match stage {
        Stage::Unsent | Stage::Refused | Stage::QueueFull | Stage::QueueTimeout => true,
        Stage::Unanswered | Stage::BadAnswer => {
            // The lean client only borrowed the request; hyper's took it, and a copy was kept.
            let intact = kind == Upstream::Lean || replay.is_some();
            let may_repeat = match call.and_then(|c| c.grpc.as_ref()) {
                Some(grpc) => grpc.safe && kept.is_none_or(|k| k.can_again()),
                None => idempotent(req.method()),
            };
            intact
                && may_repeat
                && cluster
                    .retry_budget
                    .try_take(clock::now_ms(), requests(cluster))
        }
        Stage::ClientBody | Stage::ClientTimeout | Stage::TimedOut => false,
    }
}

/// All the cluster's requests so far, as its members count them.
fn requests(cluster: &Cluster) -> u64 {
    cluster
        .balancer
        .members()
        .iter()
        .map(|m| m.stats.elected.load(Relaxed))
        .sum()
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

/// A body-less request kept to be sent again: after a `failOnStatus` answer, or, when hyper's
/// client takes it (`--http1 hyper`), after a failure on a member for an idempotent one.
/// Boxed where it is held: few requests need it, and inline it would make every request's
/// future larger.
fn replay_of(
    cluster: &Cluster,
    kind: Upstream,
    upgrade: bool,
    req: &Request<RequestBody>,
) -> Option<Box<Replay>> {
    let wanted = !cluster.config.fail_on_status.is_empty()
        || (kind == Upstream::Hyper && idempotent(req.method()));
    (wanted && !upgrade && req.body().is_end_stream()).then(|| Box::new(Replay::of(req)))
}

/// A member's 101 Switching Protocols: the two upgraded connections are joined on a task of
/// their own, which the worker counts (a stop lets it finish), and the client gets the member's
/// answer head.
fn tunnelled(
    worker: &Worker,
    client_upgrade: hyper::upgrade::OnUpgrade,
    mut response: Response<Answer>,
    lease: Lease,
) -> Response<ResponseBody> {
    let member_upgrade = hyper::upgrade::on(&mut response);
    // The member agreed to WebSocket: the tunnel carries its frames (a stop closes them).
    let websocket = response
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let tunnels = worker.tunnels.clone();
    tokio::task::spawn_local(tunnel(
        client_upgrade,
        member_upgrade,
        lease,
        websocket,
        tunnels,
    ));
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, ResponseBody::empty())
}

/// HAProxy's `cookie insert`: when the request's sticky value does not name the member that
/// answered, the answer sets the cookie to that member's route.
fn insert_sticky_cookie(
    cluster: &Cluster,
    member: &MemberConfig,
    affinity: &Affinity,
    headers: &mut HeaderMap,
) {
    let Some(config) = cluster.config.policy.sticky.as_ref().filter(|s| s.insert) else {
        return;
    };
    let (Some(name), Some(route)) = (config.cookie.as_deref(), member.route.as_deref()) else {
        return;
    };
    if affinity
        .sticky
        .as_deref()
        .is_some_and(|value| sticky::carries(value, route))
    {
        return;
    }
    if let Some(cookie) = sticky::set_cookie(name, route) {
        headers.append(header::SET_COOKIE, cookie);
    }
}

/// A member's last error as the balancer-manager shows it: the cause and when.
fn error_note(cause: &str) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("{cause} ({})", now.strftime("%Y-%m-%dT%H:%M:%SZ"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::exchange::Exchanged;

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
        let exchanged = size_of::<Result<Exchanged, Failure>>();
        assert!(exchanged <= 256, "an exchange's result: {exchanged}");
    }
}
