//! Overload: a member's connection limit and queue (`memberLimits`), the global client
//! connection limit (`--max-connections`), and slow clients (header and body read timeouts).
//! Real sockets on 127.0.0.1; the global limit against the real binary, whose connections and
//! the test's own must each fit in a process's open-files limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::backend::Backend;
use crate::support::client::{full, load};
use crate::support::metrics::Samples;
use crate::support::process::Process;
use crate::support::proxy::{Proxy, cluster_yaml, states};
use crate::support::wait;

/// Writes `request` on a new connection and reads until the proxy closes it or `limit` passes.
async fn exchange_within(addr: std::net::SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request).await.expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The plane's `/metrics`, as the admin server writes them.
fn metrics(proxy: &Proxy) -> Samples {
    let registry = kube_balancer::admin::metrics::registry(proxy.plane.clone());
    Samples::parse(&kube_balancer::admin::metrics::encode(&registry).expect("metrics"))
}

/// A member that answers after `delay`, counting the requests it holds at once (the most, in
/// `peak`).
async fn slow_counting_member(delay: Duration) -> (Backend, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (held, most) = (now.clone(), peak.clone());
    let backend = Backend::custom(move |_req| {
        let (held, most) = (held.clone(), most.clone());
        async move {
            let n = held.fetch_add(1, SeqCst) + 1;
            most.fetch_max(n, SeqCst);
            tokio::time::sleep(delay).await;
            held.fetch_sub(1, SeqCst);
            hyper::Response::new(full("slow"))
        }
    })
    .await;
    (backend, peak)
}

/// `GET /` for `web` on a connection of its own, closed after the answer: the answer as read.
async fn get(addr: std::net::SocketAddr) -> String {
    exchange_within(
        addr,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    )
    .await
}

/// `n` such requests at once: each answer, and how long after they were all sent it came.
async fn at_once(addr: std::net::SocketAddr, n: usize) -> Vec<(String, Duration)> {
    let started = Instant::now();
    let requests: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { (get(addr).await, started.elapsed()) }))
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.expect("request task"));
    }
    answers
}

/// Until the cluster's first member has one request in flight.
async fn until_first_member_busy(proxy: &Proxy, what: &str) {
    wait::until(what, wait::TIMEOUT, || {
        proxy.plane.snapshot().clusters[0].balancer.members()[0]
            .stats
            .busy
            .load(SeqCst)
            == 1
    })
    .await;
}

/// HAProxy's maxconn and maxqueue, Envoy's max_connections and max_pending_requests: with two
/// connections allowed and three requests allowed to wait, ten requests at once to a slow
/// member are five served (two at once, then the three that waited) and five answered 503 with
/// Retry-After, at once. The member never holds more than two, and is not put in error.
#[tokio::test]
async fn a_member_at_its_limit_serves_two_queues_three_and_refuses_five() {
    let (member, peak) = slow_counting_member(Duration::from_millis(1_500)).await;
    let proxy = Proxy::start(&cluster_yaml(
        &[member.url()],
        "  memberLimits: {maxConnections: 2, maxPendingRequests: 3, queueTimeout: 60s}",
    ));
    let mut served = 0;
    let mut refused = 0;
    for (answer, took) in at_once(proxy.addr, 10).await {
        if answer.starts_with("HTTP/1.1 200 ") {
            assert!(answer.ends_with("slow"), "{answer:?}");
            served += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
            assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer:?}");
            assert!(answer.contains("connection limit"), "{answer:?}");
            // Refused at once, not after waiting for the member.
            assert!(took < Duration::from_millis(1_500), "{took:?}");
            refused += 1;
        }
    }
    assert_eq!((served, refused), (5, 5));
    assert_eq!(peak.load(SeqCst), 2, "the member held at most two at once");
    let m = metrics(&proxy);
    let member_labels = [("cluster", "default/web"), ("member", &member.url())];
    let rejected = |reason| {
        let mut labels = member_labels.to_vec();
        labels.push(("reason", reason));
        m.value("kube_balancer_member_requests_rejected_total", &labels)
    };
    assert_eq!(rejected("queue_full"), 5.0);
    assert!(!m.has(
        "kube_balancer_member_requests_rejected_total",
        &[("reason", "queue_timeout")]
    ));
    assert_eq!(states(&proxy.plane), ["Ok"], "its limit is no failure");
}

