//! A BalancerCluster's routes: which requests reach it (Apache's ProxyPass, with the Gateway
//! API's HTTPRouteMatch) and what is done to them on the way (HTTPRoute's filters and timeouts,
//! and Apache's ProxyPassReverse). Field names and meanings are HTTPRoute's wherever they mean
//! the same, so that one routing core serves both front doors.
//!
//! Every bound here keeps the CEL rules within the API server's cost budget: a rule on an item
//! of a nested list is counted once per item the lists may hold, so the lists are bounded more
//! tightly than HTTPRoute's where a rule runs on each item (`tests/routes.rs` installs the CRD
//! in the real API server).

use kube::KubeSchema;
use kube::core::Duration;
use serde::{Deserialize, Serialize};

use super::{DURATION_MESSAGE, DURATION_RULE};

/// The longest header or query parameter name (the API server counts a rule's cost by the
/// longest strings it may meet: HTTPRoute's 256 would not fit its budget here).
pub const MAX_NAME: usize = 128;
/// The most origins, and the most header names, one CORS filter may list.
pub const MAX_CORS_ITEMS: usize = 16;
/// The most filters one route may have: each kind once, and a few mirrors.
pub const MAX_FILTERS: usize = 8;
/// The most header or query parameter matches, and the most fields one header modifier list
/// may name.
pub const MAX_FIELD_MATCHES: usize = 16;
/// The most statuses one route's `retry.codes` may list (as `failover.failOnStatus`).
pub const MAX_RETRY_CODES: usize = 32;

const DNS_NAME_RULE: &str =
    r#"self.matches("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")"#;
const HEADER_NAME_RULE: &str = r#"self.matches("^[A-Za-z0-9!#$%&*+.^_|~-]+$")"#;
const HEADER_NAME_MESSAGE: &str =
    "must be a header name: letters, digits and !#$%&*+.^_|~- (no spaces or colons)";
const HEADER_NAMES_RULE: &str = r#"self.all(n, n.matches("^[A-Za-z0-9!#$%&*+.^_|~-]+$"))"#;
const HEADER_NAMES_MESSAGE: &str =
    "must be header names: letters, digits and !#$%&*+.^_|~- (no spaces or colons)";
/// Fields that frame the message or belong to the connection: a filter that changed them would
/// make the proxy and the member (or the client) disagree on where a message ends.
const OWN_FIELDS: &str = "['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'proxy-connection']";
const OWN_FIELDS_MESSAGE: &str = "Host, Content-Length, Transfer-Encoding and the connection's own fields (Connection, Keep-Alive, Upgrade, TE, Trailer, Proxy-Connection) cannot be changed by a filter; urlRewrite.hostname changes the Host";
/// A path as a request's target carries it (the Gateway API's rule for Exact and PathPrefix).
const PATH_CHARS: &str = r#"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$"#;

/// Which requests reach a balancer (a host, and a path prefix or a match) and what is done to
/// them on the way.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.pathPrefix) || !has(self.match) || !has(self.match.path)")
    .message("give the route's path once: as pathPrefix, or as match.path, not both"))]
#[x_kube(validation = Rule::new("!has(self.filters) || !self.filters.exists(f, (has(f.requestRedirect) && has(f.requestRedirect.path) && f.requestRedirect.path.type == 'ReplacePrefixMatch') || (has(f.urlRewrite) && has(f.urlRewrite.path) && f.urlRewrite.path.type == 'ReplacePrefixMatch')) || !has(self.match) || !has(self.match.path) || self.match.path.type == 'PathPrefix'")
    .message("replacePrefixMatch replaces what the route's path prefix matched: the route's path must be a prefix (pathPrefix, or match.path of type PathPrefix)"))]
pub struct RouteSpec {
    /// Exact host (`shop.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("host must be a lower-case DNS name like shop.example.com, or a wildcard like *.example.com"))]
    #[schemars(length(max = 253))]
    pub host: Option<String>,

