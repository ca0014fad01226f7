//! Each member's connection limit (`memberLimits`), counted over all of a server's workers:
//! connections open to the member (pooled and in use), and the requests waiting for one once
//! that many are open.
//!
//! A new connection takes a [`Permit`] and holds it until it closes. A request that finds none
//! free joins the member's queue, if it has room, and waits there until a connection closes,
//! for at most the queue timeout. The queue is first come, first served: a request that finds
//! others waiting joins them rather than take a connection that closes under their nose.
//!
//! Pools are per worker, so a connection idle in one worker's pool would keep a request
//! waiting in another's: while requests wait, a connection given back is closed rather than
//! pooled, and the workers' pools close their idle connections to the member when a request
//! starts to wait (see `pool`).
//!
//! Counting is a few atomic operations on opening and closing a connection; nothing here runs
//! for a member without a limit, and nothing here locks but the lookup of a gate, once per
//! worker and member, and the queue itself (tokio's `Notify`), only for requests that wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::discovery::Limits;

/// The gates of a server's members, by `HOST:PORT`, shared by its workers.
#[derive(Debug, Default)]
pub struct Gates(Mutex<HashMap<String, Arc<Gate>>>);

impl Gates {
    /// The gate of the member at `authority`, made the first time it is asked for.
    pub fn of(&self, authority: &str) -> Arc<Gate> {
        let mut gates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        gates.entry(authority.to_owned()).or_default().clone()
    }
}

/// One member's connections and the requests waiting for one.
#[derive(Debug, Default)]
pub struct Gate {
    /// Connections open now, over every worker.
    open: AtomicU32,
    /// Requests waiting now, over every worker.
    waiting: AtomicU32,
    /// Idle connections the waiting requests have asked the workers' pools to close.
    evict_wanted: AtomicU32,
    /// Wakes the first waiting request: a connection closed, or a stream freed room.
    freed: Notify,
    /// Wakes the pools, to close idle connections for the waiting requests.
    pub evict: Notify,
}

/// A connection's place under its member's limit, given back when the connection closes (the
/// permit is dropped with it).
#[derive(Debug)]
pub struct Permit(Arc<Gate>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if self.0.waiting() > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// Why a request gets no connection to its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `maxConnections` are open and `maxPendingRequests` wait already.
    QueueFull,
    /// It waited the whole queue timeout.
    QueueTimeout,
}

/// A request's place in the queue: left when dropped (served, refused or given up).
struct Waiting<'a> {
    gate: &'a Gate,
    max: u32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let gate = self.gate;
        if gate.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            gate.evict_wanted.store(0, Ordering::Relaxed);
        } else if gate.open.load(Ordering::Acquire) < self.max {
            // This request may have taken the wake-up meant for a free connection, and leaves
            // without it: the next in line gets it.
            gate.freed.notify_one();
        }
    }
}

impl Gate {
    /// Requests waiting now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// A permit for a new connection, if fewer than `max` are open.
    pub fn try_open(self: &Arc<Self>, max: u32) -> Option<Permit> {
        let mut open = self.open.load(Ordering::Acquire);
        loop {
            if open >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(now) => open = now,
            }
        }
    }

    /// One of the idle connections asked for, to be closed by the pool that holds it; false
    /// when none is asked for (any more).
    pub fn take_eviction(&self) -> bool {
        self.waiting() > 0
            && self
                .evict_wanted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Wakes the waiting requests to look again: room freed that is not a connection (an
    /// HTTP/2 stream).
    pub fn wake_all(&self) {
        if self.waiting() > 0 {
            self.freed.notify_waiters();
        }
    }

    /// What `take` gives (a free connection of the worker's own, or a permit for a new one),
    /// at once or after waiting in the member's queue within `limits`; refused when the queue
    /// is full or the wait runs out. `take` is tried again each time room may have freed.
    pub async fn admit<T>(
        &self,
        limits: &Limits,
        mut take: impl FnMut() -> Option<T>,
    ) -> Result<T, Refused> {
        let max = limits.max_connections.unwrap_or(u32::MAX);
        // First come, first served: with others waiting, this request waits behind them.
        if self.waiting() == 0
            && let Some(taken) = take()
        {
            return Ok(taken);
        }
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limits.max_pending_requests).then_some(n + 1)
            })
            .map_err(|_| Refused::QueueFull)?;
        let _waiting = Waiting { gate: self, max };
        // Idle connections in other workers' pools would keep this request waiting.
        self.evict_wanted.fetch_add(1, Ordering::AcqRel);
        self.evict.notify_waiters();
        let until = Instant::now() + limits.queue_timeout;
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(taken) = take() {
                return Ok(taken);
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return Err(Refused::QueueTimeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max: u32, pending: u32, timeout_ms: u64) -> Limits {
        Limits {
            max_connections: Some(max),
            max_pending_requests: pending,
            queue_timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn permits_up_to_the_limit_then_a_bounded_queue_served_in_order() {
        let gate = Arc::new(Gate::default());
        let l = limits(2, 2, 1_000);
        let take = || gate.try_open(2);
        let a = gate.admit(&l, take).await.expect("first");
        let b = gate.admit(&l, || gate.try_open(2)).await.expect("second");
        assert_eq!(gate.open(), 2);
        // Two wait; a third finds the queue full at once.
        let served = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        for name in ["w1", "w2"] {
            let gate = gate.clone();
            let served = served.clone();
            local.spawn_local(async move {
                let permit = gate.admit(&l, || gate.try_open(2)).await;
                served.borrow_mut().push((name, permit.is_ok()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
        }
        local
            .run_until(async {
                while gate.waiting() < 2 {
                    tokio::task::yield_now().await;
                }
                assert_eq!(
                    gate.admit(&l, || gate.try_open(2)).await.err(),
                    Some(Refused::QueueFull)
                );
                drop(a);
                while served.borrow().is_empty() {
                    tokio::task::yield_now().await;
                }
                assert_eq!(*served.borrow(), [("w1", true)]);
                drop(b);
            })
            .await;
        local.await;
        assert_eq!(*served.borrow(), [("w1", true), ("w2", true)]);
        assert_eq!((gate.open(), gate.waiting()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_runs_out_and_an_empty_queue_refuses_at_once() {
        let gate = Arc::new(Gate::default());
        let _held = gate.try_open(1).expect("one");
        let started = Instant::now();
        let l = limits(1, 1, 300);
        assert_eq!(
            gate.admit(&l, || gate.try_open(1)).await.err(),
            Some(Refused::QueueTimeout)
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(gate.waiting(), 0);
        let none = limits(1, 0, 300);
        assert_eq!(
            gate.admit(&none, || gate.try_open(1)).await.err(),
            Some(Refused::QueueFull)
        );
    }
}
