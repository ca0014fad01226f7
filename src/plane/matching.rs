//! What a route matches on beyond the host: the path (Exact, PathPrefix, RegularExpression),
//! headers, query parameters and the method, with the Gateway API's meaning and precedence. One
//! matching core for both front doors: HTTPRoute matches and BalancerCluster `routes[].match`
//! become [`RequestMatch`]es. Pure.

use std::cmp::Reverse;

use http::{HeaderName, Method};
use regex::Regex;

/// How a route matches the path.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// A prefix matched on whole segments (`/api` matches `/api` and `/api/x`, not `/apix`),
    /// stored without its trailing `/` (`/` itself is kept).
    Prefix(String),
    /// A regular expression the whole path must match (Rust's `regex` syntax, close to RE2).
    Regex(Pattern),
}

/// A regular expression, anchored to match whole values, with the text it was written as.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    regex: Regex,
    /// Text every match starts with (`/api/v` of `/api/v[0-9]+/.*`): a value without it is
    /// turned down without running the expression. Most route expressions start with a literal
    /// path, and a request is tried against many of them.
    prefix: String,
}

impl Pattern {
    /// Compiles `source` to match whole values only.
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        Ok(Pattern {
            source: source.to_owned(),
            regex: Regex::new(&format!("^(?:{source})$"))?,
            prefix: literal_prefix(source).to_owned(),
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        text.starts_with(self.prefix.as_str()) && self.regex.is_match(text)
    }
}

/// The literal text a whole match of `source` must start with, conservatively: the characters
/// before the first one with a meaning in an expression, without the last of them when a
/// quantifier that allows none of it follows (`ab*`, `ab?`, `ab{0,2}`); nothing when the
/// expression has an alternation anywhere (`/a|/b`), whose branches start differently.
fn literal_prefix(source: &str) -> &str {
    if source.contains('|') {
        return "";
    }
    let end = source
        .find(|c: char| "\\.+*?()[]{}^$#".contains(c) || c.is_whitespace())
        .unwrap_or(source.len());
    let run = &source[..end];
    match source[end..].chars().next() {
        Some('*' | '?' | '{') => match run.char_indices().last() {
            Some((last, _)) => &run[..last],
            None => run,
        },
        _ => run,
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b))
            | (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for PathMatch {}

impl PathMatch {
    /// A prefix, its trailing `/` dropped as the Gateway API and our routes say.
    pub fn prefix(prefix: &str) -> PathMatch {
        let trimmed = prefix.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => prefix_matches(prefix, path),
            PathMatch::Regex(pattern) => pattern.is_match(path),
        }
    }
}

/// Whether `prefix` (without a trailing `/`, or `/`) matches `path` on whole segments.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// How a header's or query parameter's value is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    Regex(Pattern),
}

impl ValueMatch {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(exact) => exact.as_bytes() == value,
            ValueMatch::Regex(pattern) => {
                std::str::from_utf8(value).is_ok_and(|v| pattern.is_match(v))
            }
        }
    }
}

/// A header that must be present with a matching value (names in any case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
}

/// A query parameter that must be present with a matching value (names exactly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// What a request must carry to take a route: all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

