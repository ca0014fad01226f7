//! A BalancerCluster route's `retry` (issue 20), end to end: standalone YAML through the real
//! data plane, real members on 127.0.0.1 that count what they receive, and a real HTTP client.
//! Every count is exact. The tier runs under both HTTP/1 implementations (`KB_TEST_HTTP1`).
//!
//! The member answers by path, and keeps per path what it was sent, so that each request of a
//! test meets a fresh script: `/first-503/…` is answered 503 the first time and 200 after,
//! `/always-503/…` always 503, `/first-hold/…` is held for good the first time and answered 200
//! after. Nothing waits on the clock: the one timing check (backoff) is a lower bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use crate::support::backend::{Backend, refusing_port};
use crate::support::client::{Answer, Body, client, full, send};
use crate::support::proxy::Proxy;

/// A request as the scripted member received it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    method: String,
    body: Bytes,
    at: Instant,
}

/// A member that answers as its path says (above), recording every request.
struct Scripted {
    backend: Backend,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    async fn start() -> Scripted {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let shared = seen.clone();
        let backend = Backend::custom(move |req: http::Request<hyper::body::Incoming>| {
            let seen = shared.clone();
            async move {
                let at = Instant::now();
                let path = req.uri().path().to_owned();
                let method = req.method().to_string();
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let body = body.unwrap_or_default();
                let nth = {
                    let mut seen = seen.lock().expect("the record");
                    let p = path.clone();
                    seen.push(Seen {
                        path: p,
                        method,
                        body,
                        at,
                    });
                    seen.iter().filter(|s| s.path == path).count()
                };
                answer(&path, nth).await
            }
        })
        .await;
        Scripted { backend, seen }
    }

    fn url(&self) -> String {
        self.backend.url()
    }

    /// What reached the member on `path`, in order.
    fn on(&self, path: &str) -> Vec<Seen> {
        let seen = self.seen.lock().expect("the record");
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }
}

/// The `nth` answer (from 1) on `path`.
async fn answer(path: &str, nth: usize) -> Response<Body> {
    let status = if path.contains("/always-503") || (path.contains("/first-503") && nth == 1) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        if path.contains("/first-hold") && nth == 1 {
            // Never answered: the proxy's time limit for the try is what ends it.
            std::future::pending::<()>().await;
        }
        StatusCode::OK
    };
    let mut response = Response::new(full(format!("answer {nth}")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", http::HeaderValue::from_static("scripted"));
    response
}

/// One BalancerCluster document: `name`, its `members` (flow mappings' bodies), and `spec`
/// lines after them (indented by two spaces).
fn cluster(name: &str, members: &[String], spec: &str) -> String {
    let members: Vec<String> = members.iter().map(|m| format!("{{{m}}}")).collect();
    format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: {name}}}\nspec:\n  members: [{}]\n{spec}\n---\n",
        members.join(", ")
    )
}

async fn get(proxy: &Proxy, path: &str) -> Answer {
    send(&client(), "GET", &proxy.url(path), &[], "").await
}

async fn post(proxy: &Proxy, path: &str, body: &str) -> Answer {
    send(&client(), "POST", &proxy.url(path), &[], body.to_owned()).await
}

/// A listed status is tried again on the same member (the only one) and the client gets the
/// second answer; a status not listed, or a route without `retry`, gives the first answer as it
/// came, after exactly one request.
#[tokio::test]
async fn a_listed_status_is_tried_again_and_others_are_not() {
    let member = Scripted::start().await;
    let yaml = cluster(
        "web",
        &[format!("url: '{}'", member.url())],
        "  routes:\n  - {pathPrefix: /retried, retry: {codes: [503], attempts: 2}}\n  - {pathPrefix: /unlisted, retry: {codes: [500, 502], attempts: 2}}\n  - {pathPrefix: /plain}",
    );
    let proxy = Proxy::start(&yaml);

    let retried = get(&proxy, "/retried/first-503").await;
    assert_eq!(
        (retried.status, retried.body.as_str()),
        (StatusCode::OK, "answer 2")
    );
    assert_eq!(member.on("/retried/first-503").len(), 2);

    for path in ["/unlisted/first-503", "/plain/first-503"] {
        let answer = get(&proxy, path).await;
        // The member's own 503, not the proxy's.
        assert_eq!(
            (answer.status, answer.backend.as_str(), answer.body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "scripted", "answer 1"),
            "{path}"
        );
        assert_eq!(member.on(path).len(), 1, "{path}");
    }
}

/// `attempts` bounds the tries again, in place of the cluster's `failover.maxAttempts` (here
/// larger): a member that always answers 503 gets exactly 1 + attempts requests, and the client
/// the last answer.
#[tokio::test]
async fn attempts_bound_the_tries_in_place_of_max_attempts() {
    let member = Scripted::start().await;
    let yaml = cluster(
        "web",
        &[format!("url: '{}'", member.url())],
        "  failover: {maxAttempts: 5}\n  routes:\n  - {pathPrefix: /two, retry: {codes: [503], attempts: 2}}\n  - {pathPrefix: /default, retry: {codes: [503]}}",
    );
    let proxy = Proxy::start(&yaml);

    let answer = get(&proxy, "/two/always-503").await;
    assert_eq!(
        (answer.status, answer.backend.as_str(), answer.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "scripted", "answer 3")
    );
    assert_eq!(member.on("/two/always-503").len(), 3);

    // Without `attempts`: one try again.
    let answer = get(&proxy, "/default/always-503").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "answer 2")
    );
    assert_eq!(member.on("/default/always-503").len(), 2);
}