/// The same over HTTP/2 to the member (h2c): one connection allowed, one stream on it, one
/// request allowed to wait: of three at once, two are served one after the other and one gets
/// 503 at once; the member never holds two.
#[tokio::test]
async fn an_h2c_member_at_its_limit_serves_one_queues_one_and_refuses_one() {
    let (member, peak) = slow_counting_member(Duration::from_millis(800)).await;
    let proxy = Proxy::start(&cluster_yaml(
        &[member.url()],
        "  protocol: h2c\n  http2: {maxConcurrentStreams: 1}\n  memberLimits: {maxConnections: 1, maxPendingRequests: 1, queueTimeout: 60s}",
    ));
    let mut served = 0;
    let mut refused = 0;
    for (answer, took) in at_once(proxy.addr, 3).await {
        if answer.starts_with("HTTP/1.1 200 ") {
            served += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
            assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer:?}");
            assert!(took < Duration::from_millis(800), "{took:?}");
            refused += 1;
        }
    }
    assert_eq!((served, refused), (2, 1));
    assert_eq!(peak.load(SeqCst), 1, "the member held one at a time");
    assert_eq!(states(&proxy.plane), ["Ok"]);
}

/// A request that waits the whole queue timeout gets 503 with Retry-After then; one that
/// comes when nothing waits and a connection is free is served at once.
#[tokio::test]
async fn a_request_waiting_longer_than_the_queue_timeout_gets_503() {
    let (member, _) = slow_counting_member(Duration::from_secs(3)).await;
    let proxy = Proxy::start(&cluster_yaml(
        &[member.url()],
        "  memberLimits: {maxConnections: 1, maxPendingRequests: 5, queueTimeout: 300ms}",
    ));
    let addr = proxy.addr;
    let first = tokio::spawn(get(addr));
    until_first_member_busy(&proxy, "the member to hold the first").await;
    let waited = Instant::now();
    let mut late = Vec::new();
    for _ in 0..2 {
        late.push(tokio::spawn(get(addr)));
    }
    for request in late {
        let answer = request.await.expect("request task");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
        assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer:?}");
    }
    let took = waited.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(first.await.expect("first").starts_with("HTTP/1.1 200 "));
    let m = metrics(&proxy);
    assert_eq!(
        m.value(
            "kube_balancer_member_requests_rejected_total",
            &[("reason", "queue_timeout")]
        ),
        2.0
    );
}

/// A member at its limit with a full queue sends the request to another member when
/// `maxAttempts` allow: it never reached the first.
#[tokio::test]
async fn a_request_refused_by_a_full_member_goes_to_the_next() {
    let (full_member, _) = slow_counting_member(Duration::from_secs(2)).await;
    let other = Backend::start("b").await;
    let proxy = Proxy::start(&format!(
        "{}  lbMethod: bybusyness\n",
        cluster_yaml(
            &[full_member.url(), other.url()],
            "  memberLimits: {maxConnections: 1, maxPendingRequests: 0}",
        )
    ));
    // Two requests at once: bybusyness sends one to each; a third finds the slow member full
    // when its turn comes, and goes to b.
    let addr = proxy.addr;
    let hold = tokio::spawn(get(addr));
    until_first_member_busy(&proxy, "the slow member to hold one").await;
    let statuses = load(&proxy.url("/"), 6, 1).await;
    assert!(statuses.iter().all(|s| s.as_u16() == 200), "{statuses:?}");
    assert_eq!(other.hits(), 6);
    assert!(hold.await.expect("held").starts_with("HTTP/1.1 200 "));
}

