//! What the two lean HTTP/1 paths (clients: [`lean`](super::lean), members:
//! [`upstream`](super::upstream)) share about a head parsed with `httparse`: building its header
//! map without copying values, reading the `Connection` tokens, and filling a read buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::net::TcpStream;

/// Where a head's header names and values lie in its buffer, so that once the head is split
/// off and frozen the values share its bytes (no copy per value, as in hyper). Reused from head
/// to head.
#[derive(Default)]
pub struct Spans(Vec<[usize; 4]>);

impl Spans {
    /// Records where the `headers` that `httparse` found in `buf` lie.
    pub fn record(&mut self, buf: &[u8], headers: &[httparse::Header<'_>]) {
        let base = buf.as_ptr() as usize;
        self.0.clear();
        for h in headers {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            self.0
                .push([name, name + h.name.len(), value, value + h.value.len()]);
        }
    }

    /// The header map over `head`, the frozen bytes the recorded headers were found in, with
    /// room for `extra` more; `None` when a name or value is not valid.
    pub fn map(&self, head: &Bytes, extra: usize) -> Option<HeaderMap> {
        let mut headers = HeaderMap::with_capacity(self.0.len() + extra);
        for &[name_start, name_end, start, end] in &self.0 {
            let name = HeaderName::from_bytes(&head[name_start..name_end]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(start..end)).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }
}

/// Whether a `Connection` header value says "close", and whether it says "keep-alive".
pub fn connection_tokens(value: &[u8]) -> (bool, bool) {
    let (mut close, mut keep_alive) = (false, false);
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        close |= token.eq_ignore_ascii_case(b"close");
        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    (close, keep_alive)
}

/// Reads what the socket has into `buf`, first making room for `size` bytes when less than
/// half of that is free; `Ok(0)` at the end of the stream.
pub fn poll_fill(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    size: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < size / 2 {
        buf.reserve(size);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_share_the_head_and_bad_names_are_refused() {
        let text = b"GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\nX-A: 2\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut slots);
        request.parse(text).expect("a valid head");
        let mut spans = Spans::default();
        spans.record(text, request.headers);
        let head = Bytes::from_static(text);
        let map = spans.map(&head, 4).expect("valid headers");
        assert_eq!(map["host"], "web");
        let all: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert!(map.capacity() >= 7);
        // A name that is not a token: refused.
        let spans = Spans(vec![[0, 3, 4, 5]]);
        assert!(spans.map(&Bytes::from_static(b"a b:c"), 0).is_none());
    }

    #[test]
    fn connection_tokens_are_found_in_any_case_and_spacing() {
        assert_eq!(connection_tokens(b"close"), (true, false));
        assert_eq!(connection_tokens(b" Keep-Alive , X-Private"), (false, true));
        assert_eq!(connection_tokens(b"upgrade"), (false, false));
        assert_eq!(connection_tokens(b"keep-alive,CLOSE"), (true, true));
    }
}
