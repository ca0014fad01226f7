//! The lean client's exchange: a request without a body, on a pooled connection of the lean
//! client or a new one.

use http::Request;

use super::body::{Answer, RequestBody};
use super::exchange::{Exchanged, Failure, Stage, within};
use super::pool::{self, Member};
use crate::discovery::ClusterConfig;
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
    key: &Member,
    config: &ClusterConfig,
    req: &Request<RequestBody>,
    fields: Option<&RawHead>,
    forwarding: &Forwarding,
    now: tokio::time::Instant,
    until: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    // A second try on a new connection gets as long again.
    let timeout = until.saturating_duration_since(now);
    let mut failed = None;
    if let Some(conn) = key.checkout_lean(config.idle_timeout, now) {
        let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
        match within(send, now + timeout, deadline).await {
            Some(Ok(response)) => return Ok((None, response.map(Answer::Lean))),
            Some(Err(e)) if pooled_closed(&e, req) => failed = Some(e.cause),
            Some(Err(e)) => return Err(Failure::of(e)),
            None => return Err(Failure::timed_out()),
        }
    }
    let conn = match pool::open(key.authority(), config.connect_timeout).await {
        Ok(stream) => Conn::new(stream),
        Err(e) => return Err(Failure::new(e.to_string(), Stage::Unsent)),
    };
    if let Some(cause) = failed {
        tracing::debug!(member = key.authority(), %cause, "pooled connection closed, sent again on a new one");
    }
    let until = tokio::time::Instant::now() + timeout;
    let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
    match within(send, until, deadline).await {
        Some(Ok(response)) => Ok((None, response.map(Answer::Lean))),
        Some(Err(e)) => Err(Failure::of(e)),
        None => Err(Failure::timed_out()),
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
