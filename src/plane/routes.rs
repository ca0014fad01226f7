//! Requests to rules: the route table of one front (a listening port) in one snapshot. Pure.
//!
//! A table holds listeners, each with an optional hostname (a Gateway listener's; BalancerCluster
//! routes sit in one listener for any host). A request goes to the most specific listener whose
//! hostname matches its host, and only that one (Gateway API listener isolation). Within it,
//! the entries are ordered as the Gateway API asks, and the first that matches wins:
//!
//! 1. the most specific route hostname: an exact host, then wildcards, longest first, then
//!    routes for any host;
//! 2. the match's precedence ([`RequestMatch::precedence`]): an Exact path, the longest
//!    prefix, a method, the most header matches, the most query matches;
//! 3. the order the source gave (oldest route, then namespace/name, then rule order).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::filters::Filters;
use super::matching::{PathMatch, RequestMatch, RequestView};

/// How a route names hosts: exact, a wildcard, or any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Any,
}

impl HostMatch {
    /// From a hostname as routes write it: `shop.example.com`, `*.example.com`, or none.
    pub fn of(host: Option<&str>) -> HostMatch {
        match host {
            None | Some("") => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    /// Most specific first: exact, then wildcards by length, then any.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        use std::cmp::Reverse;
        match self {
            HostMatch::Exact(_) => (0, Reverse(0)),
            HostMatch::Suffix(s) => (1, Reverse(s.len())),
            HostMatch::Any => (2, Reverse(0)),
        }
    }

    /// Whether `host` (the field's bytes, without the port) is one of this. Names are compared
    /// in ASCII, without a check that the whole value is text.
    pub fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostMatch::Exact(h) => h.as_bytes().eq_ignore_ascii_case(host),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            HostMatch::Any => true,
        }
    }
}

/// What a matched route does with a request: its filters, and the backends it goes to, by
/// weight.
#[derive(Debug)]
pub struct Rule {
    /// Who wrote it, for logs, metrics and status: `balancercluster shop/web`,
    /// `httproute shop/web rule 0`.
    pub name: String,
    pub filters: Filters,
    pub backends: Vec<Backend>,
    /// The whole request (all tries) must be answered within this (HTTPRoute `timeouts.request`).
    pub request_timeout: Option<Duration>,
    /// Each try must be answered within this (`timeouts.backendRequest`); else the cluster's.
    pub backend_timeout: Option<Duration>,
    /// The rule's retries (HTTPRoute `retry`), beyond the cluster's failover.
    pub retry: Option<Retry>,
    /// Turns of the weighted choice.
    turn: AtomicU64,
    /// The step between turns that interleaves backends in each cycle of the weights.
    stride: u64,
    total_weight: u64,
}

/// A rule's retries (HTTPRoute `rules[].retry`), carried out by the cluster's failover loop: a
/// request gets `attempts` tries after the first (instead of the cluster's `maxAttempts`), on
/// the same member when no other is left; an answer whose status is one of `codes` is tried
/// again (without putting the member in error, unlike `failOnStatus`), and so is a try that
/// timed out; a connection error is, as in any failover. Each try again waits `backoff` first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retry {
    /// Sorted, each once.
    pub codes: Vec<u16>,
    pub attempts: u32,
    pub backoff: Option<Duration>,
}

impl Retry {
    /// Tries again when a route's `retry` names no `attempts`: one, as a BalancerCluster's
    /// `failover.maxAttempts` by default.
    pub const DEFAULT_ATTEMPTS: u32 = 1;

    /// A route's `retry` (HTTPRoute's or a BalancerCluster route's), its fields already in
    /// range: the codes sorted, each once; no `attempts`, the default; a zero backoff, none.
    pub fn new(
        codes: impl IntoIterator<Item = u16>,
        attempts: Option<u32>,
        backoff: Option<Duration>,
    ) -> Retry {
        let mut codes: Vec<u16> = codes.into_iter().collect();
        codes.sort_unstable();
        codes.dedup();
        Retry {
            codes,
            attempts: attempts.unwrap_or(Retry::DEFAULT_ATTEMPTS),
            backoff: backoff.filter(|b| !b.is_zero()),
        }
    }

    /// Whether an answer with `status` is tried again.
    pub fn on_status(&self, status: u16) -> bool {
        self.codes.binary_search(&status).is_ok()
    }
}

