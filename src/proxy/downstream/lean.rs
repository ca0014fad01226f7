//! The lean HTTP/1 server's loop over one client connection: read a head, hand the request to
//! the request core, watch the client while the member works, write the answer; until the
//! connection closes, or a request needs hyper (then hyper's server takes the connection, with
//! the bytes read so far put back in front of it).
//!
//! Between requests an idle connection holds no buffer, as with nginx (hyper keeps 16 KiB per
//! connection): its read buffer goes back to the worker's spare ones when it is empty, and the
//! answer's is taken from them for the time of one write.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Method;
use tokio::net::TcpStream;

use super::{HTTP2_PREFACE, HTTP2_REQUEST_LINE};
use crate::proxy::client::{Client, ClientRequest};
use crate::proxy::http1::buffers::READ_SIZE;
use crate::proxy::http1::io::poll_fill;
use crate::proxy::http1::parse::{Parsed, parse};
use crate::proxy::http1::respond::respond;
use crate::proxy::options::Http1Mode;
use crate::proxy::request::handle;
use crate::proxy::worker::Worker;

/// How the lean server left a connection.
pub enum Ended {
    /// Closed: by the client, after `Connection: close`, or because the worker stops.
    Closed,
    /// A request it does not handle: hyper's server takes the connection, these bytes first.
    HandOff(TcpStream, Bytes),
    /// The connection opened with HTTP/2's preface (cleartext, prior knowledge): hyper's HTTP/2
    /// server takes it, these bytes first.
    Http2(TcpStream, Bytes),
}

/// Serves the connection's requests until it closes or needs hyper. `closing` is set when the
/// worker stops: an idle connection closes at once, a busy one after its answer.
///
/// One async function, not several: its future is boxed whole when the connection starts and
/// must stay within the allocator's small blocks (see the test below); every awaited
/// sub-function would add its own arguments and temporaries to it. The steps that do not await
/// are functions of their own ([`try_head`], [`poll_watch`]).
pub async fn serve(
    mut stream: TcpStream,
    worker: Rc<Worker>,
    client: Rc<Client>,
    closing: Rc<Cell<bool>>,
) -> io::Result<Ended> {
    let mut buf = BytesMut::new();
    // Until the first bytes tell otherwise, the connection may be opening with HTTP/2's preface.
    let mut sniffing = true;
    'serve: loop {
        // How much of `buf` is known to end no head: a head can only end with a line feed, so a
        // head trickling in is parsed again only when a line has ended (not once per read). The
        // first bytes are parsed at once: they are usually the whole head.
        let mut checked = 0;
        let (request, keep_alive) = loop {
            if !buf.is_empty() {
                match try_head(&mut buf, &mut sniffing, checked, &worker) {
                    Some(Next::Request(request, keep_alive)) => break (request, keep_alive),
                    Some(Next::HandOff) => return Ok(Ended::HandOff(stream, buf.freeze())),
                    Some(Next::Http2) => return Ok(Ended::Http2(stream, buf.freeze())),
                    Some(Next::InvalidPreface) => {
                        tracing::debug!(client = %client.addr, "neither HTTP/1 nor HTTP/2's preface: closed");
                        break 'serve;
                    }
                    None => checked = buf.len(),
                }
            } else if closing.get() {
                break 'serve;
            } else {
                // Idle: hold no buffer while waiting.
                worker.buffers.put_read(std::mem::take(&mut buf));
            }
            let ready = std::future::poll_fn(|cx| {
                if buf.is_empty() && closing.get() {
                    return Poll::Ready(None);
                }
                stream.poll_read_ready(cx).map(Some)
            });
            match ready.await {
                None => break 'serve,
                Some(ready) => ready?,
            }
            if buf.capacity() == 0 {
                buf = worker.buffers.take_read();
            }
            let n = std::future::poll_fn(|cx| poll_fill(&mut stream, cx, &mut buf, READ_SIZE));
            if n.await? == 0 {
                break 'serve;
            }
        };
        let version = request.req.version();
        let head_request = request.req.method() == Method::HEAD;
        // Boxed: inline, the request's future (about 1 KiB) would stay part of every idle
        // connection's task.
        let mut handled = Box::pin(handle(worker.clone(), client.clone(), request));
        // While the member works, the client is watched: if it closes, the request is dropped
        // (and with it the member connection), as nginx does by default and hyper's server
        // does; bytes it sends meanwhile are the next request, kept.
        let mut watching = true;
        // The answer is written into `answer` where it will stay: every move of it is a copy.
        let mut answer = None;
        let open = std::future::poll_fn(|cx| {
            if let Poll::Ready(Ok(response)) = handled.as_mut().poll(cx) {
                answer = Some(response);
                return Poll::Ready(true);
            }
            poll_watch(&mut stream, &mut buf, &worker, cx, &mut watching)
        })
        .await;
        drop(handled);
        let Some(response) = answer.as_mut().filter(|_| open) else {
            tracing::debug!(client = %client.addr, "client closed the connection before the answer; request dropped");
            break 'serve;
        };
        let keep_alive = keep_alive && !closing.get();
        // `respond` borrows the answer, so that its own future (part of every connection's,
        // idle or not) does not hold the answer twice, as an argument and a local.
        let kept = respond(
            &mut stream,
            response,
            version,
            head_request,
            keep_alive,
            &worker.buffers,
        );
        if !kept.await? {
            break 'serve;
        }
    }
    // Closed: the read buffer goes back to the worker's spares, as an idle connection's does.
    // With a new connection for every request, each would otherwise allocate its own, on
    // mimalloc's slow path for large blocks.
    worker.buffers.put_read(buf);
    Ok(Ended::Closed)
}

