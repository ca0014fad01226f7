//! What a worker does with its listeners: accept connections on each (the BalancerClusters'
//! plain and HTTPS listeners, and the fronts' ports, opened and closed as snapshots come), count
//! them, refuse those beyond `--max-connections`, and on stop let them finish for the grace
//! period.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::client::{Entry, Front};
use super::downstream::{self, Builders, Serving, Stopping};
use super::http1::Limits;
use super::options::ProxyOptions;
use super::tunnel::Tunnels;
use super::upstream::gate::Gates;
use super::upstream::pool::Pool;
use super::worker::Worker;
use crate::plane::{DataPlane, FrontCertificates};

/// What a server's workers share besides the plane: the members' connection limits, and the
/// count of client connections open.
#[derive(Debug, Default)]
pub struct Shared {
    pub gates: Arc<Gates>,
    /// Client connections open, over every worker (counted only under `--max-connections`).
    clients: AtomicUsize,
}

/// The answer to a client connection beyond `--max-connections`, written as it is accepted.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 59\r\n\r\n503 Service Unavailable: too many connections; retry later\n";

/// Refused connections a worker keeps open at once, to read what their client sends after
/// the answer (so that closing does not reset the connection before the answer is read);
/// beyond them, a refused connection is closed as soon as its answer is written.
const MAX_LINGERING: usize = 1024;

/// How long a refused connection is kept for its client to read the answer and close.
const LINGER: Duration = Duration::from_secs(2);

/// Serves the worker's listeners until told to stop, then drains.
pub async fn accept_loop(
    listeners: Vec<(std::net::TcpListener, Entry)>,
    plane: Arc<DataPlane>,
    options: ProxyOptions,
    mut stop: watch::Receiver<Option<Duration>>,
    shared: Arc<Shared>,
) -> io::Result<()> {
    // The BalancerClusters' HTTPS listener serves their certificates; each HTTPS front its
    // listeners' (see serve_fronts).
    let tls = match options.listen_tls {
        Some(_) => Some(crate::tls::acceptor(plane.clone()).map_err(io::Error::other)?),
        None => None,
    };
    let serving = Rc::new(Serving {
        worker: Rc::new(new_worker(&plane, &options, &shared)),
        builders: Rc::new(Builders::new(&options)),
        stopping: Rc::new(Stopping::default()),
        header_read_timeout: options.header_read_timeout,
        body_read_timeout: options.body_read_timeout,
        lot: Rc::default(),
    });
    let tracker = Rc::new(Tracker {
        plane: plane.clone(),
        open: Cell::new(0),
        idle: Notify::new(),
        shared,
        max: options.max_connections,
        lingering: Cell::new(0),
    });
    let mut tasks = Vec::new();
    for (listener, entry) in listeners {
        let listener = TcpListener::from_std(listener)?;
        let acceptor = tls.clone().filter(|_| entry.tls);
        let accepting = accept(listener, entry, acceptor, serving.clone(), tracker.clone());
        tasks.push(tokio::task::spawn_local(accepting));
    }
    if let Some(address) = options.gateway_address {
        let fronts = serve_fronts(address, plane, serving.clone(), tracker.clone());
        tasks.push(tokio::task::spawn_local(fronts));
    }
    let grace = loop {
        let changed = stop.changed().await;
        match (changed, *stop.borrow()) {
            (Ok(()), Some(grace)) => break grace,
            (Ok(()), None) => continue,
            (Err(_), _) => break Duration::ZERO,
        }
    };
    // Dropping the accepting tasks closes the listening sockets.
    for task in tasks {
        task.abort();
    }
    serving.stopping.stop();
    // Upgraded connections too: WebSockets are told the server goes away.
    let tunnels = serving.worker.tunnels.clone();
    tunnels.stop();
    drain(&tracker, &tunnels, grace).await;
    Ok(())
}

