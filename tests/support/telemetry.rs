//! What the telemetry tests share: a backend that shows what it got, the data plane and its
//! admin server with given telemetry, one request with given header lines.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube_balancer::admin;
use kube_balancer::api::BalancerCluster;
use kube_balancer::discovery::{self, ClusterConfig};
use kube_balancer::plane::DataPlane;
use kube_balancer::proxy::Server;
use kube_balancer::telemetry::Telemetry;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

pub fn cluster(yaml: &str) -> ClusterConfig {
    let bc: BalancerCluster = serde_norway::from_str(yaml).expect("BalancerCluster YAML");
    discovery::cluster_config(&bc, vec![]).expect("servable cluster")
}

/// A backend that answers every request with `status`, and in its body the request's
/// `x-request-id` and `traceparent` as it got them (`-` when absent): `NAME id traceparent`.
pub struct Echo {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start(name: &'static str, status: u16) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let field = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let body =
                            format!("{name} {} {}", field("x-request-id"), field("traceparent"));
                        let mut answer = Response::new(Full::new(Bytes::from(body)));
                        *answer.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(answer)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Echo { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_admin(plane: Arc<DataPlane>) -> SocketAddr {
    let listener = admin::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind admin");
    let addr = listener.local_addr().expect("admin address");
    tokio::spawn(admin::serve(listener, plane, std::future::pending()));
    addr
}

pub fn start_proxy(plane: Arc<DataPlane>, telemetry: Telemetry) -> Server {
    let mut options = crate::support::proxy::options();
    options.workers = 1;
    options.telemetry = telemetry;
    Server::start(plane, options).expect("data plane starts")
}

pub async fn stop_proxy(proxy: Server) {
    tokio::task::spawn_blocking(move || proxy.shutdown(Duration::from_secs(1)))
        .await
        .expect("proxy stops");
}

/// One request on a new connection, with extra header lines; the status and the body.
pub async fn request(
    addr: SocketAddr,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    tokio::time::timeout(WAIT, async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::get(target).header("host", host);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let answer = sender
            .send_request(req.body(Full::new(Bytes::new())).expect("request"))
            .await
            .expect("answer");
        let status = answer.status().as_u16();
        let body = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .expect("answered in time")
}
