//! What the proxy knows of a field by its name: the hop-by-hop fields (RFC 9110 7.6.1), the
//! few others the HTTP/1 paths look for, and [`Scan`], what one pass over a request's field
//! names finds. Pure.

use http::header::HeaderMap;

/// The fields that describe one connection and are never forwarded (RFC 9110 7.6.1),
/// Connection first, in lower case.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Indexes in [`HOP_BY_HOP`] of the fields looked for by name.
pub const CONNECTION: usize = 0;
pub const TRANSFER_ENCODING: usize = 7;
pub const UPGRADE: usize = 8;

/// What the proxy needs to know of a field, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Index in [`HOP_BY_HOP`]: 0 is Connection.
    HopByHop(usize),
    ContentLength,
    Date,
    Host,
    Expect,
    /// X-Forwarded-For, X-Forwarded-Proto or X-Forwarded-Host.
    Forwarded,
    Other,
}

/// The kind of field a name (in any case) is. Dispatching on the length first makes most names
/// cost one comparison of a length; a name of a listed length is compared once.
#[inline(always)]
pub fn field(name: &[u8]) -> Field {
    let lower_first = name.first().map(u8::to_ascii_lowercase);
    let (text, field) = match name.len() {
        2 => ("te", Field::HopByHop(5)),
        4 if lower_first == Some(b'd') => ("date", Field::Date),
        4 => ("host", Field::Host),
        6 => ("expect", Field::Expect),
        7 if lower_first == Some(b't') => ("trailer", Field::HopByHop(6)),
        7 => ("upgrade", Field::HopByHop(UPGRADE)),
        10 if lower_first == Some(b'c') => ("connection", Field::HopByHop(CONNECTION)),
        10 => ("keep-alive", Field::HopByHop(1)),
        14 => ("content-length", Field::ContentLength),
        15 => ("x-forwarded-for", Field::Forwarded),
        16 if lower_first == Some(b'x') => ("x-forwarded-host", Field::Forwarded),
        16 => ("proxy-connection", Field::HopByHop(2)),
        17 if lower_first == Some(b'x') => ("x-forwarded-proto", Field::Forwarded),
        17 => ("transfer-encoding", Field::HopByHop(TRANSFER_ENCODING)),
        18 => ("proxy-authenticate", Field::HopByHop(3)),
        19 => ("proxy-authorization", Field::HopByHop(4)),
        _ => return Field::Other,
    };
    if folded_eq(name, text.as_bytes()) {
        field
    } else {
        Field::Other
    }
}

/// `name` equals `lower` in any case, where `lower` is lower-case letters and '-' and `name` is
/// a token (`httparse` checked it). Setting the 0x20 bit of every byte then lowers letters and
/// keeps '-' (no other token byte turns into either), eight bytes at a time.
fn folded_eq(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if name.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (name, lower);
    while let (Some((a8, a_rest)), Some((b8, b_rest))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if u64::from_ne_bytes(*a8) | FOLD != u64::from_ne_bytes(*b8) {
            return false;
        }
        (a, b) = (a_rest, b_rest);
    }
    a.iter().zip(b).all(|(&x, &y)| x | 0x20 == y)
}

/// The index in [`HOP_BY_HOP`] of a field name, in any case.
pub fn hop_by_hop(name: &[u8]) -> Option<usize> {
    match field(name) {
        Field::HopByHop(i) => Some(i),
        _ => None,
    }
}

/// The field names a Connection value lists beyond the fixed hop-by-hop ones and "close" (a
/// connection option that names no field).
pub fn names_other_fields(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && hop_by_hop(t).is_none())
}

/// Writes one field line of a head.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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

/// What one pass over a request's field names finds, so that the names looked for are not
/// each looked up by hash: the hop-by-hop fields present (a bit per [`HOP_BY_HOP`] entry,
/// usually none or only Connection), and whether any X-Forwarded-For, -Proto or -Host is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// A bit per [`HOP_BY_HOP`] entry present.
    pub hop_by_hop: u16,
    /// Any X-Forwarded-For, -Proto or -Host.
    pub forwarded: bool,
}

impl Scan {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut scan = Scan::default();
        for name in headers.keys() {
            scan.see(field(name.as_str().as_bytes()));
        }
        scan
    }

    /// Takes in one field name, of the kind `field` found.
    pub fn see(&mut self, field: Field) {
        match field {
            Field::HopByHop(i) => self.hop_by_hop |= 1 << i,
            Field::Forwarded => self.forwarded = true,
            _ => {}
        }
    }

    pub fn has_upgrade(&self) -> bool {
        self.hop_by_hop & (1 << UPGRADE) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_lookup_matches_the_table() {
        assert_eq!(HOP_BY_HOP[CONNECTION], "connection");
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING], "transfer-encoding");
        assert_eq!(HOP_BY_HOP[UPGRADE], "upgrade");
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop(name.as_bytes()), Some(i), "{name}");
            let upper = name.to_ascii_uppercase();
            assert_eq!(hop_by_hop(upper.as_bytes()), Some(i), "{upper}");
        }
        assert_eq!(field(b"Content-Length"), Field::ContentLength);
        assert_eq!(field(b"DATE"), Field::Date);
        assert_eq!(field(b"Host"), Field::Host);
        assert_eq!(field(b"hosT"), Field::Host);
        assert_eq!(field(b"gate"), Field::Other);
        assert_eq!(field(b"Expect"), Field::Expect);
        for name in ["X-Forwarded-For", "x-forwarded-proto", "X-FORWARDED-HOST"] {
            assert_eq!(field(name.as_bytes()), Field::Forwarded, "{name}");
        }
        for name in [
            "X-Forwarded-Fox",
            "x-forwarded-port",
            "X-Forwarded-Hosts",
            "Y-Forwarded-For",
        ] {
            assert_eq!(field(name.as_bytes()), Field::Other, "{name}");
        }
        assert_eq!(field(b"ETag"), Field::Other);
        assert_eq!(field(b"TRANSFER-ENCODING"), Field::HopByHop(7));
        assert_eq!(field(b"content_length"), Field::Other);
        assert_eq!(field(b"content-lengti"), Field::Other);
        assert_eq!(field(b"proxy-connectioN"), Field::HopByHop(2));
        for other in [
            "content-length",
            "connectioN2",
            "keep-alivf",
            "tx",
            "trailers",
            "trailed",
            "upgradf",
        ] {
            assert_eq!(hop_by_hop(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn connection_tokens_are_found_in_any_case_and_spacing() {
        assert_eq!(connection_tokens(b"close"), (true, false));
        assert_eq!(connection_tokens(b" Keep-Alive , X-Private"), (false, true));
        assert_eq!(connection_tokens(b"upgrade"), (false, false));
        assert_eq!(connection_tokens(b"keep-alive,CLOSE"), (true, true));
    }

    #[test]
    fn a_scan_finds_upgrade_and_the_forwarded_chain() {
        assert_eq!(HOP_BY_HOP[UPGRADE], "upgrade");
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", http::HeaderValue::from_static("websocket"));
        headers.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("203.0.113.9"),
        );
        let scan = Scan::of(&headers);
        assert!(scan.has_upgrade() && scan.forwarded);
        assert_eq!(scan.hop_by_hop, 1 << UPGRADE);
        let scan = Scan::of(&HeaderMap::new());
        assert!(!scan.has_upgrade() && !scan.forwarded);
    }
}
