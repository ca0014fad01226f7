//! How requests come in: one client connection, from its first bytes to its close.
//!
//! The lean HTTP/1 server ([`lean`]) reads first, under the header-read timer. A client that
//! opens with HTTP/2's preface goes to hyper's HTTP/2 server; a request the lean server does not
//! handle (a body, an upgrade, an odd head) moves the connection to hyper's HTTP/1 server for
//! the rest of its life, with the bytes read so far. With `--http1 hyper` the lean server only
//! tells the two protocols apart and every HTTP/1 connection goes to hyper's server.

mod drive;
mod lean;
mod park;
mod slot;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
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
use self::park::{Lot, Parked, Parking};
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

/// What one connection's serving needs from its worker. `G`: what counts a connection open
/// (`serve`'s `open`), kept by a parked connection in the worker's `lot`.
pub struct Serving<G> {
    pub worker: Rc<Worker>,
    pub builders: Rc<Builders>,
    pub stopping: Rc<Stopping>,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// The worker's parked connections.
    pub lot: Rc<Lot<G>>,
}

/// Serves one plain client connection to its end; `open` is held as long (the worker counts its
/// open connections with it), parked or not. Not an async function: the connection's task runs
/// the lean server's future itself, with no layer of state around it to step through on every
/// wake-up.
pub fn serve<G: 'static>(
    stream: TcpStream,
    peer: SocketAddr,
    entry: Entry,
    serving: Rc<Serving<G>>,
    open: G,
) -> impl Future<Output = ()> {
    // TCP_NODELAY is already on: Linux copies it from the listening socket, so setting it
    // again would cost a syscall per connection.
    debug_assert!(stream.nodelay().unwrap_or(true), "TCP_NODELAY is inherited");
    let hrt = serving.header_read_timeout;
    let deadline = Deadline::new(hrt, Instant::now()).parking_after(park_after(hrt));
    let conn = Parked {
        stream,
        head_due: Instant::now(),
        peer,
        entry,
        sniffing: true,
        open,
    };
    serve_lean(conn, Rc::new(deadline), serving)
}

/// Serves one connection of an HTTPS listener to its end (`acceptor`: the handshake, with the
/// certificates it serves); `open` is held as long.
pub async fn serve_https<G: 'static>(
    stream: TcpStream,
    peer: SocketAddr,
    entry: Entry,
    acceptor: TlsAcceptor,
    serving: Rc<Serving<G>>,
    open: G,
) {
    Box::pin(serve_tls(stream, peer, entry, acceptor, &serving)).await;
    drop(open);
}

/// A parked connection whose bytes came, served by a task of its own again (boxed, as
/// `listeners::accept` spawns a new connection's).
fn resume<G: 'static>(conn: Parked<G>, serving: &Rc<Serving<G>>) {
    let hrt = serving.header_read_timeout;
    let deadline = Deadline::resumed(hrt, conn.head_due, park_after(hrt));
    let served = serve_lean(conn, Rc::new(deadline), serving.clone());
    tokio::task::spawn_local(Box::pin(served));
}

/// The lean server's part of a plain connection (`conn`'s `head_due` is read only when it
/// parks), until it closes, parks (and its task ends) or goes to hyper.
async fn serve_lean<G: 'static>(conn: Parked<G>, deadline: Rc<Deadline>, serving: Rc<Serving<G>>) {
    let Parked {
        mut stream,
        peer,
        entry,
        mut sniffing,
        mut open,
        ..
    } = conn;
    let client = Rc::new(Client::new(peer, Some(deadline.clone()), entry));
    let asked = Rc::new(Asked::default());
    let ask = |_: Pin<&mut _>, ask| match ask {
        Ask::Stop => asked.stop.set(true),
        Ask::Park => asked.park.set(true),
    };
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
            Some(Ended::Parked(idle, sniffed)) => {
                let head_due = deadline.head_due().unwrap_or_else(Instant::now);
                let conn = Box::new(Parked {
                    stream: idle,
                    head_due,
                    peer,
                    entry,
                    sniffing: sniffed,
                    open,
                });
                match park(conn, &serving) {
                    Some(readable) => {
                        (stream, sniffing, open) =
                            (readable.stream, readable.sniffing, readable.open)
                    }
                    None => return,
                }
            }
            ended => break ended,
        }
    };
    hand_over(ended, &serving, client, deadline, entry).await;
    drop(open);
}

