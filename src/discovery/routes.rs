//! A BalancerCluster's `spec.routes` as the routing core takes them: matches compiled (regular
//! expressions included), filters with their header names and values parsed, mirrors named by
//! their cluster's key, timeouts, retries. Pure.
//!
//! What the CEL rules cannot check (a regular expression's syntax, a header value's bytes, two
//! routes of one cluster that claim the same requests) is checked here: such a route is not
//! served, and the problem names it. Standalone mode refuses the file with it; in a cluster it
//! is reported in the cluster's status.

use std::time::Duration;

use http::Method;
use http::header::{HeaderName, HeaderValue};

use crate::api::text::quote;
use crate::api::{
    FilterType, HeaderModifierSpec, PathMatchSpec, PathMatchType, PathModifierSpec,
    PathModifierType, RedirectScheme, RouteFilter, RouteSpec, ValueMatchType,
};
use crate::plane::filters::{
    Cors, Filters, HeaderModifier, Mirror, PassReverse, PathModifier, Redirect, Rewrite,
};
use crate::plane::matching::{
    HeaderMatch, PathMatch, Pattern, QueryMatch, RequestMatch, ValueMatch,
};
use crate::plane::routes::Retry;

/// A route as the data plane serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteConfig {
    /// Its place in `spec.routes`.
    pub index: usize,
    /// Exact or `*.suffix`; none: any host.
    pub host: Option<String>,
    pub matched: RequestMatch,
    pub filters: Filters,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    /// HTTPRoute's `retry`, run by the cluster's failover loop.
    pub retry: Option<Retry>,
}

impl RouteConfig {
    /// The route that takes every request: a host's absence and the prefix `/`.
    pub fn everything() -> RouteConfig {
        RouteConfig::default()
    }
}

/// Why a route cannot be served as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteProblem {
    /// `spec.routes[1].match.headers[0].value`.
    pub field: String,
    pub message: String,
}

/// The routes of `spec` that can be served, and why the others cannot. `namespace` names the
/// mirrors' clusters; `members` (`host:port`) are the URLs ProxyPassReverse maps back.
pub fn route_configs(
    spec_routes: &[RouteSpec],
    namespace: &str,
    members: &[&str],
) -> (Vec<RouteConfig>, Vec<RouteProblem>) {
    let mut served: Vec<RouteConfig> = Vec::new();
    let mut problems = Vec::new();
    for (index, spec) in spec_routes.iter().enumerate() {
        let at = format!("spec.routes[{index}]");
        let route = match route_config(spec, index, namespace, members) {
            Ok(route) => route,
            Err((field, message)) => {
                problems.push(RouteProblem {
                    field: format!("{at}.{field}"),
                    message,
                });
                continue;
            }
        };
        // An earlier route of the cluster with the same host and match takes all its requests.
        let host = route.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(earlier) = served.iter().find(|r| {
            r.host.as_ref().map(|h| h.to_ascii_lowercase()) == host && r.matched == route.matched
        }) {
            problems.push(RouteProblem {
                field: at,
                message: format!(
                    "claims the same host and match as spec.routes[{}], which takes all its requests: merge the two",
                    earlier.index
                ),
            });
            continue;
        }
        served.push(route);
    }
    (served, problems)
}

type Refusal = (String, String);

fn refusal(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    (field.into(), message.into())
}

