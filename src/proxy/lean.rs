//! The client side of HTTP/1 for the common request, without hyper's server machinery.
//!
//! Most requests a balancer sees are a head and nothing else: no body, no upgrade, no
//! `Expect`. For those this module reads the head, parses it with `httparse` (hyper's parser),
//! hands it to [`forward::handle`] like hyper's server would, and writes the answer's head and
//! body itself. The moment a request is anything else (a body, an upgrade, `Expect`, CONNECT,
//! a malformed or oversized head), the connection goes to hyper's server for the rest of its
//! life, with the bytes read so far put back in front of the stream ([`Prefixed`]), so every
//! odd case keeps hyper's handling and its error answers.
//!
//! Between requests an idle connection holds no buffer, as with nginx (hyper keeps 16 KiB per
//! connection): its read buffer goes back to the worker's spare ones ([`Buffers`]) when it is
//! empty, and the answer's is taken from them for the time of one write.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::body::{ResponseBody, UpstreamBody};
use super::forward::{self, Client, ClientRequest, LeanHead, Scan, Worker};
use super::head::{self, CONNECTION, Field, RawHead, TRANSFER_ENCODING, UPGRADE};

/// Header slots of the parse; a head with more goes to hyper (which answers 431 beyond the
/// configured limit).
const MAX_HEADERS: usize = 100;
/// The read buffer's size when a request begins to arrive.
const READ_SIZE: usize = 8 * 1024;
/// Data frames up to this size are copied behind the head into one write; larger ones are
/// written as they are, together with what is pending (one `writev`).
const COPY_LIMIT: usize = 4 * 1024;

/// What an HTTP/2 client with prior knowledge opens its connection with (RFC 9113 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most spare buffers of each kind a worker keeps.
const SPARE: usize = 64;
/// An answer's buffer larger than this is let go rather than kept spare.
const SPARE_WRITE_LIMIT: usize = 16 * 1024;
/// A request whose header map has room for more fields than this is let go rather than kept.
const SPARE_FIELDS_LIMIT: usize = 64;

/// A worker's spare buffers. A connection that waits for its next request gives its read
/// buffer back here, and takes one when bytes arrive; an answer's head is written into one;
/// a request is parsed into a finished one's box and header map. An idle connection holds no
/// buffer, and a busy worker allocates none per request.
#[derive(Default)]
pub struct Buffers {
    read: RefCell<Vec<BytesMut>>,
    write: RefCell<Vec<Vec<u8>>>,
    /// Boxed: the box is what is kept, as requests are passed around boxed.
    #[expect(
        clippy::vec_box,
        reason = "the boxes themselves are what is kept spare"
    )]
    requests: RefCell<Vec<Box<ClientRequest>>>,
}

impl Buffers {
    fn take_read(&self) -> BytesMut {
        self.read.borrow_mut().pop().unwrap_or_default()
    }

    /// Keeps `buf` if it is empty and nothing shares it any more (the last request's head,
    /// split off it, is gone), with its whole room back.
    fn put_read(&self, mut buf: BytesMut) {
        if buf.is_empty() && buf.try_reclaim(READ_SIZE) {
            let mut spare = self.read.borrow_mut();
            if spare.len() < SPARE {
                spare.push(buf);
            }
        }
    }