/// One backend of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The snapshot's cluster index; `None` for a backend that cannot be served (unknown, not
    /// permitted): its share of requests gets 500, as the Gateway API asks.
    pub cluster: Option<usize>,
    pub weight: u32,
    pub filters: Filters,
}

impl Rule {
    pub fn new(name: String, filters: Filters, backends: Vec<Backend>) -> Rule {
        let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        Rule {
            name,
            filters,
            backends,
            request_timeout: None,
            backend_timeout: None,
            retry: None,
            turn: AtomicU64::new(0),
            stride: stride(total_weight),
            total_weight,
        }
    }

    /// The backend for the next request: each cycle of the total weight gives each backend
    /// exactly its weight in turns, interleaved. `None` when there is no backend with weight.
    pub fn pick(&self) -> Option<&Backend> {
        self.pick_index().and_then(|i| self.backends.get(i))
    }

    /// Whether the rule only forwards: no filters (its own or any backend's), no timeouts and
    /// no retries, whichever backend is picked.
    pub fn is_plain(&self) -> bool {
        self.asks_nothing() && self.backends.iter().all(|b| b.filters.is_empty())
    }

    /// Whether a request that goes to `backend` (an index; one out of range has no filters)
    /// needs nothing of the rule but that backend.
    pub fn only_forwards_to(&self, backend: usize) -> bool {
        self.asks_nothing()
            && self
                .backends
                .get(backend)
                .is_none_or(|b| b.filters.is_empty())
    }

    /// No filters of the rule's own, no timeouts, no retries.
    fn asks_nothing(&self) -> bool {
        self.filters.is_empty()
            && self.request_timeout.is_none()
            && self.backend_timeout.is_none()
            && self.retry.is_none()
    }

    /// The same, by index.
    pub fn pick_index(&self) -> Option<usize> {
        if self.backends.len() == 1 {
            return self.backends.first().filter(|b| b.weight > 0).map(|_| 0);
        }
        if self.total_weight == 0 {
            return None;
        }
        let turn = self.turn.fetch_add(1, Relaxed);
        let mut slot = turn.wrapping_mul(self.stride) % self.total_weight;
        for (i, backend) in self.backends.iter().enumerate() {
            let weight = u64::from(backend.weight);
            if slot < weight {
                return Some(i);
            }
            slot -= weight;
        }
        None
    }
}

/// A step through `0..total` that visits every slot once per cycle (coprime to `total`), near
/// the golden ratio of it so that consecutive turns land far apart.
fn stride(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let mut step = (total as f64 * 0.618_033_988_75) as u64;
    while gcd(step.max(1), total) != 1 {
        step += 1;
    }
    step.max(1)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A route as a source gives it to a listener: its hostnames (none: any), its matches (any
/// one of them; none: everything), and its rule.
#[derive(Debug)]
pub struct RouteEntry {
    pub hostnames: Vec<String>,
    pub matches: Vec<RequestMatch>,
    pub rule: Arc<Rule>,
}

/// The routes of one listener.
#[derive(Debug, Default)]
pub struct ListenerRoutes {
    pub hostname: Option<String>,
    /// In the order of precedence among equals (oldest route first, ...).
    pub routes: Vec<RouteEntry>,
}

/// One row of a listener's table.
#[derive(Debug)]
struct Entry {
    host: HostMatch,
    matcher: RequestMatch,
    /// The matcher takes every request (prefix `/`, nothing else), known once per table so
    /// that the common route costs a request no match at all.
    takes_all: bool,
    /// The rule only forwards ([`Rule::is_plain`]), known once per table for the same reason.
    plain: bool,
    rule: Arc<Rule>,
}

#[derive(Debug)]
struct Listener {
    hostname: HostMatch,
    entries: Vec<Entry>,
}

/// A route that another one, earlier in precedence, shadows wholly: the same hostname and the
/// same match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadowed {
    pub rule: String,
    pub host: Option<String>,
    /// The match's path, as written (`/api`, `= /exact`, `~ /re.*`).
    pub path: String,
    pub by: String,
}

/// The route table of one front.
#[derive(Debug, Default)]
pub struct RouteTable {
    listeners: Vec<Listener>,
}

/// What a request matched.
pub struct Matched<'a> {
    pub rule: &'a Arc<Rule>,
    /// What the route's PathPrefix matched (for ReplacePrefixMatch), if it was one.
    pub prefix: Option<&'a str>,
    /// The rule only forwards ([`Rule::is_plain`]): the request needs nothing of it but a
    /// backend.
    pub plain: bool,
}

