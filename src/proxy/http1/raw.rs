//! A head's field lines as they came, less the hop-by-hop ones: passed on line by line without
//! a header map for the common exchange.

use std::cell::RefCell;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::field::{CONNECTION, Field, field, names_other_fields};

/// A member's answer head, passed on to the client line by line as the member wrote it
/// (names keep their case), less the hop-by-hop fields and those its Connection header names:
/// no header map is built for the common answer. One is built only when hyper's server sends
/// the answer (HTTP/2 clients, or a connection hyper took over), by [`RawHead::into_map`].
pub struct RawHead {
    head: Bytes,
    /// Where each field's name and value lie in `head` (name start and end, value start and
    /// end), so that they share its bytes. Taken from the thread's spare lists, and given back
    /// when the head is dropped.
    spans: Vec<[usize; 4]>,
    /// The head has a Date field.
    pub date: bool,
    /// The head has a Content-Length field.
    pub length: bool,
}

impl RawHead {
    /// The end-to-end fields among `headers`, found in `buf` by `httparse`. `see` is shown
    /// every field with its kind in the same pass (an answer's framing, a request's routing
    /// read theirs there). The head itself follows with [`RawHead::of`], once it is split off
    /// `buf`.
    pub fn new<'a>(
        buf: &[u8],
        headers: &[httparse::Header<'a>],
        mut see: impl FnMut(Field, &httparse::Header<'a>),
    ) -> Self {
        let base = buf.as_ptr() as usize;
        let mut spans = SPARE_SPANS
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        spans.reserve(headers.len());
        let (mut date, mut length, mut names_others) = (false, false, false);
        for h in headers {
            let name = h.name.as_bytes();
            let kind = field(name);
            see(kind, h);
            match kind {
                Field::HopByHop(CONNECTION) => {
                    names_others |= names_other_fields(h.value).next().is_some();
                    continue;
                }
                Field::HopByHop(_) => continue,
                Field::Date => date = true,
                Field::ContentLength => length = true,
                _ => {}
            }
            let start = name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            spans.push([start, start + name.len(), value, value + h.value.len()]);
        }
        if names_others {
            // Rare: the Connection header names more fields, which stay behind too.
            let named: Vec<&[u8]> = headers
                .iter()
                .filter(|h| field(h.name.as_bytes()) == Field::HopByHop(CONNECTION))
                .flat_map(|h| names_other_fields(h.value))
                .collect();
            spans.retain(|&[start, end, ..]| {
                !named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(&buf[start..end]))
            });
            date = spans
                .iter()
                .any(|&[start, end, ..]| field(&buf[start..end]) == Field::Date);
            length = spans
                .iter()
                .any(|&[start, end, ..]| field(&buf[start..end]) == Field::ContentLength);
        }
        RawHead {
            head: Bytes::new(),
            spans,
            date,
            length,
        }
    }

    /// The same, over `head`: the start of the buffer the fields were found in, frozen.
    pub fn of(mut self, head: Bytes) -> Self {
        self.head = head;
        self
    }

