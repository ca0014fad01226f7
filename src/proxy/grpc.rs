//! What the proxy knows of gRPC: a call by its content type, its deadline (`grpc-timeout`), its
//! status codes, and the fields of the answers the proxy gives on a member's behalf (a
//! trailers-only answer, or trailers that end a stream the member broke). Pure.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::balancer::GRPC_STATUS_NAMES;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

pub const UNKNOWN: u8 = 2;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const UNIMPLEMENTED: u8 = 12;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;

/// Whether a request is a gRPC call: `application/grpc`, alone or with a `+format` or
/// parameters. gRPC-Web (`application/grpc-web`) is not: its status travels in the body.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    // An empty map (most requests the lean HTTP/1 server reads keep their fields as written) is
    // not looked into: the lookup alone cost every such request about 25 instructions.
    !headers.is_empty()
        && headers.get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+' | b';'))
        })
}

/// The call's deadline from its `grpc-timeout` field: one to eight digits and a unit (H, M, S,
/// m, u, n). `None` without the field, or with one that is not of that form (gRPC servers
/// refuse those; the proxy lets the member say so).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` of an answer's head (a trailers-only answer) or trailers; a code gRPC does
/// not define counts as UNKNOWN, as gRPC clients take it.
pub fn status_of(fields: &HeaderMap) -> Option<u8> {
    let value = fields.get(&GRPC_STATUS)?.to_str().ok()?;
    Some(match value.parse::<u8>() {
        Ok(code) if usize::from(code) < GRPC_STATUS_NAMES.len() => code,
        _ => UNKNOWN,
    })
}

/// `grpc-status` and `grpc-message` for a status the proxy gives: the message
/// percent-encoded as gRPC asks (every byte outside printable ASCII, and `%`).
pub fn status_fields(code: u8, message: &str) -> HeaderMap {
    let mut fields = HeaderMap::with_capacity(2);
    fields.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    // Printable ASCII only: always a valid value.
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        fields.insert(GRPC_MESSAGE.clone(), value);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&with("content-type", yes)), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
        ] {
            assert!(!is_grpc(&with("content-type", no)), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn deadlines_in_every_unit_and_malformed_ones_ignored() {
        let t = |v: &str| timeout(&with("grpc-timeout", v));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_are_read_and_written_as_grpc_does() {
        assert_eq!(status_of(&with("grpc-status", "14")), Some(14));
        assert_eq!(status_of(&with("grpc-status", "99")), Some(UNKNOWN));
        assert_eq!(status_of(&HeaderMap::new()), None);
        assert_eq!(GRPC_STATUS_NAMES[usize::from(UNAVAILABLE)], "UNAVAILABLE");
        let fields = status_fields(UNAVAILABLE, "member 10.0.0.1:80 failed: 100% gone\n");
        assert_eq!(fields["grpc-status"], "14");
        assert_eq!(
            fields["grpc-message"],
            "member 10.0.0.1:80 failed: 100%25 gone%0A"
        );
    }
}
