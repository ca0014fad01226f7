//! An answer's body, read from the member connection it came on ([`Conn`]) by the response
//! body itself, framed as [`framing`](super::framing) decided.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::conn::{Conn, MAX_HEAD};
use super::framing::{Chunk, Framing};
use super::raw::RawHead;

/// The most header lines in a trailer section.
const MAX_TRAILERS: usize = 100;

/// What a poll for the body's next frame gives.
type Polled = Poll<Option<Result<Frame<Bytes>, io::Error>>>;

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
    pub(super) fn new(framing: Framing, conn: Conn, keep: bool, head: RawHead) -> Self {
        AnswerBody {
            framing,
            conn: Some(conn),
            keep,
            head: Some(head),
        }
    }

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

    /// What a read for more bytes ended with, when it ends the body: the member closing ends
    /// one read until then, and breaks any other.
    #[inline]
    fn filled(&mut self, read: io::Result<usize>) -> Option<Polled> {
        match read {
            Ok(0) if self.framing == Framing::Close => {
                self.framing = Framing::Done;
                self.keep = false;
                Some(Poll::Ready(None))
            }
            Ok(0) => Some(self.fail("answer body: the member closed the connection early")),
            Ok(_) => None,
            Err(e) => {
                self.conn = None;
                self.framing = Framing::Done;
                self.keep = false;
                Some(Poll::Ready(Some(Err(e))))
            }
        }
    }

    fn fail(&mut self, cause: &str) -> Polled {
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
                    let data = take_data(&mut this.framing, &mut conn.buf, left);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size) => match chunk_size(&mut conn.buf) {
                    Ok(Some(next)) => {
                        this.framing = next;
                        continue;
                    }
                    Ok(None) => {}
                    Err(cause) => return this.fail(cause),
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
                    match chunks_end(&mut conn.buf) {
                        Ok(Some(fields)) => {
                            this.framing = Framing::Done;
                            return Poll::Ready(fields.map(|fields| Ok(Frame::trailers(fields))));
                        }
                        Ok(None) => {}
                        Err(cause) => return this.fail(cause),
                    }
                }
                _ => {}
            }
            // More bytes are needed.
            let read = ready!(conn.poll_fill(cx));
            if let Some(end) = this.filled(read) {
                return end;
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

/// Data from the buffer, at most what the framing has left, which counts it.
#[inline]
fn take_data(framing: &mut Framing, buf: &mut BytesMut, left: u64) -> Bytes {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    let data = buf.split_to(n).freeze();
    let left = left - n as u64;
    *framing = match *framing {
        Framing::Length(_) if left == 0 => Framing::Done,
        Framing::Length(_) => Framing::Length(left),
        _ if left == 0 => Framing::Chunked(Chunk::DataEnd),
        _ => Framing::Chunked(Chunk::Data(left)),
    };
    data
}

/// A chunk's size line, once it is all in the buffer: the framing after it (the last chunk,
/// of size 0, leads to the trailers).
#[inline]
fn chunk_size(buf: &mut BytesMut) -> Result<Option<Framing>, &'static str> {
    match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete((used, size))) => {
            buf.advance(used);
            Ok(Some(Framing::Chunked(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            })))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err("answer body: chunk size line too long")
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("answer body: invalid chunk size"),
    }
}

/// The end of a chunked body, once it is all in the buffer: a blank line, or a trailer section
/// and its fields (the outer `None` while more bytes are needed).
#[inline]
fn chunks_end(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, &'static str> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(None));
    }
    match trailers(buf)? {
        Some((used, fields)) => {
            buf.advance(used);
            Ok(Some(Some(fields)))
        }
        None if buf.len() > MAX_HEAD => Err("answer body: trailer section too large"),
        None => Ok(None),
    }
}

/// The trailer section after the last chunk, when it is all in `buf`: its length and fields.
fn trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
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
