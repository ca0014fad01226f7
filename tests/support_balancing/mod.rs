//! Harness for the balancing-method, sticky-session and health tests: members whose latency,
//! answers and health the test turns like knobs while they run, and a client that sends
//! cookies and headers. Real sockets on 127.0.0.1 ephemeral ports.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kube_balancer::plane::{Cluster, DataPlane};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Knobs a running member reads on every request.
#[derive(Default)]
struct Knobs {
    /// Milliseconds to wait before answering ordinary requests.
    delay_ms: AtomicU64,
    /// Status of ordinary answers (0: 200).
    status: AtomicU16,
    /// Status of `/health` answers (0: 200).
    health_status: AtomicU16,
    /// Ordinary requests and health checks received.
    hits: AtomicUsize,
    health_hits: AtomicUsize,
}

/// A member on 127.0.0.1. `/health` is its health endpoint (answers `up`, or `down` when its
/// health status is not 2xx); `/echo` streams the request body back; anything else waits the
/// member's delay and answers its name. Every answer carries `x-backend: NAME`.
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    knobs: Arc<Knobs>,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    pub async fn start(name: &str) -> Member {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let knobs = Arc::new(Knobs::default());
        let (name_owned, shared) = (name.to_owned(), knobs.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, knobs) = (name_owned.clone(), shared.clone());
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let service = service_fn(move |req| answer(name.clone(), knobs.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Member {
            name: name.to_owned(),
            addr,
            knobs,
            task,
        }
    }

    pub async fn slow(name: &str, delay: Duration) -> Member {
        let m = Member::start(name).await;
        m.set_delay(delay);
        m
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.knobs
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), SeqCst);
    }

    /// Ordinary answers get this status from now on.
    pub fn answer_with(&self, status: u16) {
        self.knobs.status.store(status, SeqCst);
    }

    /// `/health` answers with this status from now on.
    pub fn set_health(&self, status: u16) {
        self.knobs.health_status.store(status, SeqCst);
    }

    /// Ordinary requests received (health checks not counted).
    pub fn hits(&self) -> usize {
        self.knobs.hits.load(SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.knobs.health_hits.load(SeqCst)
    }

    /// Stops accepting and closes the port: connections are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    name: String,
    knobs: Arc<Knobs>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut response = if req.uri().path() == "/health" {
        knobs.health_hits.fetch_add(1, SeqCst);
        let status = match knobs.health_status.load(SeqCst) {
            0 => StatusCode::OK,
            code => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        let mut r = Response::new(full(if status.is_success() { "up" } else { "down" }));
        *r.status_mut() = status;
        r
    } else {
        knobs.hits.fetch_add(1, SeqCst);
        let delay = knobs.delay_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut r = if req.uri().path() == "/echo" {
            Response::new(req.into_body().boxed())
        } else {
            Response::new(full(name.clone()))
        };
        if let Some(status) = StatusCode::from_u16(knobs.status.load(SeqCst))
            .ok()
            .filter(|_| knobs.status.load(SeqCst) != 0)
        {
            *r.status_mut() = status;
        }
        r
    };
    response
        .headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    Ok(response)
}

/// One answer as the tests look at it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// The member that answered (`x-backend`), empty when the balancer answered itself.
    pub backend: String,
    pub set_cookie: Vec<String>,
    pub body: String,
}

pub type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request with the given extra headers (`("cookie", "JSESSIONID=a.web1")`).
pub async fn send(
    client: &Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(full(body.to_owned())).expect("request");
    let response = client.request(req).await.expect("a response");
    let status = response.status();
    let header = |name: &str| -> Vec<String> {
        response
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let backend = header("x-backend").concat();
    let set_cookie = header("set-cookie");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        backend,
        set_cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    send(client, "GET", url, headers, "").await
}

/// The names of the members answering `n` plain GETs in a row, concatenated.
pub async fn order(client: &Client, url: &str, n: usize) -> String {
    let mut seen = String::new();
    for _ in 0..n {
        let answer = get(client, url, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        seen.push_str(&answer.backend);
    }
    seen
}

/// `n` GETs of `url`, `concurrency` at a time; returns how many each status got.
pub async fn load(url: &str, n: usize, concurrency: usize) -> Vec<StatusCode> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, url) = (next.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            while next.fetch_add(1, SeqCst) < n {
                statuses.push(get(&client, &url, &[]).await.status);
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    all
}

/// The served cluster `default/web`.
pub fn web(plane: &DataPlane) -> Arc<Cluster> {
    plane
        .snapshot_full()
        .cluster("default", "web")
        .cloned()
        .expect("cluster default/web is served")
}

/// The member rows (balancer-manager / status) of `default/web` now.
pub fn rows(plane: &DataPlane) -> Vec<kube_balancer::api::MemberStatus> {
    kube_balancer::status::member_rows(&web(plane), kube_balancer::clock::now_ms())
}

/// The status words of `default/web`'s members now.
pub fn states(plane: &DataPlane) -> Vec<String> {
    rows(plane).into_iter().map(|r| r.state).collect()
}

/// YAML of one BalancerCluster `web` with `members` (each a flow mapping body such as
/// `url: http://..., route: web1`) and extra spec lines indented by two spaces.
pub fn cluster(members: &[String], extra: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web}\nspec:\n  members:\n",
    );
    for m in members {
        yaml.push_str(&format!("    - {{{m}}}\n"));
    }
    for line in extra.lines() {
        yaml.push_str("  ");
        yaml.push_str(line.trim_start());
        yaml.push('\n');
    }
    yaml
}