/// `/metrics` of the binary's admin server.
async fn scrape(admin: std::net::SocketAddr) -> Samples {
    let answer = crate::support::client::get(&format!("http://{admin}/metrics")).await;
    assert_eq!(answer.status.as_u16(), 200);
    Samples::parse(&answer.body)
}

const HELD: usize = 40;
const OPENED: usize = 60;

/// The global limit, as HAProxy's `maxconn` and Envoy's connection limits: 60 connections
/// opened at the real binary with `--max-connections 40` (over two workers) are 40 held open
/// and 20 answered 503 with Retry-After and closed; the proxy still serves a request on a held
/// one, and takes a new connection once one closes. (bench/overload.sh does the same with
/// 15,000 against 10,000 and measures the memory held: docs/reliability.md.)
#[tokio::test]
async fn connections_beyond_max_connections_get_503_and_are_closed() {
    let member = Backend::start("a").await;
    let dir = tempfile::tempdir().expect("a folder");
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, cluster_yaml(&[member.url()], "")).expect("write");
    let proxy = Process::start(
        "kube-balancer",
        &[
            "standalone".as_ref(),
            "-f".as_ref(),
            file.as_os_str(),
            "--listen=127.0.0.1:0".as_ref(),
            "--admin=127.0.0.1:0".as_ref(),
            "--workers=2".as_ref(),
            format!("--max-connections={HELD}").as_ref(),
        ],
        &[],
    );
    let addr = proxy.address_in("data plane listening").await;
    let admin = proxy.address_in("admin server listening").await;

    let mut conns = Vec::with_capacity(OPENED);
    for _ in 0..OPENED {
        conns.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let m = wait::until_some("every connection accepted", wait::TIMEOUT, || async {
        let m = scrape(admin).await;
        let counted = m.value("kube_balancer_connections_refused_total", &[]) as usize
            + m.value("kube_balancer_connections_open", &[]) as usize;
        (counted == OPENED).then_some(m)
    })
    .await;
    assert_eq!(
        m.value("kube_balancer_connections_refused_total", &[]),
        (OPENED - HELD) as f64
    );
    assert_eq!(m.value("kube_balancer_connections_open", &[]), HELD as f64);
    // Each refused client reads the whole answer, then the end of the connection; each held
    // one reads nothing.
    let mut refused = vec![false; OPENED];
    let mut seen = vec![Vec::new(); OPENED];
    let mut buf = [0u8; 512];
    wait::until(
        "the refused to read their 503 and close",
        wait::TIMEOUT,
        || {
            for ((conn, done), text) in conns.iter().zip(refused.iter_mut()).zip(seen.iter_mut()) {
                while !*done {
                    match conn.try_read(&mut buf) {
                        Ok(0) => *done = true,
                        Ok(n) => text.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            refused.iter().filter(|r| **r).count() == OPENED - HELD
        },
    )
    .await;
    for (text, done) in seen.iter().zip(&refused) {
        let text = String::from_utf8_lossy(text);
        if *done {
            assert!(text.starts_with("HTTP/1.1 503 "), "{text:?}");
            assert!(text.contains("\r\nretry-after: 1\r\n"), "{text:?}");
            assert!(text.contains("\r\nconnection: close\r\n"), "{text:?}");
            assert!(
                text.ends_with("too many connections; retry later\n"),
                "{text:?}"
            );
        } else {
            assert_eq!(text, "", "a held connection gets nothing unasked");
        }
    }

    // A request on a held connection is served.
    let index = refused.iter().position(|r| !r).expect("a held connection");
    let mut held = conns.swap_remove(index);
    held.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = String::new();
    held.read_to_string(&mut answer).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.ends_with('a'), "{answer:?}");
    // That connection closed: a new one takes its place (once the proxy has seen it close).
    drop(held);
    let admitted = wait::until_some("a new connection to be taken", wait::TIMEOUT, || async {
        let answer = exchange_within(
            addr,
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        answer.starts_with("HTTP/1.1 200 ").then_some(answer)
    })
    .await;
    assert!(admitted.ends_with('a'), "{admitted:?}");
    assert_eq!(member.hits(), 2);
    drop(conns);
}

/// Slow clients: 1,000 connections that drip a request head, and 1,000 that send a head and
/// the start of a body and then stall, while 200 real requests are served, every one of
/// them. The drippers are cut: a head not whole within the header read timeout is closed
/// without an answer, a body that stops for the body read timeout gets 408. Neither holds the
/// member against the others.
#[tokio::test]
async fn slow_clients_are_cut_while_real_ones_are_served() {
    const DRIPPERS: usize = 1_000;
    let member = Backend::start("a").await;
    let proxy = Proxy::start_with(&cluster_yaml(&[member.url()], ""), |o| {
        o.header_read_timeout = Duration::from_secs(1);
        o.body_read_timeout = Duration::from_secs(1);
    });
    let addr = proxy.addr;
    let started = Instant::now();
    let mut drippers = Vec::new();
    for i in 0..2 * DRIPPERS {
        let body = i % 2 == 1;
        drippers.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            let opened = Instant::now();
            if body {
                conn.write_all(
                    b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\nstart",
                )
                .await
                .expect("send");
            } else {
                conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n")
                    .await
                    .expect("send");
            }
            // Then a byte now and then (the head never ends; the body's bytes come further
            // apart than its timeout), reading what comes back, until the proxy closes.
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            let every = if body {
                Duration::from_secs(3)
            } else {
                Duration::from_millis(200)
            };
            loop {
                tokio::select! {
                    read = conn.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    },
                    () = tokio::time::sleep(every) => {
                        let drip: &[u8] = if body { b"x" } else { b"X-Drip: 1\r\n" };
                        if conn.write_all(drip).await.is_err() {
                            break;
                        }
                    }
                }
                assert!(
                    opened.elapsed() < Duration::from_secs(30),
                    "a dripper was never cut"
                );
            }
            (
                body,
                String::from_utf8_lossy(&seen).into_owned(),
                opened.elapsed(),
            )
        }));
    }
    // The real clients, meanwhile.
    let statuses = load(&proxy.url("/"), 200, 20).await;
    let served = statuses.iter().filter(|s| s.as_u16() == 200).count();
    assert_eq!(served, 200, "{statuses:?}");
    let mut cut = [0, 0];
    let mut timed_out_bodies = 0;
    for dripper in drippers {
        let (body, seen, lasted) = dripper.await.expect("dripper");
        // Measured from when this task saw its connection open, which with 2,000 tasks may be
        // a while after the proxy accepted it and started its clock.
        assert!(
            lasted >= Duration::from_millis(500),
            "cut too soon: {lasted:?}"
        );
        if body {
            assert!(seen.starts_with("HTTP/1.1 408 "), "{seen:?}");
            timed_out_bodies += 1;
        } else {
            assert_eq!(seen, "", "a head cut short gets no answer");
        }
        cut[usize::from(body)] += 1;
    }
    assert_eq!(cut, [DRIPPERS, DRIPPERS]);
    assert_eq!(timed_out_bodies, DRIPPERS);
    eprintln!(
        "{} drippers cut, 200 requests served, in {:?}",
        2 * DRIPPERS,
        started.elapsed()
    );
    // The member was never held to account for the clients' slowness.
    assert_eq!(states(&proxy.plane), ["Ok"]);
    // The member's body reads ended with the clients': nothing is left in flight.
    wait::until("no request in flight", wait::TIMEOUT, || {
        proxy.plane.snapshot().clusters[0].balancer.members()[0]
            .stats
            .busy
            .load(SeqCst)
            == 0
    })
    .await;
}
