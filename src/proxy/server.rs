//! Listeners and workers: one current-thread runtime per worker, each with its own
//! `SO_REUSEPORT` listener on the same address, its own connection pool, and graceful stop.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use super::downstream::{self, Builders, Serving, Stopping};
use super::http1::Limits;
use super::options::ProxyOptions;
use super::worker::Worker;
use crate::plane::DataPlane;

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

async fn accept_loop(
    listener: std::net::TcpListener,
    plane: Arc<DataPlane>,
    options: ProxyOptions,
    mut stop: watch::Receiver<Option<Duration>>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let limits = Limits {
        max_headers: options.max_headers,
        max_head_bytes: options.max_header_bytes,
    };
    let worker = Worker::new(plane, options.access_log, limits, options.http1);
    let serving = Rc::new(Serving {
        worker: Rc::new(worker),
        builders: Rc::new(Builders::new(&options)),
        stopping: Rc::new(Stopping::default()),
        header_read_timeout: options.header_read_timeout,
    });
    let tracker = Rc::new(Tracker {
        open: Cell::new(0),
        idle: Notify::new(),
    });
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
                // 127 bytes on a slow path. Holding a box, the cell is small and the future's own
                // block an ordinary one (docs/benchmarks.md, "New connections").
                let open = Open::new(tracker.clone());
                tokio::task::spawn_local(Box::pin(downstream::serve(stream, peer, serving.clone(), open)));
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
    serving.stopping.stop();
    drain(&tracker, grace).await;
    Ok(())
}

/// Waits up to `grace` for the worker's open connections to end.
async fn drain(tracker: &Tracker, grace: Duration) {
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
