//! hyper's client: requests with a body to stream, upgrades, and every request with
//! `--http1 hyper`.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::body::{Answer, RequestBody};
use super::exchange::{Exchanged, Failure, within};
use super::pool::{self, ConnectError, Member, Sender};
use crate::discovery::ClusterConfig;
use crate::proxy::deadline::Deadline;

pub async fn exchange(
    key: &Member,
    config: &ClusterConfig,
    mut req: Request<RequestBody>,
    now: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    let timeout = config.response_timeout;
    if let Some(mut sender) = key.checkout(config.idle_timeout, now).await {
        match await_response(&mut sender, req, now + timeout, deadline).await {
            Ok(response) => return Ok((Some(sender), response.map(Answer::Hyper))),
            // The pooled connection was closed under us: not the member's fault, try a new one.
            Err(Failure {
                unsent: Some(back),
                timed_out: false,
                ..
            }) => req = *back,
            Err(failure) => return Err(failure),
        }
    }
    let mut sender = match connect(key.authority(), config.connect_timeout).await {
        Ok(sender) => sender,
        Err(e) => {
            return Err(Failure::unsent(e.to_string(), Some(req)));
        }
    };
    let until = tokio::time::Instant::now() + timeout;
    let response = await_response(&mut sender, req, until, deadline).await?;
    Ok((Some(sender), response.map(Answer::Hyper)))
}

/// Sends the request through hyper's client and waits for the response head until `until`.
async fn await_response(
    sender: &mut Sender,
    req: Request<RequestBody>,
    until: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Response<Incoming>, Failure> {
    let send = std::pin::pin!(sender.try_send_request(req));
    match within(send, until, deadline).await {
        Some(Ok(response)) => Ok(response),
        Some(Err(mut e)) => {
            let unsent = e.take_message();
            Err(Failure::unsent(format!("request: {}", e.error()), unsent))
        }
        None => Err(Failure::timed_out()),
    }
}

/// Opens a new connection to a member; its driver runs as a task on this worker.
async fn connect(authority: &str, timeout: std::time::Duration) -> Result<Sender, ConnectError> {
    let stream = pool::open(authority, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .writev(true)
        .handshake::<_, RequestBody>(TokioIo::new(stream))
        .await?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "member connection ended with an error");
        }
    });
    Ok(sender)
}
