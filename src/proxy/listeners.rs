//! What a worker does with its listeners: accept connections on each (the BalancerClusters'
//! plain and HTTPS listeners, and the fronts' ports, opened and closed as snapshots come), count
//! them, and on stop let them finish for the grace period.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::client::{Entry, Front};
use super::downstream::{self, Builders, Serving, Stopping};
use super::http1::Limits;
use super::options::ProxyOptions;
use super::tunnel::Tunnels;
use super::worker::Worker;
use crate::plane::{DataPlane, FrontCertificates};

/// Serves the worker's listeners until told to stop, then drains.
pub async fn accept_loop(
    listeners: Vec<(std::net::TcpListener, Entry)>,
    plane: Arc<DataPlane>,
    options: ProxyOptions,
    mut stop: watch::Receiver<Option<Duration>>,
) -> io::Result<()> {
    let limits = Limits {
        max_headers: options.max_headers,
        max_head_bytes: options.max_header_bytes,
    };
    // The BalancerClusters' HTTPS listener serves their certificates; each HTTPS front its
    // listeners' (see serve_fronts).
    let tls = match options.listen_tls {
        Some(_) => Some(crate::tls::acceptor(plane.clone()).map_err(io::Error::other)?),
        None => None,
    };
    let mut worker = Worker::new(plane.clone(), limits, options.http1);
    worker.telemetry = Rc::new(options.telemetry.clone());
    worker.https_port = options
        .https_port
        .or(options.listen_tls.map(|a| a.port()))
        .unwrap_or(443);
    let serving = Rc::new(Serving {
        worker: Rc::new(worker),
        builders: Rc::new(Builders::new(&options)),
        stopping: Rc::new(Stopping::default()),
        header_read_timeout: options.header_read_timeout,
    });
    let tracker = Rc::new(Tracker {
        plane: plane.clone(),
        open: Cell::new(0),
        idle: Notify::new(),
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

/// Accepts connections on `listener` and serves each as a task of its own (over TLS with `tls`).
async fn accept(
    listener: TcpListener,
    entry: Entry,
    tls: Option<TlsAcceptor>,
    serving: Rc<Serving>,
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
        // Boxed, not wrapped in another future (which would store it twice). A task's cell is
        // aligned to 128 bytes; holding the connection's future inline, its size is no power
        // of two, and mimalloc then over-allocates every one of them by 127 bytes on a slow
        // path. Holding a box, the cell is small and the future's own block an ordinary one
        // (docs/benchmarks.md, "New connections").
        let open = Open::new(tracker.clone());
        let served = downstream::serve(stream, peer, entry, tls.clone(), serving.clone(), open);
        tokio::task::spawn_local(Box::pin(served));
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
    serving: Rc<Serving>,
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
    serving: &Rc<Serving>,
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
