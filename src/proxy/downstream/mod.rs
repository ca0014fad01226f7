//! How requests come in: one client connection, from its first bytes to its close.
//!
//! The lean HTTP/1 server ([`lean`]) reads first, under the header-read timer. A client that
//! opens with HTTP/2's preface goes to hyper's HTTP/2 server; a request the lean server does not
//! handle (a body, an upgrade, an odd head) moves the connection to hyper's HTTP/1 server for
//! the rest of its life, with the bytes read so far. With `--http1 hyper` the lean server only
//! tells the two protocols apart and every HTTP/1 connection goes to hyper's server.

mod drive;
mod lean;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

pub use self::drive::Stopping;
use self::drive::{Ask, drive};
use self::lean::{Asked, Ended};
use super::client::{Client, ClientRequest, Entry};
use super::deadline::Deadline;
use super::http1::io::Prefixed;
use super::options::ProxyOptions;
use super::request::handle;
use super::response::ResponseBody;
use super::upstream::body::RequestBody;
use super::worker::Worker;
use crate::tls::server::{Alpn, negotiated};

/// What an HTTP/2 client with prior knowledge opens its connection with (RFC 9113 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface's first line: no HTTP/1 request starts with it.
const HTTP2_REQUEST_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Runs futures on the worker's own thread (hyper's HTTP/2 streams).
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// hyper's server builders, one per protocol: the lean server's first read has already told
/// them apart, so a connection goes straight to its own (no sniffing read of its own, no
/// rewinding reader in front of every read, as hyper-util's auto builder would add).
pub struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<LocalExec>,
}

impl Builders {
    pub fn new(options: &ProxyOptions) -> Self {
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
        Builders { http1, http2 }
    }
}

/// What one connection's serving needs from its worker.
pub struct Serving {
    pub worker: Rc<Worker>,
    pub builders: Rc<Builders>,
    pub stopping: Rc<Stopping>,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// Serves one client connection to its end; `_open` is held as long (the worker counts its
/// open connections with it).
/// `tls`: the handshake of an HTTPS listener, with the certificates it serves.
pub async fn serve<G>(
    stream: TcpStream,
    peer: SocketAddr,
    entry: Entry,
    tls: Option<TlsAcceptor>,
    serving: Rc<Serving>,
    _open: G,
) {
    // TCP_NODELAY is already on: Linux copies it from the listening socket, so setting it
    // again would cost a syscall per connection.
    debug_assert!(stream.nodelay().unwrap_or(true), "TCP_NODELAY is inherited");
    if let Some(acceptor) = tls {
        Box::pin(serve_tls(stream, peer, entry, acceptor, &serving)).await;
        return;
    }
    let hrt = serving.header_read_timeout;
    let deadline = Rc::new(Deadline::new(hrt, Instant::now()).parking_after(park_after(hrt)));
    let client = Rc::new(Client::new(peer, Some(deadline.clone()), entry));
    let asked = Rc::new(Asked::default());
    let ask = |_: Pin<&mut _>, ask| match ask {
        Ask::Stop => asked.stop.set(true),
        Ask::Park => asked.park.set(true),
    };
    let (mut stream, mut sniffing) = (stream, true);
    let ended = loop {
        // Boxed: `drive` would otherwise hold its state twice (as its argument, then pinned),
        // in every connection's task; and a parked connection frees it.
        let lean = Box::pin(lean::serve(
            stream,
            serving.worker.clone(),
            client.clone(),
            asked.clone(),
            sniffing,
        ));
        let stopping = serving.stopping.clone();
        match drive(lean, ask, Some(deadline.clone()), stopping, peer).await {
            Some(Ended::Parked(parked, sniffed)) => {
                sniffing = sniffed;
                let parked = Parked::new(parked, &serving.stopping);
                let stop = |p: Pin<&mut Parked>, ask| p.get_mut().stop |= ask == Ask::Stop;
                let stopping = serving.stopping.clone();
                match drive(parked, stop, Some(deadline.clone()), stopping, peer).await {
                    Some(Some(readable)) => stream = readable,
                    // Closed, stopped, or no head in time.
                    _ => break None,
                }
            }
            ended => break ended,
        }
    };
    hand_over(ended, &serving, client, deadline, entry).await;
}

/// A connection the lean server leaves to hyper: its HTTP/1 server (with the bytes read so far
/// put back in front of it, and the lean connection's timer), or its HTTP/2 server.
async fn hand_over(
    ended: Option<Ended>,
    serving: &Serving,
    client: Rc<Client>,
    deadline: Rc<Deadline>,
    entry: Entry,
) {
    match ended {
        // Boxed: the rarer paths keep their state out of every connection's task.
        Some(Ended::HandOff(stream, read)) => {
            let io = Prefixed::new(stream, read);
            deadline.no_parking();
            Box::pin(serve_http1(io, serving, client, deadline)).await;
        }
        Some(Ended::Http2(stream, read)) => {
            let io = Prefixed::new(stream, read);
            let client = Client::new(client.addr, None, entry);
            Box::pin(serve_http2(io, serving, client)).await;
        }
        Some(Ended::Closed | Ended::Parked(..)) | None => {}
    }
}

/// How long a lean connection waits for its next request before it parks: a second, or a
/// quarter of the header-read timeout when that is shorter.
fn park_after(header_read_timeout: Duration) -> Duration {
    (header_read_timeout / 4).min(Duration::from_secs(1))
}

/// A parked connection: an idle lean connection, asked to park by its timer, waits for its next
/// bytes here, without its lean future (a kilobyte, freed), and a new one takes it when they
/// come. A client that sends its next request within [`park_after`] never parks, so a busy
/// connection allocates nothing more per request. Its output is the stream once readable, or
/// none once the worker stops.
struct Parked {
    stream: Option<TcpStream>,
    stop: bool,
    stopping: Rc<Stopping>,
}

impl Parked {
    fn new(stream: TcpStream, stopping: &Rc<Stopping>) -> Self {
        stopping.count_parked(1);
        Parked {
            stream: Some(stream),
            stop: false,
            stopping: stopping.clone(),
        }
    }
}

impl Future for Parked {
    type Output = std::io::Result<Option<TcpStream>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.stop {
            return Poll::Ready(Ok(None));
        }
        match this.stream.as_ref().map(|s| s.poll_read_ready(cx)) {
            Some(Poll::Ready(ready)) => Poll::Ready(ready.map(|()| this.stream.take())),
            Some(Poll::Pending) => Poll::Pending,
            None => Poll::Ready(Ok(None)),
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.stopping.count_parked(-1);
    }
}

/// An HTTPS connection: the handshake under the header-read timeout (the certificate chosen by
/// SNI from the snapshot served now), then hyper's HTTP/2 or HTTP/1 server as ALPN agreed.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    entry: Entry,
    acceptor: TlsAcceptor,
    serving: &Serving,
) {
    let handshake = tokio::time::timeout(serving.header_read_timeout, acceptor.accept(stream));
    let stream = match handshake.await {
        Ok(Ok(stream)) => {
            let metrics = &serving.worker.plane.metrics;
            metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            stream
        }
        Ok(Err(e)) => {
            let metrics = &serving.worker.plane.metrics;
            metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            let metrics = &serving.worker.plane.metrics;
            metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, "no TLS handshake within the header-read timeout");
            return;
        }
    };
    let server_name: Option<Box<str>> = stream.get_ref().1.server_name().map(Into::into);
    match negotiated(stream.get_ref().1) {
        Alpn::H2 => {
            let mut client = Client::new(peer, None, entry);
            client.server_name = server_name;
            serve_http2(stream, serving, client).await
        }
        Alpn::Http1 => {
            let deadline = Rc::new(Deadline::new(serving.header_read_timeout, Instant::now()));
            let mut client = Client::new(peer, Some(deadline.clone()), entry);
            client.server_name = server_name;
            serve_http1(stream, serving, Rc::new(client), deadline).await;
        }
    }
}

