//! The lean HTTP/1 server's loop over one client connection: read a head, hand the request to
//! the request core, watch the client while the member works, write the answer; until the
//! connection closes, or a request needs hyper (then hyper's server takes the connection, with
//! the bytes read so far put back in front of it).
//!
//! Between requests an idle connection holds no buffer, as with nginx (hyper keeps 16 KiB per
//! connection): its read buffer goes back to the worker's spare ones when it is empty, and the
//! answer's is taken from them for the time of one write. An idle connection asked to park
//! (`Ended::Parked`) leaves this loop altogether, and with it this future's kilobyte.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Method;
use tokio::net::TcpStream;

use super::slot::Slot;
use super::{HTTP2_PREFACE, HTTP2_REQUEST_LINE};
use crate::proxy::client::{Client, ClientRequest};
use crate::proxy::http1::buffers::READ_SIZE;
use crate::proxy::http1::io::poll_fill;
use crate::proxy::http1::parse::{Parsed, parse};
use crate::proxy::http1::respond::respond;
use crate::proxy::options::Http1Mode;
use crate::proxy::request::{answer, unanswered};
use crate::proxy::worker::Worker;

/// How the lean server left a connection.
pub enum Ended {
    /// Closed: by the client, after `Connection: close`, or because the worker stops.
    Closed,
    /// Idle, and asked to park: the connection waits for its next bytes without this future,
    /// then a new one takes it (whether it may still open with HTTP/2's preface, second).
    Parked(TcpStream, bool),
    /// A request it does not handle: hyper's server takes the connection, these bytes first.
    HandOff(TcpStream, Bytes),
    /// The connection opened with HTTP/2's preface (cleartext, prior knowledge): hyper's HTTP/2
    /// server takes it, these bytes first.
    Http2(TcpStream, Bytes),
}

/// What the driver asked of a lean connection (drive's `Ask`), as the connection reads it.
#[derive(Default)]
pub struct Asked {
    /// The worker stops: an idle connection closes at once, a busy one after its answer.
    pub stop: Cell<bool>,
    /// It has waited long for its next head: if nothing of one has come, it parks.
    pub park: Cell<bool>,
}

/// What an idle connection's wait for bytes ended with.
enum Idle {
    /// The worker stops (while nothing has come), or the client closed.
    Closed,
    Park,
    Failed(io::Error),
    /// Bytes came.
    Read,
}

/// Serves the connection's requests until it closes, parks or needs hyper (see [`Asked`]).
/// `sniffing`: no bytes have come yet, so it may open with HTTP/2's preface.
///
/// Its future is boxed whole when the connection starts and must stay within the allocator's
/// small blocks (see the test below). The awaited steps ([`next_head`], [`served`], `respond`)
/// borrow what lives here, so that no value is held twice, and only one of them is under way at
/// a time: their futures share one place in this one.
pub async fn serve(
    mut stream: TcpStream,
    worker: Rc<Worker>,
    client: Rc<Client>,
    asked: Rc<Asked>,
    mut sniffing: bool,
) -> io::Result<Ended> {
    let mut buf = BytesMut::new();
    // The requests' futures, in one box of the connection's (see [`served`]).
    let mut handling = Slot::new();
    'serve: loop {
        let next = next_head(&mut stream, &mut buf, &mut sniffing, &worker, &asked);
        let (request, keep_alive) = match next.await {
            Ok(Next::Request(request, keep_alive)) => (request, keep_alive),
            Ok(Next::HandOff) => return Ok(Ended::HandOff(stream, buf.freeze())),
            Ok(Next::Http2) => return Ok(Ended::Http2(stream, buf.freeze())),
            // Its read buffer is already back with the worker's spares (it was empty).
            Ok(Next::Park) => return Ok(Ended::Parked(stream, sniffing)),
            Ok(Next::InvalidPreface) => {
                tracing::debug!(client = %client.addr, "neither HTTP/1 nor HTTP/2's preface: closed");
                break 'serve;
            }
            Ok(Next::Closed | Next::Wait) => break 'serve,
            Err(e) => return Err(e),
        };
        let version = request.req.version();
        let head_request = request.req.method() == Method::HEAD;
        let handled = handling.put(answer(worker.clone(), client.clone(), request));
        let served = served(handled, &mut stream, &mut buf, &worker).await;
        let Some(mut request) = served else {
            tracing::debug!(client = %client.addr, "client closed the connection before the answer; request dropped");
            break 'serve;
        };
        // The request core writes an answer on every way through it; hyper's service and this
        // server answer the same should one ever be missing.
        let response = request.answer.get_or_insert_with(unanswered);
        let keep_alive = keep_alive && !asked.stop.get();
        // `respond` borrows the answer, so that its future (in every connection's) holds no copy.
        let kept = respond(
            &mut stream,
            response,
            version,
            head_request,
            keep_alive,
            &worker.buffers,
        );
        let kept = kept.await?;
        // Out: the answer ends (its member connection goes back) and the request's box and
        // header map are parsed into again.
        worker.put_request(request);
        if !kept {
            break 'serve;
        }
    }
    // Closed: the read buffer goes back to the worker's spares, as an idle connection's does.
    // With a new connection for every request, each would otherwise allocate its own, on
    // mimalloc's slow path for large blocks.
    worker.buffers.put_read(buf);
    Ok(Ended::Closed)
}

