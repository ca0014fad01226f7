//! The lean client's exchange: a request without a body, on a pooled connection of the lean
//! client or a new one.

use http::Request;

use super::body::{Answer, RequestBody};
use super::exchange::{Exchanged, Failure, within};
use super::pool::{self, Member};
use crate::discovery::ClusterConfig;
use crate::proxy::deadline::Deadline;
use crate::proxy::headers::Forwarding;
use crate::proxy::http1::conn::Conn;
use crate::proxy::http1::raw::RawHead;

/// The lean exchange for a request without a body: on a
/// pooled connection, or on a new one when the pool has none or the pooled one turned out
/// closed before the answer began.
pub async fn exchange(
    key: &Member,
    config: &ClusterConfig,
    req: &Request<RequestBody>,
    fields: Option<&RawHead>,
    forwarding: &Forwarding,
    now: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    let timeout = config.response_timeout;
    let mut failed = None;
    if let Some(conn) = key.checkout_lean(config.idle_timeout, now) {
        let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
        match within(send, now + timeout, deadline).await {
            Some(Ok(response)) => return Ok((None, response.map(Answer::Lean))),
            // The member closed the pooled connection as the request went: not its fault.
            Some(Err(e)) if e.retry => failed = Some(e.cause),
            Some(Err(e)) => return Err(Failure::new(e.cause, false)),
            None => return Err(Failure::timed_out()),
        }
    }
    let conn = match pool::open(key.authority(), config.connect_timeout).await {
        Ok(stream) => Conn::new(stream),
        Err(e) => return Err(Failure::new(e.to_string(), true)),
    };
    if let Some(cause) = failed {
        tracing::debug!(member = key.authority(), %cause, "pooled connection closed, sent again on a new one");
    }
    let until = tokio::time::Instant::now() + timeout;
    let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
    match within(send, until, deadline).await {
        Some(Ok(response)) => Ok((None, response.map(Answer::Lean))),
        Some(Err(e)) => Err(Failure::new(e.cause, e.retry)),
        None => Err(Failure::timed_out()),
    }
}
