//! `kube-balancer demo`: the seed's experiment in one command. Two small backends, each saying
//! which one it is, and the seed's balancer in front of them.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::discovery::{ClusterConfig, authority_of};

/// Starts a demo backend on `addr`; it answers every request with its number and address.
pub async fn start_backend(number: usize, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "demo backend {number} cannot listen on {addr}: {e} (choose others with --backends)"
            ),
        )
    })?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let body = format!(
                        "Hello from backend {number} ({local}), you asked for {}\n",
                        req.uri().path()
                    );
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain; charset=utf-8")
                            .header("x-backend", number.to_string())
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default(),
                    )
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

/// The seed's cluster with its two members replaced by the demo backends' addresses.
pub fn seed_cluster(
    backends: &[SocketAddr],
) -> Result<ClusterConfig, crate::standalone::ConfigError> {
    let mut clusters =
        crate::standalone::parse("(embedded seed configuration)", crate::standalone::EMBEDDED)?;
    let mut cluster = clusters.remove(0);
    let template = cluster.members[0].clone();
    cluster.members = backends
        .iter()
        .map(|addr| {
            let url = format!("http://{addr}");
            let mut m = template.clone();
            m.authority = authority_of(&url).unwrap_or_else(|| addr.to_string());
            m.url = url;
            m
        })
        .collect();
    Ok(cluster)
}
