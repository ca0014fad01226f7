//! What a route does to a request besides choosing its backend: the Gateway API's HTTPRoute
//! filters (header modifiers, redirects, rewrites, mirrors, CORS), and the pure computations
//! they need (a redirect's Location, a rewritten path). The proxy applies them; the sources
//! (BalancerCluster `routes[].filters`, HTTPRoute rules) produce them.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Fields set (replacing), added (appended) and removed, in that order of application, as
/// the Gateway API's RequestHeaderModifier and ResponseHeaderModifier do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }

    /// Whether applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// How a redirect or a rewrite changes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// The whole path becomes this.
    ReplaceFullPath(String),
    /// The part of the path the route's PathPrefix matched becomes this.
    ReplacePrefixMatch(String),
}

impl PathModifier {
    /// The new path for `path`, `prefix` being what the route's PathPrefix matched (a
    /// ReplacePrefixMatch without one leaves the path alone).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathModifier::ReplaceFullPath(full) => full.clone(),
            PathModifier::ReplacePrefixMatch(replacement) => match prefix {
                Some(prefix) => replace_prefix(path, prefix, replacement),
                None => path.to_owned(),
            },
        }
    }
}

/// `path` with its leading `prefix` (whole segments, without a trailing `/`, or `/`) replaced
/// by `replacement`, keeping exactly one `/` between the replacement and the rest, as the
/// Gateway API's examples do: `/foo/bar` with prefix `/foo` and replacement `/xyz` is
/// `/xyz/bar`; with replacement `/` it is `/bar`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = if prefix == "/" {
        path
    } else {
        path.strip_prefix(prefix).unwrap_or(path)
    };
    let rest = rest.trim_start_matches('/');
    let head = replacement.trim_end_matches('/');
    match (head.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_owned(),
        (true, false) => format!("/{rest}"),
        // A replacement that ends in `/` keeps it when nothing follows.
        (false, true) if replacement.ends_with('/') && path.ends_with('/') => format!("{head}/"),
        (false, true) => head.to_owned(),
        (false, false) => format!("{head}/{rest}"),
    }
}

/// The Gateway API's RequestRedirect: an answer of the proxy's own with a Location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// What a redirect needs to know of the request.
pub struct Origin<'a> {
    /// `http` or `https`: how the request came.
    pub scheme: &'a str,
    /// The host, without a port.
    pub host: &'a str,
    /// The port the request came to (the listener's).
    pub port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// What the route's PathPrefix matched, for ReplacePrefixMatch.
    pub prefix: Option<&'a str>,
}

