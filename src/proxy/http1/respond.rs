//! Writing an answer to an HTTP/1 client: the status line, the member's fields as it wrote them
//! ([`RawHead`]), what the proxy adds, and the body framed for the client (length, chunked, or
//! until close for an HTTP/1.0 client), small frames gathered behind the head into one write.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, Version, header};
use http_body::{Body, Frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::buffers::Buffers;
use super::field::push_field;
use super::io::{write_both, write_last};
use super::raw::RawHead;

/// Data frames up to this size are copied behind the head into one write; larger ones are
/// written as they are, together with what is pending (one `writev`).
const COPY_LIMIT: usize = 4 * 1024;

/// What the writer needs of an answer's body beyond [`Body`].
pub trait AnswerFields {
    /// The member's fields as it sent them, when they were not put in the header map.
    fn raw_head(&self) -> Option<&RawHead>;
    /// The body is done with: what dropping it would do, now (the member connection goes back).
    fn finish(&mut self);
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
pub async fn respond<B>(
    stream: &mut TcpStream,
    response: &mut Response<B>,
    version: Version,
    head_request: bool,
    mut keep_alive: bool,
    buffers: &Buffers,
) -> io::Result<bool>
where
    B: Body<Data = Bytes> + AnswerFields + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The head, and a small body behind it: one write, into a spare buffer.
    let mut out = buffers.take_write();
    push_status_line(&mut out, response, version);
    let (has_length, has_date) = push_fields(&mut out, response);
    let mut framing = push_framing(&mut out, response, head_request, has_length, version);
    let body = response.body_mut();
    keep_alive &= framing != Framing::Close;
    end_head(&mut out, keep_alive, version, has_date);
    // `Framing::None` too once the trailers have ended a chunked body.
    while framing != Framing::None && !body.is_end_stream() {
        let Some(frame) = next_frame(stream, body, &mut out).await? else {
            break;
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                if !push_data(&mut out, &data, framing) {
                    write_both(stream, &out, &data).await?;
                    out.clear();
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Err(frame) => match (frame.into_trailers(), framing) {
                (Ok(trailers), Framing::Chunked) => {
                    push_trailers(&mut out, &trailers);
                    framing = Framing::None;
                }
                _ => break,
            },
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    // The answer is complete: the member connection goes back, the head timer restarts.
    body.finish();
    write_rest(stream, out, keep_alive, buffers).await
}

/// Writes what is left of the answer and gives the buffer back; true when the connection stays
/// open. One that closes sends its last bytes together with its FIN ([`write_last`]).
async fn write_rest(
    stream: &mut TcpStream,
    out: Vec<u8>,
    keep_alive: bool,
    buffers: &Buffers,
) -> io::Result<bool> {
    let written = if !keep_alive {
        write_last(stream, &out).await
    } else if out.is_empty() {
        Ok(())
    } else {
        stream.write_all(&out).await
    };
    buffers.put_write(out);
    written.map(|()| keep_alive)
}

/// The body's next frame if it is there; if not, what is written so far goes out first, so
/// that the client does not wait on the proxy's buffer while the member works. A member that
/// broke off breaks off this answer too, which the client sees as cut short.
async fn next_frame<B>(
    stream: &mut (impl AsyncWrite + Unpin),
    body: &mut B,
    out: &mut Vec<u8>,
) -> io::Result<Option<Frame<B::Data>>>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let frame =
        match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
    match frame {
        None => Ok(None),
        Some(Ok(frame)) => Ok(Some(frame)),
        Some(Err(e)) => {
            if !out.is_empty() {
                let _ = stream.write_all(out).await;
            }
            Err(io::Error::other(e))
        }
    }
}

/// The status line, with the member's own reason phrase when it sent one of its own: a client
/// may show it.
#[inline]
fn push_status_line<B>(out: &mut Vec<u8>, response: &Response<B>, version: Version) {
    let status = response.status();
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
}

/// The member's fields as it sent them (see `RawHead`), then what the proxy added; whether a
/// length and a date were among them, so that the proxy does not add its own.
#[inline]
fn push_fields<B: AnswerFields>(out: &mut Vec<u8>, response: &Response<B>) -> (bool, bool) {
    let (mut has_length, mut has_date) = (false, false);
    let headers = response.headers();
    if let Some(raw) = response.body().raw_head() {
        raw.write_fields(out);
        (has_length, has_date) = (raw.length, raw.date);
    }
    if !headers.is_empty() {
        for (name, value) in headers {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        has_length |= headers.contains_key(header::CONTENT_LENGTH);
        has_date |= headers.contains_key(header::DATE);
    }
    (has_length, has_date)
}

/// How the body goes to the client, announced in the head: an HTTP/1.0 client cannot read
/// chunks, so an answer of unknown length goes until the connection closes.
#[inline]
fn push_framing<B: Body>(
    out: &mut Vec<u8>,
    response: &Response<B>,
    head_request: bool,
    has_length: bool,
    version: Version,
) -> Framing {
    let status = response.status();
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodyless {
        Framing::None
    } else if let Some(length) = response.body().size_hint().exact() {
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
        Framing::Close
    }
}

/// The connection's fate and the date, which the client reads from the proxy when the member
/// gave none; then the blank line.
#[inline]
fn end_head(out: &mut Vec<u8>, keep_alive: bool, version: Version, has_date: bool) {
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A data frame's chunk size line and, if it is small, the frame itself, gathered behind what
/// is pending; false when the frame is too large to copy: it goes with what is pending in one
/// system call, not copied.
#[inline]
fn push_data(out: &mut Vec<u8>, data: &[u8], framing: Framing) -> bool {
    if framing == Framing::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    }
    let small = data.len() <= COPY_LIMIT;
    if small {
        out.extend_from_slice(data);
    }
    small
}

/// The last chunk and the member's trailers, which only a chunked body can carry.
#[inline]
fn push_trailers(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written into the end of `digits`.
pub fn itoa(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
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

#[cfg(test)]
mod tests {
    use super::*;

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
