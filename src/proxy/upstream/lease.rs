//! A request in flight on a member: counted busy while it lives, and the member connection
//! given back to the worker's pool when the exchange ended cleanly.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use super::exchange::Held;
use super::pool::Member;
use crate::balancer::MemberStats;
use crate::proxy::http1::conn::Conn;

/// A request in flight on a member: counts it busy until dropped, and hands the member
/// connection back to the pool if the exchange ended cleanly.
pub struct Lease {
    stats: Arc<MemberStats>,
    /// Whose idle connections the connection goes back to.
    member: Option<Rc<Member>>,
    /// hyper's client connection, or a stream on an HTTP/2 one; a lean one is held by its
    /// answer's body.
    held: Option<Held>,
}

impl Lease {
    pub fn new(stats: Arc<MemberStats>) -> Self {
        stats.busy.fetch_add(1, Relaxed);
        Lease {
            stats,
            member: None,
            held: None,
        }
    }

    pub fn stats(&self) -> &Arc<MemberStats> {
        &self.stats
    }

    /// The connection goes back to the member's idle ones when the response body ends (an
    /// HTTP/2 stream ends then).
    pub fn reuse(&mut self, member: Rc<Member>, held: Option<Held>) {
        self.member = Some(member);
        self.held = held;
    }

    /// Gives the connection back: hyper's if the exchange ended cleanly, or the lean one.
    pub fn finish(mut self, clean: bool, lean: Option<Conn>, now: Instant) {
        let Some(member) = self.member.take() else {
            return;
        };
        if let Some(conn) = lean {
            member.put_lean(conn, now);
        }
        if clean && let Some(Held::Http1(sender)) = self.held.take() {
            member.put(sender, now);
        }
    }
}

impl Lease {
    /// The exchange broke off: the connection is not given back.
    pub fn broken(mut self) {
        self.member = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stats.busy.fetch_sub(1, Relaxed);
    }
}