    /// Path prefix, matched on whole segments (`/api` matches `/api` and `/api/x`, not
    /// `/apix`). Without it and without `match.path`: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('//') && !self.contains(' ')")
        .message("pathPrefix must start with / and contain neither // nor spaces"))]
    #[schemars(length(max = 1024))]
    pub path_prefix: Option<String>,

    /// What the request must carry besides its host: HTTPRoute's HTTPRouteMatch (path, headers,
    /// query parameters, method), all of it.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub request_match: Option<RouteMatch>,

    /// What is done to the request and its answer: HTTPRoute's filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILTERS))]
    #[x_kube(validation = Rule::new("['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestRedirect', 'URLRewrite', 'CORS'].all(t, self.filter(f, f.type == t).size() <= 1)")
        .message("each kind of filter may be given once per route, except RequestMirror"))]
    #[x_kube(validation = Rule::new("!(self.exists(f, f.type == 'RequestRedirect') && self.exists(f, f.type == 'URLRewrite'))")
        .message("a route either redirects (RequestRedirect) or rewrites (URLRewrite), not both"))]
    pub filters: Vec<RouteFilter>,

    /// Time limits of the route's requests: HTTPRoute's `timeouts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,

    /// Tries again on given answers, connection errors and timeouts: HTTPRoute's `retry`, in
    /// place of the cluster's `failover.maxAttempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,

    /// Apache's ProxyPassReverse: `Location`, `Content-Location` and `URI` fields of answers
    /// that point at a member are rewritten to point at the client's host and the route's path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_pass_reverse: bool,
}

impl RouteSpec {
    /// The route as the printer column and the balancer-manager show it: `shop.example.com/api`,
    /// `*/` for any host, `shop.example.com = /exact`, `* ~ /v[0-9]+/.*`.
    pub fn describe(&self) -> String {
        let host = self.host.as_deref().unwrap_or("*");
        let path = self.describe_path();
        match path.starts_with('/') {
            true => format!("{host}{path}"),
            false => format!("{host} {path}"),
        }
    }

    /// The route's path as logs, status and the balancer-manager show it: `/api` for a
    /// prefix, `= /exact`, `~ ^/re.*$`.
    pub fn describe_path(&self) -> String {
        match self.request_match.as_ref().and_then(|m| m.path.as_ref()) {
            Some(path) => match path.type_ {
                PathMatchType::PathPrefix => path.value.clone(),
                PathMatchType::Exact => format!("= {}", path.value),
                PathMatchType::RegularExpression => format!("~ {}", path.value),
            },
            None => self.path_prefix.clone().unwrap_or_else(|| "/".to_owned()),
        }
    }
}

/// HTTPRoute's HTTPRouteMatch: a request must carry all of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The path. Default: the prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,

    /// Headers the request must carry, with a matching value (any of the field's lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FIELD_MATCHES))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name.lowerAscii() == a.name.lowerAscii()))")
        .message("match.headers names a header more than once (names are compared in any case): give one match per header"))]
    pub headers: Vec<HeaderMatchSpec>,

    /// Query parameters the request must carry, with a matching value (the first of a repeated
    /// name counts; names and values as they appear in the target, not percent-decoded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FIELD_MATCHES))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))")
        .message("match.queryParams names a parameter more than once: give one match per parameter"))]
    pub query_params: Vec<QueryParamMatchSpec>,

    /// The request's method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
}

/// How the path is matched.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || self.value.startsWith('/')")
    .message("match.path.value must start with / for types Exact and PathPrefix"))]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || !self.value.contains('//')")
    .message("match.path.value must not contain // for types Exact and PathPrefix"))]
#[x_kube(validation = Rule::new(r#"self.type == 'RegularExpression' || self.value.matches("^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")"#)
    .message("match.path.value may hold only the characters of a URL path (letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes) for types Exact and PathPrefix"))]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || !(self.value.contains('/./') || self.value.contains('/../') || self.value.endsWith('/.') || self.value.endsWith('/..'))")
    .message("match.path.value must not hold . or .. segments for types Exact and PathPrefix: clients resolve them before sending"))]
#[x_kube(validation = Rule::new("self.type != 'RegularExpression' || self.value.size() > 0")
    .message("match.path.value must not be empty for type RegularExpression"))]
pub struct PathMatchSpec {
    /// `PathPrefix` (whole segments), `Exact`, or `RegularExpression` (the whole path must
    /// match; Rust's regex syntax, which is RE2's without a few rarely used forms).
    #[serde(default, rename = "type")]
    pub type_: PathMatchType,
    /// The path, prefix or expression.
    #[serde(default = "root")]
    #[schemars(length(max = 1024))]
    pub value: String,
}