impl Redirect {
    /// The Location of the redirect. The port follows the Gateway API: the redirect's own when
    /// set; else, when the scheme changes, none (the new scheme's well-known port); else the
    /// request's; and it is left out when it is the scheme's well-known port.
    pub fn location(&self, origin: &Origin<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(origin.scheme);
        let host = self.hostname.as_deref().unwrap_or(origin.host);
        let port = match (self.port, &self.scheme) {
            (Some(port), _) => Some(port),
            (None, Some(s)) if s != origin.scheme => None,
            (None, _) => Some(origin.port),
        };
        let port = port.filter(|&p| well_known(scheme) != Some(p));
        let path = match &self.path {
            Some(modifier) => modifier.apply(origin.path, origin.prefix),
            None => origin.path.to_owned(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port {
            location.push_str(&format!(":{port}"));
        }
        location.push_str(&path);
        if let Some(query) = origin.query {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

fn well_known(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The Gateway API's URLRewrite: the request goes on with another Host or path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

/// The Gateway API's RequestMirror: a copy of the request goes to another backend, its answer
/// discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The cluster the copy goes to (its key in configurations; an index once built).
    pub cluster: String,
    /// The share of requests mirrored, as a fraction: numerator / denominator (100/100: all).
    pub numerator: u32,
    pub denominator: u32,
}

/// The Gateway API's CORS filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins: exact, `*`, or with a `*` wildcard in the host part.
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Seconds a preflight answer may be cached.
    pub max_age: Option<u32>,
}

impl Cors {
    /// Whether `origin` is allowed, and the value to answer in Access-Control-Allow-Origin.
    pub fn allowed_origin(&self, origin: &str) -> Option<String> {
        let allowed = self.allow_origins.iter().any(|pattern| {
            pattern == "*" || pattern == origin || wildcard_matches(pattern, origin)
        });
        match allowed {
            // With credentials, `*` must not be answered: the origin itself is.
            true if self.allow_origins.iter().any(|p| p == "*") && !self.allow_credentials => {
                Some("*".to_owned())
            }
            true => Some(origin.to_owned()),
            false => None,
        }
    }
}

/// `https://*.example.com` against `https://a.example.com`: one `*`, anything but empty in its
/// place.
fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let Some((head, tail)) = pattern.split_once('*') else {
        return false;
    };
    text.len() > head.len() + tail.len() && text.starts_with(head) && text.ends_with(tail)
}

/// Apache's ProxyPassReverse: URLs in a member's answer (`Location`, `Content-Location`, `URI`)
/// that name a member are made to name the proxy as the client reached it, and the path the
/// member saw is mapped back to the one the client asked for (when a URLRewrite replaced the
/// route's prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReverse {
    /// Each member's `host:port`, lower-case, sorted: an absolute URL naming one is mapped.
    pub members: Vec<String>,
    /// The Host a URLRewrite gives the members: a URL naming it, with any port, is theirs too
    /// (a member builds its URLs from the Host it was sent, as Apache's backends do without
    /// ProxyPreserveHost).
    pub hostname: Option<String>,
}

/// What mapping back needs to know of the client's request.
pub struct ClientSide<'a> {
    /// `http` or `https`: how the client came.
    pub scheme: &'a str,
    /// The Host the client sent, with its port if it gave one.
    pub host: &'a str,
    /// The prefix the member saw in place of the client's, and the client's: a URLRewrite's
    /// ReplacePrefixMatch, and what the route's PathPrefix matched.
    pub prefix: Option<(&'a str, &'a str)>,
}

impl PassReverse {
    /// What a member's URL becomes, or `None` when it stays as it is. An absolute URL that
    /// names a member becomes `SCHEME://HOST` of the client's request and the path mapped back;
    /// a path alone (`/login`) has its prefix mapped back (Apache leaves those alone; behind a
    /// rewritten prefix they would lead nowhere). Anything else (another host, a URL with user
    /// information, a scheme-relative `//host/...`) is left alone.
    pub fn map(&self, value: &str, client: &ClientSide<'_>) -> Option<String> {
        if value.starts_with('/') && !value.starts_with("//") {
            let mapped = map_prefix(value, client.prefix);
            return (mapped != value).then_some(mapped);
        }
        let (scheme, rest) = value.split_once("://")?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') || client.host.is_empty() {
            return None;
        }
        let authority = authority.to_ascii_lowercase();
        let (host, port) = split_authority(&authority)?;
        let member = format!("{host}:{}", port.unwrap_or(default_port));
        let ours = self.members.binary_search(&member).is_ok()
            || self.hostname.as_deref().is_some_and(|h| h == host);
        if !ours {
            return None;
        }
        // `http://member` and `http://member?x` name the root.
        let path = match path.starts_with('/') {
            true => map_prefix(path, client.prefix),
            false => map_prefix(&format!("/{path}"), client.prefix),
        };
        Some(format!("{}://{}{path}", client.scheme, client.host))
    }
}

/// `host` and `port` of `host[:port]` or `[v6][:port]`; `None` when the port is not a number.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let colon = match authority.rfind(']') {
        Some(end) => authority[end..].find(':').map(|i| end + i),
        None => authority.rfind(':'),
    };
    match colon {
        Some(at) if at + 1 < authority.len() => {
            Some((&authority[..at], Some(authority[at + 1..].parse().ok()?)))
        }
        Some(at) => Some((&authority[..at], None)),
        None => Some((authority, None)),
    }
}

/// A path (with any query and fragment) whose prefix `from` (the member's) becomes `to` (the
/// client's), on whole segments; unchanged when it does not start with `from`.
fn map_prefix(target: &str, prefix: Option<(&str, &str)>) -> String {
    let Some((from, to)) = prefix else {
        return target.to_owned();
    };
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let (path, tail) = target.split_at(end);
    let from = match from.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    if !crate::plane::matching::prefix_matches(from, path) {
        return target.to_owned();
    }
    format!("{}{tail}", replace_prefix(path, from, to))
}

/// Everything a rule or a backend does to a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<Cors>,
    /// Apache's ProxyPassReverse, on the answer (BalancerCluster routes only).
    pub pass_reverse: Option<PassReverse>,
}

