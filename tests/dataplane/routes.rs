//! BalancerCluster routes with HTTPRoute's powers (issue 20), end to end: standalone YAML through
//! the real data plane, real HTTP backends on 127.0.0.1 that echo what they were sent, and a
//! real HTTP client. Every test runs under both HTTP/1 implementations (`--http1 fast` and
//! `--http1 hyper`), since the lean path keeps fields as written and the filters must see and
//! change them all the same.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use kube_balancer::proxy::Http1Mode;

use crate::support::client::{self as http_client, Body, client, full};
use crate::support::proxy::Proxy;
use crate::support::wait::{WAIT as LIMIT, until as wait_for};

const MODES: [Http1Mode; 2] = [Http1Mode::Fast, Http1Mode::Hyper];

/// A real HTTP backend that says what it was sent. Every answer carries `x-backend: NAME`,
/// `server: echo`, `x-remove-me: 1` and `x-set: old`. Paths:
/// - a path holding `/hold`, on a backend started with [`Echo::holding`]: waits until the test releases it
///   ([`Echo::release`]), then answers as below;
/// - a path holding `/redirect-self`: 302 to `http://ITS-OWN-ADDRESS/login`, `Content-Location: /doc`;
/// - anything else: 200, the body `METHOD TARGET` and then every field as `name: value` lines.
struct Echo {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start(name: &str) -> Echo {
        Echo::serve(name, false).await
    }

    async fn holding(name: &str) -> Echo {
        Echo::serve(name, true).await
    }

