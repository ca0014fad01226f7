//! gRPC through the real `kube-balancer` binary (standalone mode) to real gRPC servers, with a
//! real gRPC client: grpc-go's interop TestService and grpc.health.v1, in tests/support/grpc-peer, built
//! with the Go toolchain from its pinned modules (scripts/test-deps.sh fetches them, so that the
//! build needs no network when the tests run). Self-contained: its own small harness.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

/// The grpc-peer binary, built once per test run.
fn peer_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc-peer");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-peer");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&source)
            .env("GOFLAGS", "-mod=readonly")
            .status()
            .expect("run go build (the Go toolchain builds the gRPC peer)");
        assert!(
            status.success(),
            "go build of tests/support/grpc-peer failed"
        );
        out
    })
}

/// Lines a child writes to one of its streams, read on a thread of their own.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Reads what has come so far.
    fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
    }

    /// The first line (seen or to come) containing `needle`, waiting up to `limit`.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {limit:?}; so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn count(&mut self, needle: &str) -> usize {
        self.drain();
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }
}

/// A gRPC server (grpc-peer serve), killed when dropped.
pub(super) struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Mutex<Lines>,
    pub(super) addr: SocketAddr,
}

impl Server {
    fn start(name: &str) -> Server {
        Server::start_with(name, &[])
    }

