//! What a careless or hostile client sends: a bad request gets 400 and never counts against a
//! member. Real sockets on 127.0.0.1, requests written byte by byte.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::backend::Backend;
use crate::support::client::{Answer, get};
use crate::support::proxy::{Proxy, cluster_yaml};
use crate::support::wait;

/// Writes `request` on a new connection and reads until the proxy closes it or 2 s pass.
async fn exchange(proxy: &Proxy, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
    conn.write_all(request).await.expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The order in which the next `n` plain GETs are answered.
async fn next_turns(proxy: &Proxy, n: usize) -> String {
    let mut order = String::new();
    for _ in 0..n {
        order.push_str(&get(&proxy.url("/")).await.backend);
    }
    order
}

/// A chunked body that breaks off with an invalid chunk size, abuses chunk extensions or uses
/// a bare line feed gets 400 from the proxy, and the member it was on its way to stays in: the
/// turns go on a, b, a, b. (It got 502 and put the member in error for `retryAfterError`: two
/// such requests took a cluster of two out.)
#[tokio::test]
async fn a_malformed_request_body_gets_400_and_no_member_is_put_in_error() {
    let bodies: [&[u8]; 3] = [
        b"5\r\nhello\r\nFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n",
        b"5\r\nhello\r\n",
        b"5\nhello\r\n0\r\n\r\n",
    ];
    let long_extension = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(64 * 1024));
    let bodies: Vec<&[u8]> = bodies
        .iter()
        .copied()
        .chain([long_extension.as_bytes()])
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let proxy = Proxy::start(&cluster_yaml(&[a.url(), b.url()], ""));
        let mut request =
            b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        if i == 1 {
            // Cut short: the client goes away in the middle of its body.
            let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
            conn.write_all(&request).await.expect("send");
            drop(conn);
            wait::until("the request to reach a", Duration::from_secs(2), || {
                a.hits() == 1
            })
            .await;
        } else {
            let answer = exchange(&proxy, &request).await;
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 400 "),
                "body {i}: {answer:?}"
            );
            assert!(!answer.contains("502"), "body {i}: {answer:?}");
        }
        assert_eq!(next_turns(&proxy, 4).await, "baba", "body {i}");
        let snapshot = proxy.plane.snapshot();
        let members = snapshot.clusters[0].balancer.members();
        let errors: Vec<u64> = members
            .iter()
            .map(|m| m.stats.errors.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        assert_eq!(errors, [0, 0], "body {i}: no member is held to account");
    }
}

/// RFC 9112 3.2: two Host fields are refused with 400 and nothing reaches a member.
#[tokio::test]
async fn two_host_fields_get_400() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));
    for request in [
        &b"GET / HTTP/1.1\r\nHost: web\r\nHost: other\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: web\r\nhost: web\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nHost: b\r\n\r\nhi",
    ] {
        let answer = exchange(&proxy, request).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
        assert!(answer.contains("more than one Host field"), "{answer:?}");
    }
    assert_eq!(a.hits(), 0);
    assert_eq!(get(&proxy.url("/")).await.backend, "a");
}

/// RFC 9113 3.4: a connection preface that starts as HTTP/2's and goes wrong is a connection
/// error: the proxy closes without a byte (h2spec 3.5 #2 sends this one; it got an HTTP/1.1
/// 400). Anything else that is no HTTP/2 preface is read as HTTP/1.
#[tokio::test]
async fn an_invalid_http2_preface_is_closed_without_an_http1_answer() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url()], ""));
    for preface in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\rQ"[..],
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        b"PRI * HTTP/2.0\r\nHost: x\r\n\r\n",
    ] {
        assert_eq!(exchange(&proxy, preface).await, "", "{preface:?}");
    }
    let answer = exchange(
        &proxy,
        b"PRI / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert_eq!(a.hits(), 1);
}

/// A member that reads each request head, then resets the connection without a byte of answer.
async fn resetting_member() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Linger 0: closing sends a reset.
                let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                drop(conn);
            });
        }
    });
    (url, heads)
}

/// An idempotent request whose member resets the connection before answering is sent to the
/// next member, as nginx's `proxy_next_upstream error` does: nothing has reached the client
/// yet. A POST is not (it may have been acted on), nor anything when `maxAttempts` is 0.
#[tokio::test]
async fn an_idempotent_request_reset_by_its_member_goes_to_the_next() {
    let (reset, heads) = resetting_member().await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&cluster_yaml(&[reset.clone(), b.url()], ""));
    let Answer {
        status, backend, ..
    } = get(&proxy.url("/")).await;
    assert_eq!((status.as_u16(), backend.as_str()), (200, "b"));
    assert_eq!(heads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.hits(), 1);

    // A POST goes to the resetting member first again (it is back: retryAfterError is 60 s,
    // so a fresh cluster is needed to see it picked first).
    let proxy = Proxy::start(&cluster_yaml(&[reset.clone(), b.url()], ""));
    let answer = exchange(
        &proxy,
        b"POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer:?}");
    assert_eq!(heads.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(b.hits(), 1);

    let proxy = Proxy::start(&cluster_yaml(
        &[reset, b.url()],
        "  failover: {maxAttempts: 0}",
    ));
    let Answer { status, .. } = get(&proxy.url("/")).await;
    assert_eq!(status.as_u16(), 502);
    assert_eq!(heads.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(b.hits(), 1);
}

/// The configuration files the fuzz target kept (fuzz/corpus/config) are refused with a
/// message or taken, never a panic.
#[test]
fn the_config_fuzz_corpus_replays() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config");
    let mut count = 0;
    for entry in std::fs::read_dir(&folder).expect("the corpus") {
        let bytes = std::fs::read(entry.expect("an entry").path()).expect("readable");
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = kube_balancer::standalone::parse("fuzz.yaml", text);
        }
        count += 1;
    }
    assert!(count >= 5, "{count} inputs");
}
