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

/// Everything a rule or a backend does to a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<Cors>,
}

impl Filters {
    /// Whether there is nothing to do (most routes): the request path skips every filter.
    pub fn is_empty(&self) -> bool {
        self == &Filters::default()
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
    }
}
