//! The exchange with a member for the common request: HTTP/1.1, no request body, no upgrade.
//!
//! hyper's client runs each member connection as a task of its own and hands every request and
//! answer across channels: two task switches and a channel round trip per request, about a
//! third of the proxy's own work per request. For a request that has no body to stream, none
//! of that is needed: the request head is written in one go, the answer head is read and
//! parsed (`httparse`, as hyper does) on the request's own task, and the answer body is read
//! from the connection by the response body itself. Everything else (request bodies, upgrades)
//! still goes through hyper's client (`pool::connect`).
//!
//! Framing of the answer follows RFC 9112 section 6.3; an answer that leaves the connection in
//! doubt (close-delimited, Transfer-Encoding with Content-Length, bytes after the end) closes
//! the connection instead of returning it to the pool.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::head::{self, Controls, Field, RawHead};

/// The most bytes an answer head may take (hyper's client allows about 400 KiB; nginx's
/// default `proxy_buffer_size` is 4 or 8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in an answer head (hyper's client default).
const MAX_HEADERS: usize = 100;
/// The first read's size; doubled up to [`MAX_READ`] while reads fill it.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;

/// An HTTP/1.1 connection to a member, idle between exchanges. Its state lives in one
/// allocation made when the connection opens: the handle moves between the pool, the exchange
/// and the answer body on every request, and a pointer is cheaper to move than the state
/// (docs/benchmarks.md, "Copies").
pub struct Conn(Box<State>);

impl std::ops::Deref for Conn {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

/// What a [`Conn`] holds.
pub struct State {
    io: TcpStream,
    /// Received and not yet handed on.
    buf: BytesMut,
    /// The request head being written.
    out: Vec<u8>,
    read_size: usize,
    /// An exchange has completed on this connection before.
    reused: bool,
}

/// Why an exchange failed.
#[derive(Debug)]
pub struct ExchangeError {
    pub cause: String,
    /// Nothing of the request can have been acted on: it may go out again on another
    /// connection.
    pub retry: bool,
}

impl ExchangeError {
    fn new(cause: impl Into<String>, retry: bool) -> Self {
        ExchangeError {
            cause: cause.into(),
            retry,
        }
    }
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the member closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This much of the current chunk's data is left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the empty line.
    Trailers,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn(Box::new(State {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            read_size: FIRST_READ,
            reused: false,
        }))
    }

