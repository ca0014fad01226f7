//! Differential checks: the same bytes go to the lean HTTP/1 code and to hyper's, and both must
//! come to the same verdict. This is what keeps the fast path a guarded optimisation rather than
//! a second HTTP stack that drifts: where the lean code takes a request or an answer, it must
//! take it exactly as hyper would; where hyper refuses, the lean code must refuse or hand over.
//!
//! - Requests ([`request`]): when the lean server takes a head, hyper's server must take the
//!   same method, target, version and fields, with no body, and keep the connection alike. A
//!   head the lean server hands over is hyper's by construction.
//! - Answers ([`answer`]): a member's answer read by the lean client and by hyper's client over
//!   real loopback sockets: the same status, end-to-end fields, body and trailers, or both
//!   refused.
//!
//! Used by the property tests below, and by the `cargo fuzz` targets in `fuzz/` (feature
//! `fuzzing`), whose corpora replay in `cargo test`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::answer::AnswerBody;
use super::conn::{Conn, MAX_HEAD};
use super::field::{Field, field, names_other_fields};
use super::parse::{Limits, Parsed, parse};

/// The limits both servers are given.
const LIMITS: Limits = Limits {
    max_headers: 100,
    max_head_bytes: 64 * 1024,
};

/// A request that follows the one under test, to see whether the connection was kept.
const SECOND: &[u8] = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n";

/// How long either side may take over one input.
const PATIENCE: Duration = Duration::from_secs(5);

/// What a server made of a request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    version: http::Version,
    /// Every field, lower-case name and value, in order.
    fields: Vec<(String, Vec<u8>)>,
}

/// Checks one request: `Err` names the difference.
pub fn request(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > LIMITS.max_head_bytes {
        return Ok(());
    }
    let mut buf = BytesMut::from(bytes);
    let lean = match parse(&mut buf, LIMITS, |line, lean| (line, lean)) {
        // Handed over: hyper's by construction.
        Parsed::Other => return Ok(()),
        Parsed::Partial => None,
        Parsed::Request((line, lean)) => {
            let mut map = HeaderMap::new();
            lean.fields.fill(&mut map);
            let mut fields = fields_of(&map);
            // The lean head keeps only end-to-end fields; hyper's map has them all.
            fields.sort();
            let head = Head {
                method: line.method.to_string(),
                target: line.uri.to_string(),
                version: line.version,
                fields,
            };
            Some((head, line.keep_alive, buf.is_empty()))
        }
    };
    let hyper = runtime()?.block_on(hyper_request(bytes))?;
    match (lean, hyper) {
        (None, None) => Ok(()),
        (None, Some(h)) => Err(format!("lean waits for more, hyper took {h:?}")),
        (Some((l, _, _)), None) => Err(format!("lean took {l:?}, hyper did not")),
        (Some((mut l, keep, alone)), Some((mut h, body, second))) => {
            passed_on(&mut h.fields);
            h.fields.sort();
            l.fields.retain(|(name, _)| end_to_end(name));
            if l != h {
                return Err(format!("lean {l:?}, hyper {h:?}"));
            }
            if !body.is_empty() {
                return Err(format!("lean saw no body, hyper {body:?}"));
            }
            if alone && keep != second {
                return Err(format!(
                    "lean keeps the connection: {keep}, hyper: {second}"
                ));
            }
            Ok(())
        }
    }
}

/// The fields as a proxy passes them on: without the hop-by-hop ones and those the Connection
/// field names.
fn passed_on(fields: &mut Vec<(String, Vec<u8>)>) {
    let named: Vec<String> = fields
        .iter()
        .filter(|(name, _)| name == "connection")
        .flat_map(|(_, value)| names_other_fields(value).map(|n| n.to_ascii_lowercase()))
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    fields.retain(|(name, _)| end_to_end(name) && !named.contains(name));
}

fn end_to_end(name: &str) -> bool {
    !matches!(field(name.as_bytes()), Field::HopByHop(_))
}

