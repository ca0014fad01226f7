//! The admin server: `/healthz`, `/readyz`, `/metrics` and `/balancer-manager`, on its own port.
//!
//! It only reads: the current snapshot and the members' counters, through
//! [`manager::view`]. It never changes the data plane (edits stay declarative, in
//! `spec.memberOverrides`), and it runs on the caller's ordinary multi-thread runtime, apart from
//! the data plane's workers, so a slow scrape never delays a proxied request.
//!
//! It listens on localhost unless told otherwise; elsewhere it needs a bearer token ([`auth`])
//! for everything but `/healthz` and `/readyz`.

pub mod auth;
pub mod html;
pub mod manager;
pub mod metrics;
pub mod process;
pub mod rates;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock;
use crate::plane::DataPlane;

/// How long connections still open at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client must send a whole request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin address, naming it when that fails.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for the admin server: {e}"),
        )
    })
}

/// Binds `addr` and serves the admin endpoints in a background task of the current runtime until
/// the runtime stops. Returns the address bound (useful with port 0).
pub async fn start(addr: SocketAddr, plane: Arc<DataPlane>) -> io::Result<SocketAddr> {
    start_with(addr, plane, None).await
}

/// [`start`], asking for `token` on every endpoint but `/healthz` and `/readyz` when given.
pub async fn start_with(
    addr: SocketAddr,
    plane: Arc<DataPlane>,
    token: Option<auth::Token>,
) -> io::Result<SocketAddr> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve_with(listener, plane, token, std::future::pending()).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(local)
}

/// Serves the admin endpoints on `listener` until `shutdown` completes; then stops accepting,
/// lets open connections finish their current request (for up to a few seconds) and returns.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, plane, None, shutdown).await
}

/// [`serve`], asking for `token` on every endpoint but `/healthz` and `/readyz` when given.
pub async fn serve_with(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    token: Option<auth::Token>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let admin = Arc::new(Admin {
        registry: metrics::registry(plane.clone()),
        plane,
        token,
        rates: rates::Rates::default(),
    });
    // The balancer-manager's rates compare with readings of the last minute.
    let mut read_rates = tokio::time::interval(rates::EVERY);
    read_rates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, admin.clone(), stopped.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = read_rates.tick() => admin.rates.sample(&admin.plane, clock::now_ms()),
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = connections.len(),
            "admin server: closing connections still open"
        );
    }
    Ok(())
}

async fn connection(stream: TcpStream, admin: Arc<Admin>, mut stopped: watch::Receiver<bool>) {
    let service = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(&req)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        }
        () = async { drop(stopped.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

struct Admin {
    plane: Arc<DataPlane>,
    registry: Registry,
    token: Option<auth::Token>,
    rates: rates::Rates,
}

type Answer = Response<Full<Bytes>>;

const TEXT: &str = "text/plain; charset=utf-8";

impl Admin {
    fn handle<B>(&self, req: &Request<B>) -> Answer {
        // Before anything else, actions included: without the token a client learns nothing
        // but whether the process is alive and ready.
        if let Some(token) = &self.token
            && !auth::OPEN_PATHS.contains(&req.uri().path())
            && !token.accepts(req.headers().get(header::AUTHORIZATION))
        {
            let mut answer = text(
                StatusCode::UNAUTHORIZED,
                "401 Unauthorized: this endpoint needs the admin token (Authorization: Bearer TOKEN)\n",
            );
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kube-balancer admin\""),
            );
            return answer;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            answer
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return answer;
        }
        let query = req.uri().query().unwrap_or("");
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz(),
            "/metrics" => self.metrics(),
            "/balancer-manager" => self.balancer_manager(query),
            "/" => text(
                StatusCode::OK,
                "kube-balancer admin: /healthz /readyz /metrics /balancer-manager \
                 (/balancer-manager?format=json)\n",
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn readyz(&self) -> Answer {
        if self.plane.is_draining() {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: stopping, finishing the requests in flight\n",
            )
        } else if self.plane.is_ready() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no configuration has been published yet\n",
            )
        }
    }

    fn metrics(&self) -> Answer {
        match metrics::encode(&self.registry) {
            Ok(body) => answer(StatusCode::OK, metrics::CONTENT_TYPE, body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded\n",
            ),
        }
    }

    fn balancer_manager(&self, query: &str) -> Answer {
        let view = manager::view_with_rates(&self.plane, Some(&self.rates), clock::now_ms());
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        if param("format") == Some("json") {
            return match serde_json::to_vec_pretty(&view) {
                Ok(body) => answer(StatusCode::OK, "application/json", body),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the balancer-manager: {e}\n"),
                ),
            };
        }
        let refresh = param("refresh")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|s| (1..=html::MAX_REFRESH_SECS).contains(s));
        let mut page = answer(
            StatusCode::OK,
            "text/html; charset=utf-8",
            html::render(&view, refresh),
        );
        // The page has no script and needs no resource but its own inline style.
        page.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        page
    }
}

fn text(status: StatusCode, body: &str) -> Answer {
    answer(status, TEXT, body.to_owned())
}

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        let plane = DataPlane::new();
        Admin {
            registry: metrics::registry(plane.clone()),
            plane,
            token: None,
            rates: rates::Rates::default(),
        }
    }

    fn get(admin: &Admin, uri: &str) -> Answer {
        admin.handle(&Request::get(uri).body(()).expect("request"))
    }

    #[test]
    fn routes_and_methods() {
        let admin = admin();
        assert_eq!(get(&admin, "/healthz").status(), StatusCode::OK);
        assert_eq!(get(&admin, "/nope").status(), StatusCode::NOT_FOUND);
        let post = admin.handle(
            &Request::post("/balancer-manager")
                .body(())
                .expect("request"),
        );
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn balancer_manager_formats() {
        let admin = admin();
        let json = get(&admin, "/balancer-manager?x=1&format=json");
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
        let page = get(&admin, "/balancer-manager?refresh=0");
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let metrics = get(&admin, "/metrics");
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            metrics::CONTENT_TYPE
        );
    }
}