    /// True when nothing has arrived on this idle connection: not closed by the member, no
    /// stray bytes. Asks the runtime's readiness, so an idle connection costs no system call
    /// to check; only a connection that became readable is read from.
    pub fn is_idle_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the member closed, sent something unasked, or the readiness is stale.
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends `req` (whose body is empty) with the `added` fields after its own, and reads the
    /// answer's head. The body follows from [`AnswerBody`], which owns the
    /// connection until the answer has been read.
    pub async fn send<'a, B>(
        mut self,
        req: &Request<B>,
        fields: Option<&RawHead>,
        added: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) -> Result<Response<AnswerBody>, ExchangeError> {
        let reused = self.reused;
        // A request that changes nothing can be sent again when a reused connection turns
        // out closed before a byte of the answer (the member closed it as we sent).
        let retry_on_close = reused && idempotent(req.method());
        self.encode(req, fields, added);
        let state = &mut *self.0;
        if let Err(e) = state.io.write_all(&state.out).await {
            // A member cannot act on a head it did not receive whole.
            return Err(ExchangeError::new(format!("request: {e}"), true));
        }
        self.read_head(req.method(), retry_on_close).await
    }

    /// Writes the request head: the request line, the client's field lines as it wrote them
    /// (`fields`, for a request whose map the lean server left empty) or the map's, then
    /// `added`.
    fn encode<'a, B>(
        &mut self,
        req: &Request<B>,
        fields: Option<&RawHead>,
        added: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(fields) = fields {
            fields.write_fields(out);
        }
        for (name, value) in req.headers() {
            head::push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        for (name, value) in added {
            head::push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    async fn read_head(
        mut self,
        method: &Method,
        retry_on_close: bool,
    ) -> Result<Response<AnswerBody>, ExchangeError> {
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                match self.parse_head(method)? {
                    Parsed::Final(response, keep) => {
                        return Ok(response.map(|(framing, head)| AnswerBody {
                            framing,
                            conn: Some(self),
                            keep,
                            head: Some(head),
                        }));
                    }
                    Parsed::Informational => continue,
                    Parsed::Partial => {}
                }
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(|e| {
                    ExchangeError::new(format!("answer: {e}"), retry_on_close && !received)
                })?;
            if n == 0 {
                let cause = if received {
                    "answer: the member closed the connection inside the answer head"
                } else {
                    "answer: the member closed the connection without answering"
                };
                return Err(ExchangeError::new(cause, retry_on_close && !received));
            }
        }
    }

    /// Parses the answer head at the start of the buffer, if it is all there.
    fn parse_head(&mut self, method: &Method) -> Result<Parsed, ExchangeError> {
        let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                return Err(ExchangeError::new(
                    format!("answer: head larger than {MAX_HEAD} bytes"),
                    false,
                ));
            }
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(e) => return Err(ExchangeError::new(format!("answer head: {e}"), false)),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| {
            ExchangeError::new(format!("answer head: invalid status {code}"), false)
        })?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::new(
                    "answer: 101 Switching Protocols to a request that asked for no upgrade",
                    false,
                ));
            }
            // 100 Continue, 103 Early Hints...: the final answer follows.
            self.buf.advance(head_len);
            return Ok(Parsed::Informational);
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let reason = parsed
            .reason
            .filter(|r| Some(*r) != status.canonical_reason());
        let reason = reason.map(|r| r.as_bytes().to_vec());
        let mut controls = Controls::default();
        let raw = RawHead::new(&self.buf, parsed.headers, |kind, h| {
            controls.see(kind, h.value)
        });
        let (framing, keep) = framing(method, status, version, &controls, parsed.headers)?;
        let raw = raw.of(self.buf.split_to(head_len).freeze());
        let mut response = Response::new((framing, raw));
        *response.status_mut() = status;
        *response.version_mut() = version;
        if let Some(reason) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
            response.extensions_mut().insert(reason);
        }
        Ok(Parsed::Final(response, keep))
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let state = &mut *self.0;
        let before = state.buf.len();
        let n = ready!(head::poll_fill(
            &mut state.io,
            cx,
            &mut state.buf,
            state.read_size
        ))?;
        // A read that filled all the room it had: read more at a time.
        if before + n == state.buf.capacity() && state.read_size < MAX_READ {
            state.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

enum Parsed {
    /// The final answer's head (its fields passed on as they came), its body's framing, and
    /// whether the connection can be reused.
    Final(Response<(Framing, RawHead)>, bool),
    Informational,
    Partial,
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The answer's framing, and whether the connection can carry another exchange after it
/// (RFC 9112 6.3 and 9.3), from what the pass over its `fields` found (`controls`: the
/// Connection tokens, the last Transfer-Encoding value, and the Content-Length values, checked
/// below only when they decide the framing).
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    controls: &Controls<'_>,
    fields: &[httparse::Header<'_>],
) -> Result<(Framing, bool), ExchangeError> {
    let &Controls {
        close,
        keep_alive,
        transfer_encoding,
        lengths,
        first_length,
        ..
    } = controls;
    let mut keep = !close && (version == Version::HTTP_11 || keep_alive);
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, keep));
    }
    if let Some(last) = transfer_encoding {
        if lengths > 0 {
            // Both: Transfer-Encoding wins, and the connection is not to be trusted again.
            keep = false;
        }
        let coding = last.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
        return Ok(match coding {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => {
                (Framing::Chunked(Chunk::Size), keep)
            }
            _ => (Framing::Close, false),
        });
    }
    let mut length = None;
    // Usually one value; more are looked for again only when there are more.
    let more = fields
        .iter()
        .filter(|f| lengths > 1 && head::field(f.name.as_bytes()) == Field::ContentLength)
        .map(|f| f.value)
        .skip(1);
    for value in first_length.into_iter().chain(more) {
        for part in value.split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or_else(|| {
                ExchangeError::new(
                    format!(
                        "answer head: invalid Content-Length {:?}",
                        String::from_utf8_lossy(value)
                    ),
                    false,
                )
            })?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::new(
                    "answer head: Content-Length values differ",
                    false,
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Done, keep),
        Some(n) => (Framing::Length(n), keep),
        None => (Framing::Close, false),
    })
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// An answer's body, read from the member connection it came on. Once the body has been
/// read to its end, [`AnswerBody::take_idle`] gives the connection back for the next exchange.
pub struct AnswerBody {
    framing: Framing,
    conn: Option<Conn>,
    keep: bool,
    /// The answer's fields, until they are written or made a header map.
    head: Option<RawHead>,
}

