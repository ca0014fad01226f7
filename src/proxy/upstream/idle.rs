//! A member's idle connections of one kind, and the task that sheds the buffers of its idle
//! lean connections: a connection waiting in the pool for its next request holds its socket
//! and a few hundred bytes, not the 8 KiB its last answer was read into (docs/benchmarks.md,
//! "Idle pooled member connections").

use std::cell::RefCell;
use std::rc;
use std::time::Duration;

use tokio::time::Instant;

use super::pool::Member;
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
    fn shed_idle_since(&self, before: Instant) {
        for (conn, since) in self.0.borrow_mut().iter_mut() {
            if *since > before {
                break;
            }
            conn.shed();
        }
    }

    /// The bytes of buffer the idle connections hold, the oldest first.
    #[cfg(test)]
    fn buffered(&self) -> Vec<usize> {
        self.0.borrow().iter().map(|(c, _)| c.buffered()).collect()
    }
}

/// Once every [`SHED_AFTER`] while the member has idle lean connections, sheds the buffers of
/// those idle that long; ends when none is left idle (the next one filed starts it again) or
/// the member is gone.
pub async fn shed_idle(member: rc::Weak<Member>) {
    loop {
        tokio::time::sleep(SHED_AFTER).await;
        let Some(member) = member.upgrade() else {
            return;
        };
        if let Some(before) = Instant::now().checked_sub(SHED_AFTER) {
            member.lean.shed_idle_since(before);
        }
        if member.lean.is_empty() {
            member.shedding.set(false);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::proxy::upstream::pool::Pool;

    /// An idle lean connection keeps its buffers for a second, then lets them go; the task
    /// ends once no connection is idle.
    #[tokio::test(start_paused = true)]
    async fn an_idle_lean_connection_sheds_its_buffers_after_a_second() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("address");
                let stream = TcpStream::connect(addr).await.expect("connect");
                let _server = listener.accept().await.expect("accept");
                let pool = Pool::default();
                let member = pool.member(&addr.to_string());
                let mut conn = Conn::new(stream);
                conn.reserve_buffers();
                let held = conn.buffered();
                assert!(held >= 8 * 1024, "{held}");
                member.put_lean(conn, Instant::now());
                assert!(member.shedding.get());

                tokio::time::sleep(SHED_AFTER / 2).await;
                assert_eq!(member.lean.buffered(), [held], "kept within the second");
                tokio::time::sleep(SHED_AFTER * 2).await;
                assert_eq!(member.lean.buffered(), [0], "shed after it");

                let conn = member.checkout_lean(Duration::from_secs(60), Instant::now());
                assert!(
                    conn.is_some(),
                    "the connection itself stays open and pooled"
                );
                tokio::time::sleep(SHED_AFTER * 2).await;
                assert!(!member.shedding.get(), "no idle connection: the task ended");
            })
            .await;
    }
}
