//! An HTTP/1.1 connection to a member for the lean client: the socket and its buffers.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::io::poll_fill;

/// The most bytes an answer head may take (hyper's client allows about 400 KiB; nginx's
/// default `proxy_buffer_size` is 4 or 8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in an answer head (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// The first read's size; doubled up to [`MAX_READ`] while reads fill it.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;

/// An HTTP/1.1 connection to a member, idle between exchanges. Its state lives in one
/// allocation made when the connection opens: the handle moves between the pool, the exchange
/// and the answer body on every request, and a pointer is cheaper to move than the state
/// (docs/benchmarks.md, "Copies").
pub struct Conn(Box<State>);

impl std::ops::Deref for Conn {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

/// What a [`Conn`] holds.
pub struct State {
    pub(super) io: TcpStream,
    /// Received and not yet handed on.
    pub(super) buf: BytesMut,
    /// The request head being written.
    pub(super) out: Vec<u8>,
    read_size: usize,
    /// An exchange has completed on this connection before.
    pub(super) reused: bool,
    /// Whatever must live as long as the connection (its place under its member's connection
    /// limit): dropped when the connection closes.
    held: Option<Box<dyn std::any::Any>>,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn(Box::new(State {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            read_size: FIRST_READ,
            reused: false,
            held: None,
        }))
    }

    /// Keeps `held` for as long as the connection lives.
    pub fn hold(&mut self, held: Box<dyn std::any::Any>) {
        self.0.held = Some(held);
    }

    /// Lets go of the buffers while the connection waits idle in the pool; its next exchange
    /// allocates them again. A read buffer holding bytes (an idle connection has none) stays.
    pub fn shed(&mut self) {
        let state = &mut *self.0;
        if state.buf.is_empty() {
            state.buf = BytesMut::new();
            state.read_size = FIRST_READ;
        }
        state.out = Vec::new();
    }

    /// The bytes of buffer the connection holds, read and write.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.capacity() + self.out.capacity()
    }

    /// Gives the connection the buffers an exchange leaves it with.
    #[cfg(test)]
    pub fn reserve_buffers(&mut self) {
        self.0.buf.reserve(FIRST_READ);
        self.0.out.reserve(256);
    }

    /// True when nothing has arrived on this idle connection: not closed by the member, no
    /// stray bytes. Asks the runtime's readiness, so an idle connection costs no system call
    /// to check; only a connection that became readable is read from.
    pub fn is_idle_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the member closed, sent something unasked, or the readiness is stale.
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let state = &mut *self.0;
        let before = state.buf.len();
        let n = ready!(poll_fill(
            &mut state.io,
            cx,
            &mut state.buf,
            state.read_size
        ))?;
        // A read that filled all the room it had: read more at a time.
        if before + n == state.buf.capacity() && state.read_size < MAX_READ {
            state.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}
