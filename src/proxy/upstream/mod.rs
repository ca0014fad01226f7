//! How a request goes to a member: one entry ([`send`]) over two clients, the lean HTTP/1
//! client (a request without a body, on the request's own task) and hyper's (bodies,
//! upgrades, and everything with `--http1 hyper`), each with its own idle connections in the
//! worker's [`pool`].

pub mod body;
pub mod exchange;
mod hyper;
mod lean;
pub mod lease;
pub mod pool;

use std::time::Duration;

use futures_util::future::Either;
use http::Request;

use tokio::time::Instant;

use self::body::RequestBody;
use self::exchange::{Exchanged, Failure};
use self::pool::Member;
use super::deadline::Deadline;
use super::headers::Forwarding;
use super::http1::LeanHead;
use super::options::Http1Mode;
use crate::discovery::ClusterConfig;

/// Which client carries a request to its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The lean HTTP/1 client: a request with no body to stream and no upgrade.
    Lean,
    /// hyper's client.
    Hyper,
}

impl Upstream {
    /// The client for a request: the lean one for what it handles, unless `--http1 hyper`.
    pub fn for_request(mode: Http1Mode, bodyless: bool, upgrade: bool) -> Upstream {
        if mode == Http1Mode::Fast && bodyless && !upgrade {
            Upstream::Lean
        } else {
            Upstream::Hyper
        }
    }
}

/// Sends `req` to the member `key` on a client of `kind` and waits for the answer head, at most
/// `timeout` from `now` (the cluster's response timeout, or the route's `backendRequest`). The lean client writes the client's field lines
/// as they came (`lean`) and `forwarding`'s after them; hyper's takes the request (given back
/// in the failure when it never left) with both put in its header map. Not an async function:
/// the future is one of the two clients' own, with no state of its own around it.
#[allow(clippy::too_many_arguments)]
pub fn send<'a>(
    kind: Upstream,
    key: &'a Member,
    config: &'a ClusterConfig,
    req: &'a mut Request<RequestBody>,
    lean: &'a mut Option<LeanHead>,
    forwarding: &'a Forwarding,
    now: Instant,
    timeout: Duration,
    deadline: Option<&'a Deadline>,
) -> impl Future<Output = Result<Exchanged, Failure>> + 'a {
    match kind {
        Upstream::Lean => {
            let fields = lean.as_ref().map(|head| &head.fields);
            Either::Left(lean::exchange(
                key, config, req, fields, forwarding, now, timeout, deadline,
            ))
        }
        Upstream::Hyper => {
            if let Some(head) = lean.take() {
                head.fields.fill(req.headers_mut());
            }
            let mut owned = std::mem::replace(req, Request::new(RequestBody::empty()));
            forwarding.insert(owned.headers_mut());
            // Boxed: inline, its state would make every request's future larger.
            Either::Right(Box::pin(hyper::exchange(
                key, config, owned, now, timeout, deadline,
            )))
        }
    }
}
