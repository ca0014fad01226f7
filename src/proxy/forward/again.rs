//! What a request needs to go to another member after a try: its head and body kept, and
//! whether it may go at all (what reached the member, the method, the retry budget).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use http::Request;
use http_body::Body;
use tokio::time::Instant;

use crate::clock;
use crate::discovery::ClusterConfig;
use crate::plane::Cluster;
use crate::proxy::grpc;
use crate::proxy::http1::LeanHead;
use crate::proxy::http1::client::idempotent;
use crate::proxy::upstream::Upstream;
use crate::proxy::upstream::body::{Kept, RequestBody};
use crate::proxy::upstream::exchange::{Replay, Stage};

/// A gRPC call's deadline (from its `grpc-timeout`), and whether its method may run twice
/// (`failover.safeGrpcMethods`).
pub struct GrpcCall {
    pub deadline: Option<Instant>,
    safe: bool,
}

/// What a request needs beyond the common case: it is a gRPC call, or its body is kept, where
/// it may have to go again (to another member, after an HTTP/2 stream failed) or be cut off (at
/// a gRPC call's deadline).
pub struct Call {
    pub grpc: Option<GrpcCall>,
    pub kept: Option<Rc<Kept>>,
}

impl Call {
    /// A gRPC call's deadline and safety; none for any other request (boxed: most requests
    /// have neither). `grpc`: the request is a gRPC call (`grpc::is_grpc`, read once).
    pub fn of(config: &ClusterConfig, req: &Request<RequestBody>, grpc: bool) -> Option<Box<Call>> {
        grpc.then(|| {
            Box::new(Call {
                grpc: Some(GrpcCall {
                    deadline: grpc::timeout(req.headers()).map(|t| Instant::now() + t),
                    safe: config.policy.is_safe_grpc_method(req.uri().path()),
                }),
                kept: None,
            })
        })
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(call: Option<&Call>) -> bool {
        call.is_some_and(|c| c.grpc.is_some())
    }
}

/// A gRPC call's deadline.
pub fn deadline_of(call: Option<&Call>) -> Option<Instant> {
    call.and_then(|c| c.grpc.as_ref()).and_then(|g| g.deadline)
}

/// Readies a request for an HTTP/2 member, whose client takes it: its head is kept when it
/// may have to be sent again (a body-less idempotent request, or any request while attempts
/// remain), and its body too, as are a gRPC call's (so that its deadline can cut it off).
/// Nothing for the other clients, or for an upgrade.
pub fn keep_for_http2(
    kind: Upstream,
    req: &mut Request<RequestBody>,
    lean: &mut Option<LeanHead>,
    replay: &mut Option<Box<Replay>>,
    call: &mut Option<Box<Call>>,
    tries: usize,
    upgrade: bool,
) {
    if upgrade || !matches!(kind, Upstream::Http2 { .. }) {
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
pub fn rebuild(
    req: &mut Request<RequestBody>,
    replay: Option<&Replay>,
    call: Option<&Call>,
) -> bool {
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
///
/// With `timeouts_again` (a route's retries), a try that got no answer in time is one that
/// reached the member and got no answer head: it goes again on the same terms.
pub fn may_go_again(
    cluster: &Cluster,
    stage: Stage,
    kind: Upstream,
    req: &Request<RequestBody>,
    replay: Option<&Replay>,
    call: Option<&Call>,
    timeouts_again: bool,
) -> bool {
    match stage {
        Stage::Unsent | Stage::Refused | Stage::QueueFull | Stage::QueueTimeout => true,
        Stage::Unanswered | Stage::BadAnswer => repeatable(cluster, kind, req, replay, call),
        Stage::TimedOut => timeouts_again && repeatable(cluster, kind, req, replay, call),
        Stage::ClientBody | Stage::ClientTimeout => false,
    }
}

/// Whether a request that reached a member may be sent again: it is intact, sending it twice
/// changes nothing, and the cluster's retry budget allows one more.
fn repeatable(
    cluster: &Cluster,
    kind: Upstream,
    req: &Request<RequestBody>,
    replay: Option<&Replay>,
    call: Option<&Call>,
) -> bool {
    let kept = call.and_then(|c| c.kept.as_ref());
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

/// All the cluster's requests so far, as its members count them.
fn requests(cluster: &Cluster) -> u64 {
    cluster
        .balancer
        .members()
        .iter()
        .map(|m| m.stats.elected.load(Relaxed))
        .sum()
}

/// A body-less request kept to be sent again: after a `failOnStatus` answer or an answer a
/// route's retries (`retry`) take again, or, when hyper's client takes it (`--http1 hyper`),
/// after a failure on a member for an idempotent one. Boxed where it is held: few requests
/// need it, and inline it would make every request's future larger.
pub fn replay_of(
    cluster: &Cluster,
    kind: Upstream,
    upgrade: bool,
    req: &Request<RequestBody>,
    retry: bool,
) -> Option<Box<Replay>> {
    let wanted = retry
        || !cluster.config.fail_on_status.is_empty()
        || (kind == Upstream::Hyper && idempotent(req.method()));
    (wanted && !upgrade && req.body().is_end_stream()).then(|| Box::new(Replay::of(req)))
}
