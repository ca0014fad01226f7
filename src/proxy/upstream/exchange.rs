//! What an exchange with a member gives: the answer head, or a failure saying whether the
//! request may go to another member; and the wait for the answer under its deadline.

use http::{HeaderMap, Method, Request, Response, Uri};

use super::body::{Answer, RequestBody};
use super::gate::Refused;
use super::h2_conn::H2Stream;
use super::pool::Sender;
use crate::proxy::deadline::Deadline;
use crate::proxy::http1::client::{ExchangeError, Stage as Http1Stage};

/// How far an exchange got before it failed, which decides whose fault it was and whether the
/// request may go to another member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The request never reached the member (connect failed, head not written): it may go to
    /// another member, whatever its method.
    Unsent,
    /// The request went, and the member closed or broke the connection before a byte of its
    /// answer.
    Unanswered,
    /// Part of an answer came, and it was cut short or malformed.
    BadAnswer,
    /// The client's request body broke off or was malformed (an invalid chunk size, a reset
    /// stream): the client's fault, never the member's.
    ClientBody,
    /// The client sent nothing of its request body for the body read timeout.
    ClientTimeout,
    /// No answer within the response timeout.
    TimedOut,
    /// The member refused the HTTP/2 stream without processing it (REFUSED_STREAM, or a stream
    /// beyond a graceful GOAWAY's last one): like `Unsent`, but the request was taken, and only
    /// a request that can be built again may go to another member.
    Refused,
    /// The member's connection limit is reached and its queue is full (`memberLimits`): the
    /// request never reached it, and it says nothing of the member's health.
    QueueFull,
    /// The request waited for a connection to the member for the whole queue timeout.
    QueueTimeout,
}

impl From<Http1Stage> for Stage {
    fn from(stage: Http1Stage) -> Self {
        match stage {
            Http1Stage::Unsent => Stage::Unsent,
            Http1Stage::Unanswered => Stage::Unanswered,
            Http1Stage::BadAnswer => Stage::BadAnswer,
        }
    }
}

/// Why an exchange with a member failed.
pub struct Failure {
    pub cause: String,
    pub stage: Stage,
    /// The request, when hyper's client had taken it and it never left.
    /// Boxed: it is rare, and inline it would make every exchange's result several times
    /// larger, and that result is moved on every request (docs/benchmarks.md, "Copies").
    pub unsent: Option<Box<Request<RequestBody>>>,
}

/// What a request holds of its member connection until its answer is read: hyper's HTTP/1
/// connection (given back to the pool then), or a stream slot on a shared HTTP/2 connection.
pub enum Held {
    Http1(Sender),
    Http2(
        #[expect(dead_code, reason = "held for its drop, which frees the stream's slot")] H2Stream,
    ),
}

/// A member's answer head, with what it holds of the connection it came on (a lean
/// connection is held by the answer's body). The head is boxed where the client makes it: it
/// goes back through every frame between the client and `forward`, and by value (about 200
/// bytes) it was copied in each of them, about ten times per request (docs/benchmarks.md,
/// "Before and after the proxy/ reshape"); the box costs one allocation.
pub type Exchanged = (Option<Held>, Box<Response<Answer>>);

/// The time a try took to open its connection, in its answer's extensions (none when the try
/// went on a pooled connection).
#[derive(Clone, Copy, Debug)]
pub struct Connected(pub std::time::Duration);

impl Failure {
    pub fn new(cause: String, stage: Stage) -> Self {
        Failure {
            cause,
            stage,
            unsent: None,
        }
    }

    /// The lean client's failure.
    pub fn of(e: ExchangeError) -> Self {
        Failure::new(e.cause, e.stage.into())
    }

    /// The failure with the request it did not send: another try may send it.
    pub fn with_unsent(mut self, req: Request<RequestBody>) -> Self {
        self.unsent = Some(Box::new(req));
        self
    }

    pub fn timed_out() -> Self {
        Failure::new(String::new(), Stage::TimedOut)
    }

    /// No connection to the member within its limit.
    pub fn refused(refused: Refused) -> Self {
        match refused {
            Refused::QueueFull => Failure::new(
                "connection limit reached and queue full".to_owned(),
                Stage::QueueFull,
            ),
            Refused::QueueTimeout => Failure::new(
                "no connection free within the queue timeout".to_owned(),
                Stage::QueueTimeout,
            ),
        }
    }
}

/// A body-less request's method, target and fields, kept to send it again.
pub struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    pub fn of<B>(req: &Request<B>) -> Self {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    pub fn request(&self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Runs `answer` until `until`: on the HTTP/1 connection's own timer when there is one, else
/// on a timer of its own. `None` when the time ran out. The caller pins `answer` in its own
/// state: taken by value, it would be stored twice (argument and pinned local).
pub async fn within<F: Future>(
    mut answer: std::pin::Pin<&mut F>,
    until: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Option<F::Output> {
    match deadline {
        Some(deadline) => {
            deadline.await_response(until);
            let answered = std::future::poll_fn(|cx| {
                if deadline.response_expired() {
                    return std::task::Poll::Ready(None);
                }
                answer.as_mut().poll(cx).map(Some)
            })
            .await;
            deadline.response_arrived();
            answered
        }
        None => tokio::time::timeout_at(until, answer).await.ok(),
    }
}
