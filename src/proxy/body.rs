//! Bodies that stream through the proxy, counted on the way, never collected.

use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::deadline::Deadline;
use super::head::RawHead;
use super::pool::{Member, Sender};
use super::upstream::{self, AnswerBody};
use crate::balancer::MemberStats;

/// The error of a response body: hyper's, or the lean exchange's (an I/O error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a member: the client's, counted as bytes sent, or none (a
/// replayed body-less request).
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Option<Incoming>,
    stats: Option<Arc<MemberStats>>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming) -> Self {
        UpstreamBody {
            inner: Some(inner),
            stats: None,
        }
    }

    pub fn empty() -> Self {
        UpstreamBody {
            inner: None,
            stats: None,
        }
    }

    /// Counts the bytes that follow against `stats`.
    pub fn count_for(&mut self, stats: Arc<MemberStats>) {
        self.stats = Some(stats);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(stats)) = (&polled, &this.stats)
            && let Some(data) = frame.data_ref()
        {
            stats.sent_bytes.fetch_add(data.len() as u64, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A request in flight on a member: counts it busy until dropped, and hands the member
/// connection back to the pool if the exchange ended cleanly.
pub struct Lease {
    stats: Arc<MemberStats>,
    /// Whose idle connections the connection goes back to.
    member: Option<Rc<Member>>,
    /// hyper's client connection; a lean one is held by its [`AnswerBody`].
    sender: Option<Sender>,
}

impl Lease {
    pub fn new(stats: Arc<MemberStats>) -> Self {
        stats.busy.fetch_add(1, Relaxed);
        Lease {
            stats,
            member: None,
            sender: None,
        }
    }

    pub fn stats(&self) -> &Arc<MemberStats> {
        &self.stats
    }

    /// The connection goes back to the member's idle ones when the response body ends.
    pub fn reuse(&mut self, member: Rc<Member>, sender: Option<Sender>) {
        self.member = Some(member);
        self.sender = sender;
    }

    /// Gives the connection back: hyper's if the exchange ended cleanly, or the lean one.
    fn finish(mut self, clean: bool, lean: Option<upstream::Conn>, now: Instant) {
        let Some(member) = self.member.take() else {
            return;
        };
        if let Some(conn) = lean {
            member.put_lean(conn, now);
        }
        if clean && let Some(sender) = self.sender.take() {
            member.put(sender, now);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stats.busy.fetch_sub(1, Relaxed);
    }
}

/// A response body on its way to the client.
pub struct ResponseBody {
    kind: Kind,
    lease: Option<Lease>,
    /// The HTTP/1 client connection's deadline: once the answer is out, the next head is due.
    deadline: Option<Rc<Deadline>>,
    /// When the lease ended: one reading of the clock for the idle connection and the
    /// deadline.
    released: Option<Instant>,
}

enum Kind {
    Member(Answer),
    Full(Option<Bytes>),
}

/// A member's answer body: from hyper's client, or from the lean exchange.
pub enum Answer {
    Hyper(Incoming),
    Lean(AnswerBody),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Answer::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Answer::Lean(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Hyper(b) => b.is_end_stream(),
            Answer::Lean(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Hyper(b) => b.size_hint(),
            Answer::Lean(b) => b.size_hint(),
        }
    }
}

impl ResponseBody {
    pub fn upstream(answer: Answer, lease: Lease) -> Self {
        ResponseBody {
            kind: Kind::Member(answer),
            lease: Some(lease),
            deadline: None,
            released: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            lease: None,
            deadline: None,
            released: None,
        }
    }

    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full(None),
            lease: None,
            deadline: None,
            released: None,
        }
    }

    /// The fields of a member's answer that came on the lean exchange, passed on as they are;
    /// the response's header map then holds only what the proxy added.
    pub fn raw_head(&self) -> Option<&RawHead> {
        match &self.kind {
            Kind::Member(Answer::Lean(b)) => b.raw_head(),
            _ => None,
        }
    }

    /// The same, taken out, for a response the header map must describe whole (hyper's
    /// server writes it).
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        match &mut self.kind {
            Kind::Member(Answer::Lean(b)) => b.take_raw_head(),
            _ => None,
        }
    }

    /// When this body is done with (sent, or dropped), the connection waits for its next
    /// request head.
    pub fn then_await_head(&mut self, deadline: Rc<Deadline>) {
        self.deadline = Some(deadline);
    }

    fn ended(&self) -> bool {
        match &self.kind {
            Kind::Member(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    /// Ends the lease: the member connection goes back if the answer was read whole (`clean`
    /// for hyper's; the lean one knows for itself).
    fn release(&mut self, clean: bool) {
        if let Some(lease) = self.lease.take() {
            let lean = match &mut self.kind {
                Kind::Member(Answer::Lean(b)) => b.take_idle(),
                _ => None,
            };
            let now = Instant::now();
            self.released = Some(now);
            lease.finish(clean, lean, now);
        }
    }
}

impl ResponseBody {
    /// Done with: what dropping the body does (the member connection goes back when the
    /// answer was read whole; the client connection waits for its next head), in place.
    pub fn finish(&mut self) {
        self.release(self.ended());
        if let Some(deadline) = self.deadline.take() {
            deadline.await_head(self.released.take().unwrap_or_else(Instant::now));
        }
        self.kind = Kind::Full(None);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let answer = match &mut this.kind {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Member(answer) => answer,
        };
        let polled = Pin::new(&mut *answer).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(lease)) = (frame.data_ref(), &this.lease) {
                    lease
                        .stats()
                        .received_bytes
                        .fetch_add(data.len() as u64, Relaxed);
                }
                // The last bytes, or the trailers that end a chunked body (after which hyper's
                // server asks for nothing more): the connection can serve the next request now.
                if frame.is_trailers() || answer.is_end_stream() {
                    this.release(true);
                }
            }
            Poll::Ready(None) => this.release(true),
            // A broken exchange: the connection is not reused (a lean one is already dropped).
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut lease) = this.lease.take() {
                    lease.member = None;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Member(b) => b.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
