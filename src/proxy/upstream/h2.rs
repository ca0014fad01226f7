//! hyper's HTTP/2 client, for members spoken to in h2c, and in h2 (over TLS, ALPN `h2`):
//! every request is a stream on a connection the member's requests share, at most
//! `http2.maxConcurrentStreams` of them at once (fewer if the member says so); beyond that,
//! another connection is opened. Requests that come while a connection is being opened wait
//! for it rather than open their own.

use std::rc::Rc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use hyper::client::conn::{TrySendError, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;

use super::body::{Answer, BodyTimeout, RequestBody};
use super::connect::ConnectError;
use super::connect::{self, Opened};
use super::exchange::{Exchanged, Failure, Held, Stage, within};
use super::gate::Permit;
use super::h2_conn::{H2Conn, H2Stream};
use super::pool::Member;
use crate::discovery::{ClusterConfig, Limits};
use crate::proxy::deadline::Deadline;

/// Runs hyper's HTTP/2 client tasks (the connection, each request body's pipe) on the worker's
/// own thread.
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Sends the request as a stream on a shared connection to the member and waits for the answer
/// head until `until`. `tls` is h2 (HTTP/2 over TLS) rather than h2c.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    key: &Rc<Member>,
    config: &ClusterConfig,
    limits: &Limits,
    tls: bool,
    mut req: Request<RequestBody>,
    now: Instant,
    until: Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    let streams = config.policy.max_concurrent_streams;
    let (stream, permit) = match limits.max_connections {
        None => match key.checkout_h2(streams, config.idle_timeout, now) {
            (stream, true) => (stream, Some(None)),
            (stream, false) => (stream, None),
        },
        Some(max) => {
            // Room on an open connection, or a new one under the member's limit.
            let gate = key.gate();
            let room = || {
                let now = Instant::now();
                match key.checkout_h2_open(streams, config.idle_timeout, now) {
                    Some(stream) => Some((stream, None)),
                    None => gate
                        .try_open(max)
                        .map(|permit| (key.new_h2(now), Some(Some(permit)))),
                }
            };
            match Box::pin(gate.admit(limits, room)).await {
                Ok(taken) => taken,
                Err(refused) => return Err(Failure::refused(refused).with_unsent(req)),
            }
        }
    };
    // A new connection, to be opened by this request (with its permit, if limited).
    if let Some(permit) = permit {
        open_new(&stream, key, config, permit);
    }
    let opened = {
        let opened = std::pin::pin!(stream.sender());
        within(opened, until, deadline).await
    };
    let mut sender = match opened {
        Some(Ok(sender)) => sender,
        Some(Err(cause)) => {
            return Err(Failure::new(cause.to_string(), Stage::Unsent).with_unsent(req));
        }
        None => return Err(Failure::timed_out()),
    };
    in_http2_form(&mut req, key.authority(), tls);
    let send = std::pin::pin!(sender.try_send_request(req));
    match within(send, until, deadline).await {
        Some(Ok(response)) => Ok((
            Some(Held::Http2(stream)),
            Box::new(response.map(Answer::Hyper)),
        )),
        Some(Err(e)) => Err(send_failed(e)),
        None => Err(Failure::timed_out()),
    }
}

/// What a failed send says: the request hyper gives back unsent goes back to its HTTP/1 form,
/// so that a try on another member may send it however that member speaks.
fn send_failed(mut e: TrySendError<Request<RequestBody>>) -> Failure {
    let unsent = e.take_message().map(|mut req| {
        back_to_http1_form(&mut req);
        Box::new(req)
    });
    let stage = match &unsent {
        Some(_) => Stage::Unsent,
        None => stage_of(e.error()),
    };
    let mut failure = Failure::new(
        format!("request: {}", super::hyper::described(e.error())),
        stage,
    );
    failure.unsent = unsent;
    failure
}

/// The request as HTTP/2 carries it: the target absolute (`:scheme` and `:authority` come
/// from it), the Host field's value as its authority, and `te: trailers` for gRPC, whose
/// servers want it (the client's own TE went with the hop-by-hop fields).
fn in_http2_form(req: &mut Request<RequestBody>, member: &str, tls: bool) {
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(member).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Undoes [`in_http2_form`] for a request given back unsent, which may go to an HTTP/1 member
/// next: its authority back in Host, its target origin-form.
fn back_to_http1_form(req: &mut Request<RequestBody>) {
    if let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = Uri::try_from(path) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
}

/// How far a stream hyper's HTTP/2 client gave up on got. A stream the member refused
/// unprocessed (REFUSED_STREAM, or beyond a graceful GOAWAY's last stream: RFC 9113 8.7) never
/// reached it; a stream reset on our side is the client's body failing; anything else broke
/// after the request went.
fn stage_of(e: &hyper::Error) -> Stage {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            let graceful_goaway =
                h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
            let refused = h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            return if graceful_goaway || refused {
                Stage::Refused
            } else if h2.is_reset() && !h2.is_remote() {
                Stage::ClientBody
            } else {
                Stage::Unanswered
            };
        }
        if cause.is::<BodyTimeout>() {
            return Stage::ClientTimeout;
        }
        if cause.is::<hyper::Error>() {
            // The client's own body failed (its error is the one hyper's server gave us).
            return Stage::ClientBody;
        }
        source = cause.source();
    }
    Stage::Unanswered
}

/// Starts opening the connection `stream` was checked out on (TCP, and TLS for an h2 member).
fn open_new(stream: &H2Stream, key: &Member, config: &ClusterConfig, permit: Option<Permit>) {
    let connecting = connect::open_for(key, config.connect_timeout, true);
    tokio::task::spawn_local(open(
        stream.conn().clone(),
        Rc::from(key.authority()),
        connecting,
        permit,
    ));
}

/// Opens the connection a request checked out new; the requests waiting for it go on when it
/// is open, or fail when it cannot be. `permit`, its place under the member's connection limit,
/// is held until it closes.
async fn open(
    conn: Rc<H2Conn>,
    authority: Rc<str>,
    connecting: impl Future<Output = Result<Opened, ConnectError>>,
    permit: Option<Permit>,
) {
    match connecting.await {
        Ok(Opened::Plain(stream)) => drive(conn, authority, stream).await,
        // Offered `h2` alone: a member that chose no protocol is taken at its configuration's
        // word (`protocol: h2`).
        Ok(Opened::Tls(stream)) => drive(conn, authority, stream).await,
        Err(e) => conn.failed(e.to_string()),
    }
    drop(permit);
}

/// The HTTP/2 handshake on a new connection, then its driver, until it ends.
async fn drive<IO>(conn: Rc<H2Conn>, authority: Rc<str>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let handshake = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await;
    let (sender, mut connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => return conn.failed(format!("handshake: {e}")),
    };
    conn.open(sender);
    let peer_max = conn.peer_max.clone();
    // Only the count is kept here, not the connection's entry: dropping the entry's sender is
    // what closes the connection.
    drop(conn);
    let ended = std::future::poll_fn(|cx| {
        let polled = std::pin::Pin::new(&mut connection).poll(cx);
        peer_max.set(connection.current_max_send_streams());
        polled
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(member = %authority, error = %e, "HTTP/2 member connection ended with an error");
    }
}