impl Filters {
    /// Whether there is nothing to do (most routes): the request path skips every filter.
    /// Field by field, so that no `Filters::default()` is built and dropped per request.
    pub fn is_empty(&self) -> bool {
        let Filters {
            request_headers,
            response_headers,
            redirect,
            rewrite,
            mirrors,
            cors,
            pass_reverse,
        } = self;
        request_headers.is_none()
            && response_headers.is_none()
            && redirect.is_none()
            && rewrite.is_none()
            && mirrors.is_empty()
            && cors.is_none()
            && pass_reverse.is_none()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn origin<'a>(path: &'a str, prefix: Option<&'a str>) -> Origin<'a> {
        Origin {
            scheme: "http",
            host: "example.com",
            port: 80,
            path,
            query: Some("q=1"),
            prefix,
        }
    }

    #[test]
    fn a_prefix_is_replaced_keeping_one_slash() {
        for (path, prefix, replacement, wanted) in [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo", "/", "/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz/", "/xyz/"),
            ("/foo", "/foo", "/", "/"),
            ("/foo/bar", "/", "/xyz", "/xyz/foo/bar"),
            ("/", "/", "/xyz", "/xyz"),
        ] {
            assert_eq!(
                replace_prefix(path, prefix, replacement),
                wanted,
                "{path} {prefix} {replacement}"
            );
        }
    }

    #[test]
    fn a_redirects_location_follows_the_gateway_api() {
        let redirect = |scheme: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(str::to_owned),
            hostname: None,
            port,
            path: None,
            status: 302,
        };
        assert_eq!(
            redirect(None, None).location(&origin("/a", None)),
            "http://example.com/a?q=1"
        );
        assert_eq!(
            redirect(Some("https"), None).location(&origin("/a", None)),
            "https://example.com/a?q=1"
        );
        assert_eq!(
            redirect(None, Some(8443)).location(&origin("/a", None)),
            "http://example.com:8443/a?q=1"
        );
        assert_eq!(
            redirect(Some("https"), Some(443)).location(&origin("/", None)),
            "https://example.com/?q=1"
        );
        // The request's own port stays when the scheme does not change.
        let on_8080 = Origin {
            port: 8080,
            ..origin("/a", None)
        };
        assert_eq!(
            redirect(None, None).location(&on_8080),
            "http://example.com:8080/a?q=1"
        );
        assert_eq!(
            redirect(Some("https"), None).location(&on_8080),
            "https://example.com/a?q=1"
        );
        let moved = Redirect {
            hostname: Some("other.example".into()),
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
            ..redirect(None, None)
        };
        assert_eq!(
            moved.location(&origin("/old/x", Some("/old"))),
            "http://other.example/new/x?q=1"
        );
    }

