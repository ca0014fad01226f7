//! Faults under load, without a cluster (docs/reliability.md, "Faults under load"): a member killed
//! with SIGKILL and started again, configuration files rewritten, member sets replaced with
//! WebSockets open, and the binary stopped with SIGTERM while WebSockets are open and requests in
//! flight. Each counts exactly: every request sent gets a 2xx answer, every WebSocket stays open
//! and carries every message until it is closed, with the close code expected.
//!
//! The sizes here fit CI; `scripts/faults.sh` runs the same tests at the sizes
//! (`KB_FAULTS=long`) and writes their rows into docs/reliability.md.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::backend::Backend;
use crate::support::client::{Body, full, get};
use crate::support::load::{Load, Plan, knob, report, sized, thousands};
use crate::support::process::Process;
use crate::support::proxy::{Proxy, cluster, rows};
use crate::support::wait;
use kube_balancer::admin::manager::ManagerView;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// --- A member killed with SIGKILL, and started again --------------------------------------------

/// A member that is a process of its own (`kube-balancer demo` with one backend), at an address
/// that stays its own when it is started again, as a pod's container restarts.
struct MemberProcess {
    addr: SocketAddr,
    process: Option<Process>,
    starts: usize,
}

impl MemberProcess {
    async fn start() -> MemberProcess {
        // A port free now, which the member keeps across its restarts.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut member = MemberProcess {
            addr,
            process: None,
            starts: 0,
        };
        member.run().await;
        member
    }

    async fn run(&mut self) {
        self.starts += 1;
        let backend = self.addr.to_string();
        let process = Process::start(
            &format!("member {} (start {})", self.addr, self.starts),
            &[
                "demo",
                "--backends",
                &backend,
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--workers",
                "1",
            ],
            &[],
        );
        let listening = process.address_in("demo backend listening").await;
        assert_eq!(listening, self.addr);
        self.process = Some(process);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: the member's sockets close as the kernel closes them, mid-answer or not.
    async fn kill(&mut self) {
        let mut process = self.process.take().expect("running");
        process.signal(libc::SIGKILL);
        let status = process.exit_status().await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}

/// The served member row of `url`: its state word and how many requests it was elected for.
fn member_row(proxy: &Proxy, url: &str) -> (String, u64) {
    rows(&proxy.plane)
        .into_iter()
        .find(|r| r.url == url)
        .map(|r| (r.state, r.elected))
        .unwrap_or_else(|| panic!("{url} is not a member"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_and_started_again_under_keep_alive_load_fails_no_request() {
    let cycles = knob("KILLS", 3, 20);
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut victim = MemberProcess::start().await;
    let members = [a.url(), b.url(), victim.url()].map(|u| format!("url: {u}"));
    // Checks bring the member back as soon as it answers again, whether it is out for failed
    // checks or for a failed request.
    let proxy = Proxy::start(&cluster(
        &members,
        "healthCheck: {path: /health, interval: 100ms}",
    ));
    let load = Load::start(Plan::new(
        proxy.addr,
        knob("RATE", 300, 1_000),
        10,
        Duration::from_secs(sized(120, 900)),
    ));
    let url = victim.url();
    for _ in 0..cycles {
        // The member serves its share.
        let (_, elected) = member_row(&proxy, &url);
        wait::until("the member to take requests", wait::TIMEOUT, || {
            member_row(&proxy, &url).1 >= elected + 20
        })
        .await;
        victim.kill().await;
        wait::until("the killed member to be out", wait::TIMEOUT, || {
            member_row(&proxy, &url).0 != "Ok"
        })
        .await;
        load.more(sized(200, 1_000)).await;
        victim.run().await;
        wait::until("the member to be back", wait::TIMEOUT, || {
            member_row(&proxy, &url).0 == "Ok"
        })
        .await;
    }
    let (_, elected) = member_row(&proxy, &url);
    wait::until("the member to take requests again", wait::TIMEOUT, || {
        member_row(&proxy, &url).1 >= elected + 20
    })
    .await;
    let tally = load.stop().await;
    tally.assert_all_ok("a member killed and started again");
    report(
        "member killed (SIGKILL) and started again, keep-alive load",
        &format!("{cycles} kills, 3 members"),
        Some(&tally),
        "-",
        "the member is out at once and back when it answers checks again",
    );
    proxy.stop(Duration::from_secs(1)).await;
}

// --- Configuration files rewritten ---------------------------------------------------------------

/// The configuration of rewrite `i`: member a's load factor says which it is; c is there every
/// other time.
fn rewrite(i: usize, a: &Backend, b: &Backend, c: &Backend) -> String {
    let mut members = vec![
        format!("url: {}, loadFactor: {}", a.url(), 1 + i % 50),
        format!("url: {}", b.url()),
    ];
    if i % 2 == 1 {
        members.push(format!("url: {}", c.url()));
    }
    cluster(&members, "")
}

async fn manager(admin: SocketAddr) -> ManagerView {
    let answer = get(&format!("http://{admin}/balancer-manager?format=json")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("balancer-manager JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_files_rewritten_under_load_fail_no_request() {
    let reloads = knob("RELOADS", 20, 100);
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("balancer.yaml");
    std::fs::write(&file, rewrite(0, &a, &b, &c)).expect("write the file");
    let balancer = Process::start(
        "kube-balancer",
        &[
            "standalone",
            "-f",
            file.to_str().expect("a UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
        ],
        &[],
    );
    let proxy = balancer.address_in("data plane listening").await;
    let admin = balancer.address_in("admin server listening").await;
    let first = manager(admin).await;
    let load = Load::start(Plan::new(
        proxy,
        knob("RATE", 300, 1_000),
        10,
        Duration::from_secs(sized(120, 900)),
    ));
    load.more(100).await;
    for i in 1..=reloads {
        let text = rewrite(i, &a, &b, &c);
        if i % 2 == 1 {
            // A new file renamed over the old one, as editors and careful tools write.
            let next = folder.path().join("balancer.yaml.new");
            std::fs::write(&next, text).expect("write the new file");
            std::fs::rename(&next, &file).expect("rename it over the old one");
        } else {
            // The same file truncated and written again.
            std::fs::write(&file, text).expect("rewrite the file");
        }
        let (factor, count) = (1 + i % 50, if i % 2 == 1 { 3 } else { 2 });
        wait::until_some("the rewritten file to be served", wait::TIMEOUT, || async {
            let view = manager(admin).await;
            let members = &view.clusters.first()?.members;
            (members.len() == count && members[0].status.load_factor as usize == factor)
                .then_some(())
        })
        .await;
        load.more(sized(50, 100)).await;
    }
    let tally = load.stop().await;
    let last = manager(admin).await;
    tally.assert_all_ok("configuration files rewritten");
    let published = last.generation - first.generation;
    assert!(
        published >= reloads as u64,
        "{reloads} rewrites, each served, but {published} publications"
    );
    assert!(c.hits() > 0, "the member that comes and goes took requests");
    report(
        "configuration file rewritten (standalone)",
        &format!("{reloads} rewrites, half renamed over, half in place"),
        Some(&tally),
        "-",
        &format!(
            "each rewrite served; {published} publications, {} refused",
            last.rejected_configs - first.rejected_configs
        ),
    );
}

// --- WebSockets -----------------------------------------------------------------------------------

/// A WebSocket member that names itself in its handshake's answer (`x-backend`), echoes every
/// text and binary message, and notes the close code of each client's Close frame.
struct NamedEcho {
    addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    closes: Arc<Mutex<Vec<Option<u16>>>>,
    task: JoinHandle<()>,
}

impl NamedEcho {
    async fn start(name: &'static str) -> NamedEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a member");
        let addr = listener.local_addr().expect("its address");
        let handshakes = Arc::new(AtomicU64::new(0));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let (counted, noted) = (handshakes.clone(), closes.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let (counted, noted) = (counted.clone(), noted.clone());
                connections.spawn(async move {
                    // The callback's type is tungstenite's: its error is an HTTP response.
                    #[allow(clippy::result_large_err)]
                    let named = |_: &Request, mut response: Response| {
                        response
                            .headers_mut()
                            .insert("x-backend", http::HeaderValue::from_static(name));
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, named).await
                    else {
                        return;
                    };
                    counted.fetch_add(1, SeqCst);
                    // The answer to a Close goes out with the next read, which then ends.
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Close(frame) = &message {
                            noted
                                .lock()
                                .expect("the closes")
                                .push(frame.as_ref().map(|f| u16::from(f.code)));
                        } else if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        NamedEcho {
            addr,
            handshakes,
            closes,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn handshakes(&self) -> u64 {
        self.handshakes.load(SeqCst)
    }

    fn closes(&self) -> Vec<Option<u16>> {
        self.closes.lock().expect("the closes").clone()
    }
}

impl Drop for NamedEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WebSocket through the proxy at `addr`, and the member that took it.
async fn open_socket(addr: SocketAddr) -> (Socket, String) {
    let (ws, answer) = wait::within(
        "a WebSocket handshake",
        wait::WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/chat")),
    )
    .await
    .expect("a WebSocket through the proxy");
    assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);
    let member = answer
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .expect("the member's name")
        .to_owned();
    (ws, member)
}

/// Sends one message on every socket and reads each echo back; returns how many came back.
async fn echo_all(sockets: &mut [(Socket, String)], round: usize) -> u64 {
    for (i, (ws, _)) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("round {round} socket {i}")))
            .await
            .unwrap_or_else(|e| panic!("socket {i} in round {round}: {e}"));
    }
    let mut echoed = 0;
    for (i, (ws, member)) in sockets.iter_mut().enumerate() {
        let back = wait::within("an echo", wait::WAIT, ws.next())
            .await
            .unwrap_or_else(|| panic!("socket {i} (to {member}) closed in round {round}"))
            .unwrap_or_else(|e| panic!("socket {i} (to {member}) in round {round}: {e}"));
        assert_eq!(
            back,
            Message::text(format!("round {round} socket {i}")),
            "socket {i}"
        );
        echoed += 1;
    }
    echoed
}

/// The configuration of update `i`: WebSockets under /ws over w1 and w2 (their load factors
/// changing) and a changing set of others, `gone` only at first; plain requests under / over a
/// and b, and c every other time.
fn member_sets(i: usize, ws: &[&NamedEcho], http: &[&Backend]) -> String {
    let mut sockets = vec![
        format!("url: {}, loadFactor: {}", ws[0].url(), 1 + i % 3),
        format!("url: {}", ws[1].url()),
    ];
    if i == 0 {
        sockets.push(format!("url: {}", ws[2].url()));
    }
    for (bit, extra) in ws[3..].iter().enumerate() {
        if (i >> bit) & 1 == 1 {
            sockets.push(format!("url: {}", extra.url()));
        }
    }
    let mut plain = vec![
        format!("url: {}, loadFactor: {}", http[0].url(), 1 + i % 5),
        format!("url: {}", http[1].url()),
    ];
    if i % 2 == 1 {
        plain.push(format!("url: {}", http[2].url()));
    }
    format!("{}---\n{}", sockets_cluster(&sockets), cluster(&plain, ""))
}

/// A cluster `sockets` serving /ws over `members`.
fn sockets_cluster(members: &[String]) -> String {
    cluster(members, "routes: [{pathPrefix: /ws}]")
        .replace("metadata: {name: web}", "metadata: {name: sockets}")
}

fn publish(proxy: &Proxy, yaml: &str) {
    proxy.plane.publish(
        kube_balancer::standalone::parse("test.yaml", yaml).expect("a valid configuration"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_set_updates_keep_every_websocket_open_and_fail_no_request() {
    const SOCKETS: usize = 50;
    let updates = knob("UPDATES", 20, 100);
    let mut echoes = Vec::new();
    for name in ["w1", "w2", "gone", "x1", "x2", "x3"] {
        echoes.push(NamedEcho::start(name).await);
    }
    let ws: Vec<&NamedEcho> = echoes.iter().collect();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let http = [&a, &b, &c];
    let proxy = Proxy::start(&member_sets(0, &ws, &http));

    // 48 WebSockets, taken in turn by w1, w2 and gone.
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS - 2 {
        sockets.push(open_socket(proxy.addr).await);
    }
    let to_gone = sockets.iter().filter(|(_, m)| m == "gone").count();
    assert_eq!(to_gone, (SOCKETS - 2) / 3);
    let load = Load::start(Plan::new(
        proxy.addr,
        knob("RATE", 300, 1_000),
        10,
        Duration::from_secs(sized(120, 900)),
    ));
    load.more(50).await;

    // gone leaves the set: its tunnels stay open and carry messages both ways; new WebSockets
    // go elsewhere.
    publish(&proxy, &member_sets(1, &ws, &http));
    let mut echoed = echo_all(&mut sockets, 1).await;
    for _ in 0..2 {
        sockets.push(open_socket(proxy.addr).await);
    }
    assert_eq!(
        echoes[2].handshakes(),
        to_gone as u64,
        "no new WebSocket reaches a member that left"
    );
    for i in 2..=updates {
        publish(&proxy, &member_sets(i, &ws, &http));
        echoed += echo_all(&mut sockets, i).await;
        load.more(20).await;
    }
    let tally = load.stop().await;

    // Every WebSocket is still open: each closes cleanly, from the client.
    for (i, (ws, member)) in sockets.iter_mut().enumerate() {
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap_or_else(|e| panic!("close socket {i} (to {member}): {e}"));
        let answer = wait::within("the member's Close", wait::WAIT, ws.next()).await;
        match answer {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("socket {i} (to {member}): {other:?} instead of the member's Close"),
        }
    }
    let mut closes: Vec<Option<u16>> = echoes.iter().flat_map(NamedEcho::closes).collect();
    wait::until("every member to see its Close", wait::WAIT, || {
        closes = echoes.iter().flat_map(NamedEcho::closes).collect();
        closes.len() == SOCKETS
    })
    .await;
    assert_eq!(closes, vec![Some(1000); SOCKETS]);
    // Round 1 on the first 48, every later round on all 50.
    assert_eq!(echoed, (SOCKETS - 2 + (updates - 1) * SOCKETS) as u64);
    let opened: u64 = echoes.iter().map(NamedEcho::handshakes).sum();
    assert_eq!(opened, SOCKETS as u64);
    tally.assert_all_ok("member-set updates");
    report(
        "member set replaced, WebSockets open",
        &format!("{updates} updates, {SOCKETS} WebSockets"),
        Some(&tally),
        &format!(
            "{SOCKETS} opened, {SOCKETS} kept ({to_gone} to a member removed), {SOCKETS} closed 1000"
        ),
        &format!(
            "{} messages echoed, none lost; no new WebSocket to the removed member",
            thousands(echoed)
        ),
    );
    proxy.stop(Duration::from_secs(1)).await;
}

// --- SIGTERM ----------------------------------------------------------------------------------------

/// A member whose answers wait until the test lets them go; counts the requests that arrived.
async fn gated() -> (Backend, Arc<AtomicU64>, tokio::sync::watch::Sender<bool>) {
    let (open, gate) = tokio::sync::watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let counted = arrived.clone();
    let backend = Backend::custom(move |_req| {
        let (mut gate, counted) = (gate.clone(), counted.clone());
        async move {
            counted.fetch_add(1, SeqCst);
            let _ = gate.wait_for(|open| *open).await;
            http::Response::new(full("finished")) as http::Response<Body>
        }
    })
    .await;
    (backend, arrived, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_finishes_requests_in_flight() {
    let sockets_wanted = knob("SOCKETS", 20, 50);
    let in_flight = knob("IN_FLIGHT", 4, 20);
    let w1 = NamedEcho::start("w1").await;
    let w2 = NamedEcho::start("w2").await;
    let (slow, arrived, gate) = gated().await;
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("balancer.yaml");
    let yaml = format!(
        "{}---\n{}",
        sockets_cluster(&[format!("url: {}", w1.url()), format!("url: {}", w2.url())]),
        cluster(&[format!("url: {}", slow.url())], "")
    );
    std::fs::write(&file, yaml).expect("write the file");
    let mut balancer = Process::start(
        "kube-balancer",
        &[
            "standalone",
            "-f",
            file.to_str().expect("a UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--shutdown-grace",
            "60s",
        ],
        &[],
    );
    let proxy = balancer.address_in("data plane listening").await;
    let mut sockets = Vec::new();
    for _ in 0..sockets_wanted {
        sockets.push(open_socket(proxy).await);
    }
    let echoed = echo_all(&mut sockets, 0).await;
    let requests: Vec<_> = (0..in_flight)
        .map(|_| {
            let url = format!("http://{proxy}/slow");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait::until("the requests to reach their member", wait::TIMEOUT, || {
        arrived.load(SeqCst) == in_flight as u64
    })
    .await;

    balancer.signal(libc::SIGTERM);

    // Every WebSocket gets a Close, 1001, while the requests are still in flight.
    for (i, (ws, member)) in sockets.iter_mut().enumerate() {
        let next = wait::within("the proxy's Close", wait::TIMEOUT, ws.next()).await;
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Away, "socket {i} (to {member})");
            }
            other => panic!("socket {i} (to {member}): {other:?} instead of a Close"),
        }
        // The client's answering Close goes out with this read; then the proxy closes.
        let end = wait::within("the end of the connection", wait::TIMEOUT, ws.next()).await;
        assert!(end.is_none(), "socket {i}: {end:?} after the Close");
    }
    assert!(
        requests.iter().all(|r| !r.is_finished()),
        "the requests finished before the WebSockets closed: this proves nothing"
    );
    // The members got the clients' answering Close.
    let mut closes = Vec::new();
    wait::until("the members to see the clients' Close", wait::WAIT, || {
        closes = [&w1, &w2].iter().flat_map(|e| e.closes()).collect();
        closes.len() == sockets_wanted
    })
    .await;
    assert_eq!(closes, vec![Some(1001); sockets_wanted]);

    // The requests in flight finish.
    gate.send_replace(true);
    for request in requests {
        let answer = wait::within("a request in flight", wait::TIMEOUT, request)
            .await
            .expect("join");
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "finished")
        );
    }
    let status = balancer.exit_status().await;
    assert_eq!(status.code(), Some(0), "{status}");
    let log = balancer.all_stderr();
    assert!(
        !log.contains("grace period over"),
        "everything ended within the grace period:\n{log}"
    );
    report(
        "SIGTERM with WebSockets open and requests in flight",
        &format!("{sockets_wanted} WebSockets, {in_flight} requests in flight"),
        None,
        &format!(
            "{sockets_wanted} opened, {sockets_wanted} closed 1001 by the proxy, the member told"
        ),
        &format!(
            "{in_flight} of {in_flight} requests in flight answered 200; {echoed} messages echoed; exit 0 within the grace period"
        ),
    );
}

// --- Slow clients ------------------------------------------------------------------------------------

/// How a dripping connection ended.
#[derive(Debug)]
enum Dripped {
    /// The proxy closed it after this long, having answered with these bytes (none, or a 408).
    Closed(Duration, Vec<u8>),
    /// It got a whole answer: its status and body.
    Answered(u16, String),
}

/// A client that sends a request head a byte every `every` and never ends it (slowloris).
async fn drip_head(addr: SocketAddr, every: Duration, limit: Duration) -> Dripped {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect a dripping client");
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Drip: ")
        .await
        .expect("the head's start");
    let mut tick = tokio::time::interval(every);
    let mut read = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        assert!(
            started.elapsed() < limit,
            "a head dripped for {limit:?} and the proxy kept the connection"
        );
        tokio::select! {
            n = stream.read(&mut buf) => match n {
                Ok(0) | Err(_) => return Dripped::Closed(started.elapsed(), read),
                Ok(n) => read.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => {
                if stream.write_all(b"a").await.is_err() {
                    return Dripped::Closed(started.elapsed(), read);
                }
            }
        }
    }
}

/// A client that sends a whole head, then its `length`-byte body a byte every `every`.
async fn drip_body(addr: SocketAddr, length: usize, every: Duration) -> Dripped {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect a dripping client");
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("the head");
    let mut tick = tokio::time::interval(every);
    for i in 0..length {
        tick.tick().await;
        let byte = b'a' + (i % 26) as u8;
        stream.write_all(&[byte]).await.expect("a byte of the body");
    }
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("the whole answer");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an answer: {text:?}"));
    let (_, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Dripped::Answered(status, body.to_owned())
}

/// Slow clients (slowloris): connections that drip their head a byte at a time are closed by the
/// header-read timeout, never reaching a member; connections that drip their body are served
/// when it is whole; the real clients meanwhile get every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_dripping_heads_and_bodies_do_not_keep_real_clients_from_being_served() {
    let drippers = knob("SLOW_CLIENTS", 100, 1_000);
    let header_timeout = Duration::from_millis(knob("SLOW_HEADER_TIMEOUT_MS", 1_000, 3_000));
    let every = Duration::from_millis(100);
    let body_length = knob("SLOW_BODY_BYTES", 10, 30);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start_with(
        &cluster(
            &[format!("url: {}", a.url()), format!("url: {}", b.url())],
            "",
        ),
        |options| {
            options.header_read_timeout = header_timeout;
        },
    );
    let load = Load::start(Plan::new(
        proxy.addr,
        knob("RATE", 300, 1_000),
        10,
        Duration::from_secs(sized(120, 900)),
    ));
    load.more(50).await;
    let limit = header_timeout * 3 + Duration::from_secs(5);
    let heads: Vec<_> = (0..drippers / 2)
        .map(|_| tokio::spawn(drip_head(proxy.addr, every, limit)))
        .collect();
    let bodies: Vec<_> = (0..drippers / 2)
        .map(|_| tokio::spawn(drip_body(proxy.addr, body_length, every)))
        .collect();
    let mut closed_after = Vec::new();
    for head in heads {
        match head.await.expect("a head dripper") {
            Dripped::Closed(after, bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    bytes.is_empty() || text.starts_with("HTTP/1.1 408"),
                    "a dripped head got {text:?}"
                );
                closed_after.push(after);
            }
            other => panic!("a dripped head: {other:?}"),
        }
    }
    let expected: String = (0..body_length)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut answered = 0;
    for body in bodies {
        match body.await.expect("a body dripper") {
            Dripped::Answered(status, text) => {
                assert_eq!((status, text.as_str()), (200, expected.as_str()));
                answered += 1;
            }
            other => panic!("a dripped body: {other:?}"),
        }
    }
    load.more(50).await;
    let tally = load.stop().await;
    tally.assert_all_ok("slow clients");
    closed_after.sort();
    let (first, last) = (closed_after[0], closed_after[closed_after.len() - 1]);
    assert!(
        first >= header_timeout.mul_f64(0.9),
        "closed by the timer, not at once: {first:?}"
    );
    // Only the real clients and the whole bodies reached a member; no dripped head did.
    assert_eq!(a.hits() + b.hits(), tally.ok + answered);
    report(
        "slow clients: heads and bodies dripped a byte per 100 ms (abuse)",
        &format!(
            "{} head drippers, {} body drippers ({body_length} bytes), header-read timeout {:?}",
            drippers / 2,
            drippers / 2,
            header_timeout
        ),
        Some(&tally),
        "-",
        &format!(
            "every dripped head closed after {:.1}-{:.1} s, none reached a member; {answered} of {} dripped bodies answered 200, echoed whole",
            first.as_secs_f64(),
            last.as_secs_f64(),
            drippers / 2
        ),
    );
    proxy.stop(Duration::from_secs(1)).await;
}
