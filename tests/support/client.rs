//! A real HTTP client (hyper's, with keep-alive connections) and the answer as tests look at it.
//! Every request has to be answered within `wait::TIMEOUT`. (Bytes written by hand are
//! `raw::Client`.)

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;

use super::wait;

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

pub type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// A client with its own pool of keep-alive connections.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// `x-backend`: the backend that answered; empty when the proxy answered itself.
    pub backend: String,
    pub set_cookie: Vec<String>,
    pub headers: HeaderMap,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
}

/// Sends `GET url` on a new connection.
pub async fn get(url: &str) -> Answer {
    send(&client(), "GET", url, &[], "").await
}

/// Sends a request with the given extra headers (`("cookie", "JSESSIONID=a.web1")`; a `host`
/// here replaces the URL's) and reads the whole answer.
pub async fn send(
    client: &Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(full(Bytes::copy_from_slice(body.as_ref())))
        .expect("a valid request");
    let shown = format!("{method} {url}");
    wait::within(&format!("the answer to {shown}"), wait::TIMEOUT, async {
        let response = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        read(response).await
    })
    .await
}

/// Reads a whole answer.
pub async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let all = |name: &str| -> Vec<String> {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let backend = all("x-backend").concat();
    let set_cookie = all("set-cookie");
    let body = body.collect().await.expect("the body").to_bytes();
    Answer {
        status: parts.status,
        backend,
        set_cookie,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The backends answering `n` plain GETs of `url` in a row, concatenated; each must be a 200.
pub async fn order(client: &Client, url: &str, n: usize) -> String {
    let mut seen = String::new();
    for _ in 0..n {
        let answer = send(client, "GET", url, &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        seen.push_str(&answer.backend);
    }
    seen
}

/// `n` GETs of `url`, `concurrency` at a time, each connection kept alive; their statuses.
pub async fn load(url: &str, n: usize, concurrency: usize) -> Vec<StatusCode> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, url) = (next.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                statuses.push(send(&client, "GET", &url, &[], "").await.status);
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

/// Sends `GET path` to `addr` on a new connection.
pub async fn get_at(addr: std::net::SocketAddr, path: &str) -> Answer {
    get(&format!("http://{addr}{path}")).await
}
