//! The lean client's exchange: a request without a body, on a pooled connection of the lean
//! client or a new one.

use std::rc::Rc;

use http::{Request, Response};

use super::body::{Answer, RequestBody};
use super::connect;
use super::exchange::{Connected, Exchanged, Failure, Stage, within};
use super::pool::{Admitting, Member};
use crate::discovery::{ClusterConfig, Limits};
use crate::proxy::deadline::Deadline;
use crate::proxy::headers::Forwarding;
use crate::proxy::http1::client::{ExchangeError, Stage as Http1Stage, idempotent};
use crate::proxy::http1::conn::Conn;
use crate::proxy::http1::raw::RawHead;

/// The lean exchange for a request without a body: on a pooled connection, or on a new one
/// when the pool has none or the pooled one turned out closed before the answer began (the
/// member's idle timeout struck as the request went: not the member's fault, and a request
/// that changes nothing can be sent again).
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    key: &Rc<Member>,
    config: &ClusterConfig,
    limits: impl Admission,
    req: &Request<RequestBody>,
    fields: Option<&RawHead>,
    forwarding: &Forwarding,
    now: tokio::time::Instant,
    until: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    // Every value kept across an await takes room in the request's future: what is only logged
    // is logged at once, and instants are held no longer than they are needed.
    if let Some(conn) = key.checkout_lean(config.idle_timeout, now) {
        let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
        match within(send, until, deadline).await {
            Some(Ok(response)) => return Ok((None, response)),
            Some(Err(e)) if pooled_closed(&e, req) => {
                tracing::debug!(member = key.authority(), cause = %e.cause, "pooled connection closed, sending again on a new one");
            }
            Some(Err(e)) => return Err(Failure::of(e)),
            None => return Err(Failure::timed_out()),
        }
    }
    // In a block of its own, so that its values take no room while the answer is awaited.
    let (conn, connect_us, until) = {
        let permit = match limits.admit(key) {
            None => None,
            Some(wait) => match wait.await {
                Ok(permit) => Some(permit),
                Err(refused) => return Err(Failure::refused(refused)),
            },
        };
        let connecting = tokio::time::Instant::now();
        let mut conn = match connect::open(key.authority(), config.connect_timeout).await {
            Ok(stream) => Conn::new(stream),
            Err(e) => return Err(Failure::new(e.to_string(), Stage::Unsent)),
        };
        if let Some(permit) = permit {
            conn.hold(Box::new(permit));
        }
        // A try on a new connection gets as long as the first; the connect time is held as
        // microseconds.
        let connected = tokio::time::Instant::now();
        let took = connected.saturating_duration_since(connecting).as_micros();
        let timeout = until.saturating_duration_since(now);
        (
            conn,
            u32::try_from(took).unwrap_or(u32::MAX),
            connected + timeout,
        )
    };
    let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
    answered(within(send, until, deadline).await, connect_us)
}

/// The answer on a new connection, which carries the time the connection took to open.
fn answered(
    sent: Option<Result<Box<Response<Answer>>, ExchangeError>>,
    connect_us: u32,
) -> Result<Exchanged, Failure> {
    match sent {
        Some(Ok(mut response)) => {
            let took = std::time::Duration::from_micros(u64::from(connect_us));
            response.extensions_mut().insert(Connected(took));
            Ok((None, response))
        }
        Some(Err(e)) => Err(Failure::of(e)),
        None => Err(Failure::timed_out()),
    }
}

/// The wait for a place under a member's connection limit. The lean exchange's future is held
/// inline in every request's: for a member without a limit ([`Unlimited`]) it takes no room
/// there.
pub trait Admission {
    fn admit<'a>(&'a self, key: &'a Rc<Member>) -> Option<Admitting<'a>>;
}

/// A member without a connection limit.
pub struct Unlimited;

impl Admission for Unlimited {
    fn admit<'a>(&'a self, _: &'a Rc<Member>) -> Option<Admitting<'a>> {
        None
    }
}

impl Admission for &Limits {
    fn admit<'a>(&'a self, key: &'a Rc<Member>) -> Option<Admitting<'a>> {
        key.admit(self)
    }
}

/// Whether a failure on a pooled connection means only that the member had closed it: the
/// request did not leave, or it went and nothing came back, and it changes nothing when sent
/// again.
fn pooled_closed(e: &ExchangeError, req: &Request<RequestBody>) -> bool {
    match e.stage {
        Http1Stage::Unsent => true,
        Http1Stage::Unanswered => idempotent(req.method()),
        Http1Stage::BadAnswer => false,
    }
}