/// What the bytes read so far hold.
enum Next {
    /// A whole request head, and whether the client wants the connection kept.
    Request(Box<ClientRequest>, bool),
    /// A request for hyper's HTTP/1 server.
    HandOff,
    /// HTTP/2's preface.
    Http2,
    /// A preface that starts as HTTP/2's and goes wrong, or a first line that is not HTTP/1.
    InvalidPreface,
}

/// Looks at what has arrived: HTTP/2's preface, a whole head, or something for hyper; `None`
/// while more bytes are needed. `checked` bytes are known to end no head.
fn try_head(
    buf: &mut BytesMut,
    sniffing: &mut bool,
    checked: usize,
    worker: &Worker,
) -> Option<Next> {
    if *sniffing {
        let n = buf.len().min(HTTP2_PREFACE.len());
        if buf[..n] != HTTP2_PREFACE[..n] {
            if buf[..n].starts_with(HTTP2_REQUEST_LINE) {
                // HTTP/2's preface gone wrong, which no HTTP/1 request starts with: a
                // connection error (RFC 9113 3.4), answered by closing, not by an HTTP/1 400.
                return Some(Next::InvalidPreface);
            }
            match speaks_http1(buf, worker.limits.max_head_bytes) {
                Some(true) => {}
                Some(false) => return Some(Next::InvalidPreface),
                None => return None,
            }
            *sniffing = false;
        } else if n == HTTP2_PREFACE.len() {
            return Some(Next::Http2);
        } else {
            // Part of the preface: wait for the rest, under the head timer.
            return None;
        }
    }
    if worker.http1 == Http1Mode::Hyper {
        // Not HTTP/2: hyper's HTTP/1 server reads every request.
        return Some(Next::HandOff);
    }
    let limits = worker.limits;
    let line_ended = checked == 0 || buf[checked..].contains(&b'\n');
    if !line_ended && buf.len() < limits.max_head_bytes {
        return None;
    }
    let parsed = parse(buf, limits, |line, lean| {
        let keep_alive = line.keep_alive;
        (worker.request(line, lean), keep_alive)
    });
    match parsed {
        Parsed::Request((request, keep_alive)) => Some(Next::Request(request, keep_alive)),
        Parsed::Partial => None,
        Parsed::Other => Some(Next::HandOff),
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
            Rc::new(Cell::new(false)),
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
        fn returned<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = returned(serve);
        assert!(size <= 1024, "a connection's future takes {size} bytes");
    }
}