impl RouteTable {
    /// Builds the table, and says which routes can never match because an earlier one claims
    /// the same host and match.
    pub fn build(listeners: Vec<ListenerRoutes>) -> (RouteTable, Vec<Shadowed>) {
        let mut shadowed = Vec::new();
        let mut built: Vec<Listener> = listeners
            .into_iter()
            .map(|l| {
                let (entries, lost) = entries_of(l.routes);
                shadowed.extend(lost);
                Listener {
                    hostname: HostMatch::of(l.hostname.as_deref()),
                    entries,
                }
            })
            .collect();
        built.sort_by_key(|l| l.hostname.rank());
        (RouteTable { listeners: built }, shadowed)
    }

    /// The rule for a request to `host` (without port). The host is the field's bytes as they
    /// came.
    pub fn lookup(&self, host: &[u8], req: &dyn RequestView) -> Option<Matched<'_>> {
        let listener = self.listeners.iter().find(|l| l.hostname.matches(host))?;
        let entry = listener
            .entries
            .iter()
            .find(|e| e.host.matches(host) && (e.takes_all || e.matcher.matches(req)))?;
        let prefix = match &entry.matcher.path {
            PathMatch::Prefix(p) => Some(p.as_str()),
            _ => None,
        };
        Some(Matched {
            rule: &entry.rule,
            prefix,
            plain: entry.plain,
        })
    }

    /// Whether a request to `host` came on a TLS connection meant for another listener: the
    /// listener its handshake's server name selects is not the one its host selects (then the
    /// client must ask again on a connection of its own: 421, RFC 9110 15.5.20). A server name
    /// that selects no listener decides nothing.
    pub fn misdirected(&self, server_name: &[u8], host: &[u8]) -> bool {
        let by_name = self
            .listeners
            .iter()
            .position(|l| l.hostname.matches(server_name));
        let by_host = || self.listeners.iter().position(|l| l.hostname.matches(host));
        by_name.is_some_and(|named| by_host() != Some(named))
    }

    /// Whether no route is in it.
    pub fn is_empty(&self) -> bool {
        self.listeners.iter().all(|l| l.entries.is_empty())
    }
}

/// A listener's rows in order of precedence, and the routes wholly shadowed by earlier ones.
fn entries_of(routes: Vec<RouteEntry>) -> (Vec<Entry>, Vec<Shadowed>) {
    let mut entries: Vec<(usize, Entry)> = Vec::new();
    for (order, route) in routes.into_iter().enumerate() {
        let hosts: Vec<HostMatch> = if route.hostnames.is_empty() {
            vec![HostMatch::Any]
        } else {
            route
                .hostnames
                .iter()
                .map(|h| HostMatch::of(Some(h)))
                .collect()
        };
        let matches = if route.matches.is_empty() {
            vec![RequestMatch::default()]
        } else {
            route.matches
        };
        for host in hosts {
            for matcher in &matches {
                let entry = Entry {
                    host: host.clone(),
                    matcher: matcher.clone(),
                    takes_all: matcher.is_catch_all(),
                    plain: route.rule.is_plain(),
                    rule: route.rule.clone(),
                };
                entries.push((order, entry));
            }
        }
    }
    // Stable: equals keep the source's order.
    entries.sort_by(|(a_order, a), (b_order, b)| {
        (a.host.rank(), a.matcher.precedence(), a_order).cmp(&(
            b.host.rank(),
            b.matcher.precedence(),
            b_order,
        ))
    });
    let mut kept: Vec<Entry> = Vec::with_capacity(entries.len());
    let mut shadowed = Vec::new();
    for (_, entry) in entries {
        match kept
            .iter()
            .find(|k| k.host == entry.host && k.matcher == entry.matcher)
        {
            Some(k) if !Arc::ptr_eq(&k.rule, &entry.rule) => shadowed.push(Shadowed {
                rule: entry.rule.name.clone(),
                host: match &entry.host {
                    HostMatch::Exact(h) => Some(h.clone()),
                    HostMatch::Suffix(s) => Some(format!("*{s}")),
                    HostMatch::Any => None,
                },
                path: match &entry.matcher.path {
                    PathMatch::Prefix(p) => p.clone(),
                    PathMatch::Exact(p) => format!("= {p}"),
                    PathMatch::Regex(p) => format!("~ {}", p.source),
                },
                by: k.rule.name.clone(),
            }),
            Some(_) => {}
            None => kept.push(entry),
        }
    }
    (kept, shadowed)
}