fn root() -> String {
    "/".to_owned()
}

/// How a path match compares.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// How a header's or query parameter's value is compared.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ValueMatchType {
    #[default]
    Exact,
    /// The whole value must match (Rust's regex syntax).
    RegularExpression,
}

/// A header the request must carry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    #[serde(default, rename = "type")]
    pub type_: ValueMatchType,
    /// The header's name, in any case.
    #[x_kube(validation = Rule::new(HEADER_NAME_RULE).message(HEADER_NAME_MESSAGE))]
    #[schemars(length(max = MAX_NAME))]
    pub name: String,
    /// The value, or the expression the whole value must match.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A query parameter the request must carry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatchSpec {
    #[serde(default, rename = "type")]
    pub type_: ValueMatchType,
    /// The parameter's name, exactly (case matters).
    #[x_kube(validation = Rule::new(HEADER_NAME_RULE)
        .message("must be a query parameter name: letters, digits and !#$%&*+.^_|~-"))]
    #[schemars(length(max = MAX_NAME))]
    pub name: String,
    /// The value, or the expression the whole value must match.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// A request method.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

/// One of HTTPRoute's filters: its `type`, and the settings of that type (only those).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.requestHeaderModifier) == (self.type == 'RequestHeaderModifier')")
    .message("requestHeaderModifier goes with type: RequestHeaderModifier (a filter gives the settings of its own type only)"))]
#[x_kube(validation = Rule::new("has(self.responseHeaderModifier) == (self.type == 'ResponseHeaderModifier')")
    .message("responseHeaderModifier goes with type: ResponseHeaderModifier (a filter gives the settings of its own type only)"))]
#[x_kube(validation = Rule::new("has(self.requestRedirect) == (self.type == 'RequestRedirect')")
    .message("requestRedirect goes with type: RequestRedirect (a filter gives the settings of its own type only)"))]
#[x_kube(validation = Rule::new("has(self.urlRewrite) == (self.type == 'URLRewrite')")
    .message("urlRewrite goes with type: URLRewrite (a filter gives the settings of its own type only)"))]
#[x_kube(validation = Rule::new("has(self.requestMirror) == (self.type == 'RequestMirror')")
    .message("requestMirror goes with type: RequestMirror (a filter gives the settings of its own type only)"))]
#[x_kube(validation = Rule::new("has(self.cors) == (self.type == 'CORS')")
    .message("cors goes with type: CORS (a filter gives the settings of its own type only)"))]
pub struct RouteFilter {
    #[serde(rename = "type")]
    pub type_: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RedirectSpec>,
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewriteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<MirrorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSpec>,
}

/// The kinds of filter.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterType {
    /// Set, add and remove request header fields.
    RequestHeaderModifier,
    /// Set, add and remove answer header fields.
    ResponseHeaderModifier,
    /// Answer with a redirect instead of forwarding.
    RequestRedirect,
    /// Forward with another Host or path.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    /// Send a copy to another BalancerCluster, its answer discarded.
    RequestMirror,
    /// Answer CORS preflights and add CORS fields to answers.
    #[serde(rename = "CORS")]
    Cors,
}

/// Fields set (replacing), added (appended) and removed, in that order.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.set) && size(self.set) > 0) || (has(self.add) && size(self.add) > 0) || (has(self.remove) && size(self.remove) > 0)")
    .message("a header modifier sets, adds or removes at least one field"))]
pub struct HeaderModifierSpec {
    /// Fields given this value, replacing any the message had (a name given twice: the last
    /// value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FIELD_MATCHES))]
    pub set: Vec<HeaderValueSpec>,
    /// Fields added after any the message had, each (a name given twice: both values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FIELD_MATCHES))]
    pub add: Vec<HeaderValueSpec>,
    /// Fields removed, by name in any case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FIELD_MATCHES), inner(length(max = MAX_NAME)))]
    #[x_kube(validation = Rule::new(HEADER_NAMES_RULE).message(HEADER_NAMES_MESSAGE))]
    #[x_kube(validation = Rule::new(format!("self.all(n, !(n.lowerAscii() in {OWN_FIELDS}))")).message(OWN_FIELDS_MESSAGE))]
    pub remove: Vec<String>,
}