impl AnswerBody {
    /// The answer's fields as the member sent them, less the hop-by-hop ones.
    pub fn raw_head(&self) -> Option<&RawHead> {
        self.head.as_ref()
    }

    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        self.head.take()
    }

    /// The connection, when the answer was read whole and nothing else came after it.
    pub fn take_idle(&mut self) -> Option<Conn> {
        if self.framing != Framing::Done || !self.keep {
            return None;
        }
        let mut conn = self.conn.take()?;
        if !conn.buf.is_empty() {
            return None;
        }
        conn.reused = true;
        Some(conn)
    }

    fn fail(&mut self, cause: &str) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.framing = Framing::Done;
        self.keep = false;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            cause.to_owned(),
        ))))
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left))
                    if !conn.buf.is_empty() =>
                {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(n).freeze();
                    let left = left - n as u64;
                    this.framing = match this.framing {
                        Framing::Length(_) if left == 0 => Framing::Done,
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::Chunked(Chunk::DataEnd),
                        _ => Framing::Chunked(Chunk::Data(left)),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.buf.advance(used);
                        this.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() > MAX_HEAD => {
                        return this.fail("answer body: chunk size line too long");
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return this.fail("answer body: invalid chunk size"),
                },
                Framing::Chunked(Chunk::DataEnd) if conn.buf.len() >= 2 => {
                    if &conn.buf[..2] != b"\r\n" {
                        return this.fail("answer body: chunk data not followed by CRLF");
                    }
                    conn.buf.advance(2);
                    this.framing = Framing::Chunked(Chunk::Size);
                    continue;
                }
                Framing::Chunked(Chunk::Trailers) if !conn.buf.is_empty() => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    match trailers(&conn.buf) {
                        Ok(Some((used, fields))) => {
                            conn.buf.advance(used);
                            this.framing = Framing::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(fields))));
                        }
                        Ok(None) if conn.buf.len() > MAX_HEAD => {
                            return this.fail("answer body: trailer section too large");
                        }
                        Ok(None) => {}
                        Err(cause) => return this.fail(cause),
                    }
                }
                _ => {}
            }
            // More bytes are needed.
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.keep = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("answer body: the member closed the connection early"),
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    this.keep = false;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

