//! A route's filters applied to a request and its answer: CORS, redirects, URL rewrites, header
//! modifiers, mirrors and timeouts (the Gateway API's HTTPRoute filters; the data and the pure
//! parts are `plane::filters`). A rule without filters costs nothing here: the request core
//! only comes here when [`Applied`] exists.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;

use super::client::Client;
use super::error::ProxyError;
use super::headers::Forwarding;
use super::http1::LeanHead;
use super::response::ResponseBody;
use super::upstream::body::RequestBody;
use super::upstream::exchange::Replay;
use super::upstream::lease::Lease;
use super::upstream::{self, Upstream};
use super::worker::Worker;
use crate::clock;
use crate::plane::Cluster;
use crate::plane::filters::{Cors, Filters, Mirror, Origin};
use crate::plane::routes::Rule;

/// What a request's rule asks of the proxy beyond choosing its cluster.
pub struct Applied {
    pub rule: Arc<Rule>,
    /// The backend of `rule` chosen, by index.
    pub backend: usize,
    /// The request's Origin, when the rule answers CORS.
    origin: Option<HeaderValue>,
}

impl Applied {
    /// For a rule and backend with something to do; `None` (most routes) costs nothing.
    pub fn of(rule: &Arc<Rule>, backend: usize) -> Option<Box<Applied>> {
        let backend_filters = rule.backends.get(backend).map(|b| &b.filters);
        let idle = rule.filters.is_empty()
            && backend_filters.is_none_or(Filters::is_empty)
            && rule.request_timeout.is_none()
            && rule.backend_timeout.is_none();
        (!idle).then(|| {
            Box::new(Applied {
                rule: rule.clone(),
                backend,
                origin: None,
            })
        })
    }

    fn filters(&self) -> impl Iterator<Item = &Filters> {
        std::iter::once(&self.rule.filters)
            .chain(self.rule.backends.get(self.backend).map(|b| &b.filters))
    }

    /// The whole request's time limit (all tries).
    pub fn request_timeout(&self) -> Option<Duration> {
        self.rule.request_timeout
    }

    /// Each try's time limit, instead of the cluster's response timeout.
    pub fn backend_timeout(&self) -> Option<Duration> {
        self.rule.backend_timeout
    }
}

/// What the request filters need to know of where the request came from.
pub struct Context<'a> {
    pub worker: &'a Worker,
    pub client: &'a Client,
    /// The Host (or an absolute target's authority), as it came.
    pub host: Option<&'a HeaderValue>,
    /// What the route's PathPrefix matched.
    pub prefix: Option<&'a str>,
}

/// Applies the rule's request filters, in the Gateway API's order: a CORS preflight and a
/// redirect answer at once (`Err`); a rewrite, header modifiers and mirrors change or copy the
/// request. A lean head's fields are moved into the header map first when they must change.
pub fn before(
    applied: &mut Applied,
    req: &mut Request<RequestBody>,
    lean: &mut Option<LeanHead>,
    cx: &Context<'_>,
) -> Result<(), ProxyError> {
    let cors = applied.filters().find_map(|f| f.cors.as_ref()).cloned();
    if let Some(cors) = &cors {
        applied.origin = header_of(req, lean.as_ref(), &header::ORIGIN);
        if let Some(headers) = preflight(cors, req, lean.as_ref(), applied.origin.as_ref()) {
            return Err(ProxyError::Preflight(Box::new(headers)));
        }
    }
    if let Some(redirect) = applied.filters().find_map(|f| f.redirect.as_ref()) {
        return Err(redirect_to(redirect, req, cx));
    }
    let mirrors = applied.filters().any(|f| !f.mirrors.is_empty());
    let changes_fields = mirrors
        || applied.filters().any(|f| {
            f.request_headers.is_some() || f.rewrite.as_ref().is_some_and(|r| r.hostname.is_some())
        });
    if changes_fields && let Some(head) = lean.take() {
        head.fields.fill(req.headers_mut());
    }
    for filters in applied.filters() {
        if let Some(rewrite) = &filters.rewrite {
            if let Some(path) = &rewrite.path {
                rewrite_path(req, &path.apply(req.uri().path(), cx.prefix));
            }
            if let Some(host) = &rewrite.hostname {
                req.headers_mut().insert(header::HOST, host.clone());
            }
        }
        if let Some(modifier) = &filters.request_headers {
            modifier.apply(req.headers_mut());
        }
    }
    if mirrors {
        let mirrors: Vec<&Mirror> = applied.filters().flat_map(|f| &f.mirrors).collect();
        let forwarding = Forwarding::new(
            cx.client.forwarded_for.clone(),
            cx.host.cloned(),
            cx.client.entry.tls,
        );
        mirror(&mirrors, req, forwarding, cx.worker);
    }
    Ok(())
}

