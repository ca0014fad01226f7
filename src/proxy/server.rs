//! The running data plane: binding, one current-thread runtime per worker with its own
//! `SO_REUSEPORT` listeners, and graceful stop. What each worker does with its listeners is
//! [`listeners`](super::listeners).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use super::client::{Entry, Front};
use super::listeners::{Shared, accept_loop, bind, named};
use super::options::ProxyOptions;
use crate::plane::DataPlane;

/// A running data plane.
pub struct Server {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    stop: watch::Sender<Option<Duration>>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the listeners and starts the workers. Fails (naming the address) when an address
    /// cannot be bound.
    pub fn start(plane: Arc<DataPlane>, mut options: ProxyOptions) -> io::Result<Server> {
        let workers = options.workers.max(1);
        let (plain, local_addr) = bind_all(options.listen, workers)?;
        let (tls, tls_addr) = match options.listen_tls {
            Some(addr) => {
                let (listeners, bound) = bind_all(addr, workers)?;
                (listeners.into_iter().map(Some).collect(), Some(bound))
            }
            None => ((0..workers).map(|_| None).collect::<Vec<_>>(), None),
        };
        // Redirects to HTTPS name the port bound, unless told the port clients know.
        if options.https_port.is_none() {
            options.https_port = tls_addr.map(|a| a.port());
        }
        let (stop, stop_rx) = watch::channel(None);
        let shared = Arc::new(Shared::default());
        let mut handles = Vec::with_capacity(workers);
        for (i, (plain, tls)) in plain.into_iter().zip(tls).enumerate() {
            let mut listeners = vec![(plain, entry(local_addr, false))];
            if let (Some(tls), Some(addr)) = (tls, tls_addr) {
                listeners.push((tls, entry(addr, true)));
            }
            let plane = plane.clone();
            let options = options.clone();
            let stop_rx = stop_rx.clone();
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("kb-worker-{i}"))
                .spawn(move || run_worker(listeners, plane, options, stop_rx, shared))?;
            handles.push(handle);
        }
        Ok(Server {
            local_addr,
            tls_addr,
            stop,
            workers: handles,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where HTTPS is served, with `--listen-tls`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
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

/// The BalancerClusters' routes, on the address `addr` was bound to.
fn entry(addr: SocketAddr, tls: bool) -> Entry {
    Entry {
        front: Front::Own,
        tls,
        port: addr.port(),
    }
}

/// One listener per worker on `addr`, and the address bound.
fn bind_all(
    addr: SocketAddr,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    if addr.port() != 0 {
        // SO_REUSEPORT would let a second instance share our port silently: make sure the port
        // is free first, so that it fails loudly instead.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into()).map_err(|e| named(addr, e))?;
    }
    let first = bind(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind(bound)?);
    }
    Ok((listeners, bound))
}

fn run_worker(
    listeners: Vec<(std::net::TcpListener, Entry)>,
    plane: Arc<DataPlane>,
    options: ProxyOptions,
    stop: watch::Receiver<Option<Duration>>,
    shared: Arc<Shared>,
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
        if let Err(e) = accept_loop(listeners, plane, options, stop, shared).await {
            tracing::error!(error = %e, "worker stopped");
        }
    });
    if let Err(e) = local.block_on(&runtime, accepting) {
        tracing::error!(error = %e, "worker stopped");
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
