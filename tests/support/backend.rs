//! A tiny HTTP backend that stands in for a pod's container, and a plain HTTP/1.1 client.
//!
//! The backend listens on a pod IP inside the test network namespace (see `netns`), on an
//! ephemeral port, and answers every request with its own name, so a test can tell which pod
//! served a request.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::netns;

/// A running backend. Stops when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts a backend named `name` on `ip` (a pod IP), on an ephemeral port.
    pub async fn start(name: &str, ip: Ipv4Addr) -> Backend {
        let listener =
            netns::bind_local(ip).unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"));
        let listener = TcpListener::from_std(listener).expect("register the listener with tokio");
        let addr = listener.local_addr().expect("listener address");
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, name.to_owned(), requests.clone()));
        Backend {
            name: name.to_owned(),
            addr,
            requests,
            task,
        }
    }

    /// How many requests this backend has answered.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, name: String, requests: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (name, requests) = (name.clone(), requests.clone());
        tokio::spawn(async move {
            let answer = service_fn(move |_request: Request<Incoming>| {
                requests.fetch_add(1, Ordering::Relaxed);
                let body = Full::new(Bytes::from(name.clone()));
                async move { Ok::<_, Infallible>(Response::new(body)) }
            });
            // A client that goes away mid-request is not the backend's failure.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}

/// Sends `GET path` to `addr` over a new connection; returns the status and the body as text.
/// `addr` must be local to this process's network namespace (loopback or a pod IP).
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("HTTP handshake with {addr}: {e}"));
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