    async fn serve(name: &str, holds: bool) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let (name, h, hd, g) = (name.to_owned(), hits.clone(), held.clone(), gate.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, hits, held, gate) = (name.clone(), h.clone(), hd.clone(), g.clone());
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let gate = holds.then(|| gate.clone());
                        echo(name.clone(), addr, held.clone(), gate, req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Echo {
            addr,
            hits,
            held,
            gate,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests waiting on `/hold` now.
    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(
    name: String,
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(gate) = gate.filter(|_| path.contains("/hold")) {
        // Counted down however the wait ends: released, or dropped when the proxy closes the
        // connection.
        struct Held(Arc<AtomicUsize>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        held.fetch_add(1, Ordering::SeqCst);
        let _held = Held(held);
        if let Ok(permit) = gate.acquire().await {
            permit.forget();
        }
    }
    let mut response = if path.contains("/redirect-self") {
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::FOUND;
        let location = format!("http://{addr}/login");
        r.headers_mut()
            .insert("location", location.parse().expect("a value"));
        r.headers_mut()
            .insert("content-location", HeaderValue::from_static("/doc"));
        r
    } else {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut text = format!("{} {target}\n", req.method());
        for (k, v) in req.headers() {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        Response::new(full(text))
    };
    let headers = response.headers_mut();
    headers.insert("x-backend", name.parse().expect("a value"));
    headers.insert("server", HeaderValue::from_static("echo"));
    headers.insert("x-remove-me", HeaderValue::from_static("1"));
    headers.insert("x-set", HeaderValue::from_static("old"));
    Ok(response)
}

/// An answer as the client saw it.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("(the proxy)")
    }

    /// The values of a request field, as the echo backend listed them.
    fn sent(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{name}: ");
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The request line's target the backend received.
    fn target(&self) -> &str {
        self.body
            .lines()
            .next()
            .and_then(|l| l.split_once(' '))
            .map_or("", |(_, t)| t)
    }
}

/// Sends one request through the proxy with a real client (its own connection) and reads the
/// whole answer.
async fn send(proxy: &Proxy, method: Method, target: &str, fields: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(proxy.url(target));
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    let req = req
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a request");
    let response = tokio::time::timeout(LIMIT, client().request(req))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(proxy: &Proxy, target: &str, fields: &[(&str, &str)]) -> Answer {
    send(proxy, Method::GET, target, fields).await
}

/// A BalancerCluster document: `name`, one member, and `spec` lines after `members`.
fn cluster(name: &str, member: &Echo, spec: &str) -> String {
    format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: {name}}}\nspec:\n  members: [{{url: '{}'}}]\n{spec}\n---\n",
        member.url()
    )
}

fn start(yaml: &str, mode: Http1Mode) -> Proxy {
    Proxy::start_with(yaml, |o| o.http1 = mode)
}

/// A request (method, target, fields) and the backend that should answer it.
type Case = (
    Method,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn each_match_kind_and_the_precedence_between_them() {
    let names = [
        "exact",
        "regex",
        "prefix",
        "header",
        "query",
        "method",
        "regex-header",
    ];
    let mut backends = Vec::new();
    for name in names {
        backends.push(Echo::start(name).await);
    }
    let specs = [
        "  routes: [{match: {path: {type: Exact, value: /items/special}}}]",
        "  routes: [{match: {path: {type: RegularExpression, value: '/items/[0-9]+'}}}]",
        "  routes: [{pathPrefix: /items}]",
        "  routes: [{match: {path: {value: /items}, headers: [{name: X-Version, value: '2'}]}}]",
        "  routes: [{match: {path: {value: /items}, queryParams: [{name: debug, value: 'on'}]}}]",
        "  routes: [{match: {path: {value: /items}, method: POST}}]",
        "  routes: [{pathPrefix: /other, match: {headers: [{type: RegularExpression, name: x-user, value: 'admin-[a-z]+'}]}}]",
    ];
    let yaml: String = names
        .iter()
        .zip(&backends)
        .zip(specs)
        .map(|((name, b), spec)| cluster(name, b, spec))
        .collect();
    // The last one has a path prefix and a match without a path: both may be given.
    for mode in MODES {
        let proxy = start(&yaml, mode);
        let cases: [Case; 11] = [
            // An Exact path beats an expression, which beats a prefix.
            (Method::GET, "/items/special", &[], "exact"),
            (Method::GET, "/items/42", &[], "regex"),
            (Method::GET, "/items/42x", &[], "prefix"),
            (Method::GET, "/items", &[], "prefix"),
            // On the same prefix: a method beats headers, which beat query parameters.
            (Method::GET, "/items/x", &[("x-version", "2")], "header"),
            (Method::GET, "/items/x?debug=on", &[], "query"),
            (
                Method::GET,
                "/items/x?debug=on",
                &[("X-VERSION", "2")],
                "header",
            ),
            (Method::POST, "/items/x", &[("x-version", "2")], "method"),
            (
                Method::GET,
                "/items/x?debug=off",
                &[("x-version", "3")],
                "prefix",
            ),
            (
                Method::GET,
                "/other/page",
                &[("x-user", "admin-root")],
                "regex-header",
            ),
            // The expression matches whole values only.
            (
                Method::GET,
                "/other/page",
                &[("x-user", "admin-root2")],
                "(the proxy)",
            ),
        ];
        for (method, target, fields, wanted) in cases {
            let answer = send(&proxy, method.clone(), target, fields).await;
            assert_eq!(
                answer.backend(),
                wanted,
                "{mode:?}: {method} {target} {fields:?}"
            );
        }
        assert_eq!(
            get(&proxy, "/nowhere", &[]).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn request_and_answer_fields_are_set_added_and_removed() {
    let web = Echo::start("web").await;
    let yaml = cluster(
        "web",
        &web,
        "  routes:\n  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: X-Set, value: new}]\n        add: [{name: X-Add, value: two}]\n        remove: [X-Remove]\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        set: [{name: x-set, value: new}]\n        add: [{name: X-Added, value: 'yes'}]\n        remove: [X-Remove-Me, Server]",
    );
    for mode in MODES {
        let proxy = start(&yaml, mode);
        let answer = get(
            &proxy,
            "/",
            &[
                ("x-set", "old"),
                ("x-add", "one"),
                ("x-remove", "gone"),
                ("x-kept", "kept"),
            ],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{mode:?}");
        assert_eq!(answer.sent("x-set"), ["new"], "{mode:?}");
        assert_eq!(answer.sent("x-add"), ["one", "two"], "{mode:?}");
        assert!(answer.sent("x-remove").is_empty(), "{mode:?}");
        assert_eq!(answer.sent("x-kept"), ["kept"], "{mode:?}");
        assert_eq!(answer.header("x-set"), Some("new"), "{mode:?}");
        assert_eq!(answer.header("x-added"), Some("yes"), "{mode:?}");
        assert_eq!(answer.header("x-remove-me"), None, "{mode:?}");
        assert_eq!(answer.header("server"), None, "{mode:?}");
        assert_eq!(answer.backend(), "web", "{mode:?}");
    }
}

#[tokio::test]
async fn redirects_answer_with_each_status_scheme_host_port_and_path() {
    let web = Echo::start("web").await;
    let redirect = |path: &str, spec: &str| {
        format!(
            "  - {{pathPrefix: {path}, filters: [{{type: RequestRedirect, requestRedirect: {spec}}}]}}\n"
        )
    };
    let routes = [
        redirect("/r301", "{statusCode: 301, scheme: https}"),
        redirect("/r302", "{hostname: other.example, port: 8443}"),
        redirect(
            "/r303",
            "{statusCode: 303, path: {type: ReplaceFullPath, replaceFullPath: /new}}",
        ),
        redirect(
            "/r307",
            "{statusCode: 307, path: {type: ReplacePrefixMatch, replacePrefixMatch: /moved}}",
        ),
        redirect(
            "/r308",
            "{statusCode: 308, scheme: https, port: 8443, hostname: secure.example}",
        ),
    ]
    .concat();
    let yaml = cluster("web", &web, &format!("  routes:\n{routes}"));
    for mode in MODES {
        let proxy = start(&yaml, mode);
        let port = proxy.addr.port();
        for (target, status, location) in [
            (
                "/r301/a?q=1",
                301,
                "https://127.0.0.1/r301/a?q=1".to_owned(),
            ),
            (
                "/r302/a?q=1",
                302,
                "http://other.example:8443/r302/a?q=1".to_owned(),
            ),
            (
                "/r303/a?q=1",
                303,
                format!("http://127.0.0.1:{port}/new?q=1"),
            ),
            (
                "/r307/a/b",
                307,
                format!("http://127.0.0.1:{port}/moved/a/b"),
            ),
            ("/r308", 308, "https://secure.example:8443/r308".to_owned()),
        ] {
            let answer = get(&proxy, target, &[]).await;
            assert_eq!(answer.status.as_u16(), status, "{mode:?} {target}");
            assert_eq!(
                answer.header("location"),
                Some(location.as_str()),
                "{mode:?} {target}"
            );
        }
    }
    assert_eq!(web.hits(), 0, "a redirect never reaches a member");
}

#[tokio::test]
async fn rewrites_change_the_path_prefix_the_whole_path_and_the_host() {
    let web = Echo::start("web").await;
    let yaml = cluster(
        "web",
        &web,
        "  routes:\n  - {pathPrefix: /app, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]}\n  - {pathPrefix: /v1, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api/v2}}}]}\n  - {pathPrefix: /fixed, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one/page}}}]}\n  - {pathPrefix: /host, filters: [{type: URLRewrite, urlRewrite: {hostname: backend.internal}}]}",
    );
    for mode in MODES {
        let proxy = start(&yaml, mode);
        for (target, wanted) in [
            ("/app/x/y?q=1", "/x/y?q=1"),
            ("/app", "/"),
            ("/v1/users", "/api/v2/users"),
            ("/fixed/anything?q=2", "/one/page?q=2"),
        ] {
            let answer = get(&proxy, target, &[]).await;
            assert_eq!(answer.target(), wanted, "{mode:?} {target}");
        }
        let host = get(&proxy, "/host/x", &[]).await;
        assert_eq!(host.sent("host"), ["backend.internal"], "{mode:?}");
        assert_eq!(host.target(), "/host/x", "{mode:?}");
        // The client's host still goes as X-Forwarded-Host.
        assert_eq!(
            host.sent("x-forwarded-host"),
            [format!("127.0.0.1:{}", proxy.addr.port()).as_str()],
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn a_mirror_gets_a_copy_and_the_client_never_waits_for_it() {
    let web = Echo::start("web").await;
    let shadow = Echo::holding("shadow").await;
    let none = Echo::start("none").await;
    let yaml = [
        cluster(
            "web",
            &web,
            "  routes:\n  - pathPrefix: /\n    filters:\n    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}\n    - {type: RequestMirror, requestMirror: {backendRef: {name: none}, fraction: {numerator: 0, denominator: 5}}}",
        ),
        cluster("shadow", &shadow, "  routes: []"),
        cluster("none", &none, "  routes: []"),
    ]
    .concat();
    for (round, mode) in MODES.into_iter().enumerate() {
        let proxy = start(&yaml, mode);
        // The mirror holds its copy until released: the client's answer comes meanwhile.
        let answer = get(&proxy, "/hold/1?x=1", &[("x-trace", "abc")]).await;
        assert_eq!(
            (answer.status, answer.backend()),
            (StatusCode::OK, "web"),
            "{mode:?}"
        );
        // The member got the request and answered; the copy is still held at the mirror.
        wait_for("the copy to reach the mirror", LIMIT, || shadow.held() == 1).await;
        assert_eq!(shadow.hits(), round + 1, "{mode:?}");
        shadow.release(1);
        wait_for("the mirror to answer", LIMIT, || shadow.held() == 0).await;
        assert_eq!(none.hits(), 0, "{mode:?}: a fraction of 0 mirrors nothing");
    }
    assert_eq!(web.held(), 0);
}

#[tokio::test]
async fn cors_preflights_are_answered_and_simple_requests_get_the_fields() {
    let web = Echo::start("web").await;
    let yaml = cluster(
        "web",
        &web,
        "  routes:\n  - filters:\n    - type: CORS\n      cors:\n        allowOrigins: ['https://app.example', 'https://*.shop.example']\n        allowMethods: [GET, POST]\n        allowHeaders: [X-Token]\n        exposeHeaders: [X-Backend]\n        allowCredentials: true\n        maxAge: 600",
    );
    for mode in MODES {
        let proxy = start(&yaml, mode);
        let before = web.hits();
        let preflight = send(
            &proxy,
            Method::OPTIONS,
            "/api",
            &[
                ("origin", "https://a.shop.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-token"),
            ],
        )
        .await;
        assert_eq!(preflight.status, StatusCode::NO_CONTENT, "{mode:?}");
        for (name, wanted) in [
            ("access-control-allow-origin", "https://a.shop.example"),
            ("access-control-allow-methods", "GET, POST"),
            ("access-control-allow-headers", "X-Token"),
            ("access-control-max-age", "600"),
            ("access-control-allow-credentials", "true"),
        ] {
            assert_eq!(preflight.header(name), Some(wanted), "{mode:?} {name}");
        }
        assert_eq!(
            web.hits(),
            before,
            "{mode:?}: the proxy answers a preflight"
        );

        // A preflight from an origin not allowed is answered too, without a CORS field: the
        // member never sees it (the Gateway API's HTTPRouteCORS asks this of HTTPRoutes).
        let before = web.hits();
        let foreign = send(
            &proxy,
            Method::OPTIONS,
            "/api",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        )
        .await;
        assert_eq!(foreign.status, StatusCode::NO_CONTENT, "{mode:?}");
        assert_eq!(foreign.header("access-control-allow-origin"), None);
        assert_eq!(foreign.header("access-control-allow-methods"), None);
        assert_eq!(
            web.hits(),
            before,
            "{mode:?}: the proxy answers any preflight"
        );

        let simple = get(&proxy, "/api", &[("origin", "https://app.example")]).await;
        assert_eq!(simple.backend(), "web", "{mode:?}");
        assert_eq!(
            simple.header("access-control-allow-origin"),
            Some("https://app.example"),
            "{mode:?}"
        );
        assert_eq!(
            simple.header("access-control-expose-headers"),
            Some("X-Backend")
        );
        assert_eq!(simple.header("vary"), Some("origin"), "{mode:?}");
        let no_origin = get(&proxy, "/api", &[]).await;
        assert_eq!(no_origin.header("access-control-allow-origin"), None);
    }
}

#[tokio::test]
async fn request_and_backend_timeouts_give_504_while_the_member_still_holds_the_request() {
    let web = Echo::holding("web").await;
    let yaml = cluster(
        "web",
        &web,
        "  routes:\n  - {pathPrefix: /whole, timeouts: {request: 1s}}\n  - {pathPrefix: /try, timeouts: {backendRequest: 1s}}\n  - {pathPrefix: /none, timeouts: {request: 0s}}",
    );
    for mode in MODES {
        let proxy = start(&yaml, mode);
        for target in ["/whole/hold", "/try/hold"] {
            let hits = web.hits();
            let answer = get(&proxy, target, &[]).await;
            // The member received it and was never let go: the 504 did not wait for it.
            assert_eq!(
                answer.status,
                StatusCode::GATEWAY_TIMEOUT,
                "{mode:?} {target}"
            );
            assert_eq!(web.hits(), hits + 1, "{mode:?} {target}");
            // And the proxy gave up the member's exchange (closing its connection).
            wait_for("the proxy to let the member go", LIMIT, || web.held() == 0).await;
        }
        // Zero is no limit: the request waits for its member.
        let proxy_addr = proxy.url("/none/hold");
        let waiting = tokio::spawn(async move { http_client::get(&proxy_addr).await });
        wait_for("the request to reach the member", LIMIT, || web.held() == 1).await;
        web.release(1);
        let http_client::Answer {
            status, backend, ..
        } = waiting.await.expect("join");
        assert_eq!(
            (status, backend.as_str()),
            (StatusCode::OK, "web"),
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn proxy_pass_reverse_points_a_members_redirect_back_at_the_route() {
    let web = Echo::start("web").await;
    let yaml = cluster(
        "web",
        &web,
        "  routes:\n  - {pathPrefix: /app, proxyPassReverse: true, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]}\n  - {pathPrefix: /plain}",
    );
    for mode in MODES {
        let proxy = start(&yaml, mode);
        let answer = get(
            &proxy,
            "/app/redirect-self",
            &[("host", "shop.example:8080")],
        )
        .await;
        assert_eq!(answer.status, StatusCode::FOUND, "{mode:?}");
        assert_eq!(
            answer.header("location"),
            Some("http://shop.example:8080/app/login"),
            "{mode:?}"
        );
        assert_eq!(
            answer.header("content-location"),
            Some("/app/doc"),
            "{mode:?}"
        );
        // Without it, the member's own URL reaches the client.
        let plain = get(&proxy, "/plain/redirect-self", &[]).await;
        assert_eq!(
            plain.header("location"),
            Some(format!("http://{}/login", web.addr).as_str()),
            "{mode:?}"
        );
        assert_eq!(plain.header("content-location"), Some("/doc"), "{mode:?}");
    }
}

/// A body-carrying request takes hyper's path in both modes; the filters apply to it too.
#[tokio::test]
async fn a_request_with_a_body_is_filtered_too() {
    let web = Echo::start("web").await;
    let yaml = cluster(
        "web",
        &web,
        "  routes:\n  - {pathPrefix: /app, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}, {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-set, value: new}]}}]}",
    );
    for mode in MODES {
        let proxy = start(&yaml, mode);
        let req = Request::builder()
            .method(Method::POST)
            .uri(proxy.url("/app/form"))
            .header("x-set", "old")
            .body(
                Full::new(Bytes::from_static(b"a=1"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("a request");
        let response = client().request(req).await.expect("an answer");
        let http_client::Answer {
            status,
            backend,
            body,
            ..
        } = http_client::read(response).await;
        assert_eq!(
            (status, backend.as_str()),
            (StatusCode::OK, "web"),
            "{mode:?}"
        );
        assert!(body.starts_with("POST /form\n"), "{mode:?}: {body}");
        assert!(
            body.contains("x-set: new\n") && !body.contains("x-set: old"),
            "{body}"
        );
    }
}
