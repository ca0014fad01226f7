//! The client side of HTTP/1.1 towards members for the common request: no request body, no
//! upgrade.
//!
//! hyper's client runs each member connection as a task of its own and hands every request and
//! answer across channels: two task switches and a channel round trip per request. For a
//! request that has no body to stream, none of that is needed: the request head is written in
//! one go, the answer head is read and parsed (`httparse`, as hyper does) on the request's own
//! task, and the answer body is read from the connection by the response body itself
//! ([`AnswerBody`]). Everything else (request bodies, upgrades) goes through hyper's client.

use std::mem::MaybeUninit;

use bytes::Buf;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;

use super::answer::AnswerBody;
use super::conn::{Conn, MAX_HEAD, MAX_HEADERS};
use super::field::push_field;
use super::framing::{Controls, Framing, framing};
use super::raw::RawHead;

/// How far an exchange got before it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The request head did not reach the member whole: nothing of it can have been acted on.
    Unsent,
    /// The request went, and the connection closed or broke before a byte of the answer.
    Unanswered,
    /// Part of an answer came, and it was cut short or malformed.
    BadAnswer,
}

/// Why an exchange failed.
#[derive(Debug)]
pub struct ExchangeError {
    pub cause: String,
    pub stage: Stage,
}

impl ExchangeError {
    pub(super) fn new(cause: impl Into<String>, stage: Stage) -> Self {
        ExchangeError {
            cause: cause.into(),
            stage,
        }
    }
}

impl Conn {
    /// Sends `req` (whose body is empty) with the `added` fields after its own, and reads the
    /// answer's head. The body follows from [`AnswerBody`] (made the caller's body type `T`),
    /// which owns the connection until the answer has been read.
    ///
    /// The answer is boxed where it is made: it goes back through every frame up to the
    /// request's box (this function's, the timeout's, the exchange's, `forward`'s), and by value
    /// (about 200 bytes) it was copied in each of them (docs/benchmarks.md, "Before and after
    /// the proxy/ reshape").
    pub async fn send<'a, B, T: From<AnswerBody>>(
        mut self,
        req: &Request<B>,
        fields: Option<&RawHead>,
        added: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) -> Result<Box<Response<T>>, ExchangeError> {
        self.encode(req, fields, added);
        let state = &mut *self;
        if let Err(e) = state.io.write_all(&state.out).await {
            // A member cannot act on a head it did not receive whole.
            return Err(ExchangeError::new(format!("request: {e}"), Stage::Unsent));
        }
        self.read_head(req.method()).await
    }

    /// Writes the request head: the request line, the client's field lines as it wrote them
    /// (`fields`, for a request whose map the lean server left empty) or the map's, then
    /// `added`.
    fn encode<'a, B>(
        &mut self,
        req: &Request<B>,
        fields: Option<&RawHead>,
        added: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    ) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(fields) = fields {
            fields.write_fields(out);
        }
        for (name, value) in req.headers() {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        for (name, value) in added {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    async fn read_head<T: From<AnswerBody>>(
        mut self,
        method: &Method,
    ) -> Result<Box<Response<T>>, ExchangeError> {
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                match self.parse_head(method)? {
                    Parsed::Final(head) => return Ok(head.answer(self)),
                    Parsed::Informational => continue,
                    Parsed::Partial => {}
                }
            }
            let stage = if received {
                Stage::BadAnswer
            } else {
                Stage::Unanswered
            };
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(|e| ExchangeError::new(format!("answer: {e}"), stage))?;
            if n == 0 {
                let cause = if received {
                    "answer: the member closed the connection inside the answer head"
                } else {
                    "answer: the member closed the connection without answering"
                };
                return Err(ExchangeError::new(cause, stage));
            }
        }
    }

    /// Parses the answer head at the start of the buffer, if it is all there.
    fn parse_head(&mut self, method: &Method) -> Result<Parsed, ExchangeError> {
        let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parser = httparse::ParserConfig::default();
        let result = parser.parse_response_with_uninit_headers(&mut parsed, &self.buf, &mut slots);
        let Some(head_len) = head_length(result, self.buf.len())? else {
            return Ok(Parsed::Partial);
        };
        let status = status_of(parsed.code)?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::new(
                    "answer: 101 Switching Protocols to a request that asked for no upgrade",
                    Stage::BadAnswer,
                ));
            }
            // 100 Continue, 103 Early Hints...: the final answer follows.
            self.buf.advance(head_len);
            return Ok(Parsed::Informational);
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let reason = parsed
            .reason
            .filter(|r| Some(*r) != status.canonical_reason());
        let reason = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        let mut controls = Controls::default();
        let raw = RawHead::new(&self.buf, parsed.headers, |kind, h| {
            controls.see(kind, h.value)
        });
        let (framing, keep) = framing(method, status, version, &controls, parsed.headers)
            .map_err(|cause| ExchangeError::new(cause, Stage::BadAnswer))?;
        let raw = raw.of(self.buf.split_to(head_len).freeze());
        Ok(Parsed::Final(Head {
            status,
            version,
            reason,
            framing,
            raw,
            keep,
        }))
    }
}

/// A final answer head as parsed, in pieces: the boxed answer is built from them once, in its
/// box ([`Head::answer`]). Built as a `Response` here and moved into the box, it was copied
/// twice more on its way (about 200 bytes each).
struct Head {
    status: StatusCode,
    version: Version,
    /// A reason phrase other than the status's canonical one.
    reason: Option<hyper::ext::ReasonPhrase>,
    framing: Framing,
    /// Its fields, passed on as they came.
    raw: RawHead,
    /// Whether the connection can be reused.
    keep: bool,
}

impl Head {
    fn answer<T: From<AnswerBody>>(self, conn: Conn) -> Box<Response<T>> {
        let body = AnswerBody::new(self.framing, conn, self.keep, self.raw);
        let mut response = Box::new(Response::new(T::from(body)));
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        if let Some(reason) = self.reason {
            response.extensions_mut().insert(reason);
        }
        response
    }
}

/// The answer head's length once it is all in the buffer (`buffered` bytes); `None` while it
/// may still come whole.
fn head_length(
    result: httparse::Result<usize>,
    buffered: usize,
) -> Result<Option<usize>, ExchangeError> {
    match result {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered > MAX_HEAD => Err(ExchangeError::new(
            format!("answer: head larger than {MAX_HEAD} bytes"),
            Stage::BadAnswer,
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ExchangeError::new(
            format!("answer head: {e}"),
            Stage::BadAnswer,
        )),
    }
}

/// The answer's status, which httparse reads as any three digits.
fn status_of(code: Option<u16>) -> Result<StatusCode, ExchangeError> {
    let code = code.unwrap_or(0);
    StatusCode::from_u16(code).map_err(|_| {
        ExchangeError::new(
            format!("answer head: invalid status {code}"),
            Stage::BadAnswer,
        )
    })
}

enum Parsed {
    /// The final answer's head.
    Final(Head),
    Informational,
    Partial,
}

/// Methods whose request changes nothing more when sent twice (RFC 9110 9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed head goes from the parser to its box in pieces that move without a call to
    /// `memcpy` (up to 128 bytes); built as a `Response` first, it was copied twice more on
    /// every exchange (docs/benchmarks.md, "Before and after the proxy/ reshape").
    #[test]
    fn a_parsed_head_moves_in_small_pieces() {
        let parsed = std::mem::size_of::<Result<Parsed, ExchangeError>>();
        eprintln!("a parsed head takes {parsed} bytes");
        assert!(parsed <= 128, "a parsed head takes {parsed} bytes");
    }
}