/// The host of a request without its port, from `host[:port]` or `[v6]:port`.
pub fn strip_port(authority: &[u8]) -> &[u8] {
    let (rest, end) = match authority.strip_prefix(b"[") {
        Some(rest) => (rest, b']'),
        None => (authority, b':'),
    };
    rest.iter()
        .position(|&b| b == end)
        .map_or(rest, |at| &rest[..at])
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, Method};

    use super::*;
    use crate::plane::matching::{HeaderMatch, ValueMatch};

    struct Get(&'static str, Vec<(&'static str, &'static str)>);

    impl RequestView for Get {
        fn method(&self) -> &Method {
            &Method::GET
        }
        fn path(&self) -> &str {
            self.0.split('?').next().unwrap_or("/")
        }
        fn query(&self) -> Option<&str> {
            self.0.split_once('?').map(|(_, q)| q)
        }
        fn any_header(&self, name: &HeaderName, test: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            self.1
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name.as_str()) && test(v.as_bytes()))
        }
    }

    fn rule(name: &str) -> Arc<Rule> {
        Arc::new(Rule::new(name.to_owned(), Filters::default(), Vec::new()))
    }

    fn route(host: Option<&str>, prefix: &str, name: &str) -> RouteEntry {
        RouteEntry {
            hostnames: host.map(str::to_owned).into_iter().collect(),
            matches: vec![RequestMatch {
                path: PathMatch::prefix(prefix),
                ..RequestMatch::default()
            }],
            rule: rule(name),
        }
    }

    fn one(routes: Vec<RouteEntry>) -> (RouteTable, Vec<Shadowed>) {
        RouteTable::build(vec![ListenerRoutes {
            hostname: None,
            routes,
        }])
    }

    fn found(table: &RouteTable, host: &str, target: &'static str) -> Option<String> {
        table
            .lookup(host.as_bytes(), &Get(target, Vec::new()))
            .map(|m| m.rule.name.clone())
    }

    #[test]
    fn most_specific_route_wins() {
        let (t, shadowed) = one(vec![
            route(None, "/", "any"),
            route(Some("*.example.com"), "/", "wild"),
            route(Some("shop.example.com"), "/", "shop"),
            route(Some("shop.example.com"), "/api", "shop-api"),
            route(Some("*.b.example.com"), "/", "wild-b"),
        ]);
        assert!(shadowed.is_empty());
        assert_eq!(
            found(&t, "shop.example.com", "/api/cart").as_deref(),
            Some("shop-api")
        );
        assert_eq!(
            found(&t, "SHOP.example.com", "/apix").as_deref(),
            Some("shop")
        );
        assert_eq!(found(&t, "blog.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(found(&t, "x.b.example.com", "/").as_deref(), Some("wild-b"));
        assert_eq!(found(&t, "example.com", "/").as_deref(), Some("any"));
        assert_eq!(found(&t, "other", "/anything").as_deref(), Some("any"));
    }

    #[test]
    fn a_request_falls_through_to_less_specific_hosts_when_nothing_matches() {
        let (t, _) = one(vec![
            route(Some("a.com"), "/only", "a"),
            route(None, "/", "any"),
        ]);
        assert_eq!(found(&t, "a.com", "/only/x").as_deref(), Some("a"));
        assert_eq!(found(&t, "a.com", "/other").as_deref(), Some("any"));
    }

    #[test]
    fn a_second_claim_on_the_same_host_and_match_is_shadowed() {
        let (t, shadowed) = one(vec![
            route(Some("a.com"), "/", "first"),
            route(Some("A.com"), "/", "second"),
        ]);
        assert_eq!(found(&t, "a.com", "/").as_deref(), Some("first"));
        assert_eq!(
            shadowed,
            [Shadowed {
                rule: "second".into(),
                host: Some("a.com".into()),
                path: "/".into(),
                by: "first".into()
            }]
        );
    }

    #[test]
    fn listeners_are_isolated_by_hostname() {
        let (t, _) = RouteTable::build(vec![
            ListenerRoutes {
                hostname: Some("*.example.com".into()),
                routes: vec![route(None, "/", "wild-listener")],
            },
            ListenerRoutes {
                hostname: Some("foo.example.com".into()),
                routes: vec![route(None, "/foo", "foo-listener")],
            },
        ]);
        assert_eq!(
            found(&t, "bar.example.com", "/").as_deref(),
            Some("wild-listener")
        );
        assert_eq!(
            found(&t, "foo.example.com", "/foo").as_deref(),
            Some("foo-listener")
        );
        // The foo listener takes foo.example.com whole: no falling back to the wildcard one.
        assert_eq!(found(&t, "foo.example.com", "/"), None);
        assert_eq!(found(&t, "other.net", "/"), None);
    }

    #[test]
    fn a_host_of_another_listener_than_the_server_names_is_misdirected() {
        // The listeners of the suite's HTTPS Gateway: any host, an exact one, a wildcard, and an
        // exact one under the wildcard.
        let (t, _) = RouteTable::build(
            [
                None,
                Some("second.org"),
                Some("*.wild.org"),
                Some("fourth.wild.org"),
            ]
            .into_iter()
            .map(|hostname| ListenerRoutes {
                hostname: hostname.map(str::to_owned),
                routes: vec![route(None, "/", "r")],
            })
            .collect(),
        );
        let misdirected = |name: &str, host: &str| t.misdirected(name.as_bytes(), host.as_bytes());
        // The same listener: served (or 404), never 421.
        assert!(!misdirected("example.org", "example.org"));
        assert!(!misdirected("example.org", "unknown.org"));
        assert!(!misdirected("third.wild.org", "fifth.wild.org"));
        assert!(!misdirected("SECOND.org", "second.ORG"));
        // Another listener, in either direction, and for the more specific one under a wildcard.
        assert!(misdirected("example.org", "second.org"));
        assert!(misdirected("second.org", "example.org"));
        assert!(misdirected("second.org", "unknown.org"));
        assert!(misdirected("third.wild.org", "fourth.wild.org"));
        assert!(misdirected("fourth.wild.org", "fifth.wild.org"));
        // A server name that selects no listener decides nothing.
        let (exact, _) = RouteTable::build(vec![ListenerRoutes {
            hostname: Some("second.org".into()),
            routes: vec![route(None, "/", "r")],
        }]);
        assert!(!exact.misdirected(b"other.org", b"second.org"));
        assert!(exact.misdirected(b"second.org", b"other.org"));
    }

    #[test]
    fn matches_are_tried_in_precedence_and_the_prefix_is_told() {
        let header = RouteEntry {
            hostnames: Vec::new(),
            matches: vec![RequestMatch {
                path: PathMatch::prefix("/"),
                headers: vec![HeaderMatch {
                    name: HeaderName::from_static("version"),
                    value: ValueMatch::Exact("2".into()),
                }],
                ..RequestMatch::default()
            }],
            rule: rule("v2"),
        };
        let (t, _) = one(vec![
            route(None, "/", "all"),
            header,
            route(None, "/v1", "v1"),
        ]);
        assert_eq!(found(&t, "h", "/v1/x").as_deref(), Some("v1"));
        let v2 = t
            .lookup(b"h", &Get("/x", vec![("Version", "2")]))
            .map(|m| (m.rule.name.clone(), m.prefix.map(str::to_owned)));
        assert_eq!(v2, Some(("v2".to_owned(), Some("/".to_owned()))));
        assert_eq!(found(&t, "h", "/x").as_deref(), Some("all"));
        let prefix = t
            .lookup(b"h", &Get("/v1/x", Vec::new()))
            .and_then(|m| m.prefix.map(str::to_owned));
        assert_eq!(prefix.as_deref(), Some("/v1"));
    }

    #[test]
    fn weights_give_each_backend_its_share_interleaved() {
        let backend = |cluster, weight| Backend {
            cluster: Some(cluster),
            weight,
            filters: Filters::default(),
        };
        let rule = Rule::new(
            "w".into(),
            Filters::default(),
            vec![backend(0, 7), backend(1, 3), backend(2, 0)],
        );
        let picks: Vec<usize> = (0..20)
            .filter_map(|_| rule.pick().and_then(|b| b.cluster))
            .collect();
        assert_eq!(picks.iter().filter(|&&c| c == 0).count(), 14);
        assert_eq!(picks.iter().filter(|&&c| c == 1).count(), 6);
        // Interleaved: never three in a row of the smaller one, and it comes within the first five.
        assert!(picks[..5].contains(&1), "{picks:?}");
        let none = Rule::new("z".into(), Filters::default(), vec![backend(0, 0)]);
        assert!(none.pick().is_none());
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port(b"example.com:8000"), b"example.com");
        assert_eq!(strip_port(b"[::1]:8000"), b"::1");
        assert_eq!(strip_port(b"[::1"), b"::1");
        assert_eq!(strip_port(b"localhost"), b"localhost");
        assert_eq!(strip_port(b":80"), b"");
    }

    #[test]
    fn a_host_that_is_not_text_is_compared_byte_by_byte() {
        let (t, _) = one(vec![
            route(Some("*.example.com"), "/", "wild"),
            route(Some("shop.example.com"), "/", "shop"),
        ]);
        assert_eq!(
            found_bytes(&t, b"\xff.example.com").as_deref(),
            Some("wild")
        );
        assert_eq!(found_bytes(&t, b"\xc3\xa9"), None);
    }

    fn found_bytes(table: &RouteTable, host: &[u8]) -> Option<String> {
        table
            .lookup(host, &Get("/", Vec::new()))
            .map(|m| m.rule.name.clone())
    }

    /// A request view that counts how often routing reads it.
    #[derive(Default)]
    struct Counted(std::cell::Cell<usize>);

    impl RequestView for Counted {
        fn method(&self) -> &Method {
            self.0.set(self.0.get() + 1);
            &Method::GET
        }
        fn path(&self) -> &str {
            self.0.set(self.0.get() + 1);
            "/api/cart"
        }
        fn query(&self) -> Option<&str> {
            self.0.set(self.0.get() + 1);
            None
        }
        fn any_header(&self, _: &HeaderName, _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            self.0.set(self.0.get() + 1);
            false
        }
    }

    #[test]
    fn a_route_that_takes_everything_reads_nothing_of_the_request() {
        let (t, _) = one(vec![route(None, "/", "any")]);
        let view = Counted::default();
        let matched = t.lookup(b"example.com", &view).map(|m| m.rule.name.clone());
        assert_eq!(matched.as_deref(), Some("any"));
        assert_eq!(view.0.get(), 0);

        // A route with a path to match reads the path, once.
        let (t, _) = one(vec![route(None, "/api", "api")]);
        let view = Counted::default();
        let matched = t.lookup(b"example.com", &view).map(|m| m.rule.name.clone());
        assert_eq!(matched.as_deref(), Some("api"));
        assert_eq!(view.0.get(), 1);
    }

    /// The table knows which rules only forward, so that routing asks nothing more of them;
    /// any filter (the rule's or one backend's), timeout or retry makes a rule not plain.
    #[test]
    fn a_rule_that_only_forwards_is_known_as_plain() {
        let plain = |rule: Rule| {
            let entry = RouteEntry {
                hostnames: Vec::new(),
                matches: Vec::new(),
                rule: Arc::new(rule),
            };
            let (t, _) = one(vec![entry]);
            t.lookup(b"example.com", &Get("/", Vec::new()))
                .map(|m| m.plain)
        };
        let backend = |filters: Filters| Backend {
            cluster: Some(0),
            weight: 1,
            filters,
        };
        let removes = || Filters {
            request_headers: Some(crate::plane::filters::HeaderModifier {
                set: Vec::new(),
                add: Vec::new(),
                remove: vec![HeaderName::from_static("x-a")],
            }),
            ..Filters::default()
        };
        let bare = || {
            Rule::new(
                "r".into(),
                Filters::default(),
                vec![backend(Filters::default())],
            )
        };
        assert_eq!(plain(bare()), Some(true));
        assert_eq!(
            plain(Rule::new("r".into(), removes(), Vec::new())),
            Some(false)
        );
        let second = vec![backend(Filters::default()), backend(removes())];
        assert_eq!(
            plain(Rule::new("r".into(), Filters::default(), second)),
            Some(false)
        );
        let mut timed = bare();
        timed.request_timeout = Some(Duration::from_secs(1));
        assert_eq!(plain(timed), Some(false));
        let mut tried = bare();
        tried.backend_timeout = Some(Duration::from_secs(1));
        assert_eq!(plain(tried), Some(false));
        let mut retried = bare();
        retried.retry = Some(Retry::default());
        assert_eq!(plain(retried), Some(false));
    }
}