fn fields_of(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// What hyper's server made of `bytes` followed by a second request: the first request's head,
/// its body, and whether the second was served.
async fn hyper_request(bytes: &[u8]) -> Result<Option<(Head, Bytes, bool)>, String> {
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes());
            let head = Head {
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                version: parts.version,
                fields: fields_of(&parts.headers),
            };
            let _ = tx.send((head, body.unwrap_or_default()));
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Half-close: the client's end of input must not stop the second request, already read.
    builder
        .half_close(true)
        .max_headers(LIMITS.max_headers)
        .max_buf_size(LIMITS.max_head_bytes.max(8192));
    let serving = tokio::spawn(builder.serve_connection(TokioIo::new(server), service));
    let written = async {
        client.write_all(bytes).await?;
        client.write_all(SECOND).await?;
        client.shutdown().await?;
        let mut sink = Vec::new();
        client.read_to_end(&mut sink).await
    };
    let _ = tokio::time::timeout(PATIENCE, written).await;
    let _ = tokio::time::timeout(PATIENCE, serving).await;
    let first = rx.try_recv().ok();
    let second = rx
        .try_recv()
        .is_ok_and(|(head, _)| head.target == "/second");
    Ok(first.map(|(head, body)| (head, body, second)))
}

/// What a client made of a member's answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

/// Checks one answer of a member to `GET /`: `Err` names the difference.
pub fn answer(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_HEAD / 2 {
        return Ok(());
    }
    runtime()?.block_on(async {
        let member = Member::start(bytes.to_vec()).await?;
        let lean = tokio::time::timeout(PATIENCE, lean_answer(&member)).await;
        let hyper = tokio::time::timeout(PATIENCE, hyper_answer(&member)).await;
        match (lean, hyper) {
            (Ok(lean), Ok(hyper)) => compare(lean, hyper),
            // Waiting forever is a verdict too, if both do.
            (Err(_), Err(_)) => Ok(()),
            (lean, hyper) => Err(format!("lean {lean:?}, hyper {hyper:?}")),
        }
    })
}

fn compare(lean: Result<Answer, String>, hyper: Result<Answer, String>) -> Result<(), String> {
    match (lean, hyper) {
        (Err(_), Err(_)) => Ok(()),
        (Ok(mut l), Ok(mut h)) => {
            passed_on(&mut h.fields);
            for a in [&mut l, &mut h] {
                a.fields.sort();
                a.trailers.sort();
            }
            if l == h {
                Ok(())
            } else {
                Err(format!("lean {l:?}, hyper {h:?}"))
            }
        }
        (l, h) => Err(format!("lean {l:?}, hyper {h:?}")),
    }
}

/// A member on loopback that answers every connection's first request with the same bytes,
/// then closes.
struct Member {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    async fn start(answer: Vec<u8>) -> Result<Member, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("address: {e}"))?;
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(&answer).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok(Member { addr, task })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn get() -> Request<()> {
    let mut req = Request::new(());
    *req.uri_mut() = http::Uri::from_static("/");
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("member"));
    req
}

async fn lean_answer(member: &Member) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect(member.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let response = Conn::new(stream)
        .send::<_, AnswerBody>(&get(), None, std::iter::empty())
        .await
        .map_err(|e| e.cause)?;
    let (parts, mut body) = response.into_parts();
    let mut map = HeaderMap::new();
    if let Some(raw) = body.take_raw_head() {
        raw.fill(&mut map);
    }
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    Ok(answer_of(parts.status.as_u16(), &map, collected))
}

async fn hyper_answer(member: &Member) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect(member.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = get().map(|()| http_body_util::Empty::<Bytes>::new());
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    Ok(answer_of(parts.status.as_u16(), &parts.headers, collected))
}

