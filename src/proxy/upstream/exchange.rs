//! What an exchange with a member gives: the answer head, or a failure saying whether the
//! request may go to another member; and the wait for the answer under its deadline.

use http::{Request, Response};

use super::body::{Answer, RequestBody};
use super::pool::Sender;
use crate::proxy::deadline::Deadline;

/// Why an exchange with a member failed.
pub struct Failure {
    pub cause: String,
    pub timed_out: bool,
    /// The request never left: it can go to another member.
    pub resend: bool,
    /// The request, when hyper's client had taken it and it never left.
    /// Boxed: it is rare, and inline it would make every exchange's result several times
    /// larger, and that result is moved on every request (docs/benchmarks.md, "Copies").
    pub unsent: Option<Box<Request<RequestBody>>>,
}

/// A member's answer head, with hyper's client connection when it came on one.
pub type Exchanged = (Option<Sender>, Response<Answer>);

impl Failure {
    pub fn new(cause: String, resend: bool) -> Self {
        Failure {
            cause,
            timed_out: false,
            resend,
            unsent: None,
        }
    }

    /// hyper's client failed; it gives the request back when it never left.
    pub fn unsent(cause: String, unsent: Option<Request<RequestBody>>) -> Self {
        Failure {
            cause,
            timed_out: false,
            resend: unsent.is_some(),
            unsent: unsent.map(Box::new),
        }
    }

    pub fn timed_out() -> Self {
        Failure {
            cause: String::new(),
            timed_out: true,
            resend: false,
            unsent: None,
        }
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
