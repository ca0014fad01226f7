//! The bodies that cross the upstream side: a request's on its way to a member, counted as bytes
//! sent (and kept, where it may have to go to another member), and a member's answer, from
//! hyper's clients or the lean client.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

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
    inner: Source,
    stats: Option<Arc<MemberStats>>,
    /// The client's idle limit while its body is read (boxed: most requests have no body).
    idle: Option<Box<Idle>>,
}

/// nginx's `client_body_timeout`: the client must send some of its body within `timeout` of
/// the last bytes, while the body is being read. The timer runs only while the body is waited
/// for, so a member that reads slowly never makes the client late.
#[derive(Debug)]
struct Idle {
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes came since the sleep was last armed.
    progressed: bool,
}

/// The client sent nothing of its request body for the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes from the client for {0:?}")]
pub struct BodyTimeout(pub Duration);

#[derive(Debug)]
enum Source {
    None,
    Incoming(Incoming),
    /// A body that can be sent again, or cut off: the attempt it belongs to, and how many of
    /// the kept frames this attempt has sent.
    Kept(Rc<Kept>, u32, usize),
}

/// The most of a request body kept so that it can be sent to another member.
pub const KEEP_LIMIT: usize = 64 * 1024;

/// A request body shared by a request's attempts: the frames read from the client so far (while
/// they fit in [`KEEP_LIMIT`]), and the rest, still to be read. Only the current attempt reads
/// it; an earlier attempt's body, still held by its stream, fails, so that the stream it feeds
/// is reset rather than ended as if the body were whole.
pub struct Kept {
    rest: RefCell<Option<Incoming>>,
    frames: RefCell<Vec<Bytes>>,
    kept_bytes: Cell<usize>,
    /// Every frame read so far is kept.
    whole: Cell<bool>,
    /// The body's end was read.
    ended: Cell<bool>,
    attempt: Cell<u32>,
    /// The request was cut off (its deadline passed): the current attempt fails too.
    cut: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

/// Why a kept body stopped: a later attempt took over, or the request was cut off.
#[derive(Debug, thiserror::Error)]
#[error("request body cut off: {0}")]
pub struct Cut(&'static str);

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("kept_bytes", &self.kept_bytes.get())
            .field("whole", &self.whole.get())
            .field("attempt", &self.attempt.get())
            .finish_non_exhaustive()
    }
}

impl Kept {
    /// Whether the body can be sent again from its first byte.
    pub fn can_again(&self) -> bool {
        self.whole.get() && !self.cut.get()
    }