/// hyper's HTTP/1 server for (the rest of) a connection.
async fn serve_http1<S>(io: S, serving: &Serving, client: Rc<Client>, deadline: Rc<Deadline>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = client.addr;
    let service = hyper_service(serving.worker.clone(), client, serving.body_read_timeout);
    let conn = serving
        .builders
        .http1
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let stopping = serving.stopping.clone();
    drive(
        conn,
        |c, ask| {
            if ask == Ask::Stop {
                c.graceful_shutdown();
            }
        },
        Some(deadline),
        stopping,
        peer,
    )
    .await;
}

/// hyper's HTTP/2 server for a connection (after the preface, or ALPN's `h2`). HTTP/2
/// connections time each request on their own: no connection timer.
async fn serve_http2<S>(io: S, serving: &Serving, client: Client)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = client.addr;
    let service = hyper_service(
        serving.worker.clone(),
        Rc::new(client),
        serving.body_read_timeout,
    );
    let conn = serving
        .builders
        .http2
        .serve_connection(TokioIo::new(io), service);
    let stopping = serving.stopping.clone();
    let stop = |c: Pin<&mut _>, ask| {
        if ask == Ask::Stop {
            http2::Connection::graceful_shutdown(c);
        }
    };
    drive(conn, stop, None, stopping, peer).await;
}

