//! One HTTP/2 connection to a member, shared by the requests in flight on it: its state
//! (opening, open, failed), its streams counted from checkout to the end of the answer, and
//! the waits for it to open. The pool keeps these per member; this file keeps their books.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::body::RequestBody;
use super::gate::Gate;

/// A connection of hyper's HTTP/2 client: cloned for each request sent on it.
pub type H2Sender = http2::SendRequest<RequestBody>;

/// One HTTP/2 connection to a member, shared by the requests in flight on it.
pub struct H2Conn {
    state: RefCell<H2State>,
    /// Streams in flight: counted from the request's checkout to the end of its answer.
    streams: Cell<u32>,
    /// The member's SETTINGS_MAX_CONCURRENT_STREAMS as last seen by the connection's driver.
    pub peer_max: Rc<Cell<usize>>,
    /// When the last stream ended.
    idle_since: Cell<Instant>,
    /// Wakes the requests waiting for the connection to open.
    opened: Notify,
    /// The member's connection limit, whose waiting requests a freed stream may serve.
    gate: Option<Arc<Gate>>,
}

enum H2State {
    Opening,
    Open(H2Sender),
    Failed(Rc<str>),
}

/// A stream slot on an HTTP/2 connection, held from checkout to the end of the answer.
pub struct H2Stream {
    conn: Rc<H2Conn>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let left = self.conn.streams.get().saturating_sub(1);
        self.conn.streams.set(left);
        if left == 0 {
            self.conn.idle_since.set(Instant::now());
        }
        if let Some(gate) = &self.conn.gate {
            gate.wake_all();
        }
    }
}

impl H2Stream {
    /// The connection's sender once it is open, or why it could not be opened.
    pub async fn sender(&self) -> Result<H2Sender, Rc<str>> {
        loop {
            // Registered before the state is read: an opening that ends in between still wakes
            // this wait.
            let opened = self.conn.opened.notified();
            match &*self.conn.state.borrow() {
                H2State::Open(sender) => return Ok(sender.clone()),
                H2State::Failed(cause) => return Err(cause.clone()),
                H2State::Opening => {}
            }
            opened.await;
        }
    }

    /// The connection, to be opened by whoever checked it out new.
    pub fn conn(&self) -> &Rc<H2Conn> {
        &self.conn
    }
}

impl H2Conn {
    /// A new connection, being opened, with the stream of the request that opens it; waiting
    /// requests under the member's connection limit `gate` are woken as its streams end.
    pub fn opening(now: Instant, gate: Option<Arc<Gate>>) -> Rc<H2Conn> {
        Rc::new(H2Conn {
            state: RefCell::new(H2State::Opening),
            streams: Cell::new(0),
            // Until the member's SETTINGS say otherwise, as RFC 9113 lets a client assume.
            peer_max: Rc::new(Cell::new(usize::MAX)),
            idle_since: Cell::new(now),
            opened: Notify::new(),
            gate,
        })
    }

    /// A stream slot on it, counted until the slot is dropped.
    pub fn stream(conn: &Rc<H2Conn>) -> H2Stream {
        conn.streams.set(conn.streams.get() + 1);
        H2Stream { conn: conn.clone() }
    }

    /// Streams in flight on it.
    #[cfg(test)]
    pub fn streams(&self) -> u32 {
        self.streams.get()
    }

    /// The connection opened: the requests waiting for it go on.
    pub fn open(&self, sender: H2Sender) {
        *self.state.borrow_mut() = H2State::Open(sender);
        self.opened.notify_waiters();
    }

    /// The connection could not be opened: the requests waiting for it fail with `cause`.
    pub fn failed(&self, cause: String) {
        *self.state.borrow_mut() = H2State::Failed(Rc::from(cause));
        self.opened.notify_waiters();
    }

    /// Closes it if no stream is in flight on it (for requests waiting under the member's
    /// connection limit); false if it is busy or already closed.
    pub fn close_if_idle(&self) -> bool {
        if !self.is_idle_open() {
            return false;
        }
        // Dropping the sender closes the connection; its driver then gives back its permit.
        *self.state.borrow_mut() = H2State::Failed(Rc::from("closed for requests waiting"));
        true
    }

    /// Open, with no stream in flight.
    pub fn is_idle_open(&self) -> bool {
        self.streams.get() == 0 && matches!(&*self.state.borrow(), H2State::Open(_))
    }

    /// Whether it can take another stream: open or opening, below both limits.
    pub fn has_room(&self, limit: u32) -> bool {
        let limit = (limit as usize).min(self.peer_max.get());
        (self.streams.get() as usize) < limit
    }

    /// Whether it is of no more use: failed or closed, or idle longer than `max_idle`.
    pub fn is_spent(&self, max_idle: Duration, now: Instant) -> bool {
        match &*self.state.borrow() {
            H2State::Opening => false,
            H2State::Failed(_) => true,
            H2State::Open(sender) => {
                sender.is_closed()
                    || (self.streams.get() == 0
                        && now.saturating_duration_since(self.idle_since.get()) > max_idle)
            }
        }
    }
}
