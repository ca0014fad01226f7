//! How an answer from a member is delimited, and whether its connection can carry another
//! exchange after it (RFC 9112 6.3 and 9.3). Pure.

use http::{Method, StatusCode, Version};

use super::field::{CONNECTION, Field, TRANSFER_ENCODING, connection_tokens, field};

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the member closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This much of the current chunk's data is left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the empty line.
    Trailers,
}

/// What decides an answer's framing and whether its connection is kept: seen in the same
/// pass over the fields that picks those passed on ([`RawHead::new`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Controls<'a> {
    /// A Connection field says "close".
    pub close: bool,
    /// A Connection field says "keep-alive".
    pub keep_alive: bool,
    /// The last Transfer-Encoding value.
    pub transfer_encoding: Option<&'a [u8]>,
    /// How many Content-Length fields there are, and the first one's value.
    pub lengths: usize,
    pub first_length: Option<&'a [u8]>,
}

impl<'a> Controls<'a> {
    /// Takes in one field, of the kind `field` found for its name.
    pub fn see(&mut self, field: Field, value: &'a [u8]) {
        match field {
            Field::HopByHop(CONNECTION) => {
                let (close, keep_alive) = connection_tokens(value);
                self.close |= close;
                self.keep_alive |= keep_alive;
            }
            Field::HopByHop(TRANSFER_ENCODING) => self.transfer_encoding = Some(value),
            Field::ContentLength => {
                self.lengths += 1;
                self.first_length = self.first_length.or(Some(value));
            }
            _ => {}
        }
    }

    /// The same for every field of `headers`.
    #[cfg(test)]
    pub fn of(headers: &[httparse::Header<'a>]) -> Self {
        let mut controls = Controls::default();
        for h in headers {
            controls.see(field(h.name.as_bytes()), h.value);
        }
        controls
    }
}

/// The answer's framing, and whether the connection can carry another exchange after it
/// (RFC 9112 6.3 and 9.3), or why the head is refused, from what the pass over its `fields` found (`controls`: the
/// Connection tokens, the last Transfer-Encoding value, and the Content-Length values, checked
/// below only when they decide the framing).
pub fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    controls: &Controls<'_>,
    fields: &[httparse::Header<'_>],
) -> Result<(Framing, bool), String> {
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
        if version == Version::HTTP_10 {
            // HTTP/1.0 has no transfer codings (RFC 9112 6.1): the framing is in doubt.
            return Err("answer head: Transfer-Encoding in an HTTP/1.0 answer".to_owned());
        }
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
    let length = content_length(first_length, lengths, fields)?;
    Ok(match length {
        Some(0) => (Framing::Done, keep),
        Some(n) => (Framing::Length(n), keep),
        None => (Framing::Close, false),
    })
}

/// The Content-Length, from its values (`lengths` of them, the first `first_length`): each may
/// be a list, and all must agree (RFC 9110 8.6), or the answer's framing is in doubt.
fn content_length(
    first_length: Option<&[u8]>,
    lengths: usize,
    fields: &[httparse::Header<'_>],
) -> Result<Option<u64>, String> {
    let mut length = None;
    // Usually one value; more are looked for again only when there are more.
    let more = fields
        .iter()
        .filter(|f| lengths > 1 && field(f.name.as_bytes()) == Field::ContentLength)
        .map(|f| f.value)
        .skip(1);
    for value in first_length.into_iter().chain(more) {
        for part in value.split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or_else(|| {
                format!(
                    "answer head: invalid Content-Length {:?}",
                    String::from_utf8_lossy(value)
                )
            })?;
            if length.is_some_and(|l| l != n) {
                return Err("answer head: Content-Length values differ".to_owned());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::super::field::names_other_fields;
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
        framing(&method, status, version, &Controls::of(&fields), &fields)
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
    fn one_pass_finds_what_decides_the_framing() {
        let fields = [
            httparse::Header {
                name: "Connection",
                value: b" Keep-Alive , X-Private",
            },
            httparse::Header {
                name: "content-length",
                value: b"12",
            },
            httparse::Header {
                name: "Transfer-Encoding",
                value: b"gzip",
            },
            httparse::Header {
                name: "CONTENT-LENGTH",
                value: b"13",
            },
            httparse::Header {
                name: "Transfer-Encoding",
                value: b"chunked",
            },
        ];
        let c = Controls::of(&fields);
        assert!(c.keep_alive && !c.close);
        assert!(names_other_fields(fields[0].value).next().is_some());
        assert_eq!(c.transfer_encoding, Some(&b"chunked"[..]));
        assert_eq!((c.lengths, c.first_length), (2, Some(&b"12"[..])));
        // "close" and the fixed hop-by-hop names name no other field.
        let c = Controls::of(&[httparse::Header {
            name: "connection",
            value: b"close, TE,,upgrade",
        }]);
        assert!(c.close && !c.keep_alive);
        assert!(names_other_fields(b"close, TE,,upgrade").next().is_none());
        assert_eq!((c.lengths, c.transfer_encoding), (0, None));
    }
}