/// Each try again waits at least `backoff` after the answer it follows: the member sees the
/// requests at least that far apart. (Only the lower bound is checked: a busy machine may
/// make the gap longer, never shorter.)
#[tokio::test]
async fn tries_again_are_at_least_backoff_apart() {
    let backoff = Duration::from_millis(200);
    let member = Scripted::start().await;
    let yaml = cluster(
        "web",
        &[format!("url: '{}'", member.url())],
        "  routes:\n  - {pathPrefix: /paced, retry: {codes: [503], attempts: 2, backoff: 200ms}}",
    );
    let proxy = Proxy::start(&yaml);

    let answer = get(&proxy, "/paced/always-503").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let seen = member.on("/paced/always-503");
    assert_eq!(seen.len(), 3);
    for pair in seen.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= backoff,
            "{gap:?} between tries, less than {backoff:?}"
        );
    }
}

/// A connection error is tried again on the next member: with `failover.maxAttempts: 0` only
/// the route's `retry` allows it. The refusing member comes first (lower `lbset`). A POST with a
/// body goes too, since nothing of it reached the refusing member. Each cluster has its own
/// members' health, so each starts with the refusing member usable.
#[tokio::test]
async fn a_connection_error_is_tried_again_on_the_live_member() {
    let (refusing, _reserved) = refusing_port();
    let live = Backend::start("live").await;
    let members = [
        format!("url: 'http://{refusing}', lbset: 0"),
        format!("url: '{}', lbset: 1", live.url()),
    ];
    let spec = |prefix: &str, retry: &str| {
        format!("  failover: {{maxAttempts: 0}}\n  routes:\n  - {{pathPrefix: {prefix}{retry}}}")
    };
    let yaml = [
        cluster("plain", &members, &spec("/plain", "")),
        cluster("get", &members, &spec("/get", ", retry: {attempts: 1}")),
        cluster("post", &members, &spec("/upload", ", retry: {attempts: 1}")),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);

    // Without `retry`, the proxy's 502 and nothing reaches the live member.
    let plain = get(&proxy, "/plain/x").await;
    assert_eq!(
        (plain.status, plain.backend.as_str()),
        (StatusCode::BAD_GATEWAY, "")
    );
    assert_eq!(live.hits(), 0);

    let answer = get(&proxy, "/get/x").await;
    assert_eq!(
        (answer.status, answer.backend.as_str()),
        (StatusCode::OK, "live")
    );
    assert_eq!(live.hits(), 1);

    // The live member's `/upload` says how much of the body it got.
    let answer = post(&proxy, "/upload", "a=1").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "live got 3 bytes")
    );
    assert_eq!(live.hits(), 2);
}

/// A try that gets no answer head within `timeouts.backendRequest` is tried again; the member
/// answers the second at once. Without `retry`, the client gets the proxy's 504 after one try.
#[tokio::test]
async fn a_try_past_the_backend_timeout_is_tried_again() {
    let member = Scripted::start().await;
    let yaml = cluster(
        "web",
        &[format!("url: '{}'", member.url())],
        "  routes:\n  - {pathPrefix: /retried, timeouts: {backendRequest: 300ms}, retry: {attempts: 1}}\n  - {pathPrefix: /plain, timeouts: {backendRequest: 300ms}}",
    );
    let proxy = Proxy::start(&yaml);

    let answer = get(&proxy, "/retried/first-hold").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "answer 2")
    );
    assert_eq!(member.on("/retried/first-hold").len(), 2);

    let plain = get(&proxy, "/plain/first-hold").await;
    assert_eq!(
        (plain.status, plain.backend.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "")
    );
    assert_eq!(member.on("/plain/first-hold").len(), 1);
}

/// A request is sent again only when it can be sent whole, as in any failover: towards an
/// HTTP/1 member a body is streamed, not kept, so a POST with a body that got a listed status
/// gets that answer (one request); a POST without a body is tried again; towards an h2c member
/// the body is kept while tries remain, and the POST goes again with its whole body.
#[tokio::test]
async fn a_post_is_tried_again_only_when_its_body_can_be_sent_again() {
    let member = Scripted::start().await;
    let url = format!("url: '{}'", member.url());
    let yaml = [
        cluster(
            "http1",
            std::slice::from_ref(&url),
            "  routes:\n  - {pathPrefix: /http1, retry: {codes: [503], attempts: 2}}",
        ),
        cluster(
            "h2c",
            std::slice::from_ref(&url),
            "  protocol: h2c\n  routes:\n  - {pathPrefix: /h2c, retry: {codes: [503], attempts: 2}}",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);

    let with_body = post(&proxy, "/http1/first-503", "a=1").await;
    assert_eq!(
        (with_body.status, with_body.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "answer 1")
    );
    let seen = member.on("/http1/first-503");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), &seen[0].body[..]),
        ("POST", &b"a=1"[..])
    );

    let bodiless = post(&proxy, "/http1/first-503/empty", "").await;
    assert_eq!(
        (bodiless.status, bodiless.body.as_str()),
        (StatusCode::OK, "answer 2")
    );
    assert_eq!(member.on("/http1/first-503/empty").len(), 2);

    let over_h2c = post(&proxy, "/h2c/first-503", "a=1").await;
    assert_eq!(
        (over_h2c.status, over_h2c.body.as_str()),
        (StatusCode::OK, "answer 2")
    );
    let seen = member.on("/h2c/first-503");
    let bodies: Vec<&[u8]> = seen.iter().map(|s| &s.body[..]).collect();
    assert_eq!(bodies, [&b"a=1"[..], &b"a=1"[..]]);
}