/// What the worker's connections share: the plane, the limits on a head, its own pool (the
/// members' connection limits shared with the other workers), the telemetry.
fn new_worker(plane: &Arc<DataPlane>, options: &ProxyOptions, shared: &Shared) -> Worker {
    let limits = Limits {
        max_headers: options.max_headers,
        max_head_bytes: options.max_header_bytes,
    };
    let mut worker = Worker::new(plane.clone(), limits, options.http1);
    worker.pool = Rc::new(Pool::new(shared.gates.clone()));
    worker.telemetry = Rc::new(options.telemetry.clone());
    worker.https_port = options
        .https_port
        .or(options.listen_tls.map(|a| a.port()))
        .unwrap_or(443);
    worker
}

/// Accepts connections on `listener` and serves each as a task of its own (over TLS with `tls`).
async fn accept(
    listener: TcpListener,
    entry: Entry,
    tls: Option<TlsAcceptor>,
    serving: Rc<Serving<Open>>,
    tracker: Rc<Tracker>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !tracker.admit() {
            refuse(stream, entry.tls, &tracker);
            continue;
        }
        // Boxed, not wrapped in another future (which would store it twice). A task's cell is
        // aligned to 128 bytes; holding the connection's future inline, its size is no power
        // of two, and mimalloc then over-allocates every one of them by 127 bytes on a slow
        // path. Holding a box, the cell is small and the future's own block an ordinary one
        // (docs/benchmarks.md, "New connections").
        let open = Open::new(tracker.clone());
        match &tls {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let served =
                    downstream::serve_https(stream, peer, entry, acceptor, serving.clone(), open);
                tokio::task::spawn_local(Box::pin(served));
            }
            None => {
                let served = downstream::serve(stream, peer, entry, serving.clone(), open);
                tokio::task::spawn_local(Box::pin(served));
            }
        }
    }
}

/// Where a front is served, and whether over TLS.
type FrontKey = (Option<IpAddr>, u16, bool);

/// Opens a listener for each front of the snapshot served now (at its own address, or at
/// `fallback` for a front without one), and closes those of fronts that are gone, at every
/// publication. An HTTPS front's handshakes get the certificates of its listeners.
async fn serve_fronts(
    fallback: IpAddr,
    plane: Arc<DataPlane>,
    serving: Rc<Serving<Open>>,
    tracker: Rc<Tracker>,
) {
    let mut published = plane.watch();
    let mut open: HashMap<FrontKey, JoinHandle<()>> = HashMap::new();
    // Fronts that could not be served, so that the same failure is logged once.
    let mut failed: HashMap<FrontKey, String> = HashMap::new();
    loop {
        let wanted: Vec<FrontKey> = plane
            .snapshot()
            .fronts
            .iter()
            .map(|f| (f.address, f.port, f.tls))
            .collect();
        open.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for &key in &wanted {
            if open.contains_key(&key) {
                continue;
            }
            match open_front(key, fallback, &plane, &serving, &tracker) {
                Ok(task) => {
                    failed.remove(&key);
                    open.insert(key, task);
                }
                Err(e) => {
                    let message = e.to_string();
                    if failed.get(&key) != Some(&message) {
                        tracing::error!(error = %message, "cannot serve a front; retried at the next configuration");
                        failed.insert(key, message);
                    }
                }
            }
        }
        if published.changed().await.is_err() {
            return;
        }
    }
}

/// Binds a front's port and accepts on it.
fn open_front(
    (address, port, tls): FrontKey,
    fallback: IpAddr,
    plane: &Arc<DataPlane>,
    serving: &Rc<Serving<Open>>,
    tracker: &Rc<Tracker>,
) -> io::Result<JoinHandle<()>> {
    let listener =
        TcpListener::from_std(bind(SocketAddr::new(address.unwrap_or(fallback), port))?)?;
    let acceptor = match tls {
        true => {
            let certificates = FrontCertificates {
                plane: plane.clone(),
                address,
                port,
            };
            Some(crate::tls::acceptor(Arc::new(certificates)).map_err(io::Error::other)?)
        }
        false => None,
    };
    let entry = Entry {
        front: Front::At(address, port),
        tls,
        port,
    };
    let accepting = accept(listener, entry, acceptor, serving.clone(), tracker.clone());
    Ok(tokio::task::spawn_local(accepting))
}

