//! The reverse proxy's protocol behaviour, end to end: WebSocket tunnels, HTTP/2 with prior
//! knowledge, streaming bodies, hop-by-hop headers, request-head limits, and the refusal to act
//! as a forward proxy. Real sockets on 127.0.0.1, real clients, real backends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Barrier, Mutex, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::support::backend::{Backend, WsEcho, header_lines};
use crate::support::client::{Answer, Body, client, full, get, read};
use crate::support::proxy::{Proxy, cluster_yaml};
use crate::support::raw;
use crate::support::wait::{WAIT as LIMIT, within};

fn parse(yaml: &str) -> Vec<kube_balancer::discovery::ClusterConfig> {
    kube_balancer::standalone::parse("test.yaml", yaml).expect("valid test configuration")
}

/// A streaming request or response body fed from a channel, one frame per message.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, hyper::Error>(Frame::data(bytes)), rx))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

// --- 1. WebSocket ----------------------------------------------------------------------------

/// Sends `messages` on `ws` one at a time and checks each comes back exactly.
async fn echo_round<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, messages: &[Message])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for sent in messages {
        ws.send(sent.clone()).await.expect("send a message");
        let back = within("the echo", LIMIT, ws.next())
            .await
            .expect("the socket is open")
            .expect("a message");
        assert_eq!(&back, sent);
    }
}

fn messages(round: usize, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                Message::text(format!("round {round} message {i}: {}", "é".repeat(i)))
            } else {
                Message::binary(vec![(round * 31 + i) as u8; i * 100])
            }
        })
        .collect()
}

#[tokio::test]
async fn websocket_echoes_through_the_proxy_and_outlives_a_new_configuration() {
    let echo = WsEcho::start().await;
    let proxy = Proxy::start(&cluster_yaml(&[echo.url()], ""));

    let (mut ws, handshake) = within(
        "the WebSocket handshake",
        LIMIT,
        tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr)),
    )
    .await
    .expect("a WebSocket through the proxy");
    assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(echo.handshakes(), 1);
    echo_round(&mut ws, &messages(1, 20)).await;

    // New members, published while the WebSocket is open.
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    proxy
        .plane
        .publish(parse(&cluster_yaml(&[a.url(), b.url()], "")));

    let mut answered = Vec::new();
    for _ in 0..4 {
        let Answer {
            status,
            backend,
            body,
            ..
        } = get(&proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, backend);
        answered.push(backend);
    }
    assert_eq!(answered, ["a", "b", "a", "b"]);
    assert_eq!((a.hits(), b.hits()), (2, 2));
    assert_eq!(
        echo.handshakes(),
        1,
        "no new request reached the old member"
    );

    // The tunnel opened on the old snapshot still carries messages both ways.
    echo_round(&mut ws, &messages(2, 20)).await;
    ws.close(None).await.expect("send a close frame");
    let closing = within("the close handshake", LIMIT, ws.next()).await;
    assert!(
        matches!(closing, Some(Ok(Message::Close(_))) | None),
        "expected the member's close frame, got {closing:?}"
    );
}

// --- 2. HTTP/2 with prior knowledge ----------------------------------------------------------

#[tokio::test]
async fn h2c_streams_on_one_connection_alternate_between_members_and_carry_the_authority_as_host() {
    const STREAMS: usize = 10;
    // Every member answer waits until all the streams have reached a member: they can only all
    // get there if the proxy serves the connection's streams concurrently.
    let barrier = Arc::new(Barrier::new(STREAMS));
    let member = |name: &'static str| {
        let barrier = barrier.clone();
        move |req: Request<hyper::body::Incoming>| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                let host = req
                    .headers()
                    .get_all("host")
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
                    .collect::<Vec<_>>()
                    .join(" | ");
                let mut response = Response::new(full(format!("{:?} {host}", req.version())));
                response
                    .headers_mut()
                    .insert("x-backend", name.parse().expect("value"));
                response
            }
        }
    };
    let a = Backend::custom(member("a")).await;
    let b = Backend::custom(member("b")).await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url(), b.url()], ""));

    let sender = h2_connect(proxy.addr).await;
    let requests = (0..STREAMS).map(|i| {
        let mut sender = sender.clone();
        let uri = format!("http://{}/stream/{i}", proxy.addr);
        async move {
            let request = Request::get(uri).body(full("")).expect("request");
            let response = sender.send_request(request).await.expect("a response");
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            read(response).await
        }
    });
    let answers = within(
        "all streams answered",
        LIMIT,
        futures_util::future::join_all(requests),
    )
    .await;

    let mut per_member = BTreeMap::new();
    for Answer {
        status,
        backend,
        body,
        ..
    } in answers
    {
        assert_eq!(status, StatusCode::OK);
        // The member speaks HTTP/1.1 and sees one Host: the client's :authority.
        assert_eq!(body, format!("HTTP/1.1 {}", proxy.addr));
        *per_member.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(
        per_member,
        BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 5)])
    );
}

