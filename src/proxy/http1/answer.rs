//! An answer's body, read from the member connection it came on ([`Conn`]) by the response
//! body itself, framed as [`framing`](super::framing) decided.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::conn::{Conn, MAX_HEAD};
use super::framing::{Chunk, Framing};
use super::raw::RawHead;

/// The most header lines in a trailer section.
const MAX_TRAILERS: usize = 100;

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
