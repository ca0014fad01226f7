//! A member's answer readied for the client: the sticky cookie it sets, its hop-by-hop fields
//! gone, its body counted and the connection given back at its end, or the tunnel an upgrade
//! (101 Switching Protocols) opens; a gRPC call's deadline watched.

use std::rc::Rc;

use http::header::{self, HeaderMap};
use http::{Response, StatusCode};

use super::again::Call;
use super::outcome::Try;
use crate::balancer::{Affinity, sticky};
use crate::discovery::MemberConfig;
use crate::plane::Cluster;
use crate::proxy::client::ClientRequest;
use crate::proxy::grpc;
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::response::ResponseBody;
use crate::proxy::tunnel::tunnel;
use crate::proxy::upstream::body::Answer;
use crate::proxy::upstream::exchange::Held;
use crate::proxy::upstream::lease::Lease;
use crate::proxy::upstream::pool::Member;
use crate::proxy::worker::Worker;

/// The answer of the member `at` tried, readied for the client, written into the request's
/// box (`request.answer`), where it stays until it is out. Inlined into the loop, as it was
/// written there, and built in its place: the answer is not moved once more on its way.
#[inline(always)]
pub fn deliver(
    at: &Try<'_>,
    affinity: &Affinity,
    request: &mut ClientRequest,
    mut response: Box<Response<Answer>>,
    mut lease: Lease,
    (key, held): (Rc<Member>, Option<Held>),
    call: Option<Box<Call>>,
) {
    let member = &at.cluster.config.members[at.index];
    insert_sticky_cookie(at.cluster, member, affinity, response.headers_mut());
    let response = request.answer.insert(
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = request.upgrade.take()
        {
            tunnelled(at.worker, client_upgrade, *response, lease)
        } else {
            strip_hop_by_hop(response.headers_mut());
            let (parts, body) = response.into_parts();
            lease.reuse(key, held);
            Response::from_parts(parts, ResponseBody::upstream(body, lease))
        },
    );
    if let Some(Call {
        grpc: Some(grpc_call),
        kept,
    }) = call.map(|c| *c)
    {
        if let Some(code) = grpc::status_of(response.headers()) {
            at.cluster.balancer.members()[at.index]
                .stats
                .count_grpc_status(code);
        }
        response.body_mut().grpc(grpc_call.deadline, kept);
    }
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