    #[test]
    fn header_modifiers_set_then_add_then_remove() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("old"));
        headers.append("x-b", HeaderValue::from_static("one"));
        headers.insert("x-gone", HeaderValue::from_static("x"));
        let modifier = HeaderModifier {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("new"),
            )],
            add: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("two"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        modifier.apply(&mut headers);
        assert_eq!(headers["x-a"], "new");
        let b: Vec<_> = headers.get_all("x-b").iter().collect();
        assert_eq!(b, ["one", "two"]);
        assert!(!headers.contains_key("x-gone"));
    }

    #[test]
    fn cors_origins_match_exactly_by_wildcard_or_all() {
        let cors = Cors {
            allow_origins: vec!["https://a.example".into(), "https://*.b.example".into()],
            ..Cors::default()
        };
        assert_eq!(
            cors.allowed_origin("https://a.example").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(
            cors.allowed_origin("https://x.b.example").as_deref(),
            Some("https://x.b.example")
        );
        assert_eq!(cors.allowed_origin("https://b.example"), None);
        assert_eq!(cors.allowed_origin("http://a.example"), None);
        let all = Cors {
            allow_origins: vec!["*".into()],
            ..Cors::default()
        };
        assert_eq!(all.allowed_origin("https://z").as_deref(), Some("*"));
        let credentials = Cors {
            allow_credentials: true,
            ..all
        };
        assert_eq!(
            credentials.allowed_origin("https://z").as_deref(),
            Some("https://z")
        );
    }

    fn reverse() -> PassReverse {
        PassReverse {
            members: vec!["10.0.0.5:8080".into(), "[::1]:9000".into(), "web:80".into()],
            hostname: Some("backend.internal".into()),
        }
    }

    fn client(prefix: Option<(&'static str, &'static str)>) -> ClientSide<'static> {
        ClientSide {
            scheme: "https",
            host: "shop.example.com:8443",
            prefix,
        }
    }

    #[test]
    fn a_members_url_points_back_at_the_proxy_and_the_routes_prefix() {
        let r = reverse();
        let plain = client(None);
        let mapped = |value: &str, c: &ClientSide<'_>| r.map(value, c);
        assert_eq!(
            mapped("http://10.0.0.5:8080/a/b?q=1#f", &plain).as_deref(),
            Some("https://shop.example.com:8443/a/b?q=1#f")
        );
        // A member's default port may be left out, the host written in any case.
        assert_eq!(
            mapped("HTTP://WEB/x", &plain).as_deref(),
            Some("https://shop.example.com:8443/x")
        );
        assert_eq!(
            mapped("http://[::1]:9000", &plain).as_deref(),
            Some("https://shop.example.com:8443/")
        );
        // The Host a URLRewrite gave the members, with any port.
        assert_eq!(
            mapped("http://backend.internal:8080/x", &plain).as_deref(),
            Some("https://shop.example.com:8443/x")
        );
        // Not a member: another host, another port, user information, another scheme.
        for other in [
            "http://elsewhere.example/x",
            "http://10.0.0.5:8081/x",
            "http://user@10.0.0.5:8080/x",
            "ftp://10.0.0.5:8080/x",
            "//10.0.0.5:8080/x",
            "x/y",
        ] {
            assert_eq!(mapped(other, &plain), None, "{other}");
        }
        // Behind a prefix the URLRewrite replaced: /app on the client's side, / on the member's.
        let stripped = client(Some(("/", "/app")));
        assert_eq!(
            mapped("http://10.0.0.5:8080/login?next=/", &stripped).as_deref(),
            Some("https://shop.example.com:8443/app/login?next=/")
        );
        assert_eq!(
            mapped("http://10.0.0.5:8080", &stripped).as_deref(),
            Some("https://shop.example.com:8443/app")
        );
        assert_eq!(mapped("/login", &stripped).as_deref(), Some("/app/login"));
        assert_eq!(mapped("/login", &plain), None);
        // /v2 on the member's side, /api on the client's: paths outside /v2 keep theirs.
        let renamed = client(Some(("/v2/", "/api")));
        assert_eq!(mapped("/v2/x", &renamed).as_deref(), Some("/api/x"));
        assert_eq!(mapped("/v2", &renamed).as_deref(), Some("/api"));
        assert_eq!(mapped("/v20/x", &renamed), None);
        assert_eq!(
            mapped("http://web:80/other", &renamed).as_deref(),
            Some("https://shop.example.com:8443/other")
        );
    }

    proptest! {
        /// Replacing a prefix by itself gives back the path (up to a trailing `/`), and the
        /// result always starts with the replacement's segments.
        #[test]
        fn replacing_a_prefix_keeps_the_rest(
            prefix in "(/[a-c]{1,3}){1,3}",
            rest in "(/[a-c]{1,3}){0,3}",
            replacement in "(/[x-z]{1,3}){0,2}/?",
        ) {
            let path = format!("{prefix}{rest}");
            prop_assert_eq!(replace_prefix(&path, &prefix, &prefix), path.clone());
            let replaced = replace_prefix(&path, &prefix, &replacement);
            prop_assert!(replaced.starts_with('/'));
            prop_assert!(replaced.ends_with(rest.trim_start_matches('/')));
            prop_assert!(!replaced.contains("//"), "{}", replaced);
        }

        /// A member's URL under the member's prefix maps to the client's host and prefix with
        /// the same rest; a URL of any other host is left alone.
        #[test]
        fn mapping_back_keeps_the_rest_and_touches_only_members(
            member_prefix in "(/[a-c]{1,3}){0,2}",
            client_prefix in "(/[x-z]{1,3}){1,2}",
            rest in "(/[a-e]{1,3}){0,3}",
            query in "(\\?[a-z]=[0-9])?",
            other in "[a-z]{1,8}\\.example",
        ) {
            let r = reverse();
            let from = if member_prefix.is_empty() { "/" } else { member_prefix.as_str() };
            let c = ClientSide {
                scheme: "http",
                host: "proxy:8000",
                prefix: Some((from, &client_prefix)),
            };
            let location = format!("http://10.0.0.5:8080{member_prefix}{rest}{query}");
            let mapped = r.map(&location, &c);
            prop_assert_eq!(
                mapped,
                Some(format!("http://proxy:8000{client_prefix}{rest}{query}"))
            );
            let elsewhere = format!("http://{other}{member_prefix}{rest}");
            prop_assert_eq!(r.map(&elsewhere, &c), None);
        }
    }
}
