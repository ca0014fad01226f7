//! Running a client connection to its end: a graceful shutdown when the worker stops, and the
//! HTTP/1 connection's one timer (see [`Deadline`]), which also says when an idle lean
//! connection should park.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

use crate::proxy::deadline::{Deadline, Fired};

/// The worker's stop as its client connections wait for it. A connection checks it on every
/// poll, so the check is a flag read; its waker is filed once, when it first waits (a `watch`
/// receiver in a `select!` would take a lock on every poll).
#[derive(Default)]
pub struct Stopping {
    stopped: Cell<bool>,
    /// Wakers of the connections waiting, by slot; freed slots are reused.
    waiting: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
    /// How many of the worker's connections are parked now (`park::Lot`).
    parked: Cell<usize>,
}

impl Stopping {
    pub fn stop(&self) {
        self.stopped.set(true);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for waker in waiting.into_iter().flatten() {
            waker.wake();
        }
    }

    /// True once the worker stops.
    pub fn stopped(&self) -> bool {
        self.stopped.get()
    }

    /// How many of the worker's connections are parked now.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    pub(super) fn count_parked(&self, by: isize) {
        self.parked.set(self.parked.get().saturating_add_signed(by));
    }
}

/// What the driver asks of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// The worker stops: finish gracefully.
    Stop,
    /// It has waited for its next head for a while: leave the runtime if it can
    /// ([`Fired::Park`]).
    Park,
}

/// One connection's (or the parking lot's) wait for the worker's stop.
pub(super) struct StopWait {
    stopping: Rc<Stopping>,
    /// Its slot in `Stopping::waiting` and the waker filed there.
    filed: Option<(usize, Waker)>,
}

impl StopWait {
    pub(super) fn new(stopping: Rc<Stopping>) -> Self {
        StopWait {
            stopping,
            filed: None,
        }
    }

    /// True once the worker stops; until then, the task is woken when it does.
    pub(super) fn poll_stopped(&mut self, cx: &Context<'_>) -> bool {
        if self.stopping.stopped.get() {
            return true;
        }
        match &self.filed {
            Some((_, waker)) if waker.will_wake(cx.waker()) => {}
            Some((slot, _)) => {
                let slot = *slot;
                if let Some(entry) = self.stopping.waiting.borrow_mut().get_mut(slot) {
                    *entry = Some(cx.waker().clone());
                }
                self.filed = Some((slot, cx.waker().clone()));
            }
            None => {
                let mut waiting = self.stopping.waiting.borrow_mut();
                let slot = match self.stopping.free.borrow_mut().pop() {
                    Some(slot) => {
                        waiting[slot] = Some(cx.waker().clone());
                        slot
                    }
                    None => {
                        waiting.push(Some(cx.waker().clone()));
                        waiting.len() - 1
                    }
                };
                self.filed = Some((slot, cx.waker().clone()));
            }
        }
        false
    }
}

impl Drop for StopWait {
    fn drop(&mut self) {
        if let Some((slot, _)) = self.filed.take()
            && !self.stopping.stopped.get()
            && let Some(entry) = self.stopping.waiting.borrow_mut().get_mut(slot)
        {
            *entry = None;
            self.stopping.free.borrow_mut().push(slot);
        }
    }
}

/// Runs a client connection to its end, asking it (`ask`) to shut down gracefully when the
/// worker stops. An HTTP/1 connection also keeps its one timer (`deadline`): it closes when a
/// request head does not arrive in time, a request waiting too long for its member's answer
/// learns so from `deadline`, and an idle one is asked to park. HTTP/2 connections time each
/// request on their own and pass `None`.
pub async fn drive<C, T, E>(
    conn: C,
    ask: impl Fn(Pin<&mut C>, Ask),
    deadline: Option<Rc<Deadline>>,
    stopping: Rc<Stopping>,
    peer: SocketAddr,
) -> Option<T>
where
    C: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    if let Some(deadline) = &deadline {
        deadline.new_driver();
    }
    let mut conn = std::pin::pin!(conn);
    let mut stop = Some(StopWait::new(stopping));
    let mut sleep = std::pin::pin!(
        deadline
            .as_ref()
            .map(|d| tokio::time::sleep_until(d.armed()))
    );
    let result = std::future::poll_fn(|cx| {
        if let Some(wait) = stop.as_mut()
            && wait.poll_stopped(cx)
        {
            stop = None;
            ask(conn.as_mut(), Ask::Stop);
        }
        loop {
            if let (Some(deadline), Some(mut sleep)) =
                (deadline.as_deref(), sleep.as_mut().as_pin_mut())
                && deadline.due(sleep.is_elapsed())
            {
                match fire(deadline, sleep.as_mut(), cx, || {
                    ask(conn.as_mut(), Ask::Park)
                }) {
                    Timer::HeadTimeout => return Poll::Ready(Err(None)),
                    Timer::Due => continue,
                    Timer::Armed => {}
                }
            }
            match conn.as_mut().poll(cx) {
                Poll::Ready(result) => return Poll::Ready(result.map_err(Some)),
                // The request path moved the deadline sooner than the sleep is armed for.
                Poll::Pending if deadline.as_deref().is_some_and(|d| d.due(false)) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    ended(result, peer)
}

/// What the timer's firing means: the head came too late, the sleep is due again already, or
/// it is armed for the next time.
enum Timer {
    HeadTimeout,
    Due,
    Armed,
}

/// Fires the deadline that is due: re-arms the sleep for its next time, and asks an idle
/// connection to park (`park`) when that is what it came for.
#[inline]
fn fire(
    deadline: &Deadline,
    mut sleep: Pin<&mut tokio::time::Sleep>,
    cx: &mut Context<'_>,
    park: impl FnOnce(),
) -> Timer {
    match deadline.fire(Instant::now()) {
        Fired::HeadTimeout => return Timer::HeadTimeout,
        Fired::Rearm(at) => sleep.as_mut().reset(at),
        Fired::Park(at) => {
            sleep.as_mut().reset(at);
            park();
        }
    }
    if sleep.poll(cx).is_ready() {
        Timer::Due
    } else {
        Timer::Armed
    }
}

/// How the connection ended, logged when it was not by its own end.
fn ended<T, E: std::fmt::Display>(result: Result<T, Option<E>>, peer: SocketAddr) -> Option<T> {
    match result {
        Ok(ended) => Some(ended),
        Err(None) => {
            tracing::debug!(client = %peer, "closed: no whole request head within the header-read timeout");
            None
        }
        Err(Some(e)) => {
            tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
            None
        }
    }
}