impl Default for RequestMatch {
    /// Everything: the prefix `/`.
    fn default() -> Self {
        RequestMatch {
            path: PathMatch::prefix("/"),
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }
}

/// What matching looks at in a request, whichever server read it: the lean server keeps the
/// fields as the client wrote them, hyper's in a header map.
pub trait RequestView {
    fn method(&self) -> &Method;
    /// The path, without the query.
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
    /// Whether any value of the field `name` satisfies `test`.
    fn any_header(&self, name: &HeaderName, test: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

/// The order of precedence between matches, smallest first: the Gateway API's (an Exact path,
/// then the longest PathPrefix, then a method, then the most header matches, then the most
/// query matches). Regular expressions, whose place the Gateway API leaves to implementations,
/// come after Exact paths and before prefixes, longer expressions first (Envoy Gateway's
/// order).
pub type Precedence = (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>);

impl RequestMatch {
    pub fn matches(&self, req: &dyn RequestView) -> bool {
        self.path.matches(req.path())
            && self.method.as_ref().is_none_or(|m| m == req.method())
            && self
                .headers
                .iter()
                .all(|h| req.any_header(&h.name, &mut |v| h.value.matches(v)))
            && self.query.iter().all(|q| query_matches(q, req.query()))
    }

    pub fn precedence(&self) -> Precedence {
        let (class, length) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Regex(p) => (1, p.source.len()),
            PathMatch::Prefix(p) => (2, p.len()),
        };
        (
            class,
            Reverse(length),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }

    /// Whether this is the match that takes everything (no more than the prefix `/`).
    pub fn is_catch_all(&self) -> bool {
        matches!(&self.path, PathMatch::Prefix(p) if p == "/")
            && self.method.is_none()
            && self.headers.is_empty()
            && self.query.is_empty()
    }
}

/// Whether a query parameter is present with a matching value. Parameters are compared as they
/// appear in the target (not percent-decoded), the first of a repeated name counting, as the
/// Gateway API asks.
fn query_matches(wanted: &QueryMatch, query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| *name == wanted.name)
        .is_some_and(|(_, value)| wanted.value.matches(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A request for the tests.
    struct View {
        method: Method,
        path: String,
        query: Option<String>,
        headers: HashMap<String, Vec<Vec<u8>>>,
    }

    impl View {
        fn get(target: &str) -> View {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (target.to_owned(), None),
            };
            View {
                method: Method::GET,
                path,
                query,
                headers: HashMap::new(),
            }
        }

        fn header(mut self, name: &str, value: &str) -> View {
            self.headers
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(value.as_bytes().to_vec());
            self
        }
    }

    impl RequestView for View {
        fn method(&self) -> &Method {
            &self.method
        }
        fn path(&self) -> &str {
            &self.path
        }
        fn query(&self) -> Option<&str> {
            self.query.as_deref()
        }
        fn any_header(&self, name: &HeaderName, test: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            self.headers
                .get(name.as_str())
                .is_some_and(|values| values.iter().any(|v| test(v)))
        }
    }

    fn regex(source: &str) -> Pattern {
        Pattern::new(source).expect("a valid expression")
    }

    #[test]
    fn paths_match_exactly_by_whole_segments_or_wholly_by_expression() {
        let exact = PathMatch::Exact("/one".into());
        assert!(exact.matches("/one"));
        assert!(!exact.matches("/one/") && !exact.matches("/on") && !exact.matches("/one/two"));
        let prefix = PathMatch::prefix("/api/");
        assert_eq!(prefix, PathMatch::Prefix("/api".into()));
        for (path, wanted) in [
            ("/api", true),
            ("/api/", true),
            ("/api/v1", true),
            ("/apiv1", false),
            ("/", false),
        ] {
            assert_eq!(prefix.matches(path), wanted, "{path}");
        }
        assert!(PathMatch::prefix("/").matches("/anything"));
        let re = PathMatch::Regex(regex("/v[0-9]+/.*"));
        assert!(re.matches("/v2/x") && !re.matches("/x/v2/x") && !re.matches("/v/x"));
    }

    #[test]
    fn headers_query_and_method_must_all_match() {
        let m = RequestMatch {
            path: PathMatch::prefix("/"),
            method: Some(Method::GET),
            headers: vec![
                HeaderMatch {
                    name: HeaderName::from_static("version"),
                    value: ValueMatch::Exact("two".into()),
                },
                HeaderMatch {
                    name: HeaderName::from_static("color"),
                    value: ValueMatch::Regex(regex("red|blue")),
                },
            ],
            query: vec![QueryMatch {
                name: "animal".into(),
                value: ValueMatch::Exact("whale".into()),
            }],
        };
        let view = || {
            View::get("/x?animal=whale&a=b")
                .header("Version", "two")
                .header("COLOR", "blue")
        };
        assert!(m.matches(&view()));
        assert!(!m.matches(&View::get("/x?animal=whale").header("version", "two")));
        assert!(
            !m.matches(
                &View::get("/x?animal=Whale")
                    .header("version", "two")
                    .header("color", "red")
            )
        );
        assert!(
            !m.matches(
                &View::get("/x?animal=whale")
                    .header("version", "Two")
                    .header("color", "red")
            )
        );
        assert!(
            !m.matches(
                &View::get("/x?animal=whale")
                    .header("version", "two")
                    .header("color", "redx")
            )
        );
        let mut post = view();
        post.method = Method::POST;
        assert!(!m.matches(&post));
        // Any value of a repeated field may match; the first of a repeated parameter counts.
        assert!(
            m.matches(
                &View::get("/?animal=whale&animal=dolphin")
                    .header("version", "one")
                    .header("version", "two")
                    .header("color", "red")
            )
        );
        assert!(
            !m.matches(
                &View::get("/?animal=dolphin&animal=whale")
                    .header("version", "two")
                    .header("color", "red")
            )
        );
    }

    #[test]
    fn precedence_follows_the_gateway_api() {
        let path = |p: PathMatch| RequestMatch {
            path: p,
            ..RequestMatch::default()
        };
        let mut ordered = vec![
            path(PathMatch::prefix("/")),
            RequestMatch {
                query: vec![QueryMatch {
                    name: "a".into(),
                    value: ValueMatch::Exact("1".into()),
                }],
                ..path(PathMatch::prefix("/api"))
            },
            RequestMatch {
                headers: vec![HeaderMatch {
                    name: HeaderName::from_static("x"),
                    value: ValueMatch::Exact("1".into()),
                }],
                ..path(PathMatch::prefix("/api"))
            },
            RequestMatch {
                method: Some(Method::POST),
                ..path(PathMatch::prefix("/api"))
            },
            path(PathMatch::prefix("/api/v1")),
            path(PathMatch::Regex(regex("/a.*"))),
            path(PathMatch::Regex(regex("/api/.*"))),
            path(PathMatch::Exact("/z".into())),
            path(PathMatch::Exact("/api/v1".into())),
        ];
        ordered.reverse();
        let mut sorted = ordered.clone();
        sorted.reverse();
        sorted.sort_by_key(RequestMatch::precedence);
        assert_eq!(sorted, ordered);
    }

    #[test]
    fn an_expressions_literal_start_is_found_conservatively() {
        for (source, prefix) in [
            ("/api/v[0-9]+/.*", "/api/v"),
            ("/svc07/[a-z]+", "/svc07/"),
            ("/ab*", "/a"),
            ("/ab?c", "/a"),
            ("/ab{0,2}", "/a"),
            ("/ab+", "/ab"),
            ("/a|/b", ""),
            ("(?i)/api", ""),
            ("\\/x", ""),
            ("/a.b", "/a"),
            ("/é+x", "/é"),
            ("/éa*", "/é"),
            ("", ""),
        ] {
            assert_eq!(literal_prefix(source), prefix, "{source}");
        }
    }

    proptest! {
        /// Turning down values without the expression's literal start never changes an answer.
        #[test]
        fn the_literal_start_never_changes_what_matches(
            source in "[/ab]{0,3}([.*+?|]|\\{1,2\\}|\\[ab\\]|\\(a\\)|b){0,3}[/ab]{0,2}",
            text in "[/ab]{0,6}",
        ) {
            if let Ok(pattern) = Pattern::new(&source) {
                prop_assert_eq!(pattern.is_match(&text), pattern.regex.is_match(&text), "{} {}", source, text);
            }
        }

        /// A prefix matches exactly the paths that are it, or begin with it and a `/`.
        #[test]
        fn a_prefix_matches_whole_segments(
            segments in prop::collection::vec("[a-c]{1,2}", 0..4),
            path in "(/[a-c]{0,2}){0,4}",
        ) {
            let prefix = format!("/{}", segments.join("/"));
            let m = PathMatch::prefix(&prefix);
            let p = prefix.trim_end_matches('/');
            let expected = p.is_empty() || path == p || path.starts_with(&format!("{p}/"));
            prop_assert_eq!(m.matches(&path), expected);
        }
    }
}
