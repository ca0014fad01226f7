//! The client side of HTTP/1, end to end over real sockets: the lean server in front of hyper's
//! (src/proxy/lean.rs) answers requests that are only a head and hands the connection to hyper
//! at the first one it does not handle. A raw client writes exact bytes and reads exactly what
//! the proxy answers: pipelining, HTTP/1.0 and `Connection`, the hand-off in the middle of a
//! connection, heads trickling in, header limits, the header-read timeout, graceful stop, HEAD
//! and the Date header.

use std::time::{Duration, Instant, SystemTime};

use kube_balancer::proxy::Http1Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::backend::Backend;
use crate::support::proxy::{Proxy, cluster_yaml};
use crate::support::raw::{Asked, Client, Conn, Member};
use crate::support::wait::WAIT;

/// A Date a member writes, which must come through unchanged.
const MEMBER_DATE: &str = "Mon, 01 Jan 2001 00:00:00 GMT";

/// A member answering `METHOD PATH BODY` with a Content-Length, and no Date header.
async fn echo_member() -> Member {
    Member::start_keep_open(|asked: &Asked| {
        let text = format!(
            "{} {} {}",
            asked.head.method(),
            asked.head.path(),
            String::from_utf8_lossy(&asked.body)
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .into_bytes()
    })
    .await
}

fn proxy_for(members: &[String]) -> Proxy {
    Proxy::start(&cluster_yaml(members, ""))
}

/// Checks the form of an IMF-fixdate, e.g. `Tue, 24 Nov 2026 08:00:00 GMT`, and that it is now.
fn assert_a_current_http_date(date: &str) {
    assert_eq!(date.len(), 29, "an IMF-fixdate has 29 characters: {date:?}");
    assert!(date.ends_with(" GMT"), "{date:?} ends with GMT");
    assert_eq!(&date[3..5], ", ", "{date:?}");
    let when = httpdate::parse_http_date(date).expect("a valid HTTP date");
    let now = SystemTime::now();
    let skew = now.duration_since(when).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(60), "{date:?} is not now");
}

// ---------------------------------------------------------------------------------------------
// 1. Pipelining.

#[tokio::test]
async fn two_gets_in_one_write_are_answered_in_order() {
    let member = echo_member().await;
    let proxy = proxy_for(&[member.url()]);
    let mut client = Client::connect(proxy.addr).await;
    client
        .write(b"GET /first HTTP/1.1\r\nHost: web\r\n\r\nGET /second HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    let first = client.answer(false).await;
    assert_eq!((first.status, first.text().as_str()), (200, "GET /first "));
    let second = client.answer(false).await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, "GET /second ")
    );
    // The connection stays open for a third.
    let third = client.get("/third").await;
    assert_eq!((third.status, third.text().as_str()), (200, "GET /third "));
    assert_eq!(member.requests(), 3);
}

/// The hand-off in the middle of a pipelined write: what follows the GET the lean server
/// answered (a POST with its body, then another GET) goes to hyper whole.
#[tokio::test]
async fn a_get_then_a_post_and_a_get_in_one_write_are_answered_in_order() {
    let member = echo_member().await;
    let proxy = proxy_for(&[member.url()]);
    let mut client = Client::connect(proxy.addr).await;
    client
        .write(
            b"GET /one HTTP/1.1\r\nHost: web\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello\
              GET /three HTTP/1.1\r\nHost: web\r\n\r\n",
        )
        .await;
    let mut texts = Vec::new();
    for _ in 0..3 {
        let answer = client.answer(false).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        texts.push(answer.text());
    }
    assert_eq!(texts, ["GET /one ", "POST /two hello", "GET /three "]);
    assert_eq!(member.requests(), 3);
}

// ---------------------------------------------------------------------------------------------
// 2, 3. HTTP/1.0 and Connection.