// --- 3. Streaming ----------------------------------------------------------------------------

#[tokio::test]
async fn request_body_reaches_the_member_before_the_client_has_sent_all_of_it() {
    let (first_tx, mut first_rx) = mpsc::channel::<Bytes>(1);
    let member = Backend::custom(move |req: Request<hyper::body::Incoming>| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut received = Vec::new();
            let mut told = false;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    received.extend_from_slice(data);
                }
                if !told && !received.is_empty() {
                    told = true;
                    let _ = first_tx.send(Bytes::from(received.clone())).await;
                }
            }
            Response::new(full(received))
        }
    })
    .await;
    let proxy = Proxy::start(&cluster_yaml(&[member.url()], ""));

    let (chunks, rx) = mpsc::channel::<Bytes>(1);
    let request = Request::post(proxy.url("/upload"))
        .body(channel_body(rx))
        .expect("request");
    let exchange = tokio::spawn(client().request(request));

    chunks
        .send(Bytes::from_static(b"chunk one;"))
        .await
        .expect("send chunk 1");
    let at_member = within("chunk 1 at the member", LIMIT, first_rx.recv())
        .await
        .expect("the member saw a body");
    assert_eq!(at_member, Bytes::from_static(b"chunk one;"));
    assert!(!exchange.is_finished());

    chunks
        .send(Bytes::from_static(b"chunk two."))
        .await
        .expect("send chunk 2");
    drop(chunks);
    let response = within("the response", LIMIT, exchange)
        .await
        .expect("join")
        .expect("a response");
    let Answer { status, body, .. } = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "chunk one;chunk two.");
}

