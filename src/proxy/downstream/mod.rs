//! How requests come in: one client connection, from its first bytes to its close.
//!
//! The lean HTTP/1 server ([`lean`]) reads first, under the header-read timer. A client that
//! opens with HTTP/2's preface goes to hyper's HTTP/2 server; a request the lean server does not
//! handle (a body, an upgrade, an odd head) moves the connection to hyper's HTTP/1 server for
//! the rest of its life, with the bytes read so far. With `--http1 hyper` the lean server only
//! tells the two protocols apart and every HTTP/1 connection goes to hyper's server.

mod drive;
mod lean;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
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
use self::drive::drive;
use self::lean::Ended;
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
    let deadline = Rc::new(Deadline::new(serving.header_read_timeout, Instant::now()));
    let client = Rc::new(Client::new(peer, Some(deadline.clone()), entry));
    let closing = Rc::new(Cell::new(false));
    // Boxed: `drive` would otherwise hold its state twice (as its argument, then pinned), in
    // every connection's task.
    let lean = Box::pin(lean::serve(
        stream,
        serving.worker.clone(),
        client.clone(),
        closing.clone(),
    ));
    let stopping = serving.stopping.clone();
    let ended = drive(
        lean,
        |_| closing.set(true),
        Some(deadline.clone()),
        stopping,
        peer,
    )
    .await;
    match ended {
        // Boxed: the rarer paths keep their state out of every connection's task.
        Some(Ended::HandOff(stream, read)) => {
            let io = Prefixed::new(stream, read);
            Box::pin(serve_http1(io, &serving, client, deadline)).await;
        }
        Some(Ended::Http2(stream, read)) => {
            let io = Prefixed::new(stream, read);
            Box::pin(serve_http2(io, &serving, Client::new(peer, None, entry))).await;
        }
        Some(Ended::Closed) | None => {}
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
        |c| c.graceful_shutdown(),
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
    drive(conn, |c| c.graceful_shutdown(), None, stopping, peer).await;
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