fn route_config(
    spec: &RouteSpec,
    index: usize,
    namespace: &str,
    members: &[&str],
) -> Result<RouteConfig, Refusal> {
    let matched = request_match(spec)?;
    let mut filters = Filters::default();
    for (i, filter) in spec.filters.iter().enumerate() {
        add_filter(&mut filters, filter, namespace)
            .map_err(|(field, message)| (format!("filters[{i}].{field}"), message))?;
    }
    if spec.proxy_pass_reverse {
        let mut members: Vec<String> = members.iter().map(|m| m.to_ascii_lowercase()).collect();
        members.sort_unstable();
        members.dedup();
        filters.pass_reverse = Some(PassReverse {
            members,
            hostname: filters
                .rewrite
                .as_ref()
                .and_then(|r| r.hostname.as_ref())
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase),
        });
    }
    let timeouts = spec.timeouts.as_ref();
    let nonzero =
        |d: Option<&kube::core::Duration>| d.map(|d| Duration::from(*d)).filter(|d| !d.is_zero());
    Ok(RouteConfig {
        index,
        host: spec.host.clone(),
        matched,
        filters,
        request_timeout: nonzero(timeouts.and_then(|t| t.request.as_ref())),
        backend_timeout: nonzero(timeouts.and_then(|t| t.backend_request.as_ref())),
        retry: spec.retry.as_ref().map(|r| {
            let backoff = r.backoff.map(Duration::from);
            Retry::new(r.codes.iter().copied(), r.attempts, backoff)
        }),
    })
}