/// The trailer section after the last chunk, when it is all in `buf`: its length and fields.
fn trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| "answer body: invalid trailer name")?;
                let value = HeaderValue::from_bytes(field.value)
                    .map_err(|_| "answer body: invalid trailer value")?;
                map.append(name, value);
            }
            Ok(Some((used, map)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("answer body: invalid trailer section"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(
        method: Method,
        status: u16,
        version: Version,
        lines: &[(&'static str, &'static str)],
    ) -> Result<(Framing, bool), String> {
        let status = StatusCode::from_u16(status).expect("status");
        let fields: Vec<httparse::Header<'_>> = lines
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        framing(&method, status, version, &Controls::of(&fields), &fields).map_err(|e| e.cause)
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        let get = || Method::GET;
        assert_eq!(
            framed(get(), 200, HTTP_11, &[("content-length", "12")]),
            Ok((Framing::Length(12), true))
        );
        assert_eq!(
            framed(get(), 200, HTTP_11, &[("content-length", "0")]),
            Ok((Framing::Done, true))
        );
        // HEAD, 204 and 304 have no body whatever the head says.
        assert_eq!(
            framed(Method::HEAD, 200, HTTP_11, &[("content-length", "100")]),
            Ok((Framing::Done, true))
        );
        assert_eq!(framed(get(), 204, HTTP_11, &[]), Ok((Framing::Done, true)));
        assert_eq!(
            framed(get(), 304, HTTP_11, &[("transfer-encoding", "chunked")]),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            framed(
                get(),
                200,
                HTTP_11,
                &[("transfer-encoding", "gzip, chunked")]
            ),
            Ok((Framing::Chunked(Chunk::Size), true))
        );
        // Transfer-Encoding wins over Content-Length, and the connection is not trusted again.
        assert_eq!(
            framed(
                get(),
                200,
                HTTP_11,
                &[("transfer-encoding", "chunked"), ("content-length", "5")]
            ),
            Ok((Framing::Chunked(Chunk::Size), false))
        );
        // A coding other than chunked last, or no length at all: read until the member closes.
        assert_eq!(
            framed(get(), 200, HTTP_11, &[("transfer-encoding", "gzip")]),
            Ok((Framing::Close, false))
        );
        assert_eq!(
            framed(get(), 200, HTTP_11, &[]),
            Ok((Framing::Close, false))
        );
        // Repeated equal lengths are one length; different ones are an error.
        assert_eq!(
            framed(
                get(),
                200,
                HTTP_11,
                &[("content-length", "7, 7"), ("content-length", "7")]
            ),
            Ok((Framing::Length(7), true))
        );
        assert!(framed(get(), 200, HTTP_11, &[("content-length", "7, 8")]).is_err());
        assert!(framed(get(), 200, HTTP_11, &[("content-length", "-1")]).is_err());
        assert!(framed(get(), 200, HTTP_11, &[("content-length", "+1")]).is_err());
        assert!(framed(get(), 200, HTTP_11, &[("content-length", "")]).is_err());
        // Reuse: HTTP/1.1 unless "close"; HTTP/1.0 only with "keep-alive".
        assert_eq!(
            framed(
                get(),
                200,
                HTTP_11,
                &[("content-length", "1"), ("connection", "Keep-Alive, CLOSE")]
            ),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            framed(get(), 200, HTTP_10, &[("content-length", "1")]),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            framed(
                get(),
                200,
                HTTP_10,
                &[("content-length", "1"), ("connection", "keep-alive")]
            ),
            Ok((Framing::Length(1), true))
        );
        // Field names in any case.
        assert_eq!(
            framed(
                get(),
                200,
                HTTP_11,
                &[("Content-Length", "3"), ("CONNECTION", "close")]
            ),
            Ok((Framing::Length(3), false))
        );
        assert_eq!(
            framed(get(), 200, HTTP_11, &[("Transfer-Encoding", "Chunked")]),
            Ok((Framing::Chunked(Chunk::Size), true))
        );
    }

    #[test]
    fn lengths_are_plain_decimal_that_fits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234567890"), Some(1_234_567_890));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_length(b"99999999999999999999"), None);
        assert_eq!(parse_length(b"12a"), None);
        assert_eq!(parse_length(b" 1"), None);
    }

    #[test]
    fn trailers_are_read_whole_or_not_at_all() {
        assert_eq!(trailers(b"X-Sum: 4"), Ok(None));
        let (used, fields) = trailers(b"X-Sum: 42\r\nX-B: b\r\n\r\nnext")
            .expect("valid")
            .expect("complete");
        assert_eq!(used, 21);
        assert_eq!(
            fields.get("x-sum").map(HeaderValue::as_bytes),
            Some(&b"42"[..])
        );
        assert_eq!(fields.len(), 2);
        assert!(trailers(b"X Sum: 1\r\n\r\n").is_err());
    }
}
