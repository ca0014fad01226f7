//! How a request goes to a member: one entry ([`send`]) over three clients, the lean HTTP/1
//! client (a request without a body, on the request's own task), hyper's HTTP/1 client
//! (bodies, upgrades, and everything with `--http1 hyper`) and hyper's HTTP/2 client (members
//! spoken to in h2c or h2), each with its own connections in the worker's [`pool`].
//!
//! An `https://` member's connections are made over TLS with its cluster's client
//! configuration ([`crate::tls::Upstream`]); the lean client speaks only plain HTTP/1, so such a
//! member's HTTP/1 requests go through hyper's.

pub mod body;
mod connect;
pub mod exchange;
pub mod gate;
mod h2;
pub mod h2_conn;
mod hyper;
mod idle;
mod lean;
pub mod lease;
pub mod pool;

use std::rc::Rc;

use futures_util::future::Either;
use http::Request;
use tokio::time::Instant;

use self::body::RequestBody;
use self::exchange::{Exchanged, Failure};
use self::pool::{Member, Pool};
use super::deadline::Deadline;
use super::headers::Forwarding;
use super::http1::LeanHead;
use super::options::Http1Mode;
use crate::api::Protocol;
use crate::discovery::{ClusterConfig, Limits, MemberConfig};
use crate::plane::Cluster;

/// Which client carries a request to its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The lean HTTP/1 client: a request with no body to stream and no upgrade.
    Lean,
    /// hyper's HTTP/1 client.
    Hyper,
    /// hyper's HTTP/2 client: h2c, or h2 over TLS.
    Http2 { tls: bool },
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

    /// The client for one attempt: HTTP/2 for a member spoken to in it, except for an upgrade
    /// (HTTP/2 has none: it goes in HTTP/1.1); hyper's HTTP/1 client for an `https://` member;
    /// else `base`.
    pub fn for_member(base: Upstream, member: &MemberConfig, upgrade: bool) -> Upstream {
        match member.protocol {
            Protocol::H2c if !upgrade => Upstream::Http2 { tls: false },
            Protocol::H2 if !upgrade => Upstream::Http2 { tls: true },
            _ if base == Upstream::Lean && member.is_tls() => Upstream::Hyper,
            _ => base,
        }
    }
}

/// The worker's connections to `member` of `cluster`: an `https://` member's are kept apart,
/// per client configuration.
pub fn member(pool: &Pool, cluster: &Cluster, member: &MemberConfig) -> Rc<Member> {
    if member.is_tls() {
        pool.tls_member(cluster.upstream_tls.as_ref(), &member.authority)
    } else {
        pool.member(&member.authority)
    }
}

/// Sends `req` to the member `key` on a client of `kind` and waits for the answer head until
/// `until` (`now` plus the cluster's response timeout or the route's `backendRequest`, or a gRPC
/// deadline when it comes sooner). The lean client writes the client's field lines
/// as they came (`lean`) and `forwarding`'s after them; hyper's takes the request (given back
/// in the failure when it never left) with both put in its header map. Not an async function:
/// the future is one of the two clients' own, with no state of its own around it.
/// Inlined, so that the future is built where the caller awaits it: returned by value it was
/// copied twice (544 bytes each), `bench/profile.sh copies` shows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn send<'a>(
    kind: Upstream,
    key: &'a Rc<Member>,
    config: &'a ClusterConfig,
    limits: &'a Limits,
    req: &'a mut Request<RequestBody>,
    lean: &'a mut Option<LeanHead>,
    forwarding: &'a Forwarding,
    now: Instant,
    until: Instant,
    deadline: Option<&'a Deadline>,
) -> impl Future<Output = Result<Exchanged, Failure>> + 'a {
    if kind == Upstream::Lean {
        let fields = lean.as_ref().map(|head| &head.fields);
        if limits.max_connections.is_none() {
            return Either::Left(lean::exchange(
                key,
                config,
                lean::Unlimited,
                req,
                fields,
                forwarding,
                now,
                until,
                deadline,
            ));
        }
        // Boxed, as hyper's: the wait for a connection stays out of every request's future.
        let exchange: std::pin::Pin<Box<dyn Future<Output = _> + 'a>> = Box::pin(lean::exchange(
            key, config, limits, req, fields, forwarding, now, until, deadline,
        ));
        return Either::Right(exchange);
    }
    if let Some(head) = lean.take() {
        head.fields.fill(req.headers_mut());
    }
    let mut owned = std::mem::replace(req, Request::new(RequestBody::empty()));
    forwarding.insert(owned.headers_mut());
    // Boxed: inline, their state would make every request's future larger.
    let exchange: std::pin::Pin<Box<dyn Future<Output = _> + 'a>> = match kind {
        Upstream::Http2 { tls } => Box::pin(h2::exchange(
            key, config, limits, tls, owned, now, until, deadline,
        )),
        _ => Box::pin(hyper::exchange(
            key, config, limits, owned, now, until, deadline,
        )),
    };
    Either::Right(exchange)
}
