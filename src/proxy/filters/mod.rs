//! A route's filters applied to a request and its answer: CORS, redirects, URL rewrites, header
//! modifiers, mirrors and timeouts (the Gateway API's HTTPRoute filters; the data and the pure
//! parts are `plane::filters`). A rule without filters costs nothing here: the request core
//! only comes here when [`Applied`] exists. CORS is in [`cors`], mirrors in [`mirror`].

mod cors;
mod mirror;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, Entry as HeaderEntry, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};

use self::cors::{allow, header_of, preflight};
use self::mirror::mirror;
use super::client::Client;
use super::error::ProxyError;
use super::headers::Forwarding;
use super::http1::LeanHead;
use super::response::ResponseBody;
use super::upstream::body::RequestBody;
use super::worker::Worker;
use crate::plane::filters::{ClientSide, Filters, Mirror, Origin, PathModifier};
use crate::plane::routes::{Retry, Rule};

/// What a request's rule asks of the proxy beyond choosing its cluster.
pub struct Applied {
    pub rule: Arc<Rule>,
    /// The backend of `rule` chosen, by index.
    pub backend: usize,
    /// The request's Origin, when the rule answers CORS.
    origin: Option<HeaderValue>,
    /// How the client reached the route, when the rule maps members' URLs back
    /// (ProxyPassReverse).
    reverse: Option<Box<Reverse>>,
}

/// What ProxyPassReverse needs of the request, kept for its answer.
struct Reverse {
    tls: bool,
    host: String,
    /// The prefix the member saw (a URLRewrite's ReplacePrefixMatch) and the client's.
    prefix: Option<(String, String)>,
}