/// A field's name and value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSpec {
    #[x_kube(validation = Rule::new(HEADER_NAME_RULE).message(HEADER_NAME_MESSAGE))]
    #[x_kube(validation = Rule::new(format!("!(self.lowerAscii() in {OWN_FIELDS})")).message(OWN_FIELDS_MESSAGE))]
    #[schemars(length(max = MAX_NAME))]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// HTTPRoute's RequestRedirect: the proxy answers with a redirect; the request goes nowhere.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedirectSpec {
    /// Default: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<RedirectScheme>,
    /// Default: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DNS_NAME_RULE)
        .message("requestRedirect.hostname must be a lower-case DNS name like shop.example.com"))]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,
    /// Default: the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
    /// Default: the request's port, or none (the scheme's) when the scheme changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("requestRedirect.port must be between 1 and 65535"))]
    pub port: Option<u32>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default = "found")]
    #[x_kube(validation = Rule::new("self in [301, 302, 303, 307, 308]")
        .message("requestRedirect.statusCode must be 301, 302, 303, 307 or 308"))]
    pub status_code: u32,
}

fn found() -> u32 {
    302
}

/// The scheme of a redirect's Location.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    Http,
    Https,
}

/// HTTPRoute's URLRewrite: the request goes on with another Host or path.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.hostname) || has(self.path)")
    .message("urlRewrite needs a hostname, a path, or both"))]
pub struct UrlRewriteSpec {
    /// The Host the member sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DNS_NAME_RULE)
        .message("urlRewrite.hostname must be a lower-case DNS name like shop.example.com"))]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,
    /// The path the member sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
}

/// HTTPRoute's HTTPPathModifier: a new path, whole or in place of the matched prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'ReplaceFullPath' ? (has(self.replaceFullPath) && !has(self.replacePrefixMatch)) : (has(self.replacePrefixMatch) && !has(self.replaceFullPath))")
    .message("path: type ReplaceFullPath gives replaceFullPath, type ReplacePrefixMatch gives replacePrefixMatch (one of them, the one its type names)"))]
pub struct PathModifierSpec {
    #[serde(rename = "type")]
    pub type_: PathModifierType,
    /// The whole new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(format!(r#"self.startsWith('/') && self.matches("{PATH_CHARS}")"#))
        .message("replaceFullPath must start with / and hold only the characters of a URL path (letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes)"))]
    #[schemars(length(max = 1024))]
    pub replace_full_path: Option<String>,
    /// What replaces the part of the path the route's prefix matched (`/` strips it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(format!(r#"self.startsWith('/') && self.matches("{PATH_CHARS}")"#))
        .message("replacePrefixMatch must start with / and hold only the characters of a URL path (letters, digits, -._~!$&'()*+,;=:@/ and %XX escapes)"))]
    #[schemars(length(max = 1024))]
    pub replace_prefix_match: Option<String>,
}

/// How a path modifier changes the path.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

/// HTTPRoute's RequestMirror: a copy of the request goes to another BalancerCluster of the same
/// namespace; its answer is discarded and never holds up the request's own.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.percent) && has(self.fraction))")
    .message("requestMirror takes a percent or a fraction, not both"))]
pub struct MirrorSpec {
    /// The BalancerCluster the copies go to.
    pub backend_ref: MirrorBackendRef,
    /// The share of requests mirrored, in percent. Default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("requestMirror.percent must be between 0 and 100"))]
    pub percent: Option<u32>,
    /// The share of requests mirrored, as a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<FractionSpec>,
}

/// A BalancerCluster in the route's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorBackendRef {
    #[x_kube(validation = Rule::new(DNS_NAME_RULE)
        .message("backendRef.name must name a BalancerCluster in the same namespace: lower-case letters, digits, - and ."))]
    #[schemars(length(max = 253))]
    pub name: String,
}

/// numerator / denominator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.denominator >= 1 && self.numerator >= 0 && self.numerator <= self.denominator")
    .message("requestMirror.fraction: the denominator must be at least 1, and the numerator between 0 and the denominator"))]
pub struct FractionSpec {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}

