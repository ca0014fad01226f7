//! hyper's client: requests with a body to stream, upgrades, and every request with
//! `--http1 hyper`.

use std::rc::Rc;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::body::{Answer, BodyTimeout, RequestBody};
use super::connect::ConnectError;
use super::connect::{Opened, open_for};
use super::exchange::{Connected, Exchanged, Failure, Held, Replay, Stage, within};
use super::gate::Permit;
use super::pool::{Member, Sender};
use crate::discovery::{ClusterConfig, Limits};
use crate::proxy::deadline::Deadline;
use crate::proxy::http1::client::idempotent;

/// Sends the request through hyper's client, on a pooled connection, or on a new one when the
/// pool has none or the pooled one turned out closed by the member (before the request left,
/// or, for a request without a body that changes nothing, before a byte of the answer), and
/// waits for the response head.
pub async fn exchange(
    key: &Rc<Member>,
    config: &ClusterConfig,
    limits: &Limits,
    mut req: Request<RequestBody>,
    now: tokio::time::Instant,
    until: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    // A second try on a new connection gets as long again.
    let timeout = until.saturating_duration_since(now);
    if let Some(mut sender) = key.checkout(config.idle_timeout, now).await {
        // Only `--http1 hyper` sends such requests this way: the copy costs nothing otherwise.
        let copy =
            (req.body().is_end_stream() && idempotent(req.method())).then(|| Replay::of(&req));
        match await_response(&mut sender, req, now + timeout, deadline).await {
            Ok(response) => {
                let response = Box::new(response.map(Answer::Hyper));
                return Ok((Some(Held::Http1(sender)), response));
            }
            Err(Failure {
                unsent: Some(back),
                stage: Stage::Unsent,
                ..
            }) => req = *back,
            Err(Failure {
                stage: Stage::Unanswered,
                cause,
                ..
            }) if copy.is_some() => {
                tracing::debug!(member = key.authority(), %cause, "pooled connection closed, sent again on a new one");
                req = copy.map_or_else(|| Request::new(RequestBody::empty()), |c| c.request());
            }
            Err(failure) => return Err(failure),
        }
    }
    let permit = match key.admit(limits) {
        None => None,
        Some(wait) => match wait.await {
            Ok(permit) => Some(permit),
            Err(refused) => return Err(Failure::refused(refused).with_unsent(req)),
        },
    };
    let connecting = tokio::time::Instant::now();
    let mut sender = match connect(key, config.connect_timeout, permit).await {
        Ok(sender) => sender,
        Err(e) => return Err(Failure::new(e.to_string(), Stage::Unsent).with_unsent(req)),
    };
    let connected = tokio::time::Instant::now();
    let until = connected + timeout;
    let mut response = await_response(&mut sender, req, until, deadline).await?;
    let took = connected.saturating_duration_since(connecting);
    response.extensions_mut().insert(Connected(took));
    Ok((
        Some(Held::Http1(sender)),
        Box::new(response.map(Answer::Hyper)),
    ))
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
            let stage = match &unsent {
                Some(_) => Stage::Unsent,
                None => stage_of(e.error()),
            };
            let mut failure = Failure::new(format!("request: {}", described(e.error())), stage);
            failure.unsent = unsent.map(Box::new);
            Err(failure)
        }
        None => Err(Failure::timed_out()),
    }
}

/// hyper's error with what caused it on the connection, when that says more: `connection
/// error: received fatal alert: CertificateRequired` (a member refusing a connection without a
/// client certificate, which TLS 1.3 tells after the handshake) rather than `connection error`.
pub(super) fn described(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(io) if io.is::<std::io::Error>() => format!("{e}: {io}"),
        _ => e.to_string(),
    }
}

/// How far an exchange hyper's client gave up on got. The client's own request body failing
/// (its error is the one hyper's server gave us, inside hyper's client's) is the client's
/// fault; a connection closed before the answer's head is an unanswered request.
fn stage_of(e: &hyper::Error) -> Stage {
    let source = std::error::Error::source(e);
    if source.is_some_and(|s| s.is::<BodyTimeout>()) {
        Stage::ClientTimeout
    } else if source.is_some_and(|s| s.is::<hyper::Error>()) {
        Stage::ClientBody
    } else if e.is_incomplete_message() || e.is_canceled() {
        Stage::Unanswered
    } else {
        Stage::BadAnswer
    }
}

/// Opens a new connection to a member (over TLS for an `https://` one); its driver runs as a
/// task on this worker, holding `permit` (its place under the member's connection limit) until
/// the connection closes.
async fn connect(
    key: &Member,
    timeout: std::time::Duration,
    permit: Option<Permit>,
) -> Result<Sender, ConnectError> {
    match open_for(key, timeout, false).await? {
        Opened::Plain(stream) => handshake(stream, true, permit).await,
        // Flattened rather than vectored: rustls makes one record of each write.
        Opened::Tls(stream) => handshake(stream, false, permit).await,
    }
}

async fn handshake<IO>(io: IO, writev: bool, permit: Option<Permit>) -> Result<Sender, ConnectError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .writev(writev)
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "member connection ended with an error");
        }
        drop(permit);
    });
    Ok(sender)
}