#[tokio::test]
async fn response_body_reaches_the_client_before_the_member_has_sent_all_of_it() {
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let go = Arc::new(Mutex::new(Some(go_rx)));
    let member = Backend::custom(move |_req| {
        let go = go.clone();
        async move {
            let (chunks, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                let _ = chunks.send(Bytes::from_static(b"part one;")).await;
                if let Some(go) = go.lock().await.take() {
                    let _ = go.await;
                }
                let _ = chunks.send(Bytes::from_static(b"part two.")).await;
            });
            Response::new(channel_body(rx))
        }
    })
    .await;
    let proxy = Proxy::start(&cluster_yaml(&[member.url()], ""));

    let response = within(
        "the response head",
        LIMIT,
        client().get(proxy.url("/download").parse().expect("uri")),
    )
    .await
    .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.len() < b"part one;".len() {
        let frame = within("part 1 at the client", LIMIT, body.frame())
            .await
            .expect("more body")
            .expect("a frame");
        received.extend_from_slice(frame.data_ref().expect("data"));
    }
    assert_eq!(received, b"part one;");

    go_tx.send(()).expect("the member waits for the go");
    let rest = within("the rest of the body", LIMIT, body.collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"part two."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_come_back_from_echo_byte_identical() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    // A pattern that does not repeat every 256 bytes, so a shifted or lost block is noticed.
    let mut state: u32 = 0x9e37_79b9;
    let payload: Vec<u8> = (0..20 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let payload = Bytes::from(payload);

    let request = Request::post(proxy.url("/echo"))
        .body(full(payload.clone()))
        .expect("request");
    let response = within("the echo", Duration::from_secs(60), async {
        let response = client().request(request).await.expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    })
    .await;
    assert_eq!(response.len(), payload.len());
    assert!(response == payload, "the echoed body differs");
}

// --- 4. Headers ------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_request_headers_stay_on_the_client_connection() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(
        b"GET /headers HTTP/1.1\r\n\
          Host: shop.example.com:8443\r\n\
          Connection: keep-alive, X-Secret\r\n\
          Connection: X-Other-Secret\r\n\
          X-Secret: for this hop only\r\n\
          X-Other-Secret: this one too\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
          Proxy-Connection: keep-alive\r\n\
          Upgrade: h2c\r\n\
          X-Forwarded-For: 203.0.113.9\r\n\
          X-Kept: end to end\r\n\
          \r\n",
    )
    .await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.head.get("x-backend"), Some("a"));
    let mut seen = header_lines(&response.text());
    seen.sort();
    let expected: Vec<(String, String)> = [
        ("host", "shop.example.com:8443"),
        ("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
        ("x-forwarded-host", "shop.example.com:8443"),
        ("x-forwarded-proto", "http"),
        ("x-kept", "end to end"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn the_clients_transfer_encoding_is_replaced_by_the_proxys_own_framing() {
    let member = Backend::custom(|req: Request<hyper::body::Incoming>| async move {
        let encodings: Vec<String> = req
            .headers()
            .get_all("transfer-encoding")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect();
        let body = req.into_body().collect().await.expect("body").to_bytes();
        Response::new(full(format!(
            "{encodings:?} {}",
            String::from_utf8_lossy(&body)
        )))
    })
    .await;
    let proxy = Proxy::start(&cluster_yaml(&[member.url()], ""));

    // The client writes the coding in capitals; if its header were forwarded, the member would
    // see it that way instead of the lower-case one hyper writes for the proxy's own hop.
    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), r#"["chunked"] hello world"#);
}

#[tokio::test]
async fn hop_by_hop_response_headers_stay_on_the_member_connection() {
    let member = Backend::custom(|_req| async move {
        Response::builder()
            .header("connection", "x-member-hop")
            .header("x-member-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"x\"")
            .header("trailer", "x-checksum")
            .header("x-kept", "end to end")
            .body(full("ok"))
            .expect("response")
    })
    .await;
    let proxy = Proxy::start(&cluster_yaml(&[member.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "ok");
    let mut names: Vec<&str> = response
        .head
        .fields
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "date", "x-kept"]);
    assert_eq!(response.head.get("x-kept"), Some("end to end"));
}

/// RFC 9110 5.3: several field lines of one name are one comma-separated list, so a second
/// X-Forwarded-For line is part of the chain and must survive. The client's own
/// X-Forwarded-Proto and X-Forwarded-Host are replaced, not passed on beside the proxy's: on the
/// lean path (no body) and on hyper's (a body) alike.
#[tokio::test]
async fn every_x_forwarded_for_line_is_kept_in_the_chain() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    for request in [
        &b"GET /headers HTTP/1.1\r\nHost: h\r\n"[..],
        b"POST /headers HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n",
    ] {
        let mut request = request.to_vec();
        request.extend_from_slice(
            b"X-Forwarded-For: 203.0.113.9\r\n\
              X-Forwarded-Proto: https\r\n\
              X-Forwarded-Host: spoofed.example\r\n\
              X-Forwarded-For: 198.51.100.7\r\n\r\n",
        );
        if request.starts_with(b"POST") {
            request.extend_from_slice(b"ok");
        }
        conn.write(&request).await;
        let response = conn.answer(false).await;
        assert_eq!(response.status, 200);
        let forwarded: Vec<(String, String)> = header_lines(&response.text())
            .into_iter()
            .filter(|(k, _)| k.starts_with("x-forwarded-"))
            .collect();
        let expected: Vec<(String, String)> = [
            ("x-forwarded-for", "203.0.113.9, 198.51.100.7, 127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "h"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let mut sorted = forwarded.clone();
        sorted.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(
            sorted,
            expected_sorted,
            "{}",
            String::from_utf8_lossy(&request)
        );
    }
}

// --- 5. Limits -------------------------------------------------------------------------------

fn request_with_header_of(bytes: usize) -> Vec<u8> {
    let mut request = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', bytes));
    request.extend_from_slice(b"\r\n\r\n");
    request
}

#[tokio::test]
async fn a_header_section_under_64_kib_is_served() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(&request_with_header_of(60 * 1024)).await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.head.get("x-backend"), Some("a"));
}

#[tokio::test]
async fn a_header_section_over_64_kib_gets_431_and_the_connection_is_closed() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    // Exactly 64 KiB of head without its end: hyper has read everything we sent
    // when it gives up, so its close is a clean FIN and its answer cannot be lost to a reset.
    let mut head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    head.resize(64 * 1024, b'a');
    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(&head).await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 431);
    assert_eq!(response.head.get("x-backend"), None);
    assert_eq!(response.head.get("connection"), Some("close"));
    let rest = within("the close", LIMIT, conn.conn.read_to_end()).await;
    assert_eq!(rest.expect("a clean close"), b"");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn a_whole_oversized_request_gets_431() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(&request_with_header_of(70 * 1024)).await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 431);
    assert_eq!(a.hits(), 0);
}