    fn take_write(&self) -> Vec<u8> {
        self.write
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(2048))
    }

    fn put_write(&self, mut out: Vec<u8>) {
        if out.capacity() <= SPARE_WRITE_LIMIT {
            out.clear();
            let mut spare = self.write.borrow_mut();
            if spare.len() < SPARE {
                spare.push(out);
            }
        }
    }

    /// A spare request (empty: no fields, no extensions, an empty body, no head), or a new
    /// one.
    fn take_request(&self) -> Box<ClientRequest> {
        self.requests.borrow_mut().pop().unwrap_or_else(|| {
            Box::new(ClientRequest {
                req: Request::new(UpstreamBody::empty()),
                lean: None,
            })
        })
    }

    /// Keeps a finished request's box and its header map's room for the next request to be
    /// parsed into, emptied: nothing in it holds on to the head it was parsed from (so that the
    /// read buffer can be reclaimed) or to a member's counters.
    pub fn put_request(&self, mut request: Box<ClientRequest>) {
        if request.req.headers().capacity() > SPARE_FIELDS_LIMIT {
            return;
        }
        let mut spare = self.requests.borrow_mut();
        if spare.len() < SPARE {
            let req = &mut request.req;
            req.headers_mut().clear();
            req.extensions_mut().clear();
            *req.method_mut() = Method::GET;
            *req.uri_mut() = Uri::default();
            *req.body_mut() = UpstreamBody::empty();
            request.lean = None;
            spare.push(request);
        }
    }

    /// How many buffers are spare: read, write and requests.
    #[cfg(test)]
    fn spare(&self) -> (usize, usize, usize) {
        (
            self.read.borrow().len(),
            self.write.borrow().len(),
            self.requests.borrow().len(),
        )
    }
}

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

/// The limits hyper's server is configured with, so that the hand-off is never needed to
/// enforce them differently.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_headers: usize,
    pub max_head_bytes: usize,
}

/// Serves the connection's requests until it closes or needs hyper. `closing` is set when the
/// worker stops: an idle connection closes at once, a busy one after its answer.
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
        // How much of `buf` is known to end no head: a head can only end with a line feed, so
        // a head trickling in is parsed again only when a line has ended (not once per read).
        // The first bytes are parsed at once: they are usually the whole head.
        let mut checked = 0;
        // A whole request head, or a reason to stop.
        let request = loop {
            if !buf.is_empty() {
                let mut preface = false;
                if sniffing {
                    let n = buf.len().min(HTTP2_PREFACE.len());
                    if buf[..n] == HTTP2_PREFACE[..n] {
                        if n == HTTP2_PREFACE.len() {
                            return Ok(Ended::Http2(stream, buf.freeze()));
                        }
                        // Part of the preface: wait for the rest, under the head timer.
                        preface = true;
                    } else {
                        sniffing = false;
                    }
                }
                let line_ended = checked == 0 || buf[checked..].contains(&b'\n');
                if !preface && (line_ended || buf.len() >= worker.limits.max_head_bytes) {
                    match parse(&mut buf, worker.limits, &worker.buffers) {
                        Parsed::Request(request) => break request,
                        Parsed::Partial => {}
                        Parsed::Other => return Ok(Ended::HandOff(stream, buf.freeze())),
                    }
                }
                checked = buf.len();
            } else {
                if closing.get() {
                    break 'serve;
                }
                // Idle: hold no buffer while waiting.
                worker.buffers.put_read(std::mem::take(&mut buf));
            }
            let ready = std::future::poll_fn(|cx| {
                if buf.is_empty() && closing.get() {
                    return Poll::Ready(None);
                }
                stream.poll_read_ready(cx).map(Some)
            })
            .await;
            match ready {
                None => break 'serve,
                Some(ready) => ready?,
            }
            if buf.capacity() == 0 {
                buf = worker.buffers.take_read();
            }
            let n =
                std::future::poll_fn(|cx| head::poll_fill(&mut stream, cx, &mut buf, READ_SIZE))
                    .await?;
            if n == 0 {
                break 'serve;
            }
        };
        let Lean {
            request,
            keep_alive,
        } = request;
        let version = request.req.version();
        let head_request = request.req.method() == Method::HEAD;
        // Boxed: inline, the request's future (about 1 KiB) would stay part of every idle
        // connection's task.
        let mut handled = Box::pin(forward::handle(worker.clone(), client.clone(), request));
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
            while watching {
                if buf.len() >= worker.limits.max_head_bytes {
                    // Enough is waiting; the rest stays in the socket until its turn.
                    watching = false;
                    break;
                }
                match head::poll_fill(&mut stream, cx, &mut buf, READ_SIZE) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
            Poll::Pending
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

/// A request the lean server handles, and whether the client wants the connection kept.
struct Lean {
    request: Box<ClientRequest>,
    keep_alive: bool,
}

enum Parsed {
    Request(Lean),
    Partial,
    /// Not ours to handle: hyper's server takes the connection.
    Other,
}

/// Parses the head at the start of `buf` into a spare request of `buffers`. On success the head
/// is split off `buf`, and the request's URI and fields share its bytes: the fields are kept as
/// the client wrote them ([`LeanHead`]), not put in the header map.
fn parse(buf: &mut BytesMut, limits: Limits, buffers: &Buffers) -> Parsed {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS)];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_head_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head_bytes => {
            return Parsed::Partial;
        }
        _ => return Parsed::Other,
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Parsed::Other,
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    let path_start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let path_span = path_start..path_start + path.len();
    let (mut close, mut keep_alive_token, mut hosts) = (false, false, 0);
    let mut host = None;
    // Whatever needs more than a head goes to hyper: a body, an upgrade, an expectation.
    let mut more_than_a_head = false;
    // The pass that picks the fields to pass on also reads what the lean server and routing
    // look for among all of them (forward::Scan).
    let mut scan = Scan::default();
    let base = buf.as_ptr() as usize;
    let fields = RawHead::new(buf, parsed.headers, |kind, h| {
        match kind {
            Field::HopByHop(TRANSFER_ENCODING | UPGRADE) | Field::Expect => {
                more_than_a_head = true;
            }
            Field::ContentLength => more_than_a_head |= h.value != b"0",
            Field::Host => {
                hosts += 1;
                let start = h.value.as_ptr() as usize - base;
                host = Some(start..start + h.value.len());
            }
            Field::HopByHop(CONNECTION) => {
                let (c, k) = head::connection_tokens(h.value);
                close |= c;
                keep_alive_token |= k;
            }
            _ => {}
        }
        scan.see(kind);
    });
    if more_than_a_head || hosts > 1 {
        return Parsed::Other;
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let head = buf.split_to(head_len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_span)) else {
        // A target hyper answers with 400: give it back the whole head.
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::Other;
    };
    // Boxed: the request passes through several hands (the connection, routing, the exchange)
    // and a pointer is cheaper to move than the request (docs/benchmarks.md, "Copies"). A spare
    // one keeps its header map's room: no allocation for either.
    let mut request = buffers.take_request();
    let req = &mut request.req;
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    request.lean = Some(LeanHead {
        host: host.map(|span| head.slice(span)),
        fields: fields.of(head),
        scan,
    });
    Parsed::Request(Lean {
        request,
        keep_alive,
    })
}

