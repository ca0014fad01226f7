//! Harness for the admin server's tests: tiny real backends, a one-request HTTP client, waiting
//! on a condition, reading OpenMetrics text, and headless Chromium. Loopback only.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// A backend on an ephemeral loopback port that reads the whole request body and answers
/// `NAME got N bytes` (so a test knows who served it and how many bytes came back).
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let got = req
                            .into_body()
                            .collect()
                            .await
                            .map_or(0, |b| b.to_bytes().len());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "{name} got {got} bytes"
                        )))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { name, addr, task }
    }

    /// The member URL the data plane shows for this backend.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port that refuses connections: bound without listening, so it stays reserved (no
/// other test can take it) while every connection to it is refused. Keep the socket alive.
pub fn refusing_port() -> (SocketAddr, socket2::Socket) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("an IP address");
    (addr, socket)
}

/// An answer read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a new connection to `addr` and reads the whole answer, within 10 s.
pub async fn send(addr: SocketAddr, method: &str, path: &str, host: &str, body: Bytes) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Full::new(body))
            .expect("request");
        let response = sender.send_request(req).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
    .expect("answer within 10 s")
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, "127.0.0.1", Bytes::new()).await
}

/// Polls `check` until it gives `Some`, failing after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples of an OpenMetrics text exposition: metric name, labels, value.
pub struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value.parse().expect("numeric sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Samples(samples)
    }

    /// The value of the one sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one sample {name}{labels:?}, found {found:?}"
        );
        found[0]
    }

    /// Whether any sample named `name` has labels that include `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.iter().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The labels of the one sample named `name` whose labels include `labels`.
    pub fn labels(&self, name: &str, labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, _)| l.clone())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one sample {name}{labels:?}"
        );
        found.into_iter().next().expect("one")
    }
}

/// `a="x",b="y"` (values without escapes, which is all these tests produce).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let (value, after) = after.split_once('"').expect("closing quote");
        labels.insert(key.trim_start_matches(',').to_owned(), value.to_owned());
        rest = after;
    }
    labels
}

/// How to install the browser the page tests need, for failure messages and scripts/test.sh.
pub const CHROMIUM_INSTALL: &str = "apt-get update && apt-get install -y chromium";

/// The Chromium binary: `$CHROMIUM`, else `chromium` or `chromium-browser` on PATH. Panics with
/// the install line when there is none: the browser test must never pass without a browser.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "headless Chromium is required by this test and was not found on PATH. \
         Install it with `{CHROMIUM_INSTALL}` (Debian's package), or set CHROMIUM to its path."
    );
}

/// Loads `url` in headless Chromium and returns the DOM after the page loaded, as Chromium
/// serializes it. Blocking: run it with `spawn_blocking`. Fails after `timeout`.
pub fn dump_dom(url: &str, timeout: Duration) -> String {
    let browser = chromium();
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; install Chromium with `{CHROMIUM_INSTALL}`",
                browser.display()
            )
        });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish loading {url} within {timeout:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = out.join().expect("stdout reader");
    let log = err.join().unwrap_or_default();
    assert!(
        status.success() && !dom.is_empty(),
        "chromium failed on {url} ({status}); stderr:\n{log}"
    );
    dom
}
