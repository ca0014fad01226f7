//! Keep-alive connections to members, one pool per worker: no lock, no sharing between threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::Duration;

use hyper::client::conn::http1;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::RequestBody;
use crate::proxy::http1::conn::Conn;

/// A connection of hyper's client.
pub type Sender = http1::SendRequest<RequestBody>;

/// Idle connections kept per member and worker.
const MAX_IDLE_PER_MEMBER: usize = 256;

/// Idle connections of one kind, most recently used last, each with the time it went idle.
struct IdleList<T>(RefCell<Vec<(T, Instant)>>);

impl<T> IdleList<T> {
    fn new() -> Self {
        IdleList(RefCell::new(Vec::new()))
    }

    /// The most recently used connection that has been idle at most `max_idle` at `now`;
    /// older ones are dropped on the way.
    fn pop_fresh(&self, max_idle: Duration, now: Instant) -> Option<T> {
        loop {
            let (conn, since) = self.0.borrow_mut().pop()?;
            if now.saturating_duration_since(since) <= max_idle {
                return Some(conn);
            }
        }
    }

    /// Files a connection that went idle at `now`, unless [`MAX_IDLE_PER_MEMBER`] are already
    /// idle.
    fn push(&self, conn: T, now: Instant) {
        let mut list = self.0.borrow_mut();
        if list.len() < MAX_IDLE_PER_MEMBER {
            list.push((conn, now));
        }
    }
}

/// The worker's idle connections, by member `HOST:PORT`.
#[derive(Default)]
pub struct Pool {
    members: RefCell<HashMap<Rc<str>, Rc<Member>, BuildHasherDefault<Fnv>>>,
}

/// One member's idle connections on this worker: looked up once per request, then checked out
/// from and given back to without hashing its name again.
pub struct Member {
    authority: Rc<str>,
    /// hyper's client connections (requests with a body, upgrades).
    idle: IdleList<Sender>,
    /// Connections of the lean exchange (requests without a body).
    lean: IdleList<Conn>,
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

/// Why a new connection to a member could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect: timed out after {0:?}")]
    Timeout(Duration),
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Pool {
    /// The idle connections of the member at `authority`.
    pub fn member(&self, authority: &str) -> Rc<Member> {
        if let Some(member) = self.members.borrow().get(authority) {
            return member.clone();
        }
        let authority: Rc<str> = Rc::from(authority);
        let member = Rc::new(Member {
            authority: authority.clone(),
            idle: IdleList::new(),
            lean: IdleList::new(),
        });
        self.members.borrow_mut().insert(authority, member.clone());
        member
    }
}

impl Member {
    /// `HOST:PORT`.
    pub fn authority(&self) -> &str {
        &self.authority
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
        if !sender.is_closed() {
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

    /// Files a lean connection whose last answer was read whole.
    pub fn put_lean(&self, conn: Conn, now: Instant) {
        self.lean.push(conn, now);
    }
}

/// Opens a TCP connection to a member, with TCP_NODELAY.
pub async fn open(authority: &str, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
