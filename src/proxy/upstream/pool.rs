//! Keep-alive connections to members, one pool per worker: no lock, no sharing between threads.
//! HTTP/1 connections carry one request at a time and wait idle between them; an HTTP/2
//! connection is shared by the requests in flight on it, up to a limit of streams, beyond which
//! another is opened (each such connection's books: `h2_conn.rs`).
//!
//! Members reached over TLS (`https://`) have entries of their own, per client configuration
//! (`spec.upstreamTLS`): a TLS connection never serves a plain member or another cluster's
//! configuration (its CA, its client certificate), and one made with a configuration since
//! replaced (a rotated CA or client certificate) is not taken again.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::{self, Rc};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::client::conn::http1;
use tokio::time::Instant;

use super::body::RequestBody;
use super::gate::{Gate, Gates, Permit, Refused};
use super::h2_conn::{H2Conn, H2Stream};
use super::idle::{IdleList, SHED_AFTER};
use crate::discovery::Limits;
use crate::proxy::http1::conn::Conn;
use crate::tls;

/// A connection of hyper's client.
pub type Sender = http1::SendRequest<RequestBody>;

/// A request's wait for a place under its member's connection limit, boxed.
pub type Admitting<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Permit, Refused>> + 'a>>;

type ByAuthority = HashMap<Rc<str>, Rc<Member>, BuildHasherDefault<Fnv>>;

/// The worker's idle connections, by member `HOST:PORT`; those of `https://` members by client
/// configuration first.
#[derive(Default)]
pub struct Pool {
    members: RefCell<ByAuthority>,
    tls: RefCell<Vec<TlsMembers>>,
    /// The members' connection limits, shared with the server's other workers.
    gates: Arc<Gates>,
}

/// The `https://` members reached with one client configuration. The `Weak` is its identity:
/// it keeps the configuration's allocation (not the configuration) while the entry lives, so
/// no other configuration can come at the same address; `Weak::new()` stands for a cluster
/// whose configuration could not be loaded.
struct TlsMembers {
    upstream: Weak<tls::Upstream>,
    members: ByAuthority,
}

impl TlsMembers {
    fn is_for(&self, upstream: Option<&Arc<tls::Upstream>>) -> bool {
        match upstream {
            Some(u) => std::ptr::eq(self.upstream.as_ptr(), Arc::as_ptr(u)),
            None => Weak::ptr_eq(&self.upstream, &Weak::new()),
        }
    }
}

/// One member's idle connections on this worker: looked up once per request, then checked out
/// from and given back to without hashing its name again.
pub struct Member {
    authority: Rc<str>,
    /// `Some` for an `https://` member: the client configuration its connections are made
    /// with, which is gone (or never was: `Weak::new()`) when the cluster's could not be loaded.
    tls: Option<Weak<tls::Upstream>>,
    /// hyper's client connections (requests with a body, upgrades).
    idle: IdleList<Sender>,
    /// Connections of the lean exchange (requests without a body).
    lean: IdleList<Conn>,
    /// Whether a task sheds the buffers of the idle lean connections ([`shed_idle`]).
    shedding: Cell<bool>,
    /// HTTP/2 connections (members spoken to in h2c or h2), open or being opened.
    h2: RefCell<Vec<Rc<H2Conn>>>,
    /// The member's connection limit, from the first request that had one.
    gate: OnceCell<Arc<Gate>>,
    gates: Arc<Gates>,
}

