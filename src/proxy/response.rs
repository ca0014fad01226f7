//! A response body on its way to the client: a member's answer, streamed and counted, or an
//! answer of the proxy's own. Ending it (read whole, or dropped) gives the member connection
//! back and starts the client connection's wait for its next head.

use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::deadline::Deadline;
use super::http1::RawHead;
use super::http1::respond::AnswerFields;
use super::upstream::body::{Answer, BoxError};
use super::upstream::lease::Lease;
use crate::telemetry::Observed;

/// A response body on its way to the client.
pub struct ResponseBody {
    kind: Kind,
    lease: Option<Lease>,
    /// The HTTP/1 client connection's deadline: once the answer is out, the next head is due.
    deadline: Option<Rc<Deadline>>,
    /// When the lease ended: one reading of the clock for the idle connection and the
    /// deadline.
    released: Option<Instant>,
    /// The request's record, with the access log or tracing on: finished with the body.
    observed: Option<Box<Observed>>,
}

enum Kind {
    Member(Answer),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(answer: Answer, lease: Lease) -> Self {
        ResponseBody {
            kind: Kind::Member(answer),
            lease: Some(lease),
            deadline: None,
            released: None,
            observed: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            lease: None,
            deadline: None,
            released: None,
            observed: None,
        }
    }

    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full(None),
            lease: None,
            deadline: None,
            released: None,
            observed: None,
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

    /// The request's record: it counts the bytes sent and is finished when the body is.
    pub fn observe(&mut self, observed: Box<Observed>) {
        self.observed = Some(observed);
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

impl AnswerFields for ResponseBody {
    fn raw_head(&self) -> Option<&RawHead> {
        ResponseBody::raw_head(self)
    }

    fn finish(&mut self) {
        ResponseBody::finish(self);
    }
}

impl ResponseBody {
    /// Done with: what dropping the body does (the member connection goes back when the
    /// answer was read whole; the client connection waits for its next head), in place.
    pub fn finish(&mut self) {
        self.release(self.ended());
        if let Some(observed) = self.observed.take() {
            observed.finish();
        }
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
            Kind::Full(bytes) => {
                let bytes = bytes.take();
                if let (Some(b), Some(observed)) = (&bytes, &mut this.observed) {
                    observed.record.bytes_out += b.len() as u64;
                }
                return Poll::Ready(bytes.map(|b| Ok(Frame::data(b))));
            }
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
                if let (Some(data), Some(observed)) = (frame.data_ref(), &mut this.observed) {
                    observed.record.bytes_out += data.len() as u64;
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
                if let Some(lease) = this.lease.take() {
                    lease.broken();
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