impl Applied {
    /// For a rule and backend with something to do; `None` (most routes) costs nothing.
    pub fn of(rule: &Arc<Rule>, backend: usize) -> Option<Box<Applied>> {
        (!rule.only_forwards_to(backend)).then(|| {
            Box::new(Applied {
                rule: rule.clone(),
                backend,
                origin: None,
                reverse: None,
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

    /// The rule's retries, beyond the cluster's failover.
    pub fn retry(&self) -> Option<&Retry> {
        self.rule.retry.as_ref()
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
    if applied.filters().any(|f| f.pass_reverse.is_some()) {
        applied.reverse = Some(Box::new(reverse_of(applied, cx)));
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

/// Applies the rule's answer filters: ProxyPassReverse, header modifiers and CORS fields (a
/// modifier that sets `Location` has the last word).
pub fn after(applied: &Applied, response: &mut Response<ResponseBody>) {
    let modifiers: Vec<_> = applied
        .filters()
        .filter_map(|f| f.response_headers.as_ref())
        .collect();
    let cors = applied.filters().find_map(|f| f.cors.as_ref());
    if modifiers.is_empty() && cors.is_none() && applied.reverse.is_none() {
        return;
    }
    // The member's fields as it wrote them go into the map, to be changed there.
    if let Some(raw) = response.body_mut().take_raw_head() {
        let added = std::mem::take(response.headers_mut());
        *response.headers_mut() = raw.into_map(added);
    }
    if let Some(reverse) = &applied.reverse {
        map_back(applied, reverse, response.headers_mut());
    }
    for modifier in modifiers {
        modifier.apply(response.headers_mut());
    }
    if let (Some(cors), Some(origin)) = (cors, &applied.origin) {
        allow(cors, origin, response.headers_mut());
    }
}

/// What ProxyPassReverse keeps of the request: how the client came, and which prefix the
/// member sees in place of the route's.
fn reverse_of(applied: &Applied, cx: &Context<'_>) -> Reverse {
    let replaced = applied
        .filters()
        .find_map(|f| match &f.rewrite.as_ref()?.path {
            Some(PathModifier::ReplacePrefixMatch(member_side)) => Some(member_side.clone()),
            _ => None,
        });
    Reverse {
        tls: cx.client.entry.tls,
        host: cx
            .host
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        prefix: replaced.zip(cx.prefix.map(str::to_owned)),
    }
}

/// Apache's ProxyPassReverse on an answer's `Location`, `Content-Location` and `URI` fields:
/// those naming a member name the proxy instead (`plane::filters::PassReverse::map`).
fn map_back(applied: &Applied, reverse: &Reverse, headers: &mut HeaderMap) {
    let Some(pass) = applied.filters().find_map(|f| f.pass_reverse.as_ref()) else {
        return;
    };
    let client = ClientSide {
        scheme: if reverse.tls { "https" } else { "http" },
        host: &reverse.host,
        prefix: reverse
            .prefix
            .as_ref()
            .map(|(member, client)| (member.as_str(), client.as_str())),
    };
    for name in [
        header::LOCATION,
        header::CONTENT_LOCATION,
        HeaderName::from_static("uri"),
    ] {
        let HeaderEntry::Occupied(mut entry) = headers.entry(name) else {
            continue;
        };
        for value in entry.iter_mut() {
            let mapped = value.to_str().ok().and_then(|v| pass.map(v, &client));
            if let Some(new) = mapped.and_then(|m| HeaderValue::from_str(&m).ok()) {
                *value = new;
            }
        }
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

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::plane::filters::Cors;
    use crate::plane::filters::PassReverse;
    use crate::plane::routes::Backend;

    #[test]
    fn a_members_location_content_location_and_uri_point_back_at_the_client() {
        let filters = Filters {
            pass_reverse: Some(PassReverse {
                members: vec!["10.0.0.5:8080".into()],
                hostname: None,
            }),
            ..Filters::default()
        };
        let backend = Backend {
            cluster: Some(0),
            weight: 1,
            filters: Filters::default(),
        };
        let rule = Arc::new(Rule::new("shop/web".into(), filters, vec![backend]));
        let applied = Applied::of(&rule, 0).expect("a rule with a filter");
        // The client asked for /app/..., which the member sees as /...
        let reverse = Reverse {
            tls: true,
            host: "shop.example:8443".into(),
            prefix: Some(("/".into(), "/app".into())),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static("http://10.0.0.5:8080/login?next=%2F"),
        );
        headers.insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("/docs/1"),
        );
        headers.append("uri", HeaderValue::from_static("http://10.0.0.5:8080/a"));
        headers.append("uri", HeaderValue::from_static("http://elsewhere/b"));
        headers.insert("link", HeaderValue::from_static("http://10.0.0.5:8080/x"));
        map_back(&applied, &reverse, &mut headers);
        assert_eq!(
            headers[header::LOCATION],
            "https://shop.example:8443/app/login?next=%2F"
        );
        assert_eq!(headers[header::CONTENT_LOCATION], "/app/docs/1");
        let uris: Vec<_> = headers.get_all("uri").iter().collect();
        assert_eq!(
            uris,
            ["https://shop.example:8443/app/a", "http://elsewhere/b"]
        );
        // Only those three fields.
        assert_eq!(headers["link"], "http://10.0.0.5:8080/x");
    }

    fn options(origin: Option<&str>, method: Option<&str>) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = Method::OPTIONS;
        if let Some(origin) = origin {
            req.headers_mut()
                .insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        if let Some(method) = method {
            req.headers_mut().insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_str(method).unwrap(),
            );
        }
        req
    }

    #[test]
    fn a_preflight_is_answered_by_the_route_with_fields_only_for_an_allowed_origin() {
        let cors = Cors {
            allow_origins: vec!["https://www.foo.com".into()],
            allow_methods: vec!["GET".into()],
            ..Cors::default()
        };
        let answer = |req: &Request<RequestBody>| {
            preflight(&cors, req, None, req.headers().get(header::ORIGIN))
        };
        let allowed = answer(&options(Some("https://www.foo.com"), Some("GET")))
            .expect("answered by the route");
        assert_eq!(
            allowed[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://www.foo.com"
        );
        assert_eq!(allowed[header::ACCESS_CONTROL_ALLOW_METHODS], "GET");
        // Another origin: answered too (not sent to the member), without a CORS field.
        let refused = answer(&options(Some("https://foobar.com"), Some("GET")))
            .expect("answered by the route");
        assert!(refused.is_empty(), "{refused:?}");
        // Not a preflight: an OPTIONS without Origin or without the method asked goes on.
        assert!(answer(&options(None, Some("GET"))).is_none());
        assert!(answer(&options(Some("https://www.foo.com"), None)).is_none());
    }
}