/// Reads until a request head has come, or the connection is to end, park, or go to hyper
/// ([`Next`]; never [`Next::Wait`]).
async fn next_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    sniffing: &mut bool,
    worker: &Worker,
    asked: &Asked,
) -> io::Result<Next> {
    // How much of `buf` is known to end no head: a head can only end with a line feed, so a
    // head trickling in is parsed again only when a line has ended (not once per read). The
    // first bytes are parsed at once: they are usually the whole head.
    let mut checked = 0;
    loop {
        match look(buf, sniffing, &mut checked, worker, asked) {
            Next::Wait => {}
            next => return Ok(next),
        }
        match std::future::poll_fn(|cx| poll_idle(stream, buf, worker, asked, cx)).await {
            Idle::Closed => return Ok(Next::Closed),
            Idle::Park => return Ok(Next::Park),
            Idle::Failed(e) => return Err(e),
            Idle::Read => {}
        }
    }
}

/// Serves the request (`handled`, the request core's future) while the client is watched
/// ([`poll_watch`]): if it closes, the request is dropped (and with it the member connection),
/// as nginx does by default and hyper's server does; bytes it sends meanwhile are the next
/// request, kept. The request's box comes back with its answer in it, where it stays until it
/// is written out: every move of it is a copy. None when the client closed first.
///
/// The request's future is boxed, not part of this connection's: inline, its kilobyte would
/// stay in every idle connection's task. The box is the connection's, used again by each of its
/// requests, so that a keep-alive request allocates none; a connection idle long enough to
/// park lets it go with the rest of its future. A future the client left is dropped as the
/// connection ends, with the box; a finished one holds nothing until the next takes its place.
async fn served<F: Future<Output = Box<ClientRequest>>>(
    mut handled: Pin<&mut F>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    worker: &Worker,
) -> Option<Box<ClientRequest>> {
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(request) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(request));
        }
        // Ready only when the client closed.
        poll_watch(stream, buf, worker, cx, &mut watching).map(|_| None)
    })
    .await
}

/// Waits for bytes, and reads them. Readiness first: an idle connection takes a read buffer
/// only once bytes have come.
#[inline]
fn poll_idle(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    worker: &Worker,
    asked: &Asked,
    cx: &mut Context<'_>,
) -> Poll<Idle> {
    if buf.is_empty() && asked.stop.get() {
        return Poll::Ready(Idle::Closed);
    }
    if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
        if let Err(e) = ready {
            return Poll::Ready(Idle::Failed(e));
        }
        if buf.capacity() == 0 {
            *buf = worker.buffers.take_read();
        }
        match poll_fill(stream, cx, buf, READ_SIZE) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Idle::Closed),
            Poll::Ready(Ok(_)) => return Poll::Ready(Idle::Read),
            Poll::Ready(Err(e)) => return Poll::Ready(Idle::Failed(e)),
            // Not readable after all: still idle, holding no buffer.
            Poll::Pending if buf.is_empty() => {
                worker.buffers.put_read(std::mem::take(buf));
            }
            Poll::Pending => {}
        }
    }
    // Nothing to read: park if asked (the ask is used up either way).
    if asked.park.replace(false) && buf.is_empty() {
        return Poll::Ready(Idle::Park);
    }
    Poll::Pending
}

/// What to do before waiting for more bytes: see what has arrived ([`try_head`]), or while
/// nothing has, close if the worker stops, and hold no buffer.
#[inline]
fn look(
    buf: &mut BytesMut,
    sniffing: &mut bool,
    checked: &mut usize,
    worker: &Worker,
    asked: &Asked,
) -> Next {
    if !buf.is_empty() {
        let next = try_head(buf, sniffing, *checked, worker);
        if matches!(next, Next::Wait) {
            *checked = buf.len();
        }
        next
    } else if asked.stop.get() {
        Next::Closed
    } else {
        // Idle: hold no buffer while waiting.
        worker.buffers.put_read(std::mem::take(buf));
        Next::Wait
    }
}

