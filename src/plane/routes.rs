//! Host and path to cluster: the routing table of one snapshot. Pure.
//!
//! Order of precedence, as nginx and Envoy users expect: an exact host beats a wildcard host,
//! which beats a route without a host; a longer wildcard beats a shorter one; within the same
//! host a longer path prefix wins. Path prefixes match whole segments.

/// One route: which requests go to which cluster (an index into the snapshot's clusters).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    host: HostMatch,
    prefix: String,
    cluster: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Any,
}

impl HostMatch {
    fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Exact(_) => (0, 0),
            HostMatch::Suffix(s) => (1, usize::MAX - s.len()),
            HostMatch::Any => (2, 0),
        }
    }

    fn matches(&self, host: &[u8]) -> bool {
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

/// The routing table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

impl RouteTable {
    /// Adds a route; `claims` says whether an earlier cluster already holds the same host and
    /// path (the caller decides who wins by adding the winner first).
    pub fn add(&mut self, host: Option<&str>, prefix: &str, cluster: usize) -> Result<(), usize> {
        let host = match host {
            None | Some("") => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        };
        let prefix = normalise_prefix(prefix);
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.host == host && e.prefix == prefix)
        {
            return Err(e.cluster);
        }
        self.entries.push(Entry {
            host,
            prefix,
            cluster,
        });
        self.entries.sort_by(|a, b| {
            a.host
                .rank()
                .cmp(&b.host.rank())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Ok(())
    }

    /// The cluster for a request's host (without port) and path. The host is the field's bytes
    /// as they came: names are compared in ASCII, without a check that the whole value is text.
    pub fn lookup(&self, host: &[u8], path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|e| e.host.matches(host) && prefix_matches(&e.prefix, path))
            .map(|e| e.cluster)
    }
}

fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/' | b'?')))
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
    use super::*;

    #[test]
    fn most_specific_route_wins() {
        let mut t = RouteTable::default();
        t.add(None, "/", 0).expect("new");
        t.add(Some("*.example.com"), "/", 1).expect("new");
        t.add(Some("shop.example.com"), "/", 2).expect("new");
        t.add(Some("shop.example.com"), "/api", 3).expect("new");
        t.add(Some("*.b.example.com"), "/", 4).expect("new");
        assert_eq!(t.lookup(b"shop.example.com", "/api/cart"), Some(3));
        assert_eq!(t.lookup(b"SHOP.example.com", "/apix"), Some(2));
        assert_eq!(t.lookup(b"blog.example.com", "/"), Some(1));
        assert_eq!(t.lookup(b"x.b.example.com", "/"), Some(4));
        assert_eq!(t.lookup(b"example.com", "/"), Some(0));
        assert_eq!(t.lookup(b"other", "/anything"), Some(0));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let mut t = RouteTable::default();
        t.add(None, "/api/", 7).expect("new");
        assert_eq!(t.lookup(b"h", "/api"), Some(7));
        assert_eq!(t.lookup(b"h", "/api/v1"), Some(7));
        assert_eq!(t.lookup(b"h", "/apiv1"), None);
        assert_eq!(t.lookup(b"h", "/"), None);
    }

    #[test]
    fn second_claim_on_the_same_route_is_refused() {
        let mut t = RouteTable::default();
        t.add(Some("a.com"), "/", 0).expect("new");
        assert_eq!(t.add(Some("A.com"), "/", 1), Err(0));
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
        let mut t = RouteTable::default();
        t.add(Some("*.example.com"), "/", 1).expect("new");
        t.add(Some("shop.example.com"), "/", 2).expect("new");
        assert_eq!(t.lookup(b"\xff.example.com", "/"), Some(1));
        assert_eq!(t.lookup(b"\xc3\xa9", "/"), None);
        t.add(None, "/", 0).expect("new");
        assert_eq!(t.lookup(b"sh\xc3\xb6p.example", "/"), Some(0));
    }
}
