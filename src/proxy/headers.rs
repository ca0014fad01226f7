//! The fields the proxy changes on a request's way to a member: hop-by-hop fields left out
//! (RFC 9110 7.6.1), an upgrade asked for again, X-Forwarded-For, -Proto and -Host added, an
//! absolute-form target made origin-form. Pure.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use super::http1::field::{HOP_BY_HOP, Scan, hop_by_hop};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The protocol a request asks to switch to, when it is an HTTP/1.1 Upgrade request.
pub fn upgrade_protocol<B>(req: &Request<B>, scan: &Scan) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !scan.has_upgrade() {
        return None;
    }
    let upgrade = req.headers().get(header::UPGRADE)?;
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// The fields the proxy adds to a request for its members: X-Forwarded-For (the client's
/// address after any chain the client sent), X-Forwarded-Proto and X-Forwarded-Host. They are
/// not put in the request's header map: the lean exchange writes them as the head goes out, and
/// only hyper's client path inserts them into the map (see [`Forwarding::insert`]). The
/// client's own lines of those names are taken out of the map when the request is routed.
#[derive(Clone, Debug)]
pub struct Forwarding {
    forwarded_for: HeaderValue,
    host: Option<HeaderValue>,
    /// The request came over HTTPS.
    https: bool,
    /// With the access log or tracing on: a request id made here, the try's `traceparent`.
    extra: Option<Box<Extra>>,
}

/// Fields added when the access log or tracing is on: X-Request-Id made for a request that came
/// without one, the try's `traceparent` (the client's own was taken out).
#[derive(Clone, Debug, Default)]
pub struct Extra {
    fields: Vec<(HeaderName, HeaderValue)>,
}

impl Extra {
    /// Sets the field `name`, replacing its earlier value.
    pub fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, old)) => *old = value,
            None => self.fields.push((name.clone(), value)),
        }
    }
}

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

impl Forwarding {
    /// The fields for a request from `forwarded_for` to `host`, which came over HTTPS or not.
    pub fn new(forwarded_for: HeaderValue, host: Option<HeaderValue>, https: bool) -> Self {
        Forwarding {
            forwarded_for,
            host,
            https,
            extra: None,
        }
    }

