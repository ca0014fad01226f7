//! Reading a client's request head for the lean HTTP/1 server: `httparse` (hyper's parser), the
//! head's fields kept as the client wrote them ([`LeanHead`]), and the verdict on whether the
//! request is one the lean server handles at all.
//!
//! Only a plain head is taken: no body, no upgrade, no `Expect`, not CONNECT, one Host, a valid
//! target, within the limits. Anything else is [`Parsed::Other`]: the connection goes to hyper's
//! server with every byte read so far, so that each odd case gets hyper's handling and error
//! answers, exactly as with `--http1 hyper`.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, Uri, Version};

use super::field::{CONNECTION, Field, Scan, TRANSFER_ENCODING, UPGRADE, connection_tokens};
use super::raw::RawHead;

/// Header slots of the parse; a head with more goes to hyper (which answers 431 beyond the
/// configured limit).
const MAX_HEADERS: usize = 100;

/// The limits hyper's server is configured with, so that the hand-off is never needed to
/// enforce them differently.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_headers: usize,
    pub max_head_bytes: usize,
}

/// A head the lean server parsed, its fields as the client wrote them. The request's header map
/// stays empty: the field lines go to the member as they are (less the hop-by-hop ones) unless
/// the request needs a map (see the proxy's routing).
pub struct LeanHead {
    /// The end-to-end fields.
    pub fields: RawHead,
    /// The Host value, found among all the fields (as hyper's path reads it from the whole map
    /// before the hop-by-hop fields are taken out).
    pub host: Option<Bytes>,
    /// What routing looks for among all the field names, found as the head was parsed.
    pub scan: Scan,
}

/// The request line of a parsed head.
pub struct Line {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The client wants the connection kept after the answer.
    pub keep_alive: bool,
}

pub enum Parsed<R> {
    /// A whole head, placed where the caller wanted it.
    Request(R),
    /// More bytes are needed.
    Partial,
    /// Not ours to handle: hyper's server takes the connection.
    Other,
}

/// Parses the head at the start of `buf`. On success the head is split off `buf`, the target
/// and fields share its bytes, and `place` puts them where the request will live (a spare
/// request, so that nothing is allocated or moved more than once).
pub fn parse<R>(
    buf: &mut BytesMut,
    limits: Limits,
    place: impl FnOnce(Line, LeanHead) -> R,
) -> Parsed<R> {
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
    let (Some((method, version)), Some(path)) = (line_of(&parsed), parsed.path) else {
        return Parsed::Other;
    };
    let path_start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let path_span = path_start..path_start + path.len();
    let mut seen = Seen::default();
    let base = buf.as_ptr() as usize;
    let fields = RawHead::new(buf, parsed.headers, |kind, h| seen.field(kind, h, base));
    if seen.more_than_a_head || seen.hosts > 1 {
        return Parsed::Other;
    }
    let keep_alive = !seen.close && (version == Version::HTTP_11 || seen.keep_alive);
    let head = buf.split_to(head_len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_span)) else {
        // A target hyper answers with 400: give it back the whole head.
        give_back(buf, &head);
        return Parsed::Other;
    };
    let line = Line {
        method,
        uri,
        version,
        keep_alive,
    };
    let lean = LeanHead {
        host: seen.host.map(|span| head.slice(span)),
        fields: fields.of(head),
        scan: seen.scan,
    };
    Parsed::Request(place(line, lean))
}

/// The request line's method and version, when the lean server serves them: HTTP/1.0 or 1.1,
/// a method `http` knows, and not CONNECT (hyper's server refuses it).
#[inline]
fn line_of(parsed: &httparse::Request<'_, '_>) -> Option<(Method, Version)> {
    let version = match parsed.version? {
        1 => Version::HTTP_11,
        0 => Version::HTTP_10,
        _ => return None,
    };
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    (method != Method::CONNECT).then_some((method, version))
}

/// Puts a head split off the buffer back in front of what follows it, for hyper's server to
/// read.
fn give_back(buf: &mut BytesMut, head: &[u8]) {
    let mut whole = BytesMut::from(head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// What the pass over a request's fields finds beyond the fields passed on.
#[derive(Default)]
struct Seen {
    close: bool,
    keep_alive: bool,
    hosts: usize,
    lengths: usize,
    /// Where the (last) Host value lies in the buffer.
    host: Option<std::ops::Range<usize>>,
    /// Whatever needs more than a head goes to hyper: a body, an upgrade, an expectation.
    more_than_a_head: bool,
    /// What routing looks for among all the field names.
    scan: Scan,
}

impl Seen {
    fn field(&mut self, kind: Field, h: &httparse::Header<'_>, base: usize) {
        match kind {
            Field::HopByHop(TRANSFER_ENCODING | UPGRADE) | Field::Expect => {
                self.more_than_a_head = true;
            }
            // A length other than a single 0 (duplicates are merged by hyper's server).
            Field::ContentLength => {
                self.more_than_a_head |= h.value != b"0" || self.lengths > 0;
                self.lengths += 1;
            }
            Field::Host => {
                self.hosts += 1;
                let start = h.value.as_ptr() as usize - base;
                self.host = Some(start..start + h.value.len());
            }
            Field::HopByHop(CONNECTION) => {
                let (close, keep_alive) = connection_tokens(h.value);
                self.close |= close;
                self.keep_alive |= keep_alive;
            }
            _ => {}
        }
        self.scan.see(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_headers: 100,
        max_head_bytes: 64 * 1024,
    };

    type Head = (Line, LeanHead);

    fn parsed(text: &str) -> (Parsed<Head>, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let parsed = parse(&mut buf, LIMITS, |line, lean| (line, lean));
        (parsed, buf)
    }

    /// The end-to-end fields the lean server kept of a request, as a map.
    fn kept(head: &Head) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        head.1.fields.fill(&mut map);
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
            let head = &lean.1;
            assert_eq!(head.scan, Scan::of(&all_fields(text)), "{text:?}");
        }
        let text = "GET / HTTP/1.1\r\nX-Forwarded-For: 1\r\nConnection: close\r\n\r\n";
        let Parsed::Request(lean) = parsed(text).0 else {
            panic!("a plain GET is ours");
        };
        let head = &lean.1;
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
        let head = &lean.1;
        assert_eq!(head.host.as_deref(), Some(&b"web:8080"[..]));
        assert!(kept(&lean).is_empty());
    }

    #[test]
    fn a_plain_get_is_ours_and_leaves_what_follows() {
        let (p, rest) = parsed("GET /a?b=c HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n\r\nGET /next");
        let Parsed::Request(lean) = p else {
            panic!("a plain GET is handled by the lean server");
        };
        assert!(lean.0.keep_alive);
        assert_eq!(&lean.0.method, Method::GET);
        assert_eq!(&lean.0.uri, "/a?b=c");
        assert_eq!(kept(&lean)["host"], "web");
        assert_eq!(kept(&lean)["x-a"], "1");
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn asterisk_and_absolute_targets_are_ours_too() {
        let target = |text: &str| match parsed(text).0 {
            Parsed::Request(lean) => lean.0.uri.clone(),
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
            Parsed::Request(lean) => lean.0.keep_alive,
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
}
