//! The shapes of a member's HTTP/1 answer, end to end: scripted members on raw sockets write
//! exact bytes (chunked with extensions and trailers, close-delimited, bodyless statuses,
//! informational answers, malformed and truncated heads and bodies), and a raw client reads
//! exactly what the proxy makes of them. Members count the connections they accept and the
//! requests they read, so connection reuse is asserted exactly.

use std::io;
use std::time::Duration;

use kube_balancer::proxy::Http1Mode;

use crate::support::proxy::{Proxy, cluster_yaml, http1};
use crate::support::raw::{After, Answer, Asked, Client, Member, ok, reply};

/// The proxy's own text for a broken exchange (src/proxy/error.rs).
const BAD_GATEWAY_TEXT: &str = "502 Bad Gateway: the member failed to answer\n";

/// `len` bytes that are not a repetition of a short pattern: misplaced or lost ranges show.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn start_proxy(member: &Member) -> Proxy {
    Proxy::start(&cluster_yaml(&[member.url()], ""))
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Chunk extensions are ignored and the trailer section ends the body like the last chunk does:
/// the member connection must go back to the pool either way.
#[tokio::test]
async fn chunked_answer_with_extension_and_trailers_is_passed_whole_and_reused() {
    let member = Member::start(|asked: &Asked| {
        let text = format!("{:x}\r\nnumber {}\r\n", 7 + asked.number.to_string().len(), asked.number);
        let bytes = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
             5;ext=1\r\nhello\r\n1\r\n \r\nb;a=b;c=\"d\"\r\nworld, full\r\n{text}0\r\nX-Sum: 42\r\nX-Other: x\r\n\r\n"
        );
        reply(bytes, After::KeepOpen)
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let first = client.get("/one").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello world, fullnumber 1");
    let second = client.get("/two").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "hello world, fullnumber 2");
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

/// The same through hyper's client, which carries requests with a body.
#[tokio::test]
async fn chunked_answer_with_trailers_to_a_post_is_passed_whole_and_reused() {
    let member = Member::start(|asked: &Asked| {
        let body = String::from_utf8_lossy(&asked.body).into_owned();
        let bytes = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\nX-Sum: 42\r\n\r\n",
            body.len()
        );
        reply(bytes, After::KeepOpen)
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    for text in ["first post", "second post"] {
        let request = format!(
            "POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        let answer = client.send(request.as_bytes(), false).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, text));
    }
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

#[tokio::test]
async fn close_delimited_answer_is_passed_whole_and_the_next_request_reconnects() {
    let member = Member::start(|asked: &Asked| {
        let bytes = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the member closes, answer {}",
            asked.number
        );
        reply(bytes, After::Close)
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let first = client.get("/one").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "until the member closes, answer 1");
    // The proxy frames it for its client: the client connection stays usable.
    let second = client.get("/two").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "until the member closes, answer 2");
    assert_eq!((member.accepts(), member.requests()), (2, 2));
}

#[tokio::test]
async fn content_length_answers_reuse_one_member_connection() {
    let member =
        Member::start(|asked: &Asked| ok(format!("answer {}", asked.number).as_bytes())).await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    for n in 1..=5 {
        let answer = client.get(&format!("/r{n}")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.head.get("content-length"), Some("8"));
        assert_eq!(answer.text(), format!("answer {n}"));
    }
    assert_eq!((member.accepts(), member.requests()), (1, 5));
}

#[tokio::test]
async fn head_answer_with_content_length_has_no_body_and_the_connection_is_reused() {
    let member = Member::start(|asked: &Asked| {
        if asked.head.start.starts_with("HEAD ") {
            reply(
                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Head: yes\r\n\r\n",
                After::KeepOpen,
            )
        } else {
            ok(b"after the head")
        }
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let head = client
        .send(b"HEAD /doc HTTP/1.1\r\nHost: web\r\n\r\n", true)
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.head.get("content-length"), Some("100"));
    assert_eq!(head.head.get("x-head"), Some("yes"));
    // Nothing follows the head: the next answer's status line comes first.
    let get = client.get("/doc").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.text(), "after the head");
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

#[tokio::test]
async fn no_content_and_not_modified_pass_through_and_the_connection_is_reused() {
    let member = Member::start(|asked: &Asked| match asked.head.path() {
        "/204" => reply(
            "HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
            After::KeepOpen,
        ),
        "/304" => reply(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
            After::KeepOpen,
        ),
        _ => ok(b"a body after two without"),
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let none = client.get("/204").await;
    assert_eq!(none.status, 204);
    assert_eq!(none.head.get("x-kind"), Some("none"));
    let not_modified = client.get("/304").await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.head.get("etag"), Some("\"v1\""));
    assert_eq!((member.accepts(), member.requests()), (1, 2));
    // The framing stayed in step on both sides.
    let full = client.get("/ok").await;
    assert_eq!(full.status, 200);
    assert_eq!(full.text(), "a body after two without");
    assert_eq!((member.accepts(), member.requests()), (1, 3));
}

#[tokio::test]
async fn early_hints_before_the_final_answer_leave_it_intact() {
    let member = Member::start(|asked: &Asked| {
        let body = format!("final answer {}", asked.number);
        let bytes = format!(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Final: yes\r\n\r\n{body}",
            body.len()
        );
        reply(bytes, After::KeepOpen)
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let first = client.get("/page").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.head.get("x-final"), Some("yes"));
    assert_eq!(first.text(), "final answer 1");
    // Whether or not the 103 is forwarded, only 103s may come before the final answer.
    assert!(
        first.interim.iter().all(|s| *s == 103),
        "{:?}",
        first.interim
    );
    let second = client.get("/page").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "final answer 2");
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

#[tokio::test]
async fn connection_close_answer_makes_the_next_request_reconnect() {
    let member = Member::start(|asked: &Asked| {
        let body = format!("closing after {}", asked.number);
        let bytes = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        reply(bytes, After::Close)
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let first = client.get("/one").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "closing after 1");
    // The member's Connection: close is about its own connection, not the client's.
    let second = client.get("/two").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "closing after 2");
    assert_eq!((member.accepts(), member.requests()), (2, 2));
}

#[tokio::test]
async fn a_pooled_connection_the_member_closed_while_idle_is_not_used() {
    let member = Member::start(|asked: &Asked| {
        let mut answer = ok(format!("idle then closed {}", asked.number).as_bytes());
        answer.after = After::IdleThenClose(Duration::from_millis(100));
        answer
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let first = client.get("/one").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "idle then closed 1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client.get("/two").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "idle then closed 2");
    assert_eq!((member.accepts(), member.requests()), (2, 2));
}

/// A response head of more than 1 MiB: sixteen header lines of 64 KiB and change.
fn huge_head() -> Vec<u8> {
    let value = "v".repeat(64 * 1024 + 100);
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..16 {
        head.push_str(&format!("X-Big-{i}: {value}\r\n"));
    }
    head.push_str("Content-Length: 2\r\n\r\nno");
    assert!(head.len() > 1024 * 1024);
    head.into_bytes()
}

#[tokio::test]
async fn malformed_answers_give_502_and_the_proxy_keeps_serving() {
    let member = Member::start(|asked: &Asked| match asked.head.path() {
        "/bad-status-line" => reply(
            "HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
            After::Close,
        ),
        "/two-lengths" => reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            After::Close,
        ),
        "/huge-head" => reply(huge_head(), After::Close),
        _ => ok(b"healthy"),
    })
    .await;
    let proxy = start_proxy(&member);
    let mut accepts = 0;
    for (i, path) in ["/bad-status-line", "/two-lengths", "/huge-head"]
        .into_iter()
        .enumerate()
    {
        let mut client = Client::connect(proxy.addr).await;
        let answer = client.get(path).await;
        assert_eq!(answer.status, 502, "{path}: {answer:?}");
        assert_eq!(answer.text(), BAD_GATEWAY_TEXT, "{path}");
        // The malformed exchange's connection went first (new the first time, pooled after).
        if i == 0 {
            accepts += 1;
        }
        assert_eq!(member.accepts(), accepts, "{path}");
        // The connection that carried it is not reused: the next request opens a new one.
        let mut client = Client::connect(proxy.addr).await;
        let healthy = client.get("/healthy").await;
        assert_eq!(healthy.status, 200, "after {path}");
        assert_eq!(healthy.text(), "healthy", "after {path}");
        accepts += 1;
        assert_eq!(member.accepts(), accepts, "after {path}");
    }
    assert_eq!(member.requests(), 6);
}

#[tokio::test]
async fn a_truncated_body_is_not_passed_as_complete() {
    let member = Member::start(|asked: &Asked| match asked.head.path() {
        "/truncated" => reply(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            After::Close,
        ),
        _ => ok(b"whole"),
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let answer = client
        .try_send(
            b"GET /truncated HTTP/1.1\r\nHost: web\r\n\r\n",
            false,
            Duration::from_secs(5),
        )
        .await;
    match answer {
        // A 200 may have started; then the client connection must be cut, not left hanging.
        Err(e) => assert_ne!(
            e.kind(),
            io::ErrorKind::TimedOut,
            "the proxy neither finished nor cut the answer"
        ),
        Ok(answer) => assert!(
            answer.status != 200 || answer.body.len() != 100,
            "a truncated body was passed as complete: {answer:?}"
        ),
    }
    let mut client = Client::connect(proxy.addr).await;
    let next = client.get("/whole").await;
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "whole");
    assert_eq!((member.accepts(), member.requests()), (2, 2));
}

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn one_mebibyte_bodies_arrive_exactly_with_either_framing() {
    let fixed = noise(MIB, 1);
    let chunked = noise(MIB, 2);
    let mut chunked_wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut state: usize = 7;
    let mut at = 0;
    while at < chunked.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345) % 2_147_483_648;
        let size = (1 + state % 8191).min(chunked.len() - at);
        chunked_wire.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        chunked_wire.extend_from_slice(&chunked[at..at + size]);
        chunked_wire.extend_from_slice(b"\r\n");
        at += size;
    }
    chunked_wire.extend_from_slice(b"0\r\n\r\n");
    let (fixed_body, chunked_copy) = (fixed.clone(), chunked_wire.clone());
    let member = Member::start(move |asked: &Asked| match asked.head.path() {
        "/fixed" => ok(&fixed_body),
        _ => reply(chunked_copy.clone(), After::KeepOpen),
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    let answer = client.get("/fixed").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), MIB);
    assert!(answer.body == fixed, "the Content-Length body differs");
    let answer = client.get("/chunked").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), MIB);
    assert!(answer.body == chunked, "the chunked body differs");
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

#[tokio::test]
async fn hop_by_hop_answer_headers_stay_behind() {
    let member = Member::start(|_: &Asked| {
        reply(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
             Keep-Alive: timeout=5\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n\
             4\r\nbody\r\n0\r\n\r\n",
            After::KeepOpen,
        )
    })
    .await;
    let proxy = start_proxy(&member);
    let check = |answer: &Answer| {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "body");
        assert_eq!(answer.head.get("x-kept"), Some("yes"));
        assert_eq!(answer.head.get("x-private"), None, "{answer:?}");
        assert_eq!(answer.head.get("keep-alive"), None, "{answer:?}");
        for value in answer.head.all("connection") {
            assert!(
                !value.to_ascii_lowercase().contains("x-private"),
                "{answer:?}"
            );
        }
    };
    // HTTP/1.1: the proxy may chunk the body itself, once.
    let mut client = Client::connect(proxy.addr).await;
    let answer = client.get("/").await;
    check(&answer);
    assert!(
        answer.head.all("transfer-encoding").len() <= 1,
        "{answer:?}"
    );
    // HTTP/1.0 has no chunked coding: a forwarded Transfer-Encoding would show as it is.
    let mut client = Client::connect(proxy.addr).await;
    let answer = client
        .send(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n", false)
        .await;
    check(&answer);
    assert_eq!(answer.head.get("transfer-encoding"), None, "{answer:?}");
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

/// The member's fields go on as the member wrote them (names in their case, repeated fields as
/// separate lines in order) to an HTTP/1 client, and through a header map to an HTTP/2 one;
/// hop-by-hop fields stay behind for both, and the proxy's own (an inserted sticky cookie) come
/// after the member's.
#[tokio::test]
async fn member_fields_pass_on_as_written_with_the_proxys_own_after_them() {
    let member = Member::start(|_: &Asked| {
        reply(
            "HTTP/1.1 200 OK\r\nX-Mixed-Case: Value\r\nSet-Cookie: a=1\r\nConnection: X-Private\r\n\
             X-Private: 1\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nSet-Cookie: b=2\r\n\
             Content-Length: 2\r\n\r\nok",
            After::KeepOpen,
        )
    })
    .await;
    let proxy = Proxy::start(&cluster_yaml(
        &[member.url()],
        "  stickySession: {cookie: ROUTEID, insert: true}",
    ));
    let cookies_in_order = |cookies: &[&str]| {
        assert_eq!(cookies.len(), 3, "{cookies:?}");
        assert_eq!(&cookies[..2], ["a=1", "b=2"]);
        assert!(cookies[2].starts_with("ROUTEID="), "{cookies:?}");
    };

    let mut client = Client::connect(proxy.addr).await;
    let answer = client.get("/").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "ok"));
    // With --http1 hyper the answer is written from a header map: names in lower case.
    let as_written = match http1() {
        Http1Mode::Fast => "\r\nX-Mixed-Case: Value\r\n",
        Http1Mode::Hyper => "\r\nx-mixed-case: Value\r\n",
    };
    assert!(answer.head.text.contains(as_written), "{answer:?}");
    cookies_in_order(&answer.head.all("set-cookie"));
    for gone in ["x-private", "upgrade", "proxy-connection"] {
        assert_eq!(answer.head.get(gone), None, "{gone}: {answer:?}");
    }
    assert_eq!(answer.head.all("content-length"), ["2"]);

    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake with prior knowledge");
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/", proxy.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("an answer");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-mixed-case"], "Value");
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("text"))
        .collect();
    cookies_in_order(&cookies);
    for gone in ["x-private", "upgrade", "proxy-connection", "connection"] {
        assert!(!headers.contains_key(gone), "{gone}: {headers:?}");
    }
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("the body")
        .to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

#[tokio::test]
async fn a_posted_body_is_echoed_exactly_then_a_get_follows() {
    let member = Member::start(|asked: &Asked| {
        if asked.head.start.starts_with("POST ") {
            ok(&asked.body)
        } else {
            ok(b"plain get")
        }
    })
    .await;
    let proxy = start_proxy(&member);
    let body = noise(64 * 1024, 3);
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: web\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut client = Client::connect(proxy.addr).await;
    let echo = client.send(&request, false).await;
    assert_eq!(echo.status, 200);
    assert_eq!(echo.body.len(), body.len());
    assert!(echo.body == body, "the echoed body differs");
    let get = client.get("/after").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.text(), "plain get");
    // A request with a body goes through hyper's client and one without through the lean
    // exchange (docs/benchmarks.md): each kind keeps its own member connection, and reuses it.
    let echo = client.send(&request, false).await;
    assert!(
        echo.status == 200 && echo.body == body,
        "the second echo differs"
    );
    let get = client.get("/again").await;
    assert_eq!(get.text(), "plain get");
    // With --http1 hyper, hyper's client carries both kinds on one connection.
    let connections = match http1() {
        Http1Mode::Fast => 2,
        Http1Mode::Hyper => 1,
    };
    assert_eq!((member.accepts(), member.requests()), (connections, 4));
}

#[tokio::test]
async fn a_get_on_a_pooled_connection_the_member_closes_unanswered_is_sent_again() {
    // The member reads the second request and closes the connection without a byte of answer
    // (as when its idle timeout strikes while the request is on its way).
    let member = Member::start(|asked: &Asked| {
        if asked.number == 2 {
            reply(Vec::new(), After::Close)
        } else {
            ok(format!("answer {}", asked.number).as_bytes())
        }
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("/one").await.text(), "answer 1");
    let again = client.get("/two").await;
    assert_eq!((again.status, again.text().as_str()), (200, "answer 3"));
    assert_eq!((member.accepts(), member.requests()), (2, 3));
    // Not the member's fault: it keeps serving, on the new connection.
    assert_eq!(client.get("/three").await.text(), "answer 4");
    assert_eq!((member.accepts(), member.requests()), (2, 4));
}

#[tokio::test]
async fn a_post_on_a_pooled_connection_the_member_closes_unanswered_is_not_sent_again() {
    let member = Member::start(|asked: &Asked| {
        if asked.number == 2 {
            reply(Vec::new(), After::Close)
        } else {
            ok(b"done")
        }
    })
    .await;
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("/one").await.text(), "done");
    // A POST may have been acted on: it is not repeated (as nginx's proxy_next_upstream).
    let post = client
        .send(
            b"POST /order HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
    assert_eq!((post.status, post.text().as_str()), (502, BAD_GATEWAY_TEXT));
    assert_eq!((member.accepts(), member.requests()), (1, 2));
}

/// A body-less request's field lines reach the member as the client wrote them: names in their
/// case, repeated fields as separate lines in order, the space after a colon as written; the
/// hop-by-hop fields and those its Connection header names stay behind; the proxy's
/// X-Forwarded-* fields come after. A cluster that reads fields to choose a member (hashing
/// here) gets the same fields, through the header map (names in lower case).
#[tokio::test]
async fn request_fields_reach_the_member_as_written_less_the_hop_by_hop_ones() {
    // The member answers with the head it read.
    let member = Member::start(|asked: &Asked| {
        let text = &asked.head.text;
        reply(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            ),
            After::KeepOpen,
        )
    })
    .await;
    let request = b"GET /fields?a=1 HTTP/1.1\r\nHost: web\r\nX-Mixed-Case: One\r\n\
                    Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n\
                    TE: trailers\r\nProxy-Authorization: Basic eDp5\r\nAccept:  */*  \r\n\
                    X-Mixed-Case: Two\r\n\r\n";
    let forwarded = "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
                     x-forwarded-host: web\r\n\r\n";

    let through_a_map = format!(
        "GET /fields?a=1 HTTP/1.1\r\nhost: web\r\nx-mixed-case: One\r\nx-mixed-case: Two\r\n\
         accept: */*\r\n{forwarded}"
    );
    let proxy = start_proxy(&member);
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..2 {
        let answer = client.send(request, false).await;
        assert_eq!(answer.status, 200);
        // With --http1 hyper every request goes through hyper's server: a header map.
        let expected = match http1() {
            Http1Mode::Fast => format!(
                "GET /fields?a=1 HTTP/1.1\r\nHost: web\r\nX-Mixed-Case: One\r\nAccept:  */*\r\n\
                 X-Mixed-Case: Two\r\n{forwarded}"
            ),
            Http1Mode::Hyper => through_a_map.clone(),
        };
        assert_eq!(answer.text(), expected);
    }

    let hashed = Proxy::start(&cluster_yaml(
        &[member.url()],
        "  lbMethod: hash\n  hash: {key: Header, name: X-Mixed-Case}",
    ));
    let mut client = Client::connect(hashed.addr).await;
    let answer = client.send(request, false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), through_a_map);
    assert_eq!((member.accepts(), member.requests()), (2, 3));
}