fn request_with_headers(count: usize) -> Vec<u8> {
    // Host is one of the `count`.
    let mut request = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 1..count {
        request.push_str(&format!("X-H-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[tokio::test]
async fn one_hundred_headers_are_served_and_one_hundred_and_one_get_431() {
    let member = Backend::custom(|req: Request<hyper::body::Incoming>| async move {
        let ours = req
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("x-h-"))
            .count();
        Response::new(full(format!("{} {ours}", req.headers().len())))
    })
    .await;
    let proxy = Proxy::start(&cluster_yaml(&[member.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(&request_with_headers(100)).await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 200);
    // 100 from the client plus X-Forwarded-For, -Proto and -Host.
    assert_eq!(response.text(), "103 99");

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(&request_with_headers(101)).await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 431);
    assert_eq!(response.head.get("connection"), Some("close"));
    let rest = within("the close", LIMIT, conn.conn.read_to_end()).await;
    assert_eq!(rest.expect("a clean close"), b"");
}

/// An HTTP/2 connection to the proxy, with prior knowledge.
async fn h2_connect(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an HTTP/2 handshake with prior knowledge");
    tokio::spawn(connection);
    sender.ready().await.expect("the connection is ready");
    sender
}

#[tokio::test]
async fn an_http2_header_list_over_64_kib_gets_431() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut h2 = h2_connect(proxy.addr).await;
    let request = Request::get(proxy.url("/"))
        .header("x-big", "a".repeat(70 * 1024))
        .body(full(""))
        .expect("request");
    let response = within("the response", LIMIT, h2.send_request(request))
        .await
        .expect("a response");
    // The h2 crate answers by itself and resets the stream; the connection stays usable.
    let Answer {
        status,
        backend,
        body,
        ..
    } = read(response).await;
    assert_eq!(
        (status, backend.as_str(), body.as_str()),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "", "")
    );
    assert_eq!(a.hits(), 0);
    let request = Request::get(proxy.url("/"))
        .body(full(""))
        .expect("request");
    let response = within("the response", LIMIT, h2.send_request(request))
        .await
        .expect("a response");
    assert_eq!(read(response).await.backend, "a");
}

/// `ProxyOptions::max_headers` says "at most this many request headers"; HTTP/2 requests must
/// not get around it.
#[tokio::test]
async fn an_http2_request_with_more_than_100_headers_gets_431() {
    let member = Backend::custom(|req: Request<hyper::body::Incoming>| async move {
        Response::new(full(format!(
            "the member got {} headers",
            req.headers().len()
        )))
    })
    .await;
    let proxy = Proxy::start(&cluster_yaml(&[member.url()], ""));

    let mut h2 = h2_connect(proxy.addr).await;
    let mut request = Request::get(proxy.url("/"));
    for i in 0..500 {
        request = request.header(format!("x-h-{i}"), "1");
    }
    let response = within(
        "the response",
        LIMIT,
        h2.send_request(request.body(full("")).expect("request")),
    )
    .await
    .expect("a response");
    let Answer { status, body, .. } = read(response).await;
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{body}"
    );
}

fn short_header_timeout(members: &[String]) -> Proxy {
    Proxy::start_with(&cluster_yaml(members, ""), |options| {
        options.header_read_timeout = Duration::from_millis(300);
    })
}

#[tokio::test]
async fn a_client_that_stalls_inside_its_request_head_is_disconnected() {
    let a = Backend::start("a").await;
    let proxy = short_header_timeout(&[a.url()]);

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow").await;
    let sent = Instant::now();
    let ended = within(
        "the proxy to close the connection",
        LIMIT,
        conn.conn.read_to_end(),
    )
    .await;
    let waited = sent.elapsed();
    // Closed without an answer (hyper writes no 408), and by the timer, not at once.
    assert_eq!(ended.expect("a clean close"), b"");
    assert!(
        waited >= Duration::from_millis(200),
        "closed after {waited:?}"
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_disconnected() {
    let a = Backend::start("a").await;
    let proxy = short_header_timeout(&[a.url()]);

    let mut conn = raw::Client::connect(proxy.addr).await;
    let ended = within(
        "the proxy to close a silent connection (header_read_timeout 300ms)",
        Duration::from_secs(5),
        conn.conn.read_to_end(),
    )
    .await;
    assert_eq!(ended.expect("a clean close"), b"");
}

#[tokio::test]
async fn a_client_that_stalls_inside_the_http2_preface_is_disconnected() {
    let a = Backend::start("a").await;
    let proxy = short_header_timeout(&[a.url()]);

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"PRI * HTTP/2.0\r\n").await;
    let ended = within(
        "the proxy to close a connection stalled in the HTTP/2 preface (header_read_timeout 300ms)",
        Duration::from_secs(5),
        conn.conn.read_to_end(),
    )
    .await;
    assert_eq!(ended.expect("a clean close"), b"");
}

/// The preface in two writes, the second after a pause: the server waits for the rest (the
/// first part even holds a whole line, "PRI * HTTP/2.0"), then speaks HTTP/2: its first frame
/// is its SETTINGS.
#[tokio::test]
async fn an_http2_preface_that_arrives_in_two_parts_is_served_as_http2() {
    use tokio::io::AsyncReadExt;
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"PRI * HTTP/2.0\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The rest of the preface, then an empty SETTINGS frame of our own.
    conn.write(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await;
    let mut frame_head = [0u8; 9];
    within(
        "the server's first HTTP/2 frame",
        LIMIT,
        conn.conn.stream.read_exact(&mut frame_head),
    )
    .await
    .expect("nine bytes of a frame header");
    assert_eq!(frame_head[3], 0x04, "a SETTINGS frame: {frame_head:?}");
    assert_eq!(frame_head[4], 0x00, "not an ACK: {frame_head:?}");
    assert_eq!(
        &frame_head[5..],
        [0, 0, 0, 0],
        "on stream 0: {frame_head:?}"
    );
}

// --- 6. Not an open proxy --------------------------------------------------------------------

#[tokio::test]
async fn an_absolute_form_request_is_answered_by_a_member_and_goes_nowhere_else() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"GET http://example.invalid/x HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        .await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.head.get("x-backend"), Some("a"));
    assert_eq!(response.text(), "a");
    assert_eq!(a.hits(), 1);
}

/// RFC 9112 3.2.2: a proxy receiving an absolute-form target must replace Host with the
/// target's authority, so the member sees the host the request was routed by.
#[tokio::test]
async fn an_absolute_form_target_replaces_the_host_the_member_sees() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"GET http://example.invalid/headers HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 200);
    let seen: BTreeMap<String, String> = header_lines(&response.text()).into_iter().collect();
    assert_eq!(
        seen.get("x-forwarded-host").map(String::as_str),
        Some("example.invalid")
    );
    assert_eq!(
        seen.get("host").map(String::as_str),
        Some("example.invalid")
    );
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));

    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n")
        .await;
    let response = conn.answer(false).await;
    assert_eq!(response.status, 405);
    assert_eq!(
        response.head.get("allow"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    );
    assert_eq!(
        response.text(),
        "405 Method Not Allowed: CONNECT is not supported\n"
    );
    assert_eq!(a.hits(), 0);
}