/// What the bytes read so far hold, or what the wait for more ended with.
enum Next {
    /// A whole request head, and whether the client wants the connection kept.
    Request(Box<ClientRequest>, bool),
    /// A request for hyper's HTTP/1 server.
    HandOff,
    /// HTTP/2's preface.
    Http2,
    /// A preface that starts as HTTP/2's and goes wrong, or a first line that is not HTTP/1.
    InvalidPreface,
    /// Nothing yet, or not enough: more bytes are needed.
    Wait,
    /// The worker stops, or the client closed.
    Closed,
    /// Idle, and asked to park.
    Park,
}

/// Looks at what has arrived: HTTP/2's preface, a whole head, or something for hyper;
/// [`Next::Wait`] while more bytes are needed. `checked` bytes are known to end no head.
fn try_head(buf: &mut BytesMut, sniffing: &mut bool, checked: usize, worker: &Worker) -> Next {
    if *sniffing {
        let n = buf.len().min(HTTP2_PREFACE.len());
        if buf[..n] != HTTP2_PREFACE[..n] {
            if buf[..n].starts_with(HTTP2_REQUEST_LINE) {
                // HTTP/2's preface gone wrong, which no HTTP/1 request starts with: a
                // connection error (RFC 9113 3.4), answered by closing, not by an HTTP/1 400.
                return Next::InvalidPreface;
            }
            match speaks_http1(buf, worker.limits.max_head_bytes) {
                Some(true) => {}
                Some(false) => return Next::InvalidPreface,
                None => return Next::Wait,
            }
            *sniffing = false;
        } else if n == HTTP2_PREFACE.len() {
            return Next::Http2;
        } else {
            // Part of the preface: wait for the rest, under the head timer.
            return Next::Wait;
        }
    }
    if worker.http1 == Http1Mode::Hyper {
        // Not HTTP/2: hyper's HTTP/1 server reads every request.
        return Next::HandOff;
    }
    let limits = worker.limits;
    let line_ended = checked == 0 || buf[checked..].contains(&b'\n');
    if !line_ended && buf.len() < limits.max_head_bytes {
        return Next::Wait;
    }
    let parsed = parse(buf, limits, |line, lean| {
        let keep_alive = line.keep_alive;
        (worker.request(line, lean), keep_alive)
    });
    match parsed {
        Parsed::Request((request, keep_alive)) => Next::Request(request, keep_alive),
        Parsed::Partial => Next::Wait,
        Parsed::Other => Next::HandOff,
    }
}

/// Whether a connection's first bytes are an HTTP/1 request line: a method's first character,
/// and once the line has ended, a version that starts `HTTP/` or a second word that is a request
/// target (`/path`, `*`, `scheme://...`, `host:port`); `None` while the line goes on. A client
/// whose first line is not HTTP at all (h2spec's `INVALID CONNECTION PREFACE`, a TLS handshake
/// on the plain port) cannot read an HTTP/1 answer: it is closed without one, as an invalid
/// HTTP/2 preface is (RFC 9113 3.4). A malformed HTTP/1 request (`GET / HTTX/1.1`) still gets
/// its 400.
fn speaks_http1(buf: &[u8], max_head_bytes: usize) -> Option<bool> {
    if !buf.first().is_some_and(u8::is_ascii_alphabetic) {
        return Some(false);
    }
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        // A line too long for a head is answered by the parser (414 or 431).
        return (buf.len() >= max_head_bytes).then_some(true);
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(line);
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let is_target = target.starts_with(b"/")
        || target == b"*"
        || target.windows(3).any(|w| w == b"://")
        || target.contains(&b':');
    Some(version.starts_with(b"HTTP/") || is_target)
}