/// Applies the rule's answer filters: header modifiers and CORS fields.
pub fn after(applied: &Applied, response: &mut Response<ResponseBody>) {
    let modifiers: Vec<_> = applied
        .filters()
        .filter_map(|f| f.response_headers.as_ref())
        .collect();
    let cors = applied.filters().find_map(|f| f.cors.as_ref());
    if modifiers.is_empty() && cors.is_none() {
        return;
    }
    // The member's fields as it wrote them go into the map, to be changed there.
    if let Some(raw) = response.body_mut().take_raw_head() {
        let added = std::mem::take(response.headers_mut());
        *response.headers_mut() = raw.into_map(added);
    }
    for modifier in modifiers {
        modifier.apply(response.headers_mut());
    }
    if let (Some(cors), Some(origin)) = (cors, &applied.origin) {
        allow(cors, origin, response.headers_mut());
    }
}

fn header_of(
    req: &Request<RequestBody>,
    lean: Option<&LeanHead>,
    name: &HeaderName,
) -> Option<HeaderValue> {
    match lean {
        Some(head) => {
            let mut found = None;
            head.fields.any_value(name.as_str().as_bytes(), &mut |v| {
                found = HeaderValue::from_bytes(v).ok();
                true
            });
            found
        }
        None => req.headers().get(name).cloned(),
    }
}

