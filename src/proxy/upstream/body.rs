//! The bodies that cross the upstream side: a request's on its way to a member, counted as bytes
//! sent, and a member's answer, from hyper's client or the lean client.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balancer::MemberStats;
use crate::proxy::http1::answer::AnswerBody;

/// The error of a response body: hyper's, or the lean exchange's (an I/O error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a member: the client's, counted as bytes sent, or none (a
/// replayed body-less request).
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    stats: Option<Arc<MemberStats>>,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> Self {
        RequestBody {
            inner: Some(inner),
            stats: None,
        }
    }

    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            stats: None,
        }
    }

    /// Counts the bytes that follow against `stats`.
    pub fn count_for(&mut self, stats: Arc<MemberStats>) {
        self.stats = Some(stats);
    }
}

impl Body for RequestBody {
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