fn request_match(spec: &RouteSpec) -> Result<RequestMatch, Refusal> {
    let m = spec.request_match.as_ref();
    let path = match m.and_then(|m| m.path.as_ref()) {
        Some(path) => path_match(path)?,
        None => PathMatch::prefix(spec.path_prefix.as_deref().unwrap_or("/")),
    };
    let Some(m) = m else {
        return Ok(RequestMatch {
            path,
            ..RequestMatch::default()
        });
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let at = format!("match.headers[{i}]");
            Ok(HeaderMatch {
                name: HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    refusal(
                        format!("{at}.name"),
                        format!("{} is not a header name", quote(&h.name)),
                    )
                })?,
                value: value_match(h.type_, &h.value, &format!("{at}.value"))?,
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    let query = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            Ok(QueryMatch {
                name: q.name.clone(),
                value: value_match(q.type_, &q.value, &format!("match.queryParams[{i}].value"))?,
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    let method = m
        .method
        .map(|method| {
            Method::from_bytes(method.as_str().as_bytes())
                .map_err(|_| refusal("match.method", "not a method"))
        })
        .transpose()?;
    Ok(RequestMatch {
        path,
        method,
        headers,
        query,
    })
}

fn path_match(path: &PathMatchSpec) -> Result<PathMatch, Refusal> {
    Ok(match path.type_ {
        PathMatchType::Exact => PathMatch::Exact(path.value.clone()),
        PathMatchType::PathPrefix => PathMatch::prefix(&path.value),
        PathMatchType::RegularExpression => {
            PathMatch::Regex(pattern(&path.value, "match.path.value")?)
        }
    })
}

fn value_match(type_: ValueMatchType, value: &str, field: &str) -> Result<ValueMatch, Refusal> {
    Ok(match type_ {
        ValueMatchType::Exact => ValueMatch::Exact(value.to_owned()),
        ValueMatchType::RegularExpression => ValueMatch::Regex(pattern(value, field)?),
    })
}

/// Compiles a regular expression, or says why it cannot be, in the regex crate's words (the
/// last line of its message: the first lines repeat the expression and point into it).
fn pattern(source: &str, field: &str) -> Result<Pattern, Refusal> {
    Pattern::new(source).map_err(|e| {
        let why = match e {
            regex::Error::Syntax(text) => text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(text.trim())
                .to_owned(),
            regex::Error::CompiledTooBig(limit) => {
                format!("the compiled expression would take more than {limit} bytes")
            }
            other => other.to_string(),
        };
        refusal(
            field,
            format!(
                "{} is not a regular expression this proxy can run: {why}",
                quote(source)
            ),
        )
    })
}

fn add_filter(filters: &mut Filters, filter: &RouteFilter, namespace: &str) -> Result<(), Refusal> {
    let missing = |field: &str| {
        refusal(
            field,
            "is missing: a filter gives the settings of its type".to_owned(),
        )
    };
    match filter.type_ {
        FilterType::RequestHeaderModifier => {
            let spec = filter
                .request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?;
            filters.request_headers = Some(header_modifier(spec, "requestHeaderModifier")?);
        }
        FilterType::ResponseHeaderModifier => {
            let spec = filter
                .response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?;
            filters.response_headers = Some(header_modifier(spec, "responseHeaderModifier")?);
        }
        FilterType::RequestRedirect => {
            let spec = filter
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            filters.redirect = Some(Redirect {
                scheme: spec.scheme.map(|s| {
                    match s {
                        RedirectScheme::Http => "http",
                        RedirectScheme::Https => "https",
                    }
                    .to_owned()
                }),
                hostname: spec.hostname.clone(),
                port: spec
                    .port
                    .map(|p| {
                        u16::try_from(p).map_err(|_| {
                            refusal("requestRedirect.port", "must be between 1 and 65535")
                        })
                    })
                    .transpose()?,
                path: spec.path.as_ref().map(path_modifier),
                status: u16::try_from(spec.status_code).unwrap_or(302),
            });
        }
        FilterType::UrlRewrite => {
            let spec = filter
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            filters.rewrite = Some(Rewrite {
                hostname: spec
                    .hostname
                    .as_deref()
                    .map(|h| {
                        HeaderValue::from_str(h).map_err(|_| {
                            refusal("urlRewrite.hostname", format!("{} is not a host", quote(h)))
                        })
                    })
                    .transpose()?,
                path: spec.path.as_ref().map(path_modifier),
            });
        }
        FilterType::RequestMirror => {
            let spec = filter
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let (numerator, denominator) = match (&spec.fraction, spec.percent) {
                (Some(f), _) => (f.numerator, f.denominator.max(1)),
                (None, Some(percent)) => (percent, 100),
                (None, None) => (100, 100),
            };
            filters.mirrors.push(Mirror {
                cluster: format!("{namespace}/{}", spec.backend_ref.name),
                numerator,
                denominator,
            });
        }
        FilterType::Cors => {
            let spec = filter.cors.as_ref().ok_or_else(|| missing("cors"))?;
            filters.cors = Some(Cors {
                allow_origins: spec.allow_origins.clone(),
                allow_credentials: spec.allow_credentials,
                allow_methods: spec
                    .allow_methods
                    .iter()
                    .map(|m| m.as_str().to_owned())
                    .collect(),
                allow_headers: spec.allow_headers.clone(),
                expose_headers: spec.expose_headers.clone(),
                max_age: Some(spec.max_age),
            });
        }
    }
    Ok(())
}

fn header_modifier(spec: &HeaderModifierSpec, at: &str) -> Result<HeaderModifier, Refusal> {
    let name = |name: &str, field: String| {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| refusal(field, format!("{} is not a header name", quote(name))))
    };
    let pairs = |list: &[crate::api::HeaderValueSpec], which: &str| {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                let field = format!("{at}.{which}[{i}]");
                Ok((
                    name(&h.name, format!("{field}.name"))?,
                    HeaderValue::from_str(&h.value).map_err(|_| {
                        refusal(
                            format!("{field}.value"),
                            format!(
                                "{} cannot be a header value: it holds a control character",
                                quote(&h.value)
                            ),
                        )
                    })?,
                ))
            })
            .collect::<Result<Vec<_>, Refusal>>()
    };
    Ok(HeaderModifier {
        set: pairs(&spec.set, "set")?,
        add: pairs(&spec.add, "add")?,
        remove: spec
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(n, format!("{at}.remove[{i}]")))
            .collect::<Result<Vec<_>, Refusal>>()?,
    })
}