/// FNV-1a for the pool's keys: a few short `HOST:PORT` strings of our own members, looked up
/// once per request, where SipHash's protection against chosen keys buys nothing.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Pool {
    /// A worker's pool, whose members' connection limits are counted in `gates` (shared with
    /// the server's other workers).
    pub fn new(gates: Arc<Gates>) -> Self {
        Pool {
            members: RefCell::default(),
            tls: RefCell::default(),
            gates,
        }
    }

    /// The idle connections of the member at `authority`.
    pub fn member(&self, authority: &str) -> Rc<Member> {
        if let Some(member) = self.members.borrow().get(authority) {
            return member.clone();
        }
        let authority: Rc<str> = Rc::from(authority);
        let member = Rc::new(Member::new(authority.clone(), None, self.gates.clone()));
        self.members.borrow_mut().insert(authority, member.clone());
        member
    }

    /// The idle connections of the `https://` member at `authority`, reached with `upstream`,
    /// the cluster's client configuration (`None`: it could not be loaded, and every connection
    /// fails with [`ConnectError::NoTlsConfig`]).
    pub fn tls_member(&self, upstream: Option<&Arc<tls::Upstream>>, authority: &str) -> Rc<Member> {
        if let Some(entry) = self.tls.borrow().iter().find(|e| e.is_for(upstream))
            && let Some(member) = entry.members.get(authority)
        {
            return member.clone();
        }
        let mut entries = self.tls.borrow_mut();
        // Configurations no snapshot serves any more go, with their idle connections.
        entries.retain(|e| e.upstream.strong_count() > 0 || e.is_for(upstream));
        let position = match entries.iter().position(|e| e.is_for(upstream)) {
            Some(at) => at,
            None => {
                entries.push(TlsMembers {
                    upstream: upstream.map_or_else(Weak::new, Arc::downgrade),
                    members: ByAuthority::default(),
                });
                entries.len() - 1
            }
        };
        let entry = &mut entries[position];
        let authority: Rc<str> = Rc::from(authority);
        let member = Rc::new(Member::new(
            authority.clone(),
            Some(entry.upstream.clone()),
            self.gates.clone(),
        ));
        entry.members.insert(authority, member.clone());
        member
    }
}

/// Closes a worker's idle connections to a member when requests wait for a connection to it
/// (in any worker), as many as they ask for. Runs as long as the worker.
async fn close_idle_for_waiting(member: rc::Weak<Member>, gate: Arc<Gate>) {
    loop {
        let asked = gate.evict.notified();
        let mut asked = std::pin::pin!(asked);
        asked.as_mut().enable();
        let Some(member) = member.upgrade() else {
            return;
        };
        while member.has_idle() && gate.take_eviction() {
            member.close_one_idle();
        }
        drop(member);
        asked.await;
    }
}