fn answer_of(status: u16, map: &HeaderMap, body: http_body_util::Collected<Bytes>) -> Answer {
    let trailers = body.trailers().map(fields_of).unwrap_or_default();
    Answer {
        status,
        fields: fields_of(map),
        body: body.to_bytes().to_vec(),
        trailers,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The request-smuggling cases of RFC 9112 and the odd heads around them.
    #[test]
    fn smuggling_cases_get_the_same_verdict() {
        for head in [
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length:  0 \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF1\r\n",
            "GET / HTTP/1.1\nHost: a\n\n",
            "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX\x01: y\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Null: a\0b\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            request(head.as_bytes()).unwrap_or_else(|e| panic!("{head:?}: {e}"));
        }
    }

    /// The answer framings of RFC 9112 6.3 and their broken forms.
    #[test]
    fn answer_framings_get_the_same_verdict() {
        for answer_text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nuntil close",
            "HTTP/1.1 200 OK\r\n\r\nuntil close",
            "HTTP/1.0 200 OK\r\n\r\nuntil close",
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Space : a\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 2000 Odd\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
            "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            "",
            "HTTP/1.1 200 OK\r\nContent-Le",
        ] {
            answer(answer_text.as_bytes()).unwrap_or_else(|e| panic!("{answer_text:?}: {e}"));
        }
    }

    /// The inputs the fuzz targets kept (fuzz/corpus): every one still gets the same verdict.
    #[test]
    fn the_fuzz_corpora_replay() {
        let corpus = |target: &str| {
            let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target);
            let mut inputs: Vec<_> = std::fs::read_dir(&folder)
                .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
                .map(|entry| std::fs::read(entry.expect("an entry").path()).expect("readable"))
                .collect();
            inputs.sort();
            inputs
        };
        let requests = corpus("http1_request");
        assert!(requests.len() >= 20, "{} inputs", requests.len());
        for input in requests {
            request(&input)
                .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&input)));
        }
        let answers = corpus("http1_answer");
        assert!(answers.len() >= 20, "{} inputs", answers.len());
        for input in answers {
            answer(&input).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&input)));
        }
    }

    fn request_line() -> impl Strategy<Value = String> {
        let method = prop::sample::select(vec![
            "GET", "HEAD", "DELETE", "OPTIONS", "POST", "PURGE", "get",
        ]);
        let target =
            prop::sample::select(vec!["/", "/a?b=c", "*", "http://h:8/x?y", "//x", "/%41"]);
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "]);
        (method, target, version).prop_map(|(m, t, v)| format!("{m} {t} {v}"))
    }

    fn field_line() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            "Host",
            "host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Keep-Alive",
            "X-A",
            "x-a",
            "Expect",
            "Upgrade",
            "TE",
            "X-Forwarded-For",
            "Bad Name",
            "",
        ]);
        let colon = prop::sample::select(vec![": ", ":", " : ", ":\t", ":  "]);
        let value = prop::sample::select(vec![
            "a",
            "0",
            "5",
            "0, 0",
            "chunked",
            "gzip, chunked",
            "close",
            "keep-alive",
            "keep-alive, x-a",
            "100-continue",
            "websocket",
            "one\r\n two",
            "caf\u{e9}",
            " padded ",
            "",
        ]);
        (name, colon, value).prop_map(|(n, c, v)| format!("{n}{c}{v}"))
    }

    fn answer_bytes() -> impl Strategy<Value = String> {
        let status = prop::sample::select(vec![
            "HTTP/1.1 200 OK",
            "HTTP/1.0 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 404 Gone Fishing",
            "HTTP/1.1 200",
        ]);
        let fields = prop::collection::vec(
            prop::sample::select(vec![
                "Content-Length: 5",
                "Content-Length: 5, 5",
                "Content-Length: 6",
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: gzip",
                "Connection: close",
                "Connection: keep-alive, X-P",
                "X-P: private",
                "Set-Cookie: a=1",
                "Set-Cookie: b=2",
                "Keep-Alive: timeout=5",
                "X-Folded: a\r\n b",
            ]),
            0..5,
        );
        let body = prop::sample::select(vec![
            "",
            "hello",
            "5\r\nhello\r\n0\r\n\r\n",
            "5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            "5\nhello\n0\n\n",
            "FFFFFFFFFFFFFFFF1\r\nx",
        ]);
        (status, fields, body).prop_map(|(s, f, b)| {
            format!(
                "{s}\r\n{}\r\n{b}",
                f.iter().map(|l| format!("{l}\r\n")).collect::<String>()
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_lean_server_takes_what_hyper_takes(
            line in request_line(),
            fields in prop::collection::vec(field_line(), 0..6),
            bare_lf in any::<bool>(),
        ) {
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let mut text = format!("{line}{eol}");
            for f in &fields {
                text.push_str(f);
                text.push_str(eol);
            }
            text.push_str(eol);
            prop_assert_eq!(request(text.as_bytes()), Ok(()), "{:?}", text);
        }

        #[test]
        fn the_lean_client_reads_answers_as_hyper_does(text in answer_bytes()) {
            prop_assert_eq!(answer(text.as_bytes()), Ok(()), "{:?}", text);
        }
    }
}