fn path_modifier(spec: &PathModifierSpec) -> PathModifier {
    match spec.type_ {
        PathModifierType::ReplaceFullPath => {
            PathModifier::ReplaceFullPath(spec.replace_full_path.clone().unwrap_or_default())
        }
        PathModifierType::ReplacePrefixMatch => PathModifier::ReplacePrefixMatch(
            spec.replace_prefix_match
                .clone()
                .unwrap_or_else(|| "/".to_owned()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clusters of a standalone file whose cluster `web` has `routes` (YAML flow), and
    /// whose cluster `copy` is there to be mirrored to.
    fn parse(routes: &str) -> Result<Vec<crate::discovery::ClusterConfig>, String> {
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web, namespace: shop}}\nspec:\n  members: [{{url: 'http://10.0.0.5:8080'}}]\n  routes: {routes}\n---\napiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: copy, namespace: shop}}\nspec:\n  members: [{{url: 'http://10.0.0.6:8080'}}]\n  routes: []\n"
        );
        crate::standalone::parse("web.yaml", &yaml).map_err(|e| e.to_string())
    }

    fn refusal(routes: &str) -> String {
        parse(routes).expect_err("refused")
    }

    #[test]
    fn every_part_of_a_route_is_compiled() {
        let clusters = parse(
            r#"[{host: shop.example.com, match: {path: {type: RegularExpression, value: '/v[0-9]+/.*'}, headers: [{name: X-Version, value: '2'}, {type: RegularExpression, name: x-user, value: 'a.*'}], queryParams: [{name: debug, value: 'on'}], method: GET}, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: one}], add: [{name: X-B, value: two}], remove: [X-C]}}, {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [Server]}}, {type: RequestMirror, requestMirror: {backendRef: {name: copy}, percent: 10}}, {type: CORS, cors: {allowOrigins: ['https://*.example.com'], allowMethods: [GET, POST], maxAge: 60}}], timeouts: {request: 10s, backendRequest: 2s}, proxyPassReverse: true}, {pathPrefix: /app, filters: [{type: URLRewrite, urlRewrite: {hostname: backend.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]}, {match: {path: {type: Exact, value: /old}}, filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}}]}]"#,
        )
        .expect("valid");
        let c = &clusters[0];
        assert!(c.route_problems.is_empty(), "{:?}", c.route_problems);
        assert_eq!(c.route_configs.len(), 3);
        let first = &c.route_configs[0];
        assert_eq!(first.host.as_deref(), Some("shop.example.com"));
        assert!(matches!(&first.matched.path, PathMatch::Regex(p) if p.source == "/v[0-9]+/.*"));
        assert_eq!(first.matched.method, Some(Method::GET));
        assert_eq!(first.matched.headers.len(), 2);
        assert_eq!(first.matched.headers[0].name, "x-version");
        assert_eq!(first.matched.query[0].name, "debug");
        let f = &first.filters;
        let set = &f.request_headers.as_ref().expect("request headers").set;
        assert_eq!(
            (set[0].0.as_str(), set[0].1.to_str().ok()),
            ("x-a", Some("one"))
        );
        assert_eq!(
            f.response_headers.as_ref().expect("answer headers").remove,
            [HeaderName::from_static("server")]
        );
        assert_eq!(
            f.mirrors,
            [Mirror {
                cluster: "shop/copy".into(),
                numerator: 10,
                denominator: 100
            }]
        );
        let cors = f.cors.as_ref().expect("cors");
        assert_eq!(cors.allow_methods, ["GET", "POST"]);
        assert_eq!(cors.max_age, Some(60));
        assert_eq!(
            f.pass_reverse,
            Some(PassReverse {
                members: vec!["10.0.0.5:8080".into()],
                hostname: None
            })
        );
        assert_eq!(first.request_timeout, Some(Duration::from_secs(10)));
        assert_eq!(first.backend_timeout, Some(Duration::from_secs(2)));
        let second = &c.route_configs[1];
        assert_eq!(second.matched.path, PathMatch::prefix("/app"));
        let rewrite = second.filters.rewrite.as_ref().expect("rewrite");
        assert_eq!(
            rewrite.hostname.as_ref().map(|h| h.as_bytes()),
            Some(&b"backend.internal"[..])
        );
        assert_eq!(
            rewrite.path,
            Some(PathModifier::ReplacePrefixMatch("/".into()))
        );
        let redirect = c.route_configs[2]
            .filters
            .redirect
            .as_ref()
            .expect("redirect");
        assert_eq!(
            (redirect.scheme.as_deref(), redirect.port, redirect.status),
            (Some("https"), Some(8443), 301)
        );
        assert_eq!(
            c.route_configs[2].matched.path,
            PathMatch::Exact("/old".into())
        );
    }

    /// Each rule the API server runs, as standalone mode runs it: the field and the message.
    #[test]
    fn what_cel_refuses_is_named_with_the_field() {
        let web = "web.yaml: document 1 (BalancerCluster shop/web): ";
        for (routes, wanted) in [
            (
                "[{pathPrefix: /a, match: {path: {value: /b}}}]",
                "spec.routes[0]: give the route's path once: as pathPrefix, or as match.path, not both",
            ),
            (
                "[{match: {path: {type: Exact, value: a}}}]",
                "spec.routes[0].match.path: match.path.value must start with / for types Exact and PathPrefix",
            ),
            (
                "[{match: {path: {value: '/a b'}}}]",
                "spec.routes[0].match.path: match.path.value may hold only the characters of a URL path (letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes) for types Exact and PathPrefix",
            ),
            (
                "[{match: {path: {value: /a/../b}}}]",
                "spec.routes[0].match.path: match.path.value must not hold . or .. segments for types Exact and PathPrefix: clients resolve them before sending",
            ),
            (
                "[{match: {path: {type: Sometimes}}}]",
                "spec.routes[0].match.path.type: must be one of \"Exact\", \"PathPrefix\", \"RegularExpression\"; found \"Sometimes\"",
            ),
            (
                "[{match: {headers: [{name: 'x y', value: a}]}}]",
                "spec.routes[0].match.headers[0].name: must be a header name: letters, digits and !#$%&*+.^_|~- (no spaces or colons)",
            ),
            (
                "[{match: {headers: [{name: X-A, value: a}, {name: x-a, value: b}]}}]",
                "spec.routes[0].match.headers: match.headers names a header more than once (names are compared in any case): give one match per header",
            ),
            (
                "[{match: {queryParams: [{name: a, value: a}, {name: a, value: b}]}}]",
                "spec.routes[0].match.queryParams: match.queryParams names a parameter more than once: give one match per parameter",
            ),
            (
                "[{filters: [{type: RequestHeaderModifier}]}]",
                "spec.routes[0].filters[0]: requestHeaderModifier goes with type: RequestHeaderModifier (a filter gives the settings of its own type only)",
            ),
            (
                "[{filters: [{type: CORS, cors: {}, requestMirror: {backendRef: {name: copy}}}]}]",
                "spec.routes[0].filters[0]: requestMirror goes with type: RequestMirror (a filter gives the settings of its own type only)",
            ),
            (
                "[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}]}]",
                "spec.routes[0].filters[0].requestHeaderModifier: a header modifier sets, adds or removes at least one field",
            ),
            (
                "[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: Content-Length, value: '5'}]}}]}]",
                "spec.routes[0].filters[0].requestHeaderModifier.set[0].name: Host, Content-Length, Transfer-Encoding and the connection's own fields (Connection, Keep-Alive, Upgrade, TE, Trailer, Proxy-Connection) cannot be changed by a filter; urlRewrite.hostname changes the Host",
            ),
            (
                "[{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [transfer-encoding]}}]}]",
                "spec.routes[0].filters[0].responseHeaderModifier.remove: Host, Content-Length, Transfer-Encoding and the connection's own fields (Connection, Keep-Alive, Upgrade, TE, Trailer, Proxy-Connection) cannot be changed by a filter; urlRewrite.hostname changes the Host",
            ),
            (
                "[{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [x]}}, {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [y]}}]}]",
                "spec.routes[0].filters: each kind of filter may be given once per route, except RequestMirror",
            ),
            (
                "[{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {hostname: a}}]}]",
                "spec.routes[0].filters: a route either redirects (RequestRedirect) or rewrites (URLRewrite), not both",
            ),
            (
                "[{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]}]",
                "spec.routes[0].filters[0].requestRedirect.statusCode: requestRedirect.statusCode must be 301, 302, 303, 307 or 308",
            ),
            (
                "[{filters: [{type: RequestRedirect, requestRedirect: {port: 0}}]}]",
                "spec.routes[0].filters[0].requestRedirect.port: requestRedirect.port must be between 1 and 65535",
            ),
            (
                "[{filters: [{type: RequestRedirect, requestRedirect: {hostname: Shop.Example}}]}]",
                "spec.routes[0].filters[0].requestRedirect.hostname: requestRedirect.hostname must be a lower-case DNS name like shop.example.com",
            ),
            (
                "[{filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replacePrefixMatch: /x}}}]}]",
                "spec.routes[0].filters[0].requestRedirect.path: path: type ReplaceFullPath gives replaceFullPath, type ReplacePrefixMatch gives replacePrefixMatch (one of them, the one its type names)",
            ),
            (
                "[{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: x}}}]}]",
                "spec.routes[0].filters[0].urlRewrite.path.replaceFullPath: replaceFullPath must start with / and hold only the characters of a URL path (letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes)",
            ),
            (
                "[{match: {path: {type: Exact, value: /a}}, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]",
                "spec.routes[0]: replacePrefixMatch replaces what the route's path prefix matched: the route's path must be a prefix (pathPrefix, or match.path of type PathPrefix)",
            ),
            (
                "[{filters: [{type: URLRewrite, urlRewrite: {}}]}]",
                "spec.routes[0].filters[0].urlRewrite: urlRewrite needs a hostname, a path, or both",
            ),
            (
                "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: copy}, percent: 10, fraction: {numerator: 1}}}]}]",
                "spec.routes[0].filters[0].requestMirror: requestMirror takes a percent or a fraction, not both",
            ),
            (
                "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: copy}, percent: 101}}]}]",
                "spec.routes[0].filters[0].requestMirror.percent: requestMirror.percent must be between 0 and 100",
            ),
            (
                "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: copy}, fraction: {numerator: 3, denominator: 2}}}]}]",
                "spec.routes[0].filters[0].requestMirror.fraction: requestMirror.fraction: the denominator must be at least 1, and the numerator between 0 and the denominator",
            ),
            (
                "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: Copy}}}]}]",
                "spec.routes[0].filters[0].requestMirror.backendRef.name: backendRef.name must name a BalancerCluster in the same namespace: lower-case letters, digits, - and .",
            ),
            (
                "[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nowhere}}}]}]",
                "spec.routes[0].filters[0].requestMirror.backendRef.name: names the BalancerCluster shop/nowhere, which this file does not hold: mirrors go to a BalancerCluster of the same namespace",
            ),
            (
                "[{filters: [{type: CORS, cors: {allowOrigins: ['example.com']}}]}]",
                "spec.routes[0].filters[0].cors.allowOrigins: cors.allowOrigins holds * or origins like https://shop.example.com, https://*.example.com or http://localhost:8080",
            ),
            (
                "[{filters: [{type: CORS, cors: {allowMethods: [GET, '*']}}]}]",
                "spec.routes[0].filters[0].cors.allowMethods: cors.allowMethods: * allows every method, and goes alone",
            ),
            (
                "[{filters: [{type: CORS, cors: {maxAge: 0}}]}]",
                "spec.routes[0].filters[0].cors.maxAge: cors.maxAge must be between 1 and 86400 seconds",
            ),
            (
                "[{timeouts: {request: 1s, backendRequest: 2s}}]",
                "spec.routes[0].timeouts: timeouts.backendRequest must not be longer than timeouts.request",
            ),
            (
                "[{timeouts: {request: soon}}]",
                "spec.routes[0].timeouts.request: must be a duration such as 500ms, 5s or 1m30s",
            ),
            (
                "[{retry: {codes: [503, 200]}}]",
                "spec.routes[0].retry.codes: retry.codes must be statuses between 400 and 599",
            ),
            (
                "[{retry: {attempts: 0}}]",
                "spec.routes[0].retry.attempts: retry.attempts must be between 1 and 20",
            ),
            (
                "[{retry: {attempts: 21}}]",
                "spec.routes[0].retry.attempts: retry.attempts must be between 1 and 20",
            ),
            (
                "[{retry: {backoff: soon}}]",
                "spec.routes[0].retry.backoff: must be a duration such as 500ms, 5s or 1m30s",
            ),
            (
                "[{retry: {attempt: 2}}]",
                "spec.routes[0].retry.attempt: unknown field; did you mean `attempts`?",
            ),
            (
                "[{filters: [{type: CORS}, {type: CORS}, {type: CORS}, {type: CORS}, {type: CORS}, {type: CORS}, {type: CORS}, {type: CORS}, {type: CORS}]}]",
                "spec.routes[0].filters: may hold at most 8 items; found 9",
            ),
        ] {
            assert_eq!(refusal(routes), format!("{web}{wanted}"), "{routes}");
        }
    }

    /// A route's `retry` becomes the rule's retries as HTTPRoute's does: codes sorted and each
    /// once, one try again when `attempts` is not given, a zero backoff none.
    #[test]
    fn a_routes_retry_becomes_the_planes() {
        let clusters = parse(
            "[{pathPrefix: /a, retry: {codes: [504, 500, 503, 500], attempts: 3, backoff: 100ms}}, {pathPrefix: /b, retry: {backoff: 0s}}, {pathPrefix: /c}]",
        )
        .expect("valid");
        let retries: Vec<Option<Retry>> = clusters[0]
            .route_configs
            .iter()
            .map(|r| r.retry.clone())
            .collect();
        assert_eq!(
            retries,
            [
                Some(Retry {
                    codes: vec![500, 503, 504],
                    attempts: 3,
                    backoff: Some(Duration::from_millis(100)),
                }),
                Some(Retry {
                    codes: Vec::new(),
                    attempts: 1,
                    backoff: None,
                }),
                None,
            ]
        );
    }

    #[test]
    fn two_routes_of_a_cluster_that_claim_the_same_requests_are_refused() {
        assert_eq!(
            refusal(
                "[{host: a.example, pathPrefix: /x/}, {host: a.example, match: {path: {value: /x}}, timeouts: {request: 1s}}]"
            ),
            "web.yaml: document 1 (BalancerCluster shop/web): spec.routes[1]: claims the same host and match as spec.routes[0], which takes all its requests: merge the two"
        );
        // The same path with a header match more is another claim.
        let clusters = parse("[{pathPrefix: /x}, {pathPrefix: /x, match: {method: POST}}]")
            .map_err(|e| e.to_string());
        assert!(clusters.is_ok(), "{clusters:?}");
    }

    #[test]
    fn a_header_value_with_a_control_character_is_refused() {
        assert_eq!(
            refusal(
                r#"[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: "a\u0001b"}]}}]}]"#
            ),
            "web.yaml: document 1 (BalancerCluster shop/web): spec.routes[0].filters[0].requestHeaderModifier.set[0].value: \"a\\u{1}b\" cannot be a header value: it holds a control character"
        );
    }

    #[test]
    fn a_regular_expression_that_does_not_compile_is_named() {
        assert_eq!(
            refusal("[{match: {headers: [{type: RegularExpression, name: x, value: 'a(b'}]}}]"),
            "web.yaml: document 1 (BalancerCluster shop/web): spec.routes[0].match.headers[0].value: \"a(b\" is not a regular expression this proxy can run: unclosed group"
        );
    }
}