/// Parks an idle connection in its worker's lot: its task may end (`None`), unless its bytes
/// came already. Closed if the worker stops.
fn park<G: 'static>(conn: Box<Parked<G>>, serving: &Rc<Serving<G>>) -> Option<Box<Parked<G>>> {
    match serving.lot.park(conn, &serving.stopping) {
        Parking::Parked | Parking::Closed => None,
        Parking::Readable(conn) => Some(conn),
        Parking::Tend => {
            let lot = serving.lot.clone();
            let stopping = serving.stopping.clone();
            let serving = serving.clone();
            let tending = park::tend(lot, stopping, move |conn| resume(*conn, &serving));
            tokio::task::spawn_local(tending);
            None
        }
    }
}

/// A connection the lean server leaves to hyper: its HTTP/1 server (with the bytes read so far
/// put back in front of it, and the lean connection's timer), or its HTTP/2 server.
async fn hand_over<G>(
    ended: Option<Ended>,
    serving: &Serving<G>,
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

/// How long a lean connection waits for its next request before it parks (see [`park`]): a
/// second, or a quarter of the header-read timeout when that is shorter. A client that sends
/// its next request sooner never parks, so a busy connection does nothing more per request.
fn park_after(header_read_timeout: Duration) -> Duration {
    (header_read_timeout / 4).min(Duration::from_secs(1))
}

/// An HTTPS connection: the handshake under the header-read timeout (the certificate chosen by
/// SNI from the snapshot served now), then hyper's HTTP/2 or HTTP/1 server as ALPN agreed.
async fn serve_tls<G>(
    stream: TcpStream,
    peer: SocketAddr,
    entry: Entry,
    acceptor: TlsAcceptor,
    serving: &Serving<G>,
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
async fn serve_http1<S, G>(io: S, serving: &Serving<G>, client: Rc<Client>, deadline: Rc<Deadline>)
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
async fn serve_http2<S, G>(io: S, serving: &Serving<G>, client: Client)
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
                answer: None,
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

    /// A worker with no cluster (every request is answered 404), whose connections wait
    /// `header_read_timeout` for a head.
    fn serving(header_read_timeout: Duration) -> Rc<Serving<()>> {
        let plane = crate::plane::DataPlane::new();
        plane.publish(Vec::new());
        let limits = Limits {
            max_headers: 100,
            max_head_bytes: 64 * 1024,
        };
        let options = ProxyOptions::new("127.0.0.1:0".parse().expect("address"));
        Rc::new(Serving {
            worker: Rc::new(Worker::new(plane, limits, Http1Mode::Fast)),
            builders: Rc::new(Builders::new(&options)),
            stopping: Rc::new(Stopping::default()),
            header_read_timeout,
            body_read_timeout: options.body_read_timeout,
            lot: Rc::default(),
        })
    }

    /// A client connected to `listener`, and its connection served by `serving` in a task of
    /// its own (as `listeners::accept` spawns it).
    async fn connected(
        listener: &tokio::net::TcpListener,
        serving: &Rc<Serving<()>>,
    ) -> (TcpStream, tokio::task::JoinHandle<()>) {
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        let entry = Entry {
            front: Front::Own,
            tls: false,
            port: 80,
        };
        let served = serve(stream, peer, entry, serving.clone(), ());
        (client, tokio::task::spawn_local(served))
    }

    /// Reads until the connection closes (up to 5 s): nothing may come.
    async fn closed(client: &mut TcpStream, why: &str) {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("not closed: {why}"))
            .expect("closed");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }

    /// While parked, a connection has no task: no future of it holds the worker's `Serving`,
    /// which only the test and the lot's one `tend` task hold.
    fn no_task_left(serving: &Rc<Serving<()>>) {
        assert_eq!(serving.lot.len(), serving.stopping.parked());
        assert_eq!(Rc::strong_count(serving), 2, "a connection's task stayed");
    }

    /// An idle keep-alive connection parks (its task ends, and with it its futures), is taken
    /// up again by its next request in a new task, parks again, and closes when no head comes
    /// within the header-read timeout. A change that stops parking fails here.
    #[tokio::test]
    async fn an_idle_connection_parks_and_its_next_request_takes_it_up_again() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // Parks after 100 ms of waiting, closes after 800 ms.
                let hrt = Duration::from_millis(800);
                let serving = serving(hrt);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let (mut client, served) = connected(&listener, &serving).await;
                let mut sent = std::time::Instant::now();
                for _ in 0..3 {
                    sent = std::time::Instant::now();
                    client
                        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                        .await
                        .expect("send");
                    let head = answer(&mut client).await;
                    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
                    assert_eq!(serving.stopping.parked(), 0, "served, not parked");
                    parked(&serving.stopping, 1).await;
                    no_task_left(&serving);
                }
                assert!(served.is_finished(), "the first task ended when it parked");
                closed(&mut client, "no head within the header-read timeout").await;
                assert!(
                    sent.elapsed() >= hrt,
                    "closed before the header-read timeout"
                );
                assert_eq!(serving.stopping.parked(), 0);
                assert_eq!(serving.lot.len(), 0);
                assert_eq!(Rc::strong_count(&serving), 1, "the lot's task ended");
            })
            .await;
    }

    /// A parked connection is closed by its header-read timeout, counted from when it went
    /// idle (here: opened), by the lot's one timer for all of them: each in its own time.
    #[tokio::test]
    async fn a_parked_connection_closes_when_no_head_comes_in_time() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // Parks after 500 ms, closes after 2 s: the second opens once the first has
                // parked, parks 500 ms later, and closes 2 s after it opened.
                let hrt = Duration::from_secs(2);
                let serving = serving(hrt);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let first_opened = std::time::Instant::now();
                let (mut first, _) = connected(&listener, &serving).await;
                parked(&serving.stopping, 1).await;
                let second_opened = std::time::Instant::now();
                let (mut second, _) = connected(&listener, &serving).await;
                parked(&serving.stopping, 2).await;
                no_task_left(&serving);

                closed(&mut first, "the first's head is due").await;
                assert!(first_opened.elapsed() >= hrt, "closed early");
                assert_eq!(
                    serving.stopping.parked(),
                    1,
                    "the second's head is not due yet"
                );
                closed(&mut second, "the second's head is due").await;
                assert!(second_opened.elapsed() >= hrt, "closed early");
                assert_eq!(serving.stopping.parked(), 0);
                assert_eq!(serving.lot.len(), 0);
            })
            .await;
    }

    /// A parked connection closes at once when the worker stops.
    #[tokio::test]
    async fn a_parked_connection_closes_when_the_worker_stops() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // Parks after 1 s (a quarter is more), closes only after a minute.
                let serving = serving(Duration::from_secs(60));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let (mut client, served) = connected(&listener, &serving).await;
                parked(&serving.stopping, 1).await;
                no_task_left(&serving);
                assert!(served.is_finished());
                serving.stopping.stop();
                closed(&mut client, "the worker stopped").await;
                assert_eq!(serving.stopping.parked(), 0);
                assert_eq!(serving.lot.len(), 0);
            })
            .await;
    }

    /// What a connection's task holds while it is served, boxed at spawn (`listeners::accept`,
    /// and `resume` for a parked connection taken up again): it must stay within mimalloc's
    /// 1 KiB small blocks, and it holds the lean future only boxed. A change that grows it
    /// shows here. (A parked connection holds neither: see `park`'s test.)
    #[test]
    fn a_connections_outer_future_stays_small() {
        fn returned<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        fn resumed<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        fn returned6<A, B, C, D, E, F, R>(_: fn(A, B, C, D, E, F) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = returned(serve::<Rc<()>>);
        assert!(
            size <= 1024,
            "a connection's outer future takes {size} bytes"
        );
        let size = returned6(serve_https::<Rc<()>>);
        assert!(
            size <= 1024,
            "an HTTPS connection's outer future takes {size} bytes"
        );
        let size = resumed(serve_lean::<Rc<()>>);
        assert!(
            size <= 1024,
            "a resumed connection's future takes {size} bytes"
        );
    }
}
