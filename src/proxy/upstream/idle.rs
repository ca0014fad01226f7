//! A member's idle connections of one kind, and the shedding of idle lean connections' buffers
//! (the task that does it: `pool::shed_idle`): a connection waiting in the pool for its next
//! request holds its socket and a few hundred bytes, not the 8 KiB its last answer was read
//! into (docs/benchmarks.md, "Memory: huge pages, pooled buffers, the allocator").

use std::cell::RefCell;
use std::time::Duration;

use tokio::time::Instant;

use crate::proxy::http1::conn::Conn;

/// Idle connections kept per member and worker.
const MAX_IDLE_PER_MEMBER: usize = 256;

/// How long a lean connection waits idle before its buffers go. A member that answers
/// steadily takes its connections back well within it, so a busy worker allocates no buffer
/// per request.
pub const SHED_AFTER: Duration = Duration::from_secs(1);

/// Idle connections of one kind, most recently used last, each with the time it went idle.
pub struct IdleList<T>(RefCell<Vec<(T, Instant)>>);

impl<T> IdleList<T> {
    pub fn new() -> Self {
        IdleList(RefCell::new(Vec::new()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// The most recently used connection that has been idle at most `max_idle` at `now`;
    /// older ones are dropped on the way.
    pub fn pop_fresh(&self, max_idle: Duration, now: Instant) -> Option<T> {
        loop {
            let (conn, since) = self.0.borrow_mut().pop()?;
            if now.saturating_duration_since(since) <= max_idle {
                return Some(conn);
            }
        }
    }

    /// Files a connection that went idle at `now`, unless [`MAX_IDLE_PER_MEMBER`] are already
    /// idle.
    pub fn push(&self, conn: T, now: Instant) {
        let mut list = self.0.borrow_mut();
        if list.len() < MAX_IDLE_PER_MEMBER {
            list.push((conn, now));
        }
    }

    /// Closes the connection idle the longest; false when there is none.
    pub fn close_oldest(&self) -> bool {
        let mut list = self.0.borrow_mut();
        if list.is_empty() {
            return false;
        }
        drop(list.remove(0));
        true
    }
}

impl IdleList<Conn> {
    /// Sheds the buffers of the connections idle since `before` or earlier: the oldest come
    /// first in the list.
    pub fn shed_idle_since(&self, before: Instant) {
        for (conn, since) in self.0.borrow_mut().iter_mut() {
            if *since > before {
                break;
            }
            conn.shed();
        }
    }

    /// The bytes of buffer the idle connections hold, the oldest first.
    #[cfg(test)]
    pub fn buffered(&self) -> Vec<usize> {
        self.0.borrow().iter().map(|(c, _)| c.buffered()).collect()
    }
}