pub fn named(addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}

/// A listening socket that the other workers' sockets on the same address share
/// (`SO_REUSEPORT`); TCP_NODELAY is set on it so that accepted connections inherit it.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into()).map_err(|e| named(addr, e))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

struct Tracker {
    /// Where open connections are counted for `/metrics`.
    plane: Arc<DataPlane>,
    open: Cell<usize>,
    idle: Notify,
    shared: Arc<Shared>,
    /// `--max-connections`.
    max: Option<usize>,
    /// Refused connections kept open for their client to read the answer.
    lingering: Cell<usize>,
}

impl Tracker {
    /// Whether a connection just accepted may be served: fewer than `--max-connections` are
    /// open over every worker. It is then counted until its [`Open`] is dropped.
    fn admit(&self) -> bool {
        let Some(max) = self.max else {
            return true;
        };
        if self.shared.clients.fetch_add(1, AcqRel) < max {
            return true;
        }
        self.shared.clients.fetch_sub(1, AcqRel);
        false
    }
}

/// A connection beyond `--max-connections`: answered 503 (over plain HTTP; an HTTPS
/// connection is closed, since an answer would need a handshake) and closed. As with Envoy's
/// and nginx's connection limits, it is accepted rather than left in the listen queue, so
/// that its client learns at once, and the memory it takes is a socket for a moment.
fn refuse(stream: TcpStream, tls: bool, tracker: &Rc<Tracker>) {
    tracker
        .plane
        .metrics
        .connections_refused
        .fetch_add(1, Relaxed);
    if tls {
        return;
    }
    // A new connection's send buffer has room: the answer goes whole, without waiting.
    if stream.try_write(REFUSED).is_err() || tracker.lingering.get() >= MAX_LINGERING {
        return;
    }
    tracker.lingering.set(tracker.lingering.get() + 1);
    let tracker = tracker.clone();
    tokio::task::spawn_local(async move {
        linger(stream).await;
        tracker.lingering.set(tracker.lingering.get() - 1);
    });
}

/// Ends a refused connection gracefully: no more to send, and what the client sends meanwhile
/// (its request) read and dropped, until it closes or [`LINGER`] passes.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 1024];
    let mut left: usize = 64 * 1024;
    let drained = async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

/// One open client connection, counted in its worker's [`Tracker`] while it lives.
struct Open(Rc<Tracker>);

impl Open {
    fn new(tracker: Rc<Tracker>) -> Self {
        tracker.open.set(tracker.open.get() + 1);
        let metrics = &tracker.plane.metrics;
        metrics.connections_open.fetch_add(1, Relaxed);
        metrics.connections.fetch_add(1, Relaxed);
        Open(tracker)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let tracker = &self.0;
        if tracker.max.is_some() {
            tracker.shared.clients.fetch_sub(1, AcqRel);
        }
        tracker.open.set(tracker.open.get() - 1);
        tracker.plane.metrics.connections_open.fetch_sub(1, Relaxed);
        if tracker.open.get() == 0 {
            tracker.idle.notify_waiters();
        }
    }
}

/// Waits up to `grace` for the worker's open connections and tunnels to end.
async fn drain(tracker: &Tracker, tunnels: &Tunnels, grace: Duration) {
    let drained = async {
        while tracker.open.get() > 0 {
            let notified = tracker.idle.notified();
            if tracker.open.get() == 0 {
                break;
            }
            notified.await;
        }
        // A request still being answered may yet open a tunnel: connections first.
        tunnels.drained().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            open = tracker.open.get(),
            tunnels = tunnels.open(),
            "grace period over, closing the remaining connections"
        );
    }
}
