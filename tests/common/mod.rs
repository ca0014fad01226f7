//! Shared harness for the data-plane tests: real HTTP backends on 127.0.0.1 ephemeral ports, a
//! real data plane in front of them, and a real HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kube_balancer::plane::DataPlane;
use kube_balancer::proxy::{ProxyOptions, Server};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A real HTTP backend. Every answer carries `x-backend: NAME`. Paths:
/// - `/slow/MS`: waits MS milliseconds, then answers;
/// - `/status/CODE`: answers with that status;
/// - `/headers`: answers with the request's headers, one `name: value` per line;
/// - `/echo`: streams the request body back;
/// - anything else: answers `NAME`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        Backend::serve(name, listener)
    }

    pub fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let name_owned = name.to_owned();
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so stopping the backend closes them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name_owned.clone();
                let counter = counter.clone();
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        answer(name.clone(), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            hits,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests this backend has received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes its connections and the port: connections to it are refused
    /// from now on.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn answer(name: String, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    let body = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        full(name.clone())
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        full(name.clone())
    } else if path == "/headers" {
        let mut text = String::new();
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        full(text)
    } else if path == "/echo" {
        req.into_body().boxed()
    } else {
        full(name.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    Ok(response)
}

/// An address on which nothing listens: connections are refused.
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A real data plane serving the BalancerCluster documents of `yaml`.
pub struct Proxy {
    pub plane: Arc<DataPlane>,
    pub addr: SocketAddr,
    server: Option<Server>,
    /// Active health checks, as the binary starts them next to the data plane.
    checker: Option<kube_balancer::health::Checker>,
}

impl Proxy {
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, |_| {})
    }

    pub fn start_with(yaml: &str, tune: impl FnOnce(&mut ProxyOptions)) -> Proxy {
        let plane = DataPlane::new();
        plane.publish(
            kube_balancer::standalone::parse("test.yaml", yaml).expect("valid test configuration"),
        );
        let mut options = ProxyOptions::new("127.0.0.1:0".parse().expect("addr"));
        options.workers = 1;
        tune(&mut options);
        let server = Server::start(plane.clone(), options).expect("start the data plane");
        let checker = kube_balancer::health::Checker::start(plane.clone()).expect("start checks");
        Proxy {
            addr: server.local_addr(),
            plane,
            server: Some(server),
            checker: Some(checker),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the data plane, letting requests in flight finish within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let (server, checker) = (self.server.take(), self.checker.take());
        tokio::task::spawn_blocking(move || {
            if let Some(server) = server {
                server.shutdown(grace);
            }
            if let Some(checker) = checker {
                checker.stop();
            }
        })
        .await
        .expect("join");
    }
}

/// YAML for one cluster named `web` with the given members and extra spec lines (indented by
/// two spaces, e.g. "  failover: {maxAttempts: 2}").
pub fn cluster_yaml(members: &[String], extra: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web}\nspec:\n  members:\n",
    );
    for m in members {
        yaml.push_str(&format!("    - url: {m}\n"));
    }
    yaml.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        yaml.push('\n');
    }
    yaml
}

/// A real HTTP/1.1 client with keep-alive connections.
pub fn client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a GET and returns the status, the `x-backend` header and the body.
pub async fn get(url: &str) -> (StatusCode, String, String) {
    let response = client()
        .get(url.parse().expect("uri"))
        .await
        .expect("a response");
    read(response).await
}

pub async fn read(response: Response<Incoming>) -> (StatusCode, String, String) {
    let status = response.status();
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, backend, String::from_utf8_lossy(&body).into_owned())
}

/// Waits for `condition` to hold, checking every 10 ms, failing the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