/// The request core as hyper's servers call it.
fn hyper_service(
    worker: Rc<Worker>,
    client: Rc<Client>,
    body_read_timeout: Duration,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<ResponseBody>,
    Error = std::convert::Infallible,
> {
    service_fn(move |req: Request<Incoming>| {
        let handled = handle(
            worker.clone(),
            client.clone(),
            Box::new(ClientRequest {
                req: req.map(|body| RequestBody::from_client(body, body_read_timeout)),
                lean: None,
                upgrade: None,
                observed: None,
                grpc: false,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::client::Front;
    use crate::proxy::http1::Limits;
    use crate::proxy::options::Http1Mode;

    /// Reads one answer (head and `Content-Length` body) from `client`.
    async fn answer(client: &mut TcpStream) -> String {
        let mut read = Vec::new();
        let mut byte = [0u8; 1];
        while !read.ends_with(b"\r\n\r\n") {
            let n = client.read(&mut byte).await.expect("read");
            assert_eq!(
                n,
                1,
                "closed mid-answer: {}",
                String::from_utf8_lossy(&read)
            );
            read.push(byte[0]);
        }
        let head = String::from_utf8(read).expect("text");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).await.expect("body");
        head
    }

    /// Waits (up to 5 s) until `stopping` counts `parked` connections.
    async fn parked(stopping: &Stopping, parked: usize) {
        let wait = async {
            while stopping.parked() != parked {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("{} parked, not {parked}", stopping.parked()));
    }

    /// An idle keep-alive connection parks (its lean future, about a kilobyte, is freed), is
    /// taken up again by its next request, parks again, and closes when no head comes within
    /// the header-read timeout. A change that stops parking fails here.
    #[tokio::test]
    async fn an_idle_connection_parks_and_its_next_request_takes_it_up_again() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let plane = crate::plane::DataPlane::new();
                plane.publish(Vec::new());
                let limits = Limits {
                    max_headers: 100,
                    max_head_bytes: 64 * 1024,
                };
                let options = ProxyOptions::new("127.0.0.1:0".parse().expect("address"));
                let serving = Rc::new(Serving {
                    worker: Rc::new(Worker::new(plane, limits, Http1Mode::Fast)),
                    builders: Rc::new(Builders::new(&options)),
                    stopping: Rc::new(Stopping::default()),
                    // Parks after 100 ms of waiting, closes after 800 ms.
                    header_read_timeout: Duration::from_millis(800),
                    body_read_timeout: options.body_read_timeout,
                });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let mut client = TcpStream::connect(listener.local_addr().expect("address"))
                    .await
                    .expect("connect");
                let (stream, peer) = listener.accept().await.expect("accept");
                stream.set_nodelay(true).expect("nodelay");
                let entry = Entry {
                    front: Front::Own,
                    tls: false,
                    port: 80,
                };
                let served =
                    tokio::task::spawn_local(serve(stream, peer, entry, None, serving.clone(), ()));
                for _ in 0..3 {
                    client
                        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                        .await
                        .expect("send");
                    let head = answer(&mut client).await;
                    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
                    assert_eq!(serving.stopping.parked(), 0, "served, not parked");
                    parked(&serving.stopping, 1).await;
                }
                tokio::time::timeout(Duration::from_secs(5), served)
                    .await
                    .expect("closed after the header-read timeout")
                    .expect("served");
                assert_eq!(serving.stopping.parked(), 0);
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).await.expect("closed");
                assert!(rest.is_empty());
            })
            .await;
    }

    /// A parked connection closes at once when the worker stops.
    #[tokio::test]
    async fn a_parked_connection_closes_when_the_worker_stops() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let plane = crate::plane::DataPlane::new();
                plane.publish(Vec::new());
                let limits = Limits {
                    max_headers: 100,
                    max_head_bytes: 64 * 1024,
                };
                let options = ProxyOptions::new("127.0.0.1:0".parse().expect("address"));
                let serving = Rc::new(Serving {
                    worker: Rc::new(Worker::new(plane, limits, Http1Mode::Fast)),
                    builders: Rc::new(Builders::new(&options)),
                    stopping: Rc::new(Stopping::default()),
                    // Parks after 1 s (a quarter is more), closes only after a minute.
                    header_read_timeout: Duration::from_secs(60),
                    body_read_timeout: options.body_read_timeout,
                });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let _client = TcpStream::connect(listener.local_addr().expect("address"))
                    .await
                    .expect("connect");
                let (stream, peer) = listener.accept().await.expect("accept");
                stream.set_nodelay(true).expect("nodelay");
                let entry = Entry {
                    front: Front::Own,
                    tls: false,
                    port: 80,
                };
                let served =
                    tokio::task::spawn_local(serve(stream, peer, entry, None, serving.clone(), ()));
                parked(&serving.stopping, 1).await;
                serving.stopping.stop();
                tokio::time::timeout(Duration::from_secs(5), served)
                    .await
                    .expect("closed at once")
                    .expect("served");
                assert_eq!(serving.stopping.parked(), 0);
            })
            .await;
    }

    /// What every idle connection keeps while parked is its task's future (boxed at spawn,
    /// `listeners::accept`): it must stay within mimalloc's 1 KiB small blocks, and it holds the
    /// lean future only boxed. A change that grows it shows here.
    #[test]
    fn a_connections_outer_future_stays_small() {
        fn returned<A, B, C, D, E, F, R>(_: fn(A, B, C, D, E, F) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = returned(serve::<Rc<()>>);
        assert!(
            size <= 1024,
            "a connection's outer future takes {size} bytes"
        );
    }
}
