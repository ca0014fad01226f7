//! Real HTTP backends for the proxy to balance over: on 127.0.0.1, or on a pod IP inside the test
//! network namespace (`start_on`), always on an ephemeral port.
//!
//! `Backend` answers by path and by knobs that a test turns while it runs; `Backend::custom`
//! answers with whatever a test's handler returns; `WsEcho` speaks WebSocket. (Backends scripted
//! byte by byte are `raw::Member`.)

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::client::{Body, full};
use super::netns;

/// What a backend does with one request.
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// Knobs a running backend reads on every request.
#[derive(Default)]
struct Knobs {
    /// Milliseconds to wait before answering requests other than `/health`.
    delay_ms: AtomicU64,
    /// Status of answers other than `/health` (0: as the path says).
    status: AtomicU16,
    /// Status of `/health` answers (0: 200).
    health_status: AtomicU16,
    /// Requests received, `/health` not counted; and `/health` requests.
    hits: AtomicU64,
    health_hits: AtomicU64,
}

/// A real HTTP/1.1 and HTTP/2 backend. Every answer carries `x-backend: NAME`. Paths:
/// - `/health`: its health endpoint, `up` (or `down` when `set_health` set a status not 2xx);
/// - `/slow/MS`: waits MS milliseconds, then answers `NAME`;
/// - `/status/CODE`: answers `NAME` with that status;
/// - `/headers`: the request's headers, one `name: value` per line (`header_lines` reads them);
/// - `/echo`: streams the request body back;
/// - `/upload`: reads the whole body, then answers `NAME got N bytes`;
/// - anything else: answers `NAME`.
///
/// Except on `/health`, it first waits its delay (`set_delay`), and `answer_with` overrides the
/// status. Dropping it (or `stop`) closes its port and its connections.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    knobs: Arc<Knobs>,
    task: JoinHandle<()>,
}

impl Backend {
    /// A backend on 127.0.0.1.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        Backend::with_knobs(name, listener)
    }

    /// A backend on `ip`, a pod IP of the test network namespace (see `netns`).
    pub async fn start_on(name: &str, ip: Ipv4Addr) -> Backend {
        let listener =
            netns::bind_local(ip).unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"));
        let listener = TcpListener::from_std(listener).expect("register the listener with tokio");
        Backend::with_knobs(name, listener)
    }

    /// A backend on 127.0.0.1 that waits `delay` before each answer.
    pub async fn slow(name: &str, delay: Duration) -> Backend {
        let backend = Backend::start(name).await;
        backend.set_delay(delay);
        backend
    }

    /// A backend on 127.0.0.1 whose answers come from `handler`, as they are (no `x-backend`, no
    /// knobs, no counts).
    pub async fn custom<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        Backend::serve(String::new(), listener, Arc::default(), handler)
    }

    fn with_knobs(name: &str, listener: TcpListener) -> Backend {
        let knobs = Arc::new(Knobs::default());
        let (shown, shared) = (name.to_owned(), knobs.clone());
        let handler: Handler =
            Arc::new(move |req| Box::pin(answer(shown.clone(), shared.clone(), req)));
        Backend::serve(name.to_owned(), listener, knobs, handler)
    }

    fn serve(name: String, listener: TcpListener, knobs: Arc<Knobs>, handler: Handler) -> Backend {
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            // Connections live in this set, so stopping the backend closes them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let answer = handler(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // Up to 1000 request headers: the proxy's own limit is the one a test meets.
                    builder.http1().max_headers(1000);
                    // A client that goes away mid-request is not the backend's failure.
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name,
            addr,
            knobs,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received, `/health` not counted.
    pub fn hits(&self) -> u64 {
        self.knobs.hits.load(SeqCst)
    }

    /// `/health` requests received.
    pub fn health_checks(&self) -> u64 {
        self.knobs.health_hits.load(SeqCst)
    }

    /// Answers (but `/health`) wait this long from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.knobs
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), SeqCst);
    }

    /// Answers (but `/health`) get this status from now on.
    pub fn answer_with(&self, status: u16) {
        self.knobs.status.store(status, SeqCst);
    }

    /// `/health` answers with this status from now on.
    pub fn set_health(&self, status: u16) {
        self.knobs.health_status.store(status, SeqCst);
    }

    /// Stops accepting and closes the port and its connections: connections to it are refused
    /// from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(name: String, knobs: Arc<Knobs>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    let body = if path == "/health" {
        knobs.health_hits.fetch_add(1, SeqCst);
        status = match knobs.health_status.load(SeqCst) {
            0 => StatusCode::OK,
            code => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        full(if status.is_success() { "up" } else { "down" })
    } else {
        knobs.hits.fetch_add(1, SeqCst);
        let delay = knobs.delay_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let body = if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            full(name.clone())
        } else if let Some(code) = path.strip_prefix("/status/") {
            status = StatusCode::from_u16(code.parse().unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            full(name.clone())
        } else if path == "/headers" {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            full(text)
        } else if path == "/echo" {
            req.into_body().boxed()
        } else if path == "/upload" {
            let got = req
                .into_body()
                .collect()
                .await
                .map_or(0, |b| b.to_bytes().len());
            full(format!("{name} got {got} bytes"))
        } else {
            full(name.clone())
        };
        if let Some(code) = Some(knobs.status.load(SeqCst)).filter(|&c| c != 0) {
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        }
        body
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    response
}

/// The `name: value` lines that a backend's `/headers` answers, as pairs.
pub fn header_lines(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A WebSocket backend on 127.0.0.1 that sends every text and binary message back as it came.
pub struct WsEcho {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl WsEcho {
    pub async fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        let addr = listener.local_addr().expect("local addr");
        let handshakes = Arc::new(AtomicU64::new(0));
        let counter = handshakes.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    counter.fetch_add(1, SeqCst);
                    // Close frames are answered by tungstenite itself; the stream then ends.
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        WsEcho {
            addr,
            handshakes,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// WebSocket handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(SeqCst)
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on 127.0.0.1 on which nothing listens: connections are refused. The port is free
/// again, so another test may take it; `refusing_port` keeps it.
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A loopback port that refuses connections: bound without listening, so it stays reserved (no
/// other test can take it) while every connection to it is refused. Keep the socket alive.
pub fn refusing_port() -> (SocketAddr, socket2::Socket) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("an IP address");
    (addr, socket)
}