    /// The fields added when the access log or tracing is on.
    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The fields: X-Forwarded-For, X-Forwarded-Proto, and X-Forwarded-Host when there is a host;
    /// then X-Request-Id and traceparent when they were set.
    pub fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        [
            (&X_FORWARDED_FOR, &self.forwarded_for),
            (&X_FORWARDED_PROTO, if self.https { &HTTPS } else { &HTTP }),
        ]
        .into_iter()
        .chain(self.host.as_ref().map(|host| (&X_FORWARDED_HOST, host)))
        // A slice's iterator rather than a flattened one: the iterator is held in every lean
        // exchange's future, and a flattening one is several times larger.
        .chain(
            self.extra
                .as_deref()
                .map_or(&[][..], |e| &e.fields[..])
                .iter()
                .map(|(name, value)| (name, value)),
        )
    }

    /// Puts the fields into `headers`, replacing the client's lines of the same names.
    pub fn insert(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Readies the request for its members: hop-by-hop fields left out, an upgrade asked for again,
/// an absolute-form target made origin-form with its authority as Host. Returns the forwarding
/// fields to add. `client` is the client's address, formatted as an X-Forwarded-For entry.
pub fn prepare_request<B>(
    req: &mut Request<B>,
    client: &HeaderValue,
    https: bool,
    host: Option<HeaderValue>,
    upgrade: Option<HeaderValue>,
    scan: Scan,
) -> Forwarding {
    let origin_form = req.uri().scheme().is_none() && req.uri().authority().is_none();
    let headers = req.headers_mut();
    strip_present(headers, scan.hop_by_hop);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // Every X-Forwarded-For line the client sent stays in the chain, in order. Without one (the
    // usual case) the client's formatted address goes as it is, with no formatting or allocation.
    let forwarded_for = if scan.forwarded {
        forwarded_chain(headers, client)
    } else {
        client.clone()
    };
    if scan.forwarded {
        // The client's own lines give way to ours (the chain above keeps its X-Forwarded-For).
        for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
            headers.remove(name);
        }
    }
    if !origin_form {
        // The authority replaces Host (RFC 9112 3.2.2); with an origin-form target, Host is
        // already the value it would get.
        if let Some(host) = &host {
            headers.insert(header::HOST, host.clone());
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = Uri::try_from(path) {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    Forwarding {
        forwarded_for,
        host,
        https,
        extra: None,
    }
}

/// True when the only Connection header is "keep-alive" (what most members answer): it names no
/// other header, so the general parse of its tokens can be skipped.
fn only_keep_alive(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONNECTION).iter();
    values
        .next()
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
        && values.next().is_none()
}

/// Removes the headers that describe one connection and must not be forwarded (RFC 9110 7.6.1),
/// including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = Scan::of(headers).hop_by_hop;
    strip_present(headers, present);
}

/// The client's X-Forwarded-For lines (those that are text), in order, then the client: the
/// chain a request that came with some goes on with.
fn forwarded_chain(headers: &HeaderMap, client: &HeaderValue) -> HeaderValue {
    let mut previous = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    if previous.peek().is_none() {
        return client.clone();
    }
    let mut chain = String::new();
    for previous in previous {
        chain.push_str(previous);
        chain.push_str(", ");
    }
    chain.push_str(client.to_str().unwrap_or(""));
    HeaderValue::from_str(&chain).unwrap_or_else(|_| client.clone())
}

/// Removes the hop-by-hop fields `present` marks, and those the Connection header names. An
/// empty map (a head the lean server keeps as the client wrote it, whose writer leaves those
/// lines out) has none to remove: looked for there, they cost a request that sent
/// `Connection: close` about 400 instructions.
fn strip_present(headers: &mut HeaderMap, present: u16) {
    if present == 0 || headers.is_empty() {
        return;
    }
    if present & 1 != 0 && !only_keep_alive(headers) {
        // Headers the Connection header names beyond the fixed ones ("close" names none): looked
        // up, and their names built, only for such tokens.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| hop_by_hop(t.as_bytes()).is_none() && headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::client::forwarded_for;

    #[test]
    fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
        let mut req = Request::builder()
            .uri("http://shop.example.com/cart?x=1")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.9")
            .header("host", "shop.example.com")
            .body(())
            .expect("request");
        // The absolute-form target's authority is what Host becomes.
        let host = Some(HeaderValue::from_static("shop.example.com"));
        let client = forwarded_for("127.0.0.1".parse().expect("ip"));
        let scan = Scan::of(req.headers());
        let forwarding = prepare_request(&mut req, &client, false, host, None, scan);
        let h = req.headers();
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone} must be removed");
        }
        assert_eq!(h["host"], "shop.example.com");
        assert_eq!(req.uri().to_string(), "/cart?x=1");
        let added: Vec<(&str, &str)> = forwarding
            .fields()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("text")))
            .collect();
        assert_eq!(
            added,
            [
                ("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "shop.example.com"),
            ]
        );
        // On hyper's path they replace the client's lines in the map.
        let mut headers = req.headers().clone();
        forwarding.insert(&mut headers);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        // Without a host, no X-Forwarded-Host.
        let mut bare = Request::new(());
        let forwarding = prepare_request(
            &mut bare,
            &client,
            true,
            None,
            None,
            Scan::of(&HeaderMap::new()),
        );
        assert_eq!(forwarding.fields().count(), 2);
        assert!(!bare.headers().contains_key("host"));
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade() {
        let mut req = Request::builder()
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .expect("request");
        let scan = Scan::of(req.headers());
        let protocol = upgrade_protocol(&req, &scan);
        assert_eq!(
            protocol.as_ref().map(|p| p.as_bytes()),
            Some(&b"websocket"[..])
        );
        let client = forwarded_for("::1".parse().expect("ip"));
        prepare_request(&mut req, &client, false, None, protocol, scan);
        assert_eq!(req.headers()["connection"], "upgrade");
        assert_eq!(req.headers()["upgrade"], "websocket");
    }
}