    /// Cuts the request off: the stream reading its body is reset.
    pub fn cut(&self) {
        self.cut.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl RequestBody {
    /// A client's body, which must keep coming: at most `timeout` between its bytes.
    pub fn from_client(inner: Incoming, timeout: Duration) -> Self {
        let idle = (!inner.is_end_stream()).then(|| {
            Box::new(Idle {
                timeout,
                sleep: None,
                progressed: false,
            })
        });
        RequestBody {
            inner: Source::Incoming(inner),
            stats: None,
            idle,
        }
    }

    pub fn empty() -> Self {
        RequestBody {
            inner: Source::None,
            stats: None,
            idle: None,
        }
    }

    /// Counts the bytes that follow against `stats`.
    pub fn count_for(&mut self, stats: Arc<MemberStats>) {
        self.stats = Some(stats);
    }

    /// Makes the body one that can be sent again, or cut off; gives its shared state.
    pub fn keep(&mut self) -> Option<Rc<Kept>> {
        match std::mem::replace(&mut self.inner, Source::None) {
            Source::Incoming(incoming) => {
                let kept = Rc::new(Kept {
                    rest: RefCell::new(Some(incoming)),
                    frames: RefCell::new(Vec::new()),
                    kept_bytes: Cell::new(0),
                    whole: Cell::new(true),
                    ended: Cell::new(false),
                    attempt: Cell::new(0),
                    cut: Cell::new(false),
                    waker: Cell::new(None),
                });
                self.inner = Source::Kept(kept.clone(), 0, 0);
                Some(kept)
            }
            Source::Kept(kept, attempt, sent) => {
                self.inner = Source::Kept(kept.clone(), attempt, sent);
                Some(kept)
            }
            Source::None => None,
        }
    }

    /// The same body again, for another attempt, from its first byte: `None` when part of what
    /// was sent was not kept.
    pub fn again(kept: &Rc<Kept>) -> Option<RequestBody> {
        if !kept.whole.get() || kept.cut.get() {
            return None;
        }
        let attempt = kept.attempt.get() + 1;
        kept.attempt.set(attempt);
        if let Some(waker) = kept.waker.take() {
            waker.wake();
        }
        // Without the client's idle limit: the kept frames come at once, and the rest, if
        // any, within the member's response timeout.
        Some(RequestBody {
            inner: Source::Kept(kept.clone(), attempt, 0),
            stats: None,
            idle: None,
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Source::None => return Poll::Ready(None),
            Source::Incoming(inner) => Pin::new(inner).poll_frame(cx).map_err(BoxError::from),
            Source::Kept(kept, attempt, sent) => poll_kept(kept, *attempt, sent, cx),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(stats)) = (&polled, &this.stats)
            && let Some(data) = frame.data_ref()
        {
            stats.sent_bytes.fetch_add(data.len() as u64, Relaxed);
        }
        if let Some(idle) = &mut this.idle {
            match polled {
                Poll::Pending => {
                    if idle.expired(cx) {
                        let timeout = idle.timeout;
                        this.idle = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))));
                    }
                }
                Poll::Ready(Some(Ok(_))) => idle.progressed = true,
                Poll::Ready(_) => this.idle = None,
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::None => true,
            Source::Incoming(inner) => inner.is_end_stream(),
            Source::Kept(kept, _, sent) => {
                kept.ended.get() && *sent >= kept.frames.borrow().len()
                    || (kept.frames.borrow().is_empty()
                        && kept.rest.borrow().as_ref().is_some_and(Body::is_end_stream))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::None => SizeHint::with_exact(0),
            Source::Incoming(inner) => inner.size_hint(),
            Source::Kept(kept, _, _) => match &*kept.rest.borrow() {
                Some(rest) if kept.kept_bytes.get() == 0 => rest.size_hint(),
                _ => SizeHint::default(),
            },
        }
    }
}

impl Idle {
    /// The body is waited for: true once the client has sent nothing for the timeout. The
    /// sleep is armed at the first wait and moved only when bytes came since (one clock read
    /// per wait, none per frame).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if std::mem::take(&mut self.progressed) {
            sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The next frame of a kept body for attempt `attempt`: a kept one again, or the next from the
/// client (kept while it fits).
fn poll_kept(
    kept: &Kept,
    attempt: u32,
    sent: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if kept.attempt.get() != attempt {
        return Poll::Ready(Some(Err(Cut("the request went to another member").into())));
    }
    if kept.cut.get() {
        return Poll::Ready(Some(Err(Cut("the call's deadline passed").into())));
    }
    if let Some(frame) = kept.frames.borrow().get(*sent) {
        *sent += 1;
        return Poll::Ready(Some(Ok(Frame::data(frame.clone()))));
    }
    if kept.ended.get() {
        return Poll::Ready(None);
    }
    let mut rest = kept.rest.borrow_mut();
    let Some(incoming) = rest.as_mut() else {
        return Poll::Ready(None);
    };
    match Pin::new(incoming).poll_frame(cx) {
        Poll::Pending => {
            kept.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
        Poll::Ready(None) => {
            kept.ended.set(true);
            Poll::Ready(None)
        }
        Poll::Ready(Some(Ok(frame))) => {
            match frame.data_ref() {
                Some(data) if kept.whole.get() => {
                    let total = kept.kept_bytes.get() + data.len();
                    if total <= KEEP_LIMIT {
                        kept.kept_bytes.set(total);
                        kept.frames.borrow_mut().push(data.clone());
                        *sent += 1;
                    } else {
                        kept.whole.set(false);
                        kept.frames.borrow_mut().clear();
                    }
                }
                Some(_) => {}
                // Trailers are not kept: a body with them cannot be sent again.
                None => kept.whole.set(false),
            }
            Poll::Ready(Some(Ok(frame)))
        }
        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
    }
}

/// A member's answer body: from hyper's client, or from the lean exchange.
pub enum Answer {
    Hyper(Incoming),
    Lean(AnswerBody),
}

impl From<AnswerBody> for Answer {
    fn from(body: AnswerBody) -> Self {
        Answer::Lean(body)
    }
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