    /// The fields passed on, name and value, in the member's order.
    #[cfg(test)]
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|&[name_start, name_end, start, end]| {
                (&self.head[name_start..name_end], &self.head[start..end])
            })
    }

    /// Writes the fields passed on, in the member's order. Lines that stood together in the
    /// member's head are copied together, as the member wrote them: an answer whose only
    /// hop-by-hop field is `Connection` is two copies, not four per field.
    pub fn write_fields(&self, out: &mut Vec<u8>) {
        let head = &self.head[..];
        let mut spans = self.spans.iter();
        let Some(&[mut run_start, _, _, mut run_end]) = spans.next() else {
            return;
        };
        for &[name_start, _, _, end] in spans {
            // The next field's line begins right after this one's line end: same run.
            if name_start == run_end + 2 && head.get(run_end..name_start) == Some(b"\r\n") {
                run_end = end;
                continue;
            }
            out.extend_from_slice(&head[run_start..run_end]);
            out.extend_from_slice(b"\r\n");
            (run_start, run_end) = (name_start, end);
        }
        out.extend_from_slice(&head[run_start..run_end]);
        out.extend_from_slice(b"\r\n");
    }

    /// The value of the first field of kind `kind` (e.g. [`Field::Host`]), sharing the head.
    #[cfg(test)]
    pub fn value(&self, kind: Field) -> Option<Bytes> {
        self.spans
            .iter()
            .find(|&&[name_start, name_end, ..]| field(&self.head[name_start..name_end]) == kind)
            .map(|&[_, _, start, end]| self.head.slice(start..end))
    }

    /// Whether any field named `name` (in any case) has a value satisfying `test`.
    pub fn any_value(&self, name: &[u8], test: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.spans
            .iter()
            .any(|&[name_start, name_end, start, end]| {
                self.head[name_start..name_end].eq_ignore_ascii_case(name)
                    && test(&self.head[start..end])
            })
    }

    /// Appends the fields to `headers`, their values sharing the head. A field hyper would not
    /// accept (`httparse` lets through nothing of the kind today) is left out.
    pub fn fill(&self, headers: &mut HeaderMap) {
        headers.reserve(self.spans.len());
        for &[name_start, name_end, start, end] in &self.spans {
            match (
                HeaderName::from_bytes(&self.head[name_start..name_end]),
                HeaderValue::from_maybe_shared(self.head.slice(start..end)),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => tracing::debug!("left out a field hyper does not accept"),
            }
        }
    }

    /// The fields as a header map, followed by `extra` (fields the proxy added, such as a
    /// sticky cookie).
    pub fn into_map(self, extra: HeaderMap) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.spans.len() + extra.len());
        self.fill(&mut headers);
        let mut last = None;
        for (name, value) in extra {
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                headers.append(name, value);
            }
        }
        headers
    }
}

/// The most span lists a thread keeps spare, and the most fields one may have room for.
const SPARE_SPANS_KEPT: usize = 64;
const SPARE_SPANS_ROOM: usize = 128;

thread_local! {
    /// Span lists of answer heads that were dropped, for the next answers on this thread (a
    /// worker is one thread): an answer costs no allocation for them.
    static SPARE_SPANS: RefCell<Vec<Vec<[usize; 4]>>> = const { RefCell::new(Vec::new()) };
}

