//! Listeners and workers: one current-thread runtime per worker, each with its own
//! `SO_REUSEPORT` listener on the same address, its own connection pool, and graceful stop.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::body::UpstreamBody;
use super::deadline::{Deadline, Fired};
use super::forward::{self, Worker};
use super::lean;
use super::pool::Pool;
use crate::plane::DataPlane;

/// How the data plane listens and protects itself from clients.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    pub listen: SocketAddr,
    pub workers: usize,
    pub access_log: bool,
    /// A client must send a whole request head within this time.
    pub header_read_timeout: Duration,
    /// At most this many request headers.
    pub max_headers: usize,
    /// At most this many bytes of request head.
    pub max_header_bytes: usize,
}

impl ProxyOptions {
    pub fn new(listen: SocketAddr) -> Self {
        ProxyOptions {
            listen,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            access_log: false,
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// A running data plane.
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the listeners and starts the workers. Fails (naming the address) when the address
    /// cannot be bound.
    pub fn start(plane: Arc<DataPlane>, options: ProxyOptions) -> io::Result<Server> {
        let workers = options.workers.max(1);
        if options.listen.port() != 0 {
            // SO_REUSEPORT would let a second instance share our port silently: make sure the
            // port is free first, so that it fails loudly instead.
            let probe = Socket::new(
                Domain::for_address(options.listen),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            probe.set_reuse_address(true)?;
            probe
                .bind(&options.listen.into())
                .map_err(|e| named(options.listen, e))?;
        }
        let first = bind(options.listen)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(bind(local_addr)?);
        }
        let (stop, stop_rx) = watch::channel(None);
        let mut handles = Vec::with_capacity(workers);
        for (i, listener) in listeners.into_iter().enumerate() {
            let plane = plane.clone();
            let options = options.clone();
            let stop_rx = stop_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("kb-worker-{i}"))
                .spawn(move || run_worker(listener, plane, options, stop_rx))?;
            handles.push(handle);
        }
        Ok(Server {
            local_addr,
            stop,
            workers: handles,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish for up to `grace`, then returns.
    /// Blocking: call it from a blocking context.
    pub fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn named(addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into()).map_err(|e| named(addr, e))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn run_worker(
    listener: std::net::TcpListener,
    plane: Arc<DataPlane>,
    options: ProxyOptions,
    stop: watch::Receiver<Option<Duration>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    // The accept loop is a task of its own: the future `block_on` drives is polled on every
    // wake-up of the LocalSet (every request), a task only when its own events fire.
    let accepting = local.spawn_local(async move {
        if let Err(e) = accept_loop(listener, plane, options, stop).await {
            tracing::error!(error = %e, "worker stopped");
        }
    });
    if let Err(e) = local.block_on(&runtime, accepting) {
        tracing::error!(error = %e, "worker stopped");
    }
}

/// Runs futures on the worker's own thread (hyper's HTTP/2 streams).
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

struct Tracker {
    open: Cell<usize>,
    idle: Notify,
}

/// One open client connection, counted in its worker's [`Tracker`] while it lives.
struct Open(Rc<Tracker>);

impl Open {
    fn new(tracker: Rc<Tracker>) -> Self {
        tracker.open.set(tracker.open.get() + 1);
        Open(tracker)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let tracker = &self.0;
        tracker.open.set(tracker.open.get() - 1);
        if tracker.open.get() == 0 {
            tracker.idle.notify_waiters();
        }
    }
}

/// The worker's stop as its client connections wait for it. A connection checks it on every
/// poll, so the check is a flag read; its waker is filed once, when it first waits (a `watch`
/// receiver in a `select!` would take a lock on every poll).
#[derive(Default)]
struct Stopping {
    stopped: Cell<bool>,
    /// Wakers of the connections waiting, by slot; freed slots are reused.
    waiting: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Stopping {
    fn stop(&self) {
        self.stopped.set(true);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for waker in waiting.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// One connection's wait for the worker's stop.
struct StopWait {
    stopping: Rc<Stopping>,
    /// Its slot in `Stopping::waiting` and the waker filed there.
    filed: Option<(usize, Waker)>,
}

impl StopWait {
    fn new(stopping: Rc<Stopping>) -> Self {
        StopWait {
            stopping,
            filed: None,
        }
    }

    /// True once the worker stops; until then, the task is woken when it does.
    fn poll_stopped(&mut self, cx: &Context<'_>) -> bool {
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

async fn accept_loop(
    listener: std::net::TcpListener,
    plane: Arc<DataPlane>,
    options: ProxyOptions,
    mut stop: watch::Receiver<Option<Duration>>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let worker = Rc::new(Worker {
        plane,
        pool: Rc::new(Pool::default()),
        buffers: Default::default(),
        access_log: options.access_log,
        limits: lean::Limits {
            max_headers: options.max_headers,
            max_head_bytes: options.max_header_bytes,
        },
    });
    let mut http1 = http1::Builder::new();
    http1
        // The header-read timeout is the connection's own timer (see `deadline`), not a
        // timer hyper registers and cancels on every request.
        .header_read_timeout(None)
        .max_headers(options.max_headers)
        .max_header_size(options.max_header_bytes)
        .max_buf_size(options.max_header_bytes.max(8192))
        .writev(true);
    let mut http2 = http2::Builder::new(LocalExec);
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let builders = Rc::new(Builders { http1, http2 });
    let tracker = Rc::new(Tracker {
        open: Cell::new(0),
        idle: Notify::new(),
    });
    let stopping = Rc::new(Stopping::default());

    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Boxed, not wrapped in another future (which would store it twice). A task's
                // cell is aligned to 128 bytes; holding the connection's future inline, its size
                // is no power of two, and mimalloc then over-allocates every one of them by
                // 127 bytes on a slow path (about 500 instructions). Holding a box, the cell is
                // small and the future's own block an ordinary one.
                let open = Open::new(tracker.clone());
                tokio::task::spawn_local(Box::pin(serve(stream, peer, worker.clone(), builders.clone(), stopping.clone(), options.header_read_timeout, open)));
            }
            changed = stop.changed() => {
                let grace = *stop.borrow();
                match (changed, grace) {
                    (Ok(()), Some(grace)) => break grace,
                    (Ok(()), None) => continue,
                    (Err(_), _) => break Duration::ZERO,
                }
            }
        }
    };
    drop(listener);
    stopping.stop();
    let drained = async {
        while tracker.open.get() > 0 {
            let notified = tracker.idle.notified();
            if tracker.open.get() == 0 {
                break;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            open = tracker.open.get(),
            "grace period over, closing the remaining connections"
        );
    }
    Ok(())
}

/// hyper's server builders, one per protocol: the lean server's first read has already told
/// them apart, so a connection goes straight to its own (no sniffing read of its own, no
/// rewinding reader in front of every read, as hyper-util's auto builder would add).
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<LocalExec>,
}

async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    worker: Rc<Worker>,
    builders: Rc<Builders>,
    stopping: Rc<Stopping>,
    header_read_timeout: Duration,
    _open: Open,
) {
    // TCP_NODELAY is already on: Linux copies it from the listening socket (see `bind`), so
    // setting it again would cost a syscall per connection.
    debug_assert!(stream.nodelay().unwrap_or(true), "TCP_NODELAY is inherited");
    // The lean server reads first, under the header-read timer: a client that opens with
    // HTTP/2's preface is handed to hyper's HTTP/2 server, one that sends anything else than a
    // plain head to hyper's HTTP/1 server. No sniffing read, no timer of its own.
    let deadline = Rc::new(Deadline::new(header_read_timeout, Instant::now()));
    let client = Rc::new(forward::Client::new(peer, Some(deadline.clone())));
    let closing = Rc::new(Cell::new(false));
    // Boxed: `drive` would otherwise hold its state twice (as its argument, then pinned), in
    // every connection's task.
    let lean = Box::pin(lean::serve(
        stream,
        worker.clone(),
        client.clone(),
        closing.clone(),
    ));
    let ended = drive(
        lean,
        |_| closing.set(true),
        Some(deadline.clone()),
        stopping.clone(),
        peer,
    )
    .await;
    match ended {
        Some(lean::Ended::HandOff(stream, read)) => {
            let io = TokioIo::new(lean::Prefixed::new(stream, read));
            let service = hyper_service(worker, client);
            let conn = builders.http1.serve_connection(io, service).with_upgrades();
            // Boxed: the rarer path keeps its state out of every connection's task.
            Box::pin(drive(
                conn,
                |c| c.graceful_shutdown(),
                Some(deadline),
                stopping,
                peer,
            ))
            .await;
        }
        Some(lean::Ended::Http2(stream, read)) => {
            let io = TokioIo::new(lean::Prefixed::new(stream, read));
            let client = Rc::new(forward::Client::new(peer, None));
            let service = hyper_service(worker, client);
            let conn = builders.http2.serve_connection(io, service);
            // Boxed, so that HTTP/1 connections' tasks do not carry HTTP/2's state.
            Box::pin(drive(conn, |c| c.graceful_shutdown(), None, stopping, peer)).await;
        }
        Some(lean::Ended::Closed) | None => {}
    }
}

/// The request path as hyper's servers call it.
fn hyper_service(
    worker: Rc<Worker>,
    client: Rc<forward::Client>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<super::body::ResponseBody>,
    Error = std::convert::Infallible,
> {
    service_fn(move |req: Request<Incoming>| {
        let handled = forward::handle(
            worker.clone(),
            client.clone(),
            Box::new(forward::ClientRequest {
                req: req.map(UpstreamBody::new),
                lean: None,
            }),
        );
        async move {
            let mut response = handled.await?;
            // hyper writes the head from the header map: the member's fields go into it.
            if let Some(raw) = response.body_mut().take_raw_head() {
                let added = std::mem::take(response.headers_mut());
                *response.headers_mut() = raw.into_map(added);
            }
            Ok(response)
        }
    })
}

/// Runs a client connection to its end, shutting it down gracefully when the worker stops. An
/// HTTP/1 connection also keeps its one timer (`deadline`): it closes when a request head does
/// not arrive in time, and a request waiting too long for its member's answer learns so from
/// `deadline`. HTTP/2 connections time each request on their own and pass `None`.
async fn drive<C, T, E>(
    conn: C,
    shutdown: impl Fn(Pin<&mut C>),
    deadline: Option<Rc<Deadline>>,
    stopping: Rc<Stopping>,
    peer: SocketAddr,
) -> Option<T>
where
    C: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
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
            shutdown(conn.as_mut());
        }
        loop {
            if let (Some(deadline), Some(mut sleep)) =
                (deadline.as_deref(), sleep.as_mut().as_pin_mut())
                && deadline.due(sleep.is_elapsed())
            {
                match deadline.fire(Instant::now()) {
                    Fired::HeadTimeout => return Poll::Ready(Err(None)),
                    Fired::Rearm(at) => {
                        sleep.as_mut().reset(at);
                        if sleep.as_mut().poll(cx).is_ready() {
                            continue;
                        }
                    }
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    /// A data plane with no cluster (every request gets 404), header-read timeout 300 ms.
    fn server() -> Server {
        let plane = DataPlane::new();
        plane.publish(Vec::new());
        let mut options = ProxyOptions::new("127.0.0.1:0".parse().expect("address"));
        options.workers = 1;
        options.header_read_timeout = Duration::from_millis(300);
        Server::start(plane, options).expect("the server starts")
    }

    /// Reads until the answer's blank line and its `content-length` body are in.
    fn read_answer(conn: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = conn.read(&mut buf).expect("an answer");
            assert!(n > 0, "closed before the answer");
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }

    /// Waits for the server to close `conn`; how long that took from `since`.
    fn closed_after(conn: &mut TcpStream, since: Instant) -> Duration {
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).expect("a clean close, in time");
        assert_eq!(n, 0, "no answer, only the close");
        since.elapsed()
    }

    #[test]
    fn after_an_answer_the_next_head_is_due_within_the_header_read_timeout() {
        let server = server();
        let mut conn = TcpStream::connect(server.local_addr()).expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("send");
        assert!(read_answer(&mut conn).starts_with("HTTP/1.1 404"));
        let answered = Instant::now();
        // An idle keep-alive connection is closed by the timer, not at once.
        let waited = closed_after(&mut conn, answered);
        assert!(waited >= Duration::from_millis(200), "{waited:?}");

        // A second head that stalls halfway is closed too.
        let mut conn = TcpStream::connect(server.local_addr()).expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("send");
        assert!(read_answer(&mut conn).starts_with("HTTP/1.1 404"));
        conn.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow")
            .expect("send");
        let sent = Instant::now();
        let waited = closed_after(&mut conn, sent);
        assert!(waited >= Duration::from_millis(200), "{waited:?}");

        // Requests in time keep the connection open past the timeout.
        let mut conn = TcpStream::connect(server.local_addr()).expect("connect");
        for _ in 0..4 {
            conn.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .expect("send");
            assert!(read_answer(&mut conn).starts_with("HTTP/1.1 404"));
            std::thread::sleep(Duration::from_millis(150));
        }
        server.shutdown(Duration::from_secs(1));
    }
}