#[tokio::test]
async fn an_http10_request_gets_a_framed_answer_and_the_connection_closes() {
    let a = Backend::start("a").await;
    let proxy = proxy_for(&[a.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let answer = client
        .send(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n", false)
        .await;
    assert_eq!(answer.status, 200);
    assert!(answer.head.start.starts_with("HTTP/1."), "{answer:?}");
    assert_eq!(answer.head.get("content-length"), Some("1"), "{answer:?}");
    assert_eq!(answer.head.get("transfer-encoding"), None, "{answer:?}");
    assert_eq!(answer.text(), "a");
    assert_eq!(client.closed(WAIT).await, b"");
}

#[tokio::test]
async fn an_http10_keep_alive_request_is_answered_keep_alive_and_the_connection_serves_more() {
    let a = Backend::start("a").await;
    let proxy = proxy_for(&[a.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let request = b"GET / HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n";
    let first = client.send(request, false).await;
    assert_eq!((first.status, first.text().as_str()), (200, "a"));
    assert_eq!(first.head.get("content-length"), Some("1"), "{first:?}");
    assert_eq!(
        first
            .head
            .get("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive"),
        "{first:?}"
    );
    let second = client.send(request, false).await;
    assert_eq!((second.status, second.text().as_str()), (200, "a"));
    // A third without keep-alive ends it.
    let third = client
        .send(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n", false)
        .await;
    assert_eq!((third.status, third.text().as_str()), (200, "a"));
    assert_eq!(client.closed(WAIT).await, b"");
    assert_eq!(a.hits(), 3);
}

/// An HTTP/1.0 client cannot read chunks: an answer of unknown length is delimited by the close.
#[tokio::test]
async fn an_http10_keep_alive_request_to_an_answer_of_unknown_length_ends_with_the_close() {
    let member = Member::start_keep_open(|_: &Asked| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .to_vec()
    })
    .await;
    let proxy = proxy_for(&[member.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let answer = client
        .send(
            b"GET / HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n",
            false,
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(!answer.head.chunked(), "no chunks to HTTP/1.0: {answer:?}");
    assert_eq!(answer.text(), "hello world");
    assert_eq!(client.closed(WAIT).await, b"");
}

#[tokio::test]
async fn connection_close_is_answered_with_connection_close_and_the_connection_closes() {
    let a = Backend::start("a").await;
    let proxy = proxy_for(&[a.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let answer = client
        .send(
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"));
    assert_eq!(answer.head.get("connection"), Some("close"), "{answer:?}");
    assert_eq!(client.closed(WAIT).await, b"");
}

// ---------------------------------------------------------------------------------------------
// 4. Lean and hyper on one connection.

#[tokio::test]
async fn gets_and_posts_alternate_on_one_connection() {
    let a = Backend::start("a").await;
    let proxy = proxy_for(&[a.url()]);
    let mut client = Client::connect(proxy.addr).await;

    let first = client.get("/").await;
    assert_eq!((first.status, first.text().as_str()), (200, "a"));
    // A body: hyper's server takes the connection from here on.
    let second = client.post("/echo", "the first body").await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, "the first body")
    );
    let third = client.get("/").await;
    assert_eq!((third.status, third.text().as_str()), (200, "a"));
    let fourth = client.post("/echo", "a second, longer body").await;
    assert_eq!(
        (fourth.status, fourth.text().as_str()),
        (200, "a second, longer body")
    );
    for answer in [&first, &second, &third, &fourth] {
        assert_eq!(answer.head.get("x-backend"), Some("a"), "{answer:?}");
        assert_eq!(answer.head.get("connection"), None, "{answer:?}");
    }
    client.nothing_more(Duration::from_millis(100)).await;
    assert_eq!(a.hits(), 4);
}

// ---------------------------------------------------------------------------------------------
// 5. A head trickling in.

#[tokio::test]
async fn a_head_trickled_one_byte_per_write_is_answered() {
    let member = echo_member().await;
    let proxy = Proxy::start_with(&cluster_yaml(&[member.url()], ""), |options| {
        options.header_read_timeout = Duration::from_secs(5);
    });
    let mut client = Client::connect(proxy.addr).await;
    let started = Instant::now();
    // Twice: on a fresh connection, and on one that has been answered before.
    for path in ["/trickled", "/again"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: web\r\nX-Slow: yes\r\n\r\n");
        for byte in request.as_bytes() {
            client.write(std::slice::from_ref(byte)).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let answer = client.answer(false).await;
        assert_eq!(
            (answer.status, answer.text()),
            (200, format!("GET {path} "))
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4), "well in time");
    assert_eq!(member.requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. Limits and malformed heads.

/// `count` headers in all, Host among them.
fn request_with_headers(count: usize) -> Vec<u8> {
    let mut request = String::from("GET / HTTP/1.1\r\nHost: web\r\n");
    for i in 1..count {
        request.push_str(&format!("X-H-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A GET whose head is exactly `len` bytes.
fn request_of_length(len: usize) -> Vec<u8> {
    let start = b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: ";
    let end = b"\r\n\r\n";
    let mut request = start.to_vec();
    request.resize(len - end.len(), b'a');
    request.extend_from_slice(end);
    assert_eq!(request.len(), len);
    request
}

/// An answer the proxy's HTTP/1 server gives itself to a request it refuses: the status, no
/// member's, and the connection closed after it.
async fn assert_refused(client: &mut Client, request: &[u8], status: u16) {
    let answer = client.send(request, false).await;
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.head.get("x-backend"), None, "{answer:?}");
    assert_eq!(answer.head.get("connection"), Some("close"), "{answer:?}");
    assert_eq!(client.closed(WAIT).await, b"");
}

#[tokio::test]
async fn more_headers_than_max_headers_get_431_fresh_and_after_a_lean_answer() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start_with(&cluster_yaml(&[a.url()], ""), |options| {
        options.max_headers = 10;
    });
    let mut client = Client::connect(proxy.addr).await;
    let answer = client.send(&request_with_headers(10), false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"));
    // The same connection, now with one too many.
    assert_refused(&mut client, &request_with_headers(11), 431).await;

    let mut client = Client::connect(proxy.addr).await;
    assert_refused(&mut client, &request_with_headers(11), 431).await;
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_fresh_and_after_a_lean_answer() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start_with(&cluster_yaml(&[a.url()], ""), |options| {
        options.max_header_bytes = 4096;
    });
    let mut client = Client::connect(proxy.addr).await;
    let answer = client.send(&request_of_length(4000), false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"));
    assert_refused(&mut client, &request_of_length(5000), 431).await;

    let mut client = Client::connect(proxy.addr).await;
    assert_refused(&mut client, &request_of_length(5000), 431).await;

    // A head that never ends: refused once the limit is read, not waited for.
    let mut client = Client::connect(proxy.addr).await;
    let mut endless = b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: ".to_vec();
    endless.resize(4096, b'a');
    assert_refused(&mut client, &endless, 431).await;
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_malformed_request_line_gets_400_fresh_and_after_a_lean_answer() {
    let a = Backend::start("a").await;
    let proxy = proxy_for(&[a.url()]);
    let bad = b"GET / HTTX/1.1\r\nHost: web\r\n\r\n";
    let mut client = Client::connect(proxy.addr).await;
    assert_refused(&mut client, bad, 400).await;

    let mut client = Client::connect(proxy.addr).await;
    let answer = client.get("/").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"));
    assert_refused(&mut client, bad, 400).await;
    assert_eq!(a.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// 7. The header-read timeout.

fn short_header_timeout(members: &[String]) -> Proxy {
    Proxy::start_with(&cluster_yaml(members, ""), |options| {
        options.header_read_timeout = Duration::from_millis(300);
    })
}

#[tokio::test]
async fn a_head_stalled_after_an_answer_is_closed_by_the_header_read_timeout() {
    let a = Backend::start("a").await;
    let proxy = short_header_timeout(&[a.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let answer = client.get("/").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"));
    client.write(b"GET / HTTP/1.1\r\nHost: web\r\nX-Sl").await;
    let sent = Instant::now();
    assert_eq!(client.closed(Duration::from_secs(2)).await, b"");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "closed by the timer, not at once: {waited:?}"
    );
    assert_eq!(a.hits(), 1);
}

/// A request with a body moves the connection to hyper's server: a head stalled after its
/// answer is closed by the same timer. (It was not: the timer of a connection handed over was
/// never armed again, so a client could hold it open forever.)
#[tokio::test]
async fn a_head_stalled_on_a_connection_hyper_took_over_is_closed_too() {
    let a = Backend::start("a").await;
    let proxy = short_header_timeout(&[a.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let answer = client.post("/echo", "hello").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "hello"));
    client.write(b"GET / HTTP/1.1\r\nHost: web\r\nX-Sl").await;
    let sent = Instant::now();
    assert_eq!(client.closed(Duration::from_secs(2)).await, b"");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "closed by the timer, not at once: {waited:?}"
    );
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_by_the_header_read_timeout() {
    let a = Backend::start("a").await;
    let proxy = short_header_timeout(&[a.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let connected = Instant::now();
    assert_eq!(client.closed(Duration::from_secs(2)).await, b"");
    let waited = connected.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "closed by the timer, not at once: {waited:?}"
    );
    assert_eq!(a.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// 8. Graceful stop.

#[tokio::test]
async fn a_graceful_stop_closes_idle_connections_and_finishes_requests_in_flight() {
    let a = Backend::start("a").await;
    let proxy = proxy_for(&[a.url()]);
    let mut idle = Client::connect(proxy.addr).await;
    let answer = idle.get("/").await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"));

    let mut busy = Client::connect(proxy.addr).await;
    busy.write(b"GET /slow/500 HTTP/1.1\r\nHost: web\r\n\r\n")
        .await;
    // Let the request reach the member before the stop.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let grace = Duration::from_secs(2);
    let started = Instant::now();
    let stop = tokio::spawn(proxy.stop(grace));

    assert_eq!(idle.closed(WAIT).await, b"", "the idle connection closes");
    let answer = busy.answer(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "a"));
    assert_eq!(answer.head.get("connection"), Some("close"), "{answer:?}");
    assert_eq!(busy.closed(WAIT).await, b"");

    tokio::time::timeout(WAIT, stop)
        .await
        .expect("stop returns in time")
        .expect("stop does not panic");
    let took = started.elapsed();
    assert!(
        took < grace,
        "with every connection closed, stop does not wait out the grace: {took:?}"
    );
    assert_eq!(a.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// 9. HEAD.

#[tokio::test]
async fn a_head_request_gets_the_members_head_without_a_body_and_the_next_get_follows() {
    let member = Member::start_keep_open(|asked: &Asked| {
        let text = format!("{} {}", asked.head.method(), asked.head.path());
        if asked.head.method() == "HEAD" {
            // The length the GET would have, and no body.
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Member: m\r\nETag: \"v1\"\r\n\r\n".to_vec()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Member: m\r\n\r\n{text}",
                text.len()
            )
            .into_bytes()
        }
    })
    .await;
    let proxy = proxy_for(&[member.url()]);
    let mut client = Client::connect(proxy.addr).await;
    let head = client
        .send(b"HEAD /page HTTP/1.1\r\nHost: web\r\n\r\n", true)
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.head.get("content-length"), Some("11"), "{head:?}");
    assert_eq!(head.head.get("x-member"), Some("m"), "{head:?}");
    assert_eq!(head.head.get("etag"), Some("\"v1\""), "{head:?}");
    assert_eq!(head.head.get("transfer-encoding"), None, "{head:?}");
    // No body bytes follow the head.
    client.nothing_more(Duration::from_millis(200)).await;
    let get = client.get("/page").await;
    assert_eq!((get.status, get.text().as_str()), (200, "GET /page"));
    assert_eq!(get.head.get("x-member"), Some("m"));

    // The same through hyper's server, after a request with a body.
    let posted = client.post("/form", "x").await;
    assert_eq!(posted.status, 200);
    let head = client
        .send(b"HEAD /page HTTP/1.1\r\nHost: web\r\n\r\n", true)
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.head.get("x-member"), Some("m"), "{head:?}");
    client.nothing_more(Duration::from_millis(200)).await;
    let get = client.get("/page").await;
    assert_eq!((get.status, get.text().as_str()), (200, "GET /page"));
    assert_eq!(member.requests(), 5);
}

// ---------------------------------------------------------------------------------------------
// 10. Date.

#[tokio::test]
async fn the_proxy_adds_a_date_when_the_member_sends_none_and_keeps_the_members_own() {
    let member = Member::start_keep_open(|asked: &Asked| {
        let date = if asked.head.path() == "/dated" {
            format!("Date: {MEMBER_DATE}\r\n")
        } else {
            String::new()
        };
        format!("HTTP/1.1 200 OK\r\n{date}Content-Length: 2\r\n\r\nok").into_bytes()
    })
    .await;
    let proxy = proxy_for(&[member.url()]);
    let mut client = Client::connect(proxy.addr).await;
    for round in ["the lean server", "hyper's server"] {
        let undated = client.get("/undated").await;
        assert_eq!((undated.status, undated.text().as_str()), (200, "ok"));
        let date = undated
            .head
            .get("date")
            .unwrap_or_else(|| panic!("{round}: a Date is added: {undated:?}"));
        assert_a_current_http_date(date);

        let dated = client.get("/dated").await;
        assert_eq!((dated.status, dated.text().as_str()), (200, "ok"));
        assert_eq!(
            dated.head.get("date"),
            Some(MEMBER_DATE),
            "{round}: the member's Date is kept: {dated:?}"
        );
        // A body hands the connection to hyper for the second round.
        let posted = client.post("/undated", "x").await;
        assert_eq!(posted.status, 200);
    }
    assert_eq!(member.requests(), 6);
}

/// A client that gives up while its request is at the member: the request is dropped, and with
/// it the member connection (nginx's default; hyper's server did the same), instead of waiting
/// for an answer nobody reads until the response timeout (60 s by default).
#[tokio::test]
async fn a_client_that_closes_while_its_request_is_at_the_member_drops_the_request() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a member");
    let member_addr = listener.local_addr().expect("member address");
    // The member reads the request, never answers, and reports when the proxy closes on it.
    let member = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("the proxy connects");
        let mut conn = Conn::new(stream);
        let head = conn
            .read_head()
            .await
            .expect("a request head")
            .expect("not closed");
        let asked_at = Instant::now();
        let mut rest = [0u8; 64];
        let closed =
            tokio::time::timeout(Duration::from_secs(5), conn.stream.read(&mut rest)).await;
        (
            head.start,
            closed.map(|r| r.unwrap_or(0)),
            asked_at.elapsed(),
        )
    });
    let proxy = proxy_for(&[format!("http://{member_addr}")]);
    let mut client = TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the proxy");
    client
        .write_all(b"GET /never HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("send the request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    let (start, closed, after) = tokio::time::timeout(WAIT, member)
        .await
        .expect("the member finishes in time")
        .expect("the member task");
    assert_eq!(start, "GET /never HTTP/1.1");
    assert_eq!(
        closed.ok(),
        Some(0),
        "the proxy closed the member connection (EOF) within 5 s of the request"
    );
    assert!(after < Duration::from_secs(5), "closed after {after:?}");
}

/// A connection that closes after its answer sends the answer's last bytes and its FIN in one
/// segment (the lean server's `write_last`). The client counts the segments it received that
/// carried no data (`ss -ti` on its socket, read while it waits to close): the SYN-ACK and the
/// proxy's acknowledgement of the request. A FIN of its own would be one more, as hyper's server
/// (`--http1 hyper`), which closes the ordinary way, sends.
#[tokio::test]
async fn a_closing_answer_leaves_with_its_fin_in_one_segment() {
    let a = Backend::start("a").await;
    for (mode, expected) in [(Http1Mode::Fast, 2), (Http1Mode::Hyper, 3)] {
        let proxy = Proxy::start_with(&cluster_yaml(&[a.url()], ""), |o| o.http1 = mode);
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connects");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .await
            .expect("writes");
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .expect("the proxy closes")
            .expect("reads");
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{answer:?}");
        let (segments, with_data) = segments_in(&stream);
        assert_eq!(with_data, 1, "{mode:?}: the answer in one segment");
        assert_eq!(
            segments - with_data,
            expected,
            "{mode:?}: segments without data"
        );
    }
}

/// The segments a socket received, and how many of them carried data (`ss`'s `segs_in` and
/// `data_segs_in`), while it waits to close.
fn segments_in(stream: &TcpStream) -> (u64, u64) {
    let port = stream.local_addr().expect("an address").port();
    let filter = format!("sport = :{port}");
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "close-wait", &filter])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} for port {port} in {text:?}"))
    };
    (field("segs_in:"), field("data_segs_in:"))
}