impl Drop for RawHead {
    fn drop(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        if spans.capacity() == 0 || spans.capacity() > SPARE_SPANS_ROOM {
            return;
        }
        spans.clear();
        // At thread exit the list may be gone already: the span list is then freed.
        let _ = SPARE_SPANS.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_SPANS_KEPT {
                spare.push(spans);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_heads_fields_fill_a_map_sharing_the_head() {
        let text = b"GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\nConnection: x-b\r\nX-A: 2\r\n\
                     X-B: 3\r\nTE: trailers\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut slots);
        request.parse(text).expect("a valid head");
        let head = Bytes::from_static(text);
        let raw = RawHead::new(text, request.headers, |_, _| {}).of(head.clone());
        assert_eq!(raw.value(Field::Host).as_deref(), Some(&b"web"[..]));
        assert_eq!(raw.value(Field::Date), None);
        let mut map = HeaderMap::new();
        raw.fill(&mut map);
        // The end-to-end fields only: not Connection, what it names, or TE.
        assert_eq!(map.len(), 3);
        assert_eq!(map["host"], "web");
        let all: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        // The values are the head's own bytes, not copies.
        let inside = head.as_ptr_range();
        assert!(inside.contains(&map["host"].as_bytes().as_ptr()));
        // A name that is not a token is left out.
        let odd = RawHead {
            head: Bytes::from_static(b"a b:c"),
            spans: vec![[0, 3, 4, 5]],
            date: false,
            length: false,
        };
        let mut map = HeaderMap::new();
        odd.fill(&mut map);
        assert!(map.is_empty());
    }

    #[test]
    fn a_raw_head_passes_on_end_to_end_fields_only_and_maps_them_first() {
        let text = b"HTTP/1.1 200 OK\r\nX-Case: A\r\nConnection: keep-alive, X-Private\r\n\
                     x-private: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\
                     Content-Length: 0\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut answer = httparse::Response::new(&mut slots);
        answer.parse(text).expect("a valid head");
        let raw = RawHead::new(text, answer.headers, |_, _| {}).of(Bytes::from_static(text));
        let fields: Vec<_> = raw.fields().collect();
        assert_eq!(
            fields,
            [
                (&b"X-Case"[..], &b"A"[..]),
                (b"Set-Cookie", b"a=1"),
                (b"Content-Length", b"0")
            ]
        );
        assert!(raw.length && !raw.date);
        // Written out: the lines around the hop-by-hop ones, as they were.
        let mut out = Vec::new();
        raw.write_fields(&mut out);
        assert_eq!(
            out,
            b"X-Case: A\r\nSet-Cookie: a=1\r\nContent-Length: 0\r\n".as_slice()
        );
        // A Connection header that names Date: Date stays behind, and is known to be missing.
        let text = b"HTTP/1.1 200 OK\r\nDate: today\r\nConnection: close, date\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 4];
        let mut answer = httparse::Response::new(&mut slots);
        answer.parse(text).expect("a valid head");
        let named = RawHead::new(text, answer.headers, |_, _| {}).of(Bytes::from_static(text));
        assert_eq!(named.fields().count(), 0);
        assert!(!named.date && !named.length);
        let mut out = Vec::new();
        named.write_fields(&mut out);
        assert!(out.is_empty());
        let mut added = HeaderMap::new();
        added.append("set-cookie", HeaderValue::from_static("ROUTEID=x"));
        let map = raw.into_map(added);
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "ROUTEID=x"]);
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn field_lines_are_written_as_the_member_wrote_them_in_runs() {
        // No space after a colon, spaces around a value, a bare line feed, a dropped field
        // first and last: each line comes out whole and ends in CRLF.
        let text = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nA:1\r\nB:  two  \r\n\
                     C: 3\nD: 4\r\nTransfer-Encoding: chunked\r\nE: 5\r\nTE: x\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut answer = httparse::Response::new(&mut slots);
        answer.parse(text).expect("a valid head");
        let raw = RawHead::new(text, answer.headers, |_, _| {}).of(Bytes::from_static(text));
        let mut out = Vec::new();
        raw.write_fields(&mut out);
        let written = String::from_utf8(out.clone()).expect("text");
        assert_eq!(written, "A:1\r\nB:  two\r\nC: 3\r\nD: 4\r\nE: 5\r\n");
        // Parsed again: the same names and values, in the same order.
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut reparsed = httparse::Response::new(&mut slots);
        let whole = [b"HTTP/1.1 200 OK\r\n".as_slice(), &out, b"\r\n"].concat();
        reparsed.parse(&whole).expect("what is written parses");
        let pairs: Vec<_> = reparsed.headers.iter().map(|h| (h.name, h.value)).collect();
        let expected: Vec<_> = raw
            .fields()
            .map(|(n, v)| (std::str::from_utf8(n).expect("name"), v))
            .collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn a_dropped_heads_span_list_serves_the_next_answer() {
        let text = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nConnection: close\r\nC: 3\r\n\r\n";
        let parse = || {
            let mut slots = [httparse::EMPTY_HEADER; 8];
            let mut answer = httparse::Response::new(&mut slots);
            answer.parse(text).expect("a valid head");
            RawHead::new(text, answer.headers, |_, _| {}).of(Bytes::from_static(text))
        };
        let first = parse();
        assert_eq!(first.fields().count(), 3);
        let list = first.spans.as_ptr();
        drop(first);
        assert_eq!(SPARE_SPANS.with_borrow(Vec::len), 1);
        let second = parse();
        assert_eq!(second.spans.as_ptr(), list, "the same list, not a new one");
        assert_eq!(SPARE_SPANS.with_borrow(Vec::len), 0);
        let fields: Vec<_> = second.fields().collect();
        assert_eq!(fields, [(&b"A"[..], &b"1"[..]), (b"B", b"2"), (b"C", b"3")]);
        // A list grown past the room kept is freed, not kept.
        let mut large = second;
        large.spans.reserve(SPARE_SPANS_ROOM + 1);
        drop(large);
        assert_eq!(SPARE_SPANS.with_borrow(Vec::len), 0);
    }
}