/// Once every [`SHED_AFTER`] while the member has idle lean connections, sheds the buffers of
/// those idle that long; ends when none is left idle (the next one filed starts it again) or
/// the member is gone.
async fn shed_idle(member: rc::Weak<Member>) {
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

impl Member {
    fn new(authority: Rc<str>, tls: Option<Weak<tls::Upstream>>, gates: Arc<Gates>) -> Member {
        Member {
            authority,
            tls,
            idle: IdleList::new(),
            lean: IdleList::new(),
            shedding: Cell::new(false),
            h2: RefCell::new(Vec::new()),
            gate: OnceCell::new(),
            gates,
        }
    }

    /// `HOST:PORT`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The member's connection limit, counted with the server's other workers; the first call
    /// on a worker starts the task that closes its idle connections for waiting requests.
    pub fn gate(self: &Rc<Self>) -> &Arc<Gate> {
        self.gate.get_or_init(|| {
            let gate = self.gates.of(&self.authority);
            tokio::task::spawn_local(close_idle_for_waiting(Rc::downgrade(self), gate.clone()));
            gate
        })
    }

    /// The wait for a permit for a new connection under the member's limit, at once or after
    /// waiting in its queue; `None` when the member has no limit. Boxed, and only with a limit:
    /// the wait's state stays out of every request's future.
    pub fn admit<'a>(self: &'a Rc<Self>, limits: &'a Limits) -> Option<Admitting<'a>> {
        let max = limits.max_connections?;
        let gate = self.gate();
        Some(Box::pin(gate.admit(limits, move || gate.try_open(max))))
    }

    /// Whether requests wait for a connection to the member: a connection given back then is
    /// closed, so that one of them may open its own (in whichever worker it waits).
    fn wanted_elsewhere(&self) -> bool {
        self.gate.get().is_some_and(|gate| gate.waiting() > 0)
    }

    fn has_idle(&self) -> bool {
        !self.lean.is_empty()
            || !self.idle.is_empty()
            || self.h2.borrow().iter().any(|c| c.is_idle_open())
    }

    fn close_one_idle(&self) {
        let _ = self.lean.close_oldest()
            || self.idle.close_oldest()
            || self.h2.borrow().iter().any(|c| c.close_if_idle());
    }

    /// For an `https://` member, the client configuration its connections are made with.
    pub fn tls(&self) -> Option<&Weak<tls::Upstream>> {
        self.tls.as_ref()
    }

    /// An idle connection that is still open and younger than `max_idle` at `now`.
    pub async fn checkout(&self, max_idle: Duration, now: Instant) -> Option<Sender> {
        loop {
            let mut sender = self.idle.pop_fresh(max_idle, now)?;
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Files a connection whose last exchange ended cleanly.
    pub fn put(&self, sender: Sender, now: Instant) {
        if !sender.is_closed() && !self.wanted_elsewhere() {
            self.idle.push(sender, now);
        }
    }

    /// An idle lean connection that is still open and younger than `max_idle` at `now`: the
    /// most recently used first.
    pub fn checkout_lean(&self, max_idle: Duration, now: Instant) -> Option<Conn> {
        loop {
            let conn = self.lean.pop_fresh(max_idle, now)?;
            if conn.is_idle_open() {
                return Some(conn);
            }
        }
    }

    /// Files a lean connection whose last answer was read whole; the first one filed starts
    /// the task that sheds the buffers of those left idle ([`shed_idle`]).
    pub fn put_lean(self: &Rc<Self>, conn: Conn, now: Instant) {
        if !self.wanted_elsewhere() {
            self.lean.push(conn, now);
            if !self.shedding.replace(true) {
                tokio::task::spawn_local(shed_idle(Rc::downgrade(self)));
            }
        }
    }

    /// A stream slot on an HTTP/2 connection with room for one more (at most `limit` streams,
    /// and no more than the member allows), the most recently opened first; or on a new one,
    /// which the caller must then open (the `bool`). Connections that failed, closed, or stayed
    /// idle longer than `max_idle` are dropped on the way.
    pub fn checkout_h2(&self, limit: u32, max_idle: Duration, now: Instant) -> (H2Stream, bool) {
        match self.checkout_h2_open(limit, max_idle, now) {
            Some(stream) => (stream, false),
            None => (self.new_h2(now), true),
        }
    }

    /// A stream slot on an HTTP/2 connection open or opening with room for one more, if any.
    pub fn checkout_h2_open(
        &self,
        limit: u32,
        max_idle: Duration,
        now: Instant,
    ) -> Option<H2Stream> {
        let mut conns = self.h2.borrow_mut();
        conns.retain(|c| !c.is_spent(max_idle, now));
        let conn = conns.iter().rev().find(|c| c.has_room(limit))?;
        Some(H2Conn::stream(conn))
    }

    /// A stream slot on a new HTTP/2 connection, which the caller must open.
    pub fn new_h2(&self, now: Instant) -> H2Stream {
        let conn = H2Conn::opening(now, self.gate.get().cloned());
        self.h2.borrow_mut().push(conn.clone());
        H2Conn::stream(&conn)
    }

    /// HTTP/2 connections open or opening, and the streams in flight on them.
    #[cfg(test)]
    pub fn h2_load(&self) -> Vec<u32> {
        self.h2.borrow().iter().map(|c| c.streams()).collect()
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Streams fill a connection up to the limit before another is opened; the member's own
    /// lower limit wins; a freed slot is taken again before a new connection is opened.
    #[test]
    fn streams_share_a_connection_up_to_the_limit() {
        let pool = Pool::default();
        let member = pool.member("127.0.0.1:1");
        let now = Instant::now();
        let idle = Duration::from_secs(90);
        let mut held = Vec::new();
        let mut opened = 0;
        for _ in 0..5 {
            let (stream, new) = member.checkout_h2(2, idle, now);
            opened += usize::from(new);
            held.push(stream);
        }
        assert_eq!((opened, member.h2_load()), (3, vec![2, 2, 1]));
        held.remove(0);
        let (again, new) = member.checkout_h2(2, idle, now);
        assert!(!new, "a freed slot is taken, the newest connection's first");
        assert_eq!(member.h2_load(), vec![1, 2, 2]);
        held.push(again);
        // The member allows one stream per connection: none has room under 100.
        for conn in member.h2.borrow().iter() {
            conn.peer_max.set(1);
        }
        let (_, new) = member.checkout_h2(100, idle, now);
        assert!(new, "none has room under the member's own limit");
        // A connection that could not be opened is dropped at the next checkout.
        held[0].conn().failed("connect: refused".to_owned());
        drop(held);
        let (_kept, new) = member.checkout_h2(100, idle, now);
        assert!(
            !new,
            "the newest, which the member has not limited, has room"
        );
        assert_eq!(member.h2_load(), vec![0, 0, 1], "the failed one is gone");
    }

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