    pub(super) fn start_with(name: &str, args: &[&str]) -> Server {
        let mut child = Command::new(peer_binary())
            .args(["serve", "-listen", "127.0.0.1:0", "-name", name])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start grpc-peer serve");
        let mut out = Lines::of(child.stdout.take().expect("stdout"));
        let line = out.wait_for("listening", LIMIT);
        let addr = line
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .expect("an address");
        Server {
            stdin: child.stdin.take(),
            child,
            out: Mutex::new(out),
            addr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets what its health service answers for `service` ("-": the server as a whole).
    pub(super) fn set_health(&mut self, service: &str, status: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "health {service} {status}").expect("tell the peer");
        stdin.flush().expect("flush");
        self.out
            .lock()
            .expect("lines")
            .wait_for(&format!("health {service} {status}"), LIMIT);
    }

    /// Calls the server saw end: lines like `event UnaryCall ok`.
    pub(super) fn events(&self, needle: &str) -> usize {
        self.out.lock().expect("lines").count(needle)
    }

    fn wait_event(&self, needle: &str, limit: Duration) -> String {
        self.out.lock().expect("lines").wait_for(needle, limit)
    }

    /// Kills the server at once (SIGKILL): its connections are cut.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a call (grpc-peer call) ended with.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) code: u32,
    pub(super) messages: usize,
    pub(super) backend: String,
    pub(super) trailer: String,
    pub(super) message: String,
    pub(super) lines: Vec<String>,
}

fn parse_done(lines: Vec<String>) -> Call {
    let done = lines
        .iter()
        .find(|l| l.starts_with("done "))
        .unwrap_or_else(|| panic!("the call did not end: {lines:?}"))
        .clone();
    let field = |name: &str| {
        let start = done
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {done}"))
            + name.len()
            + 1;
        let rest = &done[start..];
        if name == "message" {
            rest.to_owned()
        } else {
            rest.split_whitespace().next().unwrap_or("").to_owned()
        }
    };
    Call {
        code: field("code").parse().expect("a code"),
        messages: field("messages").parse().expect("a count"),
        backend: field("backend"),
        trailer: field("trailer"),
        message: field("message"),
        lines,
    }
}

/// Runs one call to `target` and waits for its end.
pub(super) fn call(target: SocketAddr, args: &[&str]) -> Call {
    let output = Command::new(peer_binary())
        .args(["call", "-target", &target.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run grpc-peer call");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    parse_done(lines)
}

/// A call running in the background, its output read as it comes.
struct Running {
    child: Child,
    out: Lines,
}

impl Running {
    fn start(target: SocketAddr, args: &[&str]) -> Running {
        let mut child = Command::new(peer_binary())
            .args(["call", "-target", &target.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start grpc-peer call");
        let out = Lines::of(child.stdout.take().expect("stdout"));
        Running { child, out }
    }

    fn finish(mut self) -> Call {
        self.out.wait_for("done ", LIMIT);
        let _ = self.child.wait();
        parse_done(std::mem::take(&mut self.out.seen))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary in standalone mode on a file of ours, killed when dropped.
struct Balancer {
    child: Child,
    /// Read for as long as the binary runs, so that its logging never blocks on a full pipe.
    _err: Lines,
    addr: SocketAddr,
    admin: SocketAddr,
    file: PathBuf,
    _folder: tempfile::TempDir,
}

impl Balancer {
    fn start(yaml: &str) -> Balancer {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let file = folder.path().join("balancer.yaml");
        std::fs::write(&file, yaml).expect("write the file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-balancer"))
            .args(["standalone", "-f"])
            .arg(&file)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--http1",
                // The tier runs under both HTTP/1 implementations (KB_TEST_HTTP1).
                match crate::support::proxy::http1() {
                    kube_balancer::proxy::Http1Mode::Hyper => "hyper",
                    kube_balancer::proxy::Http1Mode::Fast => "fast",
                },
            ])
            // KB_TEST_LOG=debug shows the binary's own log when a test needs looking into.
            .env(
                "RUST_LOG",
                std::env::var("KB_TEST_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kube-balancer");
        let mut err = Lines::of(child.stderr.take().expect("stderr"));
        let address = |line: String| -> SocketAddr {
            let line = strip_ansi(&line);
            let start = line.find("address=").expect("address=") + "address=".len();
            line[start..]
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("an address")
        };
        let addr = address(err.wait_for("data plane listening", LIMIT));
        let admin = address(err.wait_for("admin server listening", LIMIT));
        Balancer {
            child,
            _err: err,
            addr,
            admin,
            file,
            _folder: folder,
        }
    }

    /// The balancer-manager's JSON for member `url` of cluster `default/web`.
    fn member(&self, url: &str) -> serde_json::Value {
        let view: serde_json::Value =
            serde_json::from_str(&admin_get(self.admin, "/balancer-manager?format=json"))
                .expect("JSON");
        view["clusters"][0]["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["url"] == url)
            .unwrap_or_else(|| panic!("no member {url} in {view}"))
            .clone()
    }

    fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics")
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A GET to the admin server, with a plain HTTP/1.0 exchange: the body.
fn admin_get(admin: SocketAddr, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(admin).expect("connect to the admin server");
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("a read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Waits until `condition` holds, checking every 20 ms, at most `limit`.
fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One cluster `web` (namespace `default`) with these members and extra spec lines.
fn cluster(members: &[String], extra: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web}\nspec:\n  protocol: h2c\n  members:\n",
    );
    for m in members {
        yaml.push_str(&format!("    - url: {m}\n"));
    }
    yaml.push_str(extra);
    yaml.push('\n');
    yaml
}

fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", listener.local_addr().expect("addr"))
}

// ---------------------------------------------------------------------------------------------

/// The four kinds of call, with exact message counts, the answer's header and trailer from the
/// member, and byrequests' turns per call over two members.
#[test]
fn unary_server_client_and_bidi_streaming_calls_go_through_with_exact_counts() {
    let a = Server::start("a");
    let b = Server::start("b");
    let balancer = Balancer::start(&cluster(&[a.url(), b.url()], ""));
    let to = balancer.addr;

    let backends: Vec<String> = (0..4)
        .map(|_| {
            let c = call(to, &["-kind", "unary", "-size", "100"]);
            assert_eq!((c.code, c.messages), (0, 1), "{c:?}");
            assert_eq!(c.trailer, c.backend, "the trailer came from the member");
            c.backend
        })
        .collect();
    assert_eq!(backends, ["a", "b", "a", "b"]);

    let server = call(to, &["-kind", "server", "-count", "25", "-size", "1000"]);
    assert_eq!((server.code, server.messages), (0, 25), "{server:?}");
    let client = call(to, &["-kind", "client", "-count", "17", "-size", "300"]);
    assert_eq!((client.code, client.messages), (0, 1), "{client:?}");
    assert!(
        client.lines.contains(&"aggregated 5100".to_owned()),
        "17 messages of 300 bytes reached the member: {client:?}"
    );
    let bidi = call(to, &["-kind", "bidi", "-count", "12", "-size", "50"]);
    assert_eq!((bidi.code, bidi.messages), (0, 12), "{bidi:?}");
    assert_eq!(
        [&server.backend, &client.backend, &bidi.backend],
        ["a", "b", "a"]
    );

    // A status the member ends with reaches the client, message and all.
    let refused = call(
        to,
        &["-kind", "unary", "-code", "5", "-message", "no such thing"],
    );
    assert_eq!(
        (refused.code, refused.message.as_str()),
        (5, "no such thing")
    );

    let ok =
        |name: &str| a.events(&format!("event {name} ok")) + b.events(&format!("event {name} ok"));
    // Each member writes its line before it answers; the lines are read on a thread of their
    // own, so they are waited for.
    wait_until("the members' calls ended", LIMIT, || {
        (
            ok("UnaryCall"),
            ok("StreamingOutputCall"),
            ok("StreamingInputCall"),
            ok("FullDuplexCall"),
        ) == (4, 1, 1, 1)
    });
    // Counted per member by status: a had unary×2, server, bidi; b unary×2, client, NOT_FOUND.
    wait_until("the statuses counted", LIMIT, || {
        balancer.member(&a.url())["grpcStatus"] == serde_json::json!({"OK": 4})
            && balancer.member(&b.url())["grpcStatus"]
                == serde_json::json!({"OK": 3, "NOT_FOUND": 1})
    });
    let metrics = balancer.metrics();
    let line = format!(
        "kube_balancer_member_grpc_responses_total{{cluster=\"default/web\",member=\"{}\",code=\"NOT_FOUND\"}} 1",
        b.url()
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
    assert_eq!(balancer.member(&a.url())["protocol"], "h2c");
}

/// HTTP/2 connections to a member are shared by calls: many calls in flight at once open no
/// more connections than the stream limit asks for.
#[test]
fn calls_in_flight_share_connections_up_to_the_stream_limit() {
    let a = Server::start("a");
    let balancer = Balancer::start(&cluster(&[a.url()], "  http2: {maxConcurrentStreams: 4}"));
    // 8 calls held open at the member at once: on each of the 2 workers, at most 4 streams
    // per connection.
    let running: Vec<Running> = (0..8)
        .map(|_| {
            Running::start(
                balancer.addr,
                &["-kind", "unary", "-delay-ms", "1500", "-size", "10"],
            )
        })
        .collect();
    // Each call in flight is a stream counted busy (what bybusyness balances on).
    wait_until("8 streams in flight", LIMIT, || {
        balancer.member(&a.url())["busy"] == 8
    });
    for r in running {
        let c = r.finish();
        assert_eq!((c.code, c.backend.as_str()), (0, "a"), "{c:?}");
    }
    wait_until("8 calls ended at a", LIMIT, || {
        a.events("event UnaryCall ok") == 8
    });
    assert_eq!(balancer.member(&a.url())["busy"], 0);
    assert_eq!(balancer.member(&a.url())["elected"], 8);
}

/// A member killed while it streams: the client gets UNAVAILABLE (not a reset stream, and the
/// call is not sent again: the member had begun it), and the next call goes to the other.
#[test]
fn a_member_killed_mid_stream_gives_unavailable_and_the_next_call_goes_to_the_other() {
    let mut a = Server::start("a");
    let b = Server::start("b");
    let balancer = Balancer::start(&cluster(&[a.url(), b.url()], ""));
    let mut streaming = Running::start(
        balancer.addr,
        &["-kind", "server", "-count", "100", "-interval-ms", "50"],
    );
    streaming.out.wait_for("msg 3 a", LIMIT);
    a.kill();
    let cut = streaming.finish();
    assert_eq!(cut.code, 14, "{cut:?}");
    assert!(
        cut.messages >= 3 && cut.messages < 100,
        "the stream broke off: {cut:?}"
    );
    assert!(cut.message.contains("member"), "{cut:?}");
    assert_eq!(b.events("StreamingOutputCall"), 0, "never sent to b");

    let next = call(balancer.addr, &["-kind", "unary"]);
    assert_eq!((next.code, next.backend.as_str()), (0, "b"), "{next:?}");
    wait_until("UNAVAILABLE counted against a", LIMIT, || {
        balancer.member(&a.url())["grpcStatus"]["UNAVAILABLE"] == 1
    });
}

/// Nothing of a call reached a member that refuses connections: it goes to the other member,
/// every time. With no usable member at all, the client gets UNAVAILABLE in gRPC's terms.
#[test]
fn calls_fail_over_when_nothing_reached_the_member_and_get_unavailable_without_members() {
    let b = Server::start("b");
    let balancer = Balancer::start(&cluster(
        &[refused_url(), b.url()],
        "  failover: {maxAttempts: 1, retryAfterError: 0s}",
    ));
    for _ in 0..4 {
        let c = call(balancer.addr, &["-kind", "unary"]);
        assert_eq!((c.code, c.backend.as_str()), (0, "b"), "{c:?}");
    }
    let c = call(balancer.addr, &["-kind", "client", "-count", "5"]);
    assert_eq!((c.code, c.backend.as_str()), (0, "b"), "{c:?}");

    let nobody = Balancer::start(&cluster(&[refused_url()], ""));
    let c = call(nobody.addr, &["-kind", "unary"]);
    assert_eq!(c.code, 14, "{c:?}");
    assert!(c.message.contains("502 Bad Gateway"), "{c:?}");
}

/// A call whose stream broke after it reached the member is sent again only when its method
/// is listed as safe; otherwise the client gets UNAVAILABLE.
#[test]
fn a_broken_call_goes_to_another_member_only_when_its_method_is_safe() {
    for (safe, expected) in [(false, 14), (true, 0)] {
        let mut a = Server::start("a");
        let b = Server::start("b");
        let extra = if safe {
            "  failover: {maxAttempts: 1, safeGrpcMethods: [/grpc.testing.TestService/*]}"
        } else {
            "  failover: {maxAttempts: 1}"
        };
        let balancer = Balancer::start(&cluster(&[a.url(), b.url()], extra));
        let slow = Running::start(
            balancer.addr,
            &["-kind", "unary", "-delay-ms", "800", "-size", "2000"],
        );
        // The call is at a (byrequests' first), which dies before answering.
        a.wait_event("began UnaryCall", LIMIT);
        a.kill();
        let c = slow.finish();
        assert_eq!(c.code, expected, "safe: {safe}: {c:?}");
        if safe {
            assert_eq!(c.backend, "b");
            wait_until("the call ended at b", LIMIT, || {
                b.events("event UnaryCall ok") == 1
            });
        } else {
            assert_eq!(b.events("UnaryCall"), 0, "not sent again");
        }
    }
}

/// The call's deadline is the proxy's too: a member slower than it gets the stream reset, and
/// the client DEADLINE_EXCEEDED.
#[test]
fn a_deadline_ends_the_call_and_cancels_the_members_stream() {
    let a = Server::start("a");
    let balancer = Balancer::start(&cluster(&[a.url()], ""));
    let started = Instant::now();
    let c = call(
        balancer.addr,
        &["-kind", "unary", "-delay-ms", "5000", "-deadline-ms", "300"],
    );
    assert_eq!(c.code, 4, "{c:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The member's handler saw its stream end (reset, or its own copy of the deadline), long
    // before its 5 s were up.
    let event = a.wait_event("event UnaryCall", Duration::from_secs(2));
    assert!(
        event.ends_with("cancelled") || event.ends_with("deadline"),
        "{event}"
    );
}

/// A long streaming call goes on while the configuration is reloaded under it.
#[test]
fn a_streaming_call_survives_a_configuration_reload() {
    let a = Server::start("a");
    let b = Server::start("b");
    let balancer = Balancer::start(&cluster(&[a.url()], ""));
    let mut streaming = Running::start(
        balancer.addr,
        &["-kind", "server", "-count", "30", "-interval-ms", "50"],
    );
    streaming.out.wait_for("msg 2 a", LIMIT);
    std::fs::write(
        &balancer.file,
        cluster(&[a.url(), b.url()], "  lbMethod: bybusyness"),
    )
    .expect("rewrite the file");
    wait_until("the new configuration served", LIMIT, || {
        let view = admin_get(balancer.admin, "/balancer-manager?format=json");
        view.contains(&b.url()) && view.contains("bybusyness")
    });
    let c = streaming.finish();
    assert_eq!(
        (c.code, c.messages, c.backend.as_str()),
        (0, 30, "a"),
        "{c:?}"
    );
}

/// `healthCheck.method: GRPC` asks grpc.health.v1.Health/Check: a member NOT_SERVING for the
/// service is taken out (every call goes to the other), and comes back once it serves again.
#[test]
fn grpc_health_checks_take_a_not_serving_member_out_and_bring_it_back() {
    let mut a = Server::start("a");
    let mut b = Server::start("b");
    let service = "grpc.testing.TestService";
    a.set_health(service, "SERVING");
    b.set_health(service, "SERVING");
    let balancer = Balancer::start(&cluster(
        &[a.url(), b.url()],
        &format!(
            "  healthCheck: {{method: GRPC, grpcService: {service}, interval: 100ms, timeout: 1s}}"
        ),
    ));
    a.set_health(service, "NOT_SERVING");
    wait_until("a taken out", LIMIT, || {
        balancer.member(&a.url())["health"] == "HealthCheckFailed"
    });
    for _ in 0..4 {
        let c = call(balancer.addr, &["-kind", "unary"]);
        assert_eq!((c.code, c.backend.as_str()), (0, "b"), "{c:?}");
    }
    assert!(
        balancer.member(&a.url())["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("NOT_SERVING")),
        "{}",
        balancer.member(&a.url())
    );
    a.set_health(service, "SERVING");
    wait_until("a back", LIMIT, || {
        balancer.member(&a.url())["health"] == "Ok"
    });
    let backends: std::collections::BTreeSet<String> = (0..4)
        .map(|_| call(balancer.addr, &["-kind", "unary"]).backend)
        .collect();
    assert_eq!(backends.len(), 2, "both members serve again: {backends:?}");
    drop(b.stdin.take());
}

// ---------------------------------------------------------------------------------------------
// Members scripted with the h2 crate (a real HTTP/2 server, whose every step the test decides):
// streams refused or reset, and members that never answer.

mod scripted {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use h2::Reason;
    use tokio::net::TcpListener;

    /// What a scripted member does with each stream, once it has read the request's body.
    #[derive(Clone, Copy, Debug)]
    pub enum Then {
        /// Resets it with this reason, answering nothing.
        Reset(Reason),
        /// Answers the head (200, application/grpc) and then nothing more.
        HeadOnly,
        /// Answers nothing at all.
        Nothing,
    }

    /// A scripted HTTP/2 member: it counts the streams it read, the body bytes, and the
    /// streams the proxy reset.
    pub struct Member {
        pub addr: SocketAddr,
        pub streams: Arc<AtomicUsize>,
        pub body_bytes: Arc<AtomicUsize>,
        pub resets: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Member {
        pub async fn start(then: Then) -> Member {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let streams = Arc::new(AtomicUsize::new(0));
            let body_bytes = Arc::new(AtomicUsize::new(0));
            let resets = Arc::new(AtomicUsize::new(0));
            let counts = (streams.clone(), body_bytes.clone(), resets.clone());
            let task = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let counts = counts.clone();
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(tcp).await else {
                            return;
                        };
                        while let Some(Ok((req, mut respond))) = conn.accept().await {
                            let counts = counts.clone();
                            tokio::spawn(async move {
                                let mut body = req.into_body();
                                while let Some(Ok(data)) = body.data().await {
                                    counts.1.fetch_add(data.len(), Ordering::SeqCst);
                                    let _ = body.flow_control().release_capacity(data.len());
                                }
                                counts.0.fetch_add(1, Ordering::SeqCst);
                                match then {
                                    Then::Reset(reason) => respond.send_reset(reason),
                                    Then::HeadOnly | Then::Nothing => {
                                        let mut sending = None;
                                        if let Then::HeadOnly = then {
                                            let head = http::Response::builder()
                                                .header("content-type", "application/grpc")
                                                .body(())
                                                .expect("a head");
                                            sending = respond.send_response(head, false).ok();
                                        }
                                        let reset = match sending.as_mut() {
                                            Some(stream) => {
                                                std::future::poll_fn(|cx| stream.poll_reset(cx))
                                                    .await
                                            }
                                            None => {
                                                std::future::poll_fn(|cx| respond.poll_reset(cx))
                                                    .await
                                            }
                                        };
                                        if reset.is_ok() {
                                            counts.2.fetch_add(1, Ordering::SeqCst);
                                        }
                                        drop(sending);
                                    }
                                }
                            });
                        }
                    });
                }
            });
            Member {
                addr,
                streams,
                body_bytes,
                resets,
                task,
            }
        }

        pub fn url(&self) -> String {
            format!("http://{}", self.addr)
        }
    }

    impl Drop for Member {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A gRPC unary call with no deadline of the client's own: the head and body the proxy
    /// answered (status, fields, trailers), as an h2 client sees them.
    pub async fn raw_call(
        proxy: SocketAddr,
        grpc_timeout: &str,
    ) -> (u16, http::HeaderMap, Option<http::HeaderMap>) {
        let tcp = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{proxy}/grpc.testing.TestService/UnaryCall"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", grpc_timeout)
            .body(())
            .expect("a request");
        let (response, mut body) = client.send_request(req, false).expect("send");
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("the message");
        let response = response.await.expect("an answer");
        let (parts, mut body) = response.into_parts();
        while let Some(data) = body.data().await {
            let _ = data.expect("data");
        }
        let trailers = body.trailers().await.expect("trailers");
        (parts.status.as_u16(), parts.headers, trailers)
    }
}

/// A stream the member refused unprocessed (REFUSED_STREAM) goes to the other member, body
/// and all; a stream the member reset otherwise had reached it, and the client gets
/// UNAVAILABLE.
#[test]
fn a_refused_stream_goes_to_the_other_member_with_its_body_and_a_reset_one_does_not() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for (reason, expected) in [
        (h2::Reason::REFUSED_STREAM, 0),
        (h2::Reason::INTERNAL_ERROR, 14),
    ] {
        let first = runtime.block_on(scripted::Member::start(scripted::Then::Reset(reason)));
        let b = Server::start("b");
        let balancer = Balancer::start(&cluster(&[first.url(), b.url()], ""));
        let c = call(balancer.addr, &["-kind", "unary", "-size", "30000"]);
        assert_eq!(c.code, expected, "{reason:?}: {c:?}");
        assert_eq!(first.streams.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            first.body_bytes.load(std::sync::atomic::Ordering::SeqCst) > 30000,
            "the whole request reached the first member"
        );
        if expected == 0 {
            assert_eq!(c.backend, "b", "{c:?}");
            wait_until("the call ended at b", LIMIT, || {
                b.events("event UnaryCall ok") == 1
            });
        } else {
            assert_eq!(b.events("UnaryCall"), 0, "not sent again");
        }
    }
}

/// The call's deadline is the proxy's own, whatever the client and member do: a member that
/// never answers gets its stream reset and the client a trailers-only DEADLINE_EXCEEDED; one
/// that answered its head and then nothing gets its stream reset and the client trailers with
/// DEADLINE_EXCEEDED.
#[test]
fn a_deadline_passing_resets_the_members_stream_and_gives_deadline_exceeded() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for then in [scripted::Then::Nothing, scripted::Then::HeadOnly] {
        let member = runtime.block_on(scripted::Member::start(then));
        let balancer = Balancer::start(&cluster(&[member.url()], ""));
        let started = Instant::now();
        let (status, head, trailers) = runtime.block_on(scripted::raw_call(balancer.addr, "300m"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(4),
            "{then:?}: {took:?}"
        );
        assert_eq!(status, 200, "{then:?}");
        let fields = match then {
            scripted::Then::Nothing => {
                assert!(trailers.is_none(), "trailers-only: {trailers:?}");
                head
            }
            _ => trailers.expect("trailers"),
        };
        assert_eq!(fields["grpc-status"], "4", "{then:?}: {fields:?}");
        wait_until("the member's stream reset", LIMIT, || {
            member.resets.load(std::sync::atomic::Ordering::SeqCst) == 1
        });
    }
}

/// An HTTP/1.1 client's requests reach an h2c member as HTTP/2 streams: the Host as the
/// `:authority`, bodies whole, the forwarding fields added; one connection carries them all.
#[test]
fn http1_requests_reach_an_h2c_member_as_streams_on_one_connection() {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let connections = Arc::new(AtomicUsize::new(0));
    let member = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt;
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let text = format!(
                                "{:?} {} {} xff={} body={}",
                                parts.version,
                                parts.method,
                                parts.uri,
                                parts.headers["x-forwarded-for"].to_str().unwrap_or("?"),
                                body.len()
                            );
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(text),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
        addr
    });
    let balancer = Balancer::start(&cluster(&[format!("http://{member}")], ""));
    let mut client = std::net::TcpStream::connect(balancer.addr).expect("connect");
    client.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut exchange = |request: &str| -> String {
        client.write_all(request.as_bytes()).expect("send");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("body=") {
            let n = client.read(&mut chunk).expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(text)
    };
    let get = exchange("GET /hello?x=1 HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert_eq!(
        get,
        "HTTP/2.0 GET http://shop.example/hello?x=1 xff=127.0.0.1 body=0"
    );
    let post = exchange(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(
        post,
        "HTTP/2.0 POST http://shop.example/upload xff=127.0.0.1 body=11"
    );
    let again = exchange("GET /again HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(
        again.starts_with("HTTP/2.0 GET http://shop.example/again"),
        "{again}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one connection, three streams"
    );
}

/// The configuration's rules on protocols, stream limits, safe methods and gRPC health checks
/// refuse a bad file with a message a person understands (the same rules the API server runs).
#[test]
fn bad_protocol_and_grpc_settings_are_refused_with_their_reason() {
    for (extra, member_extra, expected) in [
        ("", "      protocol: h2\n", "protocol h2 is HTTP/2 over TLS"),
        ("  protocol: h3\n", "", "h3"),
        (
            "  http2: {maxConcurrentStreams: 0}\n",
            "",
            "http2.maxConcurrentStreams must be between 1 and 10000",
        ),
        (
            "  failover: {safeGrpcMethods: [Get]}\n",
            "",
            "safeGrpcMethods entries look like /package.Service/Method",
        ),
        (
            "  healthCheck: {method: GET, grpcService: a.B}\n",
            "",
            "healthCheck.grpcService needs method: GRPC",
        ),
    ] {
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n{extra}  members:\n    - url: http://127.0.0.1:1\n{member_extra}"
        );
        let refused = kube_balancer::standalone::parse("grpc.yaml", &yaml)
            .expect_err("a bad file is refused")
            .to_string();
        assert!(refused.contains(expected), "{expected:?} in {refused}");
    }
    let good = "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web}\nspec:\n  protocol: h2c\n  http2: {maxConcurrentStreams: 8}\n  failover: {safeGrpcMethods: [/shop.Cart/Get, /grpc.health.v1.Health/*]}\n  healthCheck: {method: GRPC, grpcService: shop.Cart}\n  members:\n    - url: http://127.0.0.1:1\n    - url: http://127.0.0.1:2\n      protocol: http1\n";
    let clusters = kube_balancer::standalone::parse("grpc.yaml", good).expect("a good file");
    let c = &clusters[0];
    assert_eq!(
        c.members
            .iter()
            .map(|m| m.protocol.as_str())
            .collect::<Vec<_>>(),
        ["h2c", "http1"]
    );
    assert_eq!(c.policy.max_concurrent_streams, 8);
    assert!(c.policy.is_safe_grpc_method("/grpc.health.v1.Health/Watch"));
    assert_eq!(
        c.policy
            .health_check
            .as_ref()
            .map(|h| h.grpc_service.as_str()),
        Some("shop.Cart")
    );
}

/// The cases h2spec runs against an HTTP/2 server (generic, http2 and hpack).
const H2SPEC_CASES: usize = 145;

/// h2spec (pinned in tests/support/grpc-peer's go.mod) against the client side, with an h2c
/// member behind it: every case passes, none skipped.
#[test]
fn h2spec_finds_the_client_side_clean_with_an_h2c_member_behind() {
    let h2spec = Path::new(env!("CARGO_TARGET_TMPDIR")).join("h2spec");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&h2spec)
        .arg("github.com/summerwind/h2spec/cmd/h2spec")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc-peer"))
        .env("GOFLAGS", "-mod=readonly")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build of h2spec failed");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let member = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // An answer to HEAD has no body (hyper's HTTP/2 server would send it).
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let body: &'static [u8] = if req.method() == http::Method::HEAD {
                                b""
                            } else {
                                b"hello\n"
                            };
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(body),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
        addr
    });
    let balancer = Balancer::start(&cluster(&[format!("http://{member}")], ""));
    let folder = tempfile::tempdir().expect("a folder");
    let report = folder.path().join("h2spec.xml");
    let output = Command::new(&h2spec)
        .args(["-h", "127.0.0.1", "-p", &balancer.addr.port().to_string()])
        // Each case waits up to 10 s for an answer: a busy machine is slow, never wrong.
        .args(["-o", "10", "-j"])
        .arg(&report)
        .output()
        .expect("run h2spec");
    let xml = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!(
            "h2spec wrote no report: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let mut passed = 0;
    let mut failed = Vec::new();
    for case in xml.split("<testcase ").skip(1) {
        let field = |name: &str| {
            let start = case.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
            case[start..].split('"').next().unwrap_or("").to_owned()
        };
        let body = case.split("</testcase>").next().unwrap_or("");
        if body.contains("<failure") || body.contains("<error") {
            failed.push(format!("{} {}", field("package"), field("classname")));
        } else if !body.contains("<skipped") {
            passed += 1;
        }
    }
    assert!(failed.is_empty(), "h2spec failures: {failed:#?}");
    assert_eq!(passed, H2SPEC_CASES, "h2spec cases passed");
}