/// Reads what the client sends while its request is served, up to a head's worth;
/// `Ready(false)` when it closed.
fn poll_watch(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    worker: &Worker,
    cx: &mut Context<'_>,
    watching: &mut bool,
) -> Poll<bool> {
    while *watching {
        if buf.len() >= worker.limits.max_head_bytes {
            // Enough is waiting; the rest stays in the socket until its turn.
            *watching = false;
            break;
        }
        match poll_fill(stream, cx, buf, READ_SIZE) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => break,
        }
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::proxy::http1::Limits;

    const LIMITS: Limits = Limits {
        max_headers: 100,
        max_head_bytes: 64 * 1024,
    };

    /// A client connection served by `serve` on a worker with no cluster (every request is
    /// answered 404): the requests `text` holds, and what the client read until the close.
    async fn served(text: &'static [u8]) -> (Rc<Worker>, String) {
        use tokio::io::AsyncReadExt;
        let plane = crate::plane::DataPlane::new();
        plane.publish(Vec::new());
        let worker = Rc::new(Worker::new(plane, LIMITS, Http1Mode::Fast));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        client.write_all(text).await.expect("send");
        let ended = serve(
            stream,
            worker.clone(),
            Rc::new(Client::new(
                peer,
                None,
                crate::proxy::client::Entry {
                    front: crate::proxy::client::Front::Own,
                    tls: false,
                    port: 80,
                },
            )),
            Rc::new(Asked::default()),
            true,
        )
        .await
        .expect("served");
        assert!(matches!(ended, Ended::Closed));
        let mut answers = String::new();
        client
            .read_to_string(&mut answers)
            .await
            .expect("answers, then the close");
        (worker, answers)
    }

    /// With a new connection for every request, a closing connection's read buffer goes back to
    /// the worker's spares, as an idle one's does: the next connection takes it instead of
    /// allocating its own (docs/benchmarks.md, "New connections, and the allocator's slow
    /// path").
    #[tokio::test]
    async fn a_closing_connection_gives_its_read_buffer_back() {
        let (worker, answers) =
            served(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
        assert_eq!(answers.matches("HTTP/1.1 404").count(), 1, "{answers}");
        assert_eq!(worker.buffers.spare().0, 1);

        // Two requests on the connection, the second asking to close: still one buffer.
        let (worker, answers) = served(
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(answers.matches("HTTP/1.1 404").count(), 2, "{answers}");
        assert_eq!(worker.buffers.spare().0, 1);
    }

    /// A first line that is not HTTP/1 is closed without an answer; a malformed HTTP/1 one
    /// gets its 400 (RFC 9112), and a line still arriving is waited for.
    #[test]
    fn a_first_line_that_is_not_http1_is_told_apart_from_a_bad_request() {
        let max = LIMITS.max_head_bytes;
        assert_eq!(speaks_http1(b"GET / HTTP/1.1\r\n", max), Some(true));
        assert_eq!(speaks_http1(b"GET /a b HTTP/1.0\n", max), Some(true));
        assert_eq!(speaks_http1(b"GET / HTTP/2.0\r\n", max), Some(true));
        assert_eq!(speaks_http1(b"GET / HTT", max), None);
        assert_eq!(
            speaks_http1(b"INVALID CONNECTION PREFACE\r\n\r\n", max),
            Some(false)
        );
        // Bad requests, answered 400: a wrong version, HTTP/0.9, a target without a version.
        assert_eq!(speaks_http1(b"GET / HTTX/1.1\r\n", max), Some(true));
        assert_eq!(speaks_http1(b"GET /\r\n", max), Some(true));
        assert_eq!(speaks_http1(b"GET http://a/ XYZ\r\n", max), Some(true));
        assert_eq!(speaks_http1(b"CONNECT a:443 XYZ\r\n", max), Some(true));
        assert_eq!(speaks_http1(b"OPTIONS * XYZ\r\n", max), Some(true));
        assert_eq!(speaks_http1(b"HELLO\r\n", max), Some(false));
        assert_eq!(speaks_http1(b"\x16\x03\x01\x02\x00\x01", max), Some(false));
        assert_eq!(speaks_http1(b" GET / HTTP/1.1\r\n", max), Some(false));
        assert_eq!(speaks_http1(&[b'G'; 70 * 1024], max), Some(true));
    }

    #[tokio::test]
    async fn h2specs_invalid_preface_is_closed_without_an_answer() {
        let (_, answers) = served(b"INVALID CONNECTION PREFACE\r\n\r\n").await;
        assert_eq!(answers, "");
    }

    /// A connection's lean future is boxed as the connection starts (`downstream::serve`). Like
    /// a request's, it must stay within mimalloc's small blocks (1 KiB on 64-bit machines): a
    /// larger block takes mimalloc's slow path, several hundred instructions on every new
    /// connection (docs/benchmarks.md, "New connections, and the allocator's slow path"). A
    /// change that grows it past that shows here.
    #[test]
    fn a_connections_future_fits_the_allocators_small_blocks() {
        fn returned<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = returned(serve);
        assert!(size <= 1024, "a connection's future takes {size} bytes");
    }
}