/// The fields of the proxy's answer (204) to a CORS preflight from an allowed origin. One from
/// an origin not allowed goes on to the member, as any request, and gets no CORS fields.
fn preflight(
    cors: &Cors,
    req: &Request<RequestBody>,
    lean: Option<&LeanHead>,
    origin: Option<&HeaderValue>,
) -> Option<HeaderMap> {
    if req.method() != Method::OPTIONS {
        return None;
    }
    let method = header_of(req, lean, &header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let allowed = cors.allowed_origin(origin?.to_str().ok()?)?;
    let mut fields = HeaderMap::new();
    let headers = &mut fields;
    insert(headers, header::ACCESS_CONTROL_ALLOW_ORIGIN, &allowed);
    let methods = match cors.allow_methods.iter().any(|m| m == "*") {
        true => method.to_str().unwrap_or("*").to_owned(),
        false => cors.allow_methods.join(", "),
    };
    insert(headers, header::ACCESS_CONTROL_ALLOW_METHODS, &methods);
    let requested = header_of(req, lean, &header::ACCESS_CONTROL_REQUEST_HEADERS);
    let allow_headers = match cors.allow_headers.iter().any(|h| h == "*") {
        true => requested.and_then(|h| h.to_str().ok().map(str::to_owned)),
        false => (!cors.allow_headers.is_empty()).then(|| cors.allow_headers.join(", ")),
    };
    if let Some(allow_headers) = allow_headers {
        insert(
            headers,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &allow_headers,
        );
    }
    if !cors.expose_headers.is_empty() {
        insert(
            headers,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.expose_headers.join(", "),
        );
    }
    if let Some(max_age) = cors.max_age {
        insert(
            headers,
            header::ACCESS_CONTROL_MAX_AGE,
            &max_age.to_string(),
        );
    }
    if cors.allow_credentials {
        insert(headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    Some(fields)
}

/// The CORS fields of an answer to a request from an allowed origin.
fn allow(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    let Some(allowed) = origin.to_str().ok().and_then(|o| cors.allowed_origin(o)) else {
        return;
    };
    insert(headers, header::ACCESS_CONTROL_ALLOW_ORIGIN, &allowed);
    if cors.allow_credentials {
        insert(headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if !cors.expose_headers.is_empty() {
        insert(
            headers,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.expose_headers.join(", "),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A route's RequestRedirect, answered by the proxy.
fn redirect_to(
    redirect: &crate::plane::filters::Redirect,
    req: &Request<RequestBody>,
    cx: &Context<'_>,
) -> ProxyError {
    let host = cx.host.and_then(|h| h.to_str().ok()).unwrap_or("");
    let host = crate::plane::routes::strip_port(host.as_bytes());
    let host = std::str::from_utf8(host).unwrap_or("");
    let origin = Origin {
        scheme: if cx.client.entry.tls { "https" } else { "http" },
        host,
        port: cx.client.entry.port,
        path: req.uri().path(),
        query: req.uri().query(),
        prefix: cx.prefix,
    };
    let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    match HeaderValue::from_str(&redirect.location(&origin)) {
        Ok(location) if !host.is_empty() || redirect.hostname.is_some() => {
            ProxyError::Redirect { status, location }
        }
        _ => ProxyError::NoHost,
    }
}

/// Gives the request a new path, keeping its query.
fn rewrite_path(req: &mut Request<RequestBody>, path: &str) {
    let target = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    if let Ok(uri) = Uri::try_from(target) {
        *req.uri_mut() = uri;
    }
}

/// Sends copies of a body-less request to the mirrors, each for its share of requests; their
/// answers are read and dropped on tasks of their own, never holding up the request. A request
/// with a body is not mirrored (the body streams to its member once; docs/gateway.md).
fn mirror(
    mirrors: &[&Mirror],
    req: &Request<RequestBody>,
    forwarding: Forwarding,
    worker: &Worker,
) {
    if !req.body().is_end_stream() {
        return;
    }
    let snapshot = worker.plane.snapshot_full();
    for m in mirrors {
        if !worker.sample(m.numerator, m.denominator) {
            continue;
        }
        let Some(cluster) = snapshot
            .clusters
            .iter()
            .find(|c| c.key == m.cluster)
            .cloned()
        else {
            continue;
        };
        let copy = Replay::of(req);
        let forwarding = forwarding.clone();
        tokio::task::spawn_local(mirrored(worker.pool.clone(), cluster, copy, forwarding));
    }
}

async fn mirrored(
    pool: Rc<upstream::pool::Pool>,
    cluster: Arc<Cluster>,
    copy: Replay,
    forwarding: Forwarding,
) {
    let now = clock::now_ms();
    let Some(index) = cluster.balancer.pick_for(now, &[], &Default::default()) else {
        return;
    };
    let config = &cluster.config;
    let member = &config.members[index];
    let stats = &cluster.balancer.members()[index].stats;
    stats.elected.fetch_add(1, Relaxed);
    let _lease = Lease::new(stats.clone());
    let key = pool.member(&member.authority);
    let mut req = copy.request();
    let mut lean = None;
    let started = tokio::time::Instant::now();
    let sent = upstream::send(
        Upstream::for_member(Upstream::Hyper, member.protocol, false),
        &key,
        config,
        config.policy.limits_of(index),
        &mut req,
        &mut lean,
        &forwarding,
        started,
        started + config.response_timeout,
        None,
    );
    if let Ok((_, response)) = sent.await {
        let mut body = response.into_body();
        while let Some(Ok(_)) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {}
    }
}