/// How the answer's body goes to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length,
    Chunked,
    /// HTTP/1.0 client, length unknown: until the connection closes.
    Close,
}

/// Writes the answer; true when the connection stays open for the next request.
async fn respond(
    stream: &mut TcpStream,
    response: &mut Response<ResponseBody>,
    version: Version,
    head_request: bool,
    mut keep_alive: bool,
    buffers: &Buffers,
) -> io::Result<bool> {
    let status = response.status();
    // The head, and a small body behind it: one write, into a spare buffer.
    let mut out = buffers.take_write();
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // The member's fields as it sent them (see `RawHead`), then what the proxy added.
    let (mut has_length, mut has_date) = (false, false);
    let headers = response.headers();
    if let Some(raw) = response.body().raw_head() {
        raw.write_fields(&mut out);
        (has_length, has_date) = (raw.length, raw.date);
    }
    if !headers.is_empty() {
        for (name, value) in headers {
            head::push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        has_length |= headers.contains_key(header::CONTENT_LENGTH);
        has_date |= headers.contains_key(header::DATE);
    }
    let body = response.body_mut();
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        Framing::None
    } else if let Some(length) = body.size_hint().exact() {
        if !has_length {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(length, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Framing::Length
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        push_date(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        body.finish();
        stream.write_all(&out).await?;
        buffers.put_write(out);
        return Ok(keep_alive);
    }
    loop {
        if body.is_end_stream() {
            break;
        }
        // The next frame if it is there; if not, what is written so far goes out first.
        let frame =
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
            {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            // The member broke off: so does this answer, which the client sees as cut short.
            Some(Err(e)) => {
                if !out.is_empty() {
                    let _ = stream.write_all(&out).await;
                }
                return Err(io::Error::other(e));
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                }
                if data.len() <= COPY_LIMIT {
                    out.extend_from_slice(&data);
                } else {
                    // What is pending and the frame in one system call, the frame not copied.
                    write_both(stream, &out, &data).await?;
                    out.clear();
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in &trailers {
                head::push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            body.finish();
            stream.write_all(&out).await?;
            buffers.put_write(out);
            return Ok(keep_alive);
        }
        break;
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    // The answer is complete: the member connection goes back, the head timer restarts.
    body.finish();
    if !out.is_empty() {
        stream.write_all(&out).await?;
    }
    buffers.put_write(out);
    if framing == Framing::Close {
        let _ = stream.shutdown().await;
    }
    Ok(keep_alive)
}

/// Writes `first` then `second`, with as few system calls as the socket allows.
async fn write_both(stream: &mut TcpStream, first: &[u8], second: &[u8]) -> io::Result<()> {
    let mut slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
    let mut slices = &mut slices[..];
    io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// `n` in decimal, written into the end of `digits`.
pub(super) fn itoa(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

thread_local! {
    /// The Date header's text, formatted once per second on each worker.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// A connection handed to hyper: the bytes already read come first.
pub struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl Prefixed {
    pub fn new(io: TcpStream, prefix: Bytes) -> Self {
        Prefixed { prefix, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let first = self.prefix.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client connection served by `serve` on a worker with no cluster (every request is
    /// answered 404): the requests `text` holds, and what the client read until the close.
    async fn served(text: &'static [u8]) -> (Rc<Worker>, String) {
        use tokio::io::AsyncReadExt;
        let plane = crate::plane::DataPlane::new();
        plane.publish(Vec::new());
        let worker = Rc::new(Worker {
            plane,
            pool: Rc::default(),
            buffers: Buffers::default(),
            access_log: false,
            limits: LIMITS,
        });
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
            Rc::new(Client::new(peer, None)),
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

    #[test]
    fn a_read_buffer_is_kept_spare_only_when_nothing_shares_it() {
        let buffers = Buffers::default();
        let read = |buffers: &Buffers| {
            let mut buf = buffers.take_read();
            buf.reserve(READ_SIZE);
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let head = buf.split().freeze();
            (buf, head)
        };
        // The head still lives (the request holds it): the buffer is not kept.
        let (buf, head) = read(&buffers);
        assert!(buf.capacity() > 0);
        buffers.put_read(buf);
        assert_eq!(buffers.spare(), (0, 0, 0));
        drop(head);
        // A buffer with bytes in it (a pipelined request) is not kept either.
        let mut pending = BytesMut::from(&b"GET"[..]);
        pending.reserve(READ_SIZE);
        buffers.put_read(pending);
        assert_eq!(buffers.spare(), (0, 0, 0));
        // Nothing shares it now: kept, with its whole room back, and handed out again.
        let (buf, head) = read(&buffers);
        drop(head);
        buffers.put_read(buf);
        assert_eq!(buffers.spare(), (1, 0, 0));
        let again = buffers.take_read();
        assert!(again.capacity() >= READ_SIZE, "{}", again.capacity());
        assert_eq!(buffers.spare(), (0, 0, 0));
        // Never more than SPARE of them.
        for _ in 0..SPARE + 3 {
            let mut buf = BytesMut::new();
            buf.reserve(READ_SIZE);
            buffers.put_read(buf);
        }
        assert_eq!(buffers.spare(), (SPARE, 0, 0));
    }

    #[test]
    fn a_write_buffer_comes_back_empty_unless_it_grew_too_large() {
        let buffers = Buffers::default();
        let mut out = buffers.take_write();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        buffers.put_write(out);
        assert_eq!(buffers.spare(), (0, 1, 0));
        let out = buffers.take_write();
        assert!(out.is_empty() && out.capacity() >= 2048);
        buffers.put_write(Vec::with_capacity(SPARE_WRITE_LIMIT + 1));
        assert_eq!(buffers.spare(), (0, 0, 0));
    }

    /// A connection's lean future is boxed as the connection starts (`server::serve`). Like a
    /// request's, it must stay within mimalloc's small blocks (1 KiB on 64-bit machines): a
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

    const LIMITS: Limits = Limits {
        max_headers: 100,
        max_head_bytes: 64 * 1024,
    };

    fn parsed(text: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let parsed = parse(&mut buf, LIMITS, &Buffers::default());
        (parsed, buf)
    }

    /// The end-to-end fields the lean server kept of a request, as a map.
    fn kept(lean: &Lean) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        if let Some(head) = &lean.request.lean {
            head.fields.fill(&mut map);
        }
        map
    }

    /// Every field of a head, as hyper's server would put them in the map.
    fn all_fields(text: &str) -> http::HeaderMap {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut slots);
        request.parse(text.as_bytes()).expect("a valid head");
        let mut map = http::HeaderMap::new();
        for h in request.headers.iter() {
            map.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).expect("a name"),
                http::HeaderValue::from_bytes(h.value).expect("a value"),
            );
        }
        map
    }

    #[test]
    fn the_parse_finds_what_routing_would_find_in_the_map() {
        for text in [
            "GET / HTTP/1.1\r\nHost: web\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: web\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-Proto: https\r\n\r\n",
            "GET / HTTP/1.1\r\nProxy-Connection: close\r\nx-forwarded-host: a\r\n\r\n",
        ] {
            let (p, _) = parsed(text);
            let Parsed::Request(lean) = p else {
                panic!("a plain GET is ours: {text:?}");
            };
            let head = lean.request.lean.as_ref().expect("the head as written");
            assert_eq!(head.scan, Scan::of(&all_fields(text)), "{text:?}");
            assert!(lean.request.req.headers().is_empty(), "{text:?}");
        }
        let text = "GET / HTTP/1.1\r\nX-Forwarded-For: 1\r\nConnection: close\r\n\r\n";
        let Parsed::Request(lean) = parsed(text).0 else {
            panic!("a plain GET is ours");
        };
        let head = lean.request.lean.as_ref().expect("the head as written");
        assert_ne!(head.scan, Scan::default());
        assert_eq!(head.host, None);
        // The fields kept are the end-to-end ones: Connection stays behind.
        assert_eq!(kept(&lean).len(), 1);
        assert_eq!(kept(&lean)["x-forwarded-for"], "1");
        // Host routes the request even when the Connection header names it (it then stays
        // behind, as on hyper's path).
        let text = "GET / HTTP/1.1\r\nHost: web:8080\r\nConnection: host\r\n\r\n";
        let Parsed::Request(lean) = parsed(text).0 else {
            panic!("a plain GET is ours");
        };
        let head = lean.request.lean.as_ref().expect("the head as written");
        assert_eq!(head.host.as_deref(), Some(&b"web:8080"[..]));
        assert!(kept(&lean).is_empty());
    }

    #[test]
    fn a_finished_request_is_parsed_into_again_holding_nothing_of_its_head() {
        let buffers = Buffers::default();
        let mut buf = buffers.take_read();
        buf.reserve(READ_SIZE);
        buf.extend_from_slice(b"PURGE /old HTTP/1.1\r\nHost: web\r\nX-A: 1\r\nX-B: 2\r\n\r\n");
        let Parsed::Request(first) = parse(&mut buf, LIMITS, &buffers) else {
            panic!("a head without a body is ours");
        };
        let mut first = first.request;
        first.req.extensions_mut().insert(7u8);
        // As routing does for a cluster that reads fields: the map is filled.
        if let Some(head) = first.lean.take() {
            head.fields.fill(first.req.headers_mut());
        }
        assert_eq!(first.req.headers().len(), 3);
        let at = std::ptr::from_ref::<ClientRequest>(&first);
        buffers.put_request(first);
        assert_eq!(buffers.spare(), (0, 0, 1));
        // Nothing of the first head is held any more: its read buffer is kept spare.
        buffers.put_read(buf);
        assert_eq!(buffers.spare(), (1, 0, 1));

        let mut buf = buffers.take_read();
        buf.extend_from_slice(b"GET /new HTTP/1.0\r\nHost: app\r\n\r\n");
        let Parsed::Request(second) = parse(&mut buf, LIMITS, &buffers) else {
            panic!("a head without a body is ours");
        };
        let map = kept(&second);
        let second = second.request;
        assert_eq!(
            std::ptr::from_ref::<ClientRequest>(&second),
            at,
            "the same box"
        );
        assert_eq!(buffers.spare(), (0, 0, 0));
        let req = &second.req;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/new");
        assert_eq!(req.version(), Version::HTTP_10);
        assert!(req.headers().is_empty(), "the old fields are gone");
        assert!(req.headers().capacity() >= 3, "the map's room is kept");
        assert!(req.extensions().get::<u8>().is_none());
        assert_eq!(map.len(), 1);
        assert_eq!(map["host"], "app");

        // A request whose map grew large is let go; never more than SPARE are kept.
        let mut large = buffers.take_request();
        large.req.headers_mut().reserve(SPARE_FIELDS_LIMIT + 1);
        buffers.put_request(large);
        assert_eq!(buffers.spare(), (0, 0, 0));
        for _ in 0..SPARE + 3 {
            buffers.put_request(Box::new(ClientRequest {
                req: Request::new(UpstreamBody::empty()),
                lean: None,
            }));
        }
        assert_eq!(buffers.spare(), (0, 0, SPARE));
    }

    #[test]
    fn a_plain_get_is_ours_and_leaves_what_follows() {
        let (p, rest) = parsed("GET /a?b=c HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n\r\nGET /next");
        let Parsed::Request(lean) = p else {
            panic!("a plain GET is handled by the lean server");
        };
        assert!(lean.keep_alive);
        assert_eq!(lean.request.req.method(), Method::GET);
        assert_eq!(lean.request.req.uri(), "/a?b=c");
        assert_eq!(kept(&lean)["host"], "web");
        assert_eq!(kept(&lean)["x-a"], "1");
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn asterisk_and_absolute_targets_are_ours_too() {
        let target = |text: &str| match parsed(text).0 {
            Parsed::Request(lean) => lean.request.req.uri().clone(),
            _ => panic!("{text:?} is handled by the lean server"),
        };
        let star = target("OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n");
        assert_eq!(star.path_and_query().map(|p| p.as_str()), Some("*"));
        let absolute = target("GET http://web:8080/a?b HTTP/1.1\r\n\r\n");
        assert_eq!(absolute.authority().map(|a| a.as_str()), Some("web:8080"));
        assert_eq!(absolute.path_and_query().map(|p| p.as_str()), Some("/a?b"));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keep = |text: &str| match parsed(text).0 {
            Parsed::Request(lean) => lean.keep_alive,
            _ => panic!("{text:?} is handled by the lean server"),
        };
        assert!(!keep("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(keep("DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
    }

    #[test]
    fn anything_beyond_a_head_goes_to_hyper_untouched() {
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\n\r\n",
        ] {
            let (p, rest) = parsed(text);
            assert!(matches!(p, Parsed::Other), "{text:?} goes to hyper");
            assert_eq!(&rest[..], text.as_bytes(), "{text:?} is given back whole");
        }
        let (p, _) = parsed("GET / HTTP/1.1\r\nHost: a");
        assert!(matches!(p, Parsed::Partial));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(70 * 1024));
        assert!(matches!(parsed(&long).0, Parsed::Other));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parsed(&many).0, Parsed::Other));
    }

    #[test]
    fn itoa_writes_decimal() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(65536, &mut [0; 20]), b"65536");
        assert_eq!(
            itoa(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }
}