/// HTTPRoute's CORS filter: preflights from allowed origins are answered by the proxy, and
/// answers to allowed origins get the CORS fields.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CorsSpec {
    /// `*`, or `SCHEME://HOST[:PORT]`, whose host may start with `*.`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CORS_ITEMS), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new(r#"self.all(o, o == '*' || o.matches("^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@ ]+$"))"#)
        .message("cors.allowOrigins holds * or origins like https://shop.example.com, https://*.example.com or http://localhost:8080"))]
    pub allow_origins: Vec<String>,
    /// Answers may be read with credentials (cookies): `Access-Control-Allow-Credentials:
    /// true`, and the origin itself in place of `*`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// Methods a preflight allows, or `*` (alone) for the one asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[x_kube(validation = Rule::new("!('*' in self) || self.size() == 1")
        .message("cors.allowMethods: * allows every method, and goes alone"))]
    pub allow_methods: Vec<CorsMethod>,
    /// Request fields a preflight allows, or `*` for the ones asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CORS_ITEMS), inner(length(max = MAX_NAME)))]
    #[x_kube(validation = Rule::new(r#"self.all(n, n == '*' || n.matches("^[A-Za-z0-9!#$%&*+.^_|~-]+$"))"#)
        .message("cors.allowHeaders holds * or header names: letters, digits and !#$%&*+.^_|~-"))]
    pub allow_headers: Vec<String>,
    /// Answer fields the page's script may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CORS_ITEMS), inner(length(max = MAX_NAME)))]
    #[x_kube(validation = Rule::new(HEADER_NAMES_RULE).message("cors.exposeHeaders must be header names: letters, digits and !#$%&*+.^_|~-"))]
    pub expose_headers: Vec<String>,
    /// Seconds a browser may keep a preflight's answer.
    #[serde(default = "five")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 86400").message("cors.maxAge must be between 1 and 86400 seconds"))]
    pub max_age: u32,
}

fn five() -> u32 {
    5
}

/// A method a CORS preflight may allow.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorsMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "HEAD")]
    Head,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "DELETE")]
    Delete,
    #[serde(rename = "CONNECT")]
    Connect,
    #[serde(rename = "OPTIONS")]
    Options,
    #[serde(rename = "TRACE")]
    Trace,
    #[serde(rename = "PATCH")]
    Patch,
    #[serde(rename = "*")]
    Any,
}

impl CorsMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CorsMethod::Any => "*",
            CorsMethod::Get => HttpMethod::Get.as_str(),
            CorsMethod::Head => HttpMethod::Head.as_str(),
            CorsMethod::Post => HttpMethod::Post.as_str(),
            CorsMethod::Put => HttpMethod::Put.as_str(),
            CorsMethod::Delete => HttpMethod::Delete.as_str(),
            CorsMethod::Connect => HttpMethod::Connect.as_str(),
            CorsMethod::Options => HttpMethod::Options.as_str(),
            CorsMethod::Trace => HttpMethod::Trace.as_str(),
            CorsMethod::Patch => HttpMethod::Patch.as_str(),
        }
    }
}

/// HTTPRoute's timeouts. Zero means none.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.request) || !has(self.backendRequest) || !self.request.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') || !self.backendRequest.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self.request) == duration('0s') || duration(self.backendRequest) <= duration(self.request)")
    .message("timeouts.backendRequest must not be longer than timeouts.request"))]
pub struct RouteTimeouts {
    /// The whole request, every try included, until the answer's head: 504 beyond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub request: Option<Duration>,
    /// Each try on a member, until its answer's head, in place of the cluster's
    /// `timeouts.response`: 504 beyond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub backend_request: Option<Duration>,
}

/// HTTPRoute's `retry`: which answers are tried again, how many times, and how far apart. The
/// cluster's failover loop carries it out, with these tries in place of `failover.maxAttempts`;
/// connection errors and tries past `timeouts.backendRequest` are tried again too.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRetry {
    /// Answer statuses tried again (400 to 599, as HTTPRoute's). Unlike `failOnStatus`, they do
    /// not put the member in error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RETRY_CODES))]
    #[x_kube(validation = Rule::new("self.all(c, c >= 400 && c <= 599)")
        .message("retry.codes must be statuses between 400 and 599"))]
    pub codes: Vec<u16>,
    /// Tries after the first, at most 20 (as `failover.maxAttempts`). Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 20")
        .message("retry.attempts must be between 1 and 20"))]
    pub attempts: Option<u32>,
    /// The wait before each try again. Default (and `0s`): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub backoff: Option<Duration>,
}
