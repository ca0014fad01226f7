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
use super::grpc;
use super::http1::RawHead;
use super::http1::respond::AnswerFields;
use super::upstream::body::{Answer, BoxError, Kept};
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
    /// A gRPC call's answer. Boxed: most answers are not.
    grpc: Option<Box<GrpcCall>>,
    /// The request's record, with the access log or tracing on: finished with the body.
    observed: Option<Box<Observed>>,
}

/// What a gRPC call's answer needs on its way: the call's deadline, and its request body, which
/// is cut off when the deadline passes.
struct GrpcCall {
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    kept: Option<std::rc::Rc<Kept>>,
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
            grpc: None,
            observed: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            lease: None,
            deadline: None,
            released: None,
            grpc: None,
            observed: None,
        }
    }

    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full(None),
            lease: None,
            deadline: None,
            released: None,
            grpc: None,
            observed: None,
        }
    }

    /// The answer to a gRPC call: when the member's stream breaks, or the call's `deadline`
    /// passes (the member's stream is then reset, and the request's body cut off), the answer
    /// ends with trailers giving the status (UNAVAILABLE, DEADLINE_EXCEEDED) rather than with
    /// a reset stream; every status the call ends with is counted against the member.
    pub fn grpc(&mut self, deadline: Option<Instant>, kept: Option<std::rc::Rc<Kept>>) {
        self.grpc = Some(Box::new(GrpcCall {
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            kept,
        }));
    }

    /// Ends a gRPC call's answer with the proxy's own status: the member's stream is let go
    /// (reset), its connection not reused.
    fn end_grpc(&mut self, code: u8, message: &str) -> Frame<Bytes> {
        if let Some(call) = self.grpc.take()
            && let Some(kept) = call.kept
        {
            kept.cut();
        }
        if let Some(lease) = self.lease.take() {
            lease.stats().count_grpc_status(code);
            lease.broken();
        }
        self.kind = Kind::Full(None);
        Frame::trailers(grpc::status_fields(code, message))
    }

    /// The whole of an answer of the proxy's own.
    pub fn full_text(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(bytes) => bytes.as_ref(),
            Kind::Member(_) => None,
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

/// What a poll for a body's next frame gives.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl ResponseBody {
    /// A member's frame in a gRPC call: a broken stream ends the call with trailers of the
    /// proxy's own (returned: the client gets a status, not a cut), the member's own status is
    /// counted.
    #[inline]
    fn grpc_frame(&mut self, polled: &Polled) -> Option<Frame<Bytes>> {
        match polled {
            Poll::Ready(Some(Err(e))) => {
                let message = format!("the member's stream broke: {e}");
                return Some(self.end_grpc(grpc::UNAVAILABLE, &message));
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(lease)) = (frame.trailers_ref(), &self.lease)
                    && let Some(code) = grpc::status_of(trailers)
                {
                    lease.stats().count_grpc_status(code);
                }
            }
            _ => {}
        }
        None
    }

    /// Counts a member's frame, for the member and for the request's record, and gives the
    /// connection back as soon as the answer has ended.
    #[inline]
    fn count(&mut self, polled: &Polled) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(lease)) = (frame.data_ref(), &self.lease) {
                    lease
                        .stats()
                        .received_bytes
                        .fetch_add(data.len() as u64, Relaxed);
                }
                if let (Some(data), Some(observed)) = (frame.data_ref(), &mut self.observed) {
                    observed.record.bytes_out += data.len() as u64;
                }
                // The last bytes, or the trailers that end a chunked body (after which hyper's
                // server asks for nothing more): the connection can serve the next request now.
                if frame.is_trailers() || self.ended() {
                    self.release(true);
                }
            }
            Poll::Ready(None) => self.release(true),
            // A broken exchange: the connection is not reused (a lean one is already dropped).
            Poll::Ready(Some(Err(_))) => {
                if let Some(lease) = self.lease.take() {
                    lease.broken();
                }
            }
            Poll::Pending => {}
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
        if let Some(call) = &mut this.grpc
            && let Some(deadline) = &mut call.deadline
            && deadline.as_mut().poll(cx).is_ready()
            && matches!(this.kind, Kind::Member(_))
        {
            let trailers = this.end_grpc(grpc::DEADLINE_EXCEEDED, "the call's deadline passed");
            return Poll::Ready(Some(Ok(trailers)));
        }
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
        if this.grpc.is_some()
            && let Some(trailers) = this.grpc_frame(&polled)
        {
            return Poll::Ready(Some(Ok(trailers)));
        }
        this.count(&polled);
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
