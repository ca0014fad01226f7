//! Which certificate a TLS handshake gets, from the name the client asked for (SNI).
//!
//! An exact name wins over a wildcard; a wildcard (`*.example.com`) covers one label
//! (`a.example.com`, neither `example.com` nor `a.b.example.com`), as browsers match them. A name
//! no certificate claims, and a handshake without SNI, get the default certificate when one is
//! marked (`default: true`), and otherwise fail: serving some other site's certificate would show
//! the client a name error anyway, and would tell anyone who asks which sites live here.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::Certificate;

/// A certificate as served: which cluster's `spec.tls` entry claimed it, and for which names.
#[derive(Clone, Debug)]
pub struct Served {
    pub certificate: Arc<Certificate>,
    /// `namespace/name` of the cluster.
    pub cluster: String,
    /// Where it was read from: `secret shop/web-tls` or `file /etc/tls/tls.crt`.
    pub source: String,
    /// The names it is served for (lower-case; wildcards as `*.example.com`).
    pub hosts: Vec<String>,
    pub default: bool,
}

/// A name claimed by two certificates: the earlier claim keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConflict {
    pub cluster: String,
    pub host: String,
    pub held_by: String,
}

/// The certificates served at one moment, indexed by name. Immutable once built; a new set is
/// built with each snapshot.
#[derive(Debug, Default)]
pub struct CertificateSet {
    served: Vec<Served>,
    exact: HashMap<String, usize>,
    /// By the parent of the wildcard: `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
    pub conflicts: Vec<HostConflict>,
}

impl CertificateSet {
    /// Adds a certificate for `hosts`. A name already claimed stays with its first claim and is
    /// reported in `conflicts`; so is a second default.
    pub fn add(&mut self, mut served: Served) {
        let index = self.served.len();
        let mut kept = Vec::with_capacity(served.hosts.len());
        for host in &served.hosts {
            let host = host.to_ascii_lowercase();
            let (map, key) = match host.strip_prefix("*.") {
                Some(parent) => (&mut self.wildcard, parent.to_owned()),
                None => (&mut self.exact, host.clone()),
            };
            match map.get(&key) {
                Some(&holder) => self.conflicts.push(HostConflict {
                    cluster: served.cluster.clone(),
                    host,
                    held_by: self.served[holder].cluster.clone(),
                }),
                None => {
                    map.insert(key, index);
                    kept.push(host);
                }
            }
        }
        if served.default {
            match self.default {
                Some(holder) => {
                    self.conflicts.push(HostConflict {
                        cluster: served.cluster.clone(),
                        host: "(default certificate)".to_owned(),
                        held_by: self.served[holder].cluster.clone(),
                    });
                    served.default = false;
                }
                None => self.default = Some(index),
            }
        }
        served.hosts = kept;
        self.served.push(served);
    }

    /// The certificate for a handshake that asked for `server_name` (or for none).
    pub fn resolve(&self, server_name: Option<&str>) -> Option<&Served> {
        let index = server_name
            .and_then(|name| self.lookup(name))
            .or(self.default)?;
        self.served.get(index)
    }

    /// The key to serve for `server_name`, as rustls wants it.
    pub fn resolve_key(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.resolve(server_name).map(|s| s.certificate.key.clone())
    }

    fn lookup(&self, name: &str) -> Option<usize> {
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// Every certificate served, in the order they were added.
    pub fn served(&self) -> &[Served] {
        &self.served
    }

    pub fn is_empty(&self) -> bool {
        self.served.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::cert::{load, testing::*};
    use super::*;

    fn served(cluster: &str, hosts: &[&str], default: bool) -> Served {
        let ca = ca("Test CA");
        let names: Vec<&str> = if hosts.is_empty() {
            vec!["x"]
        } else {
            hosts.to_vec()
        };
        let leaf = leaf(&ca, &names, 1);
        Served {
            certificate: Arc::new(
                load(leaf.chain.as_bytes(), leaf.key.as_bytes(), NOW).expect("loads"),
            ),
            cluster: cluster.to_owned(),
            source: format!("secret {cluster}"),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            default,
        }
    }

    fn who<'a>(set: &'a CertificateSet, name: Option<&str>) -> Option<&'a str> {
        set.resolve(name).map(|s| s.cluster.as_str())
    }

    #[test]
    fn exact_names_win_over_wildcards_which_cover_one_label() {
        let mut set = CertificateSet::default();
        set.add(served("a/wild", &["*.example.com"], false));
        set.add(served("a/shop", &["shop.example.com"], false));
        assert_eq!(who(&set, Some("shop.example.com")), Some("a/shop"));
        assert_eq!(who(&set, Some("blog.example.com")), Some("a/wild"));
        assert_eq!(who(&set, Some("Blog.Example.COM")), Some("a/wild"));
        assert_eq!(who(&set, Some("a.blog.example.com")), None);
        assert_eq!(who(&set, Some("example.com")), None);
        assert_eq!(who(&set, Some("com")), None);
        assert_eq!(
            who(&set, None),
            None,
            "no SNI and no default: no certificate"
        );
        assert!(set.conflicts.is_empty());
    }

    #[test]
    fn names_nobody_claims_get_the_default_when_one_is_marked() {
        let mut set = CertificateSet::default();
        set.add(served("a/shop", &["shop.example.com"], false));
        set.add(served("a/fallback", &["fallback.example.com"], true));
        set.add(served("a/second", &["other.example.com"], true));
        assert_eq!(who(&set, Some("unknown.example.org")), Some("a/fallback"));
        assert_eq!(who(&set, None), Some("a/fallback"));
        assert_eq!(who(&set, Some("shop.example.com")), Some("a/shop"));
        assert_eq!(
            set.conflicts,
            vec![HostConflict {
                cluster: "a/second".into(),
                host: "(default certificate)".into(),
                held_by: "a/fallback".into()
            }]
        );
        assert!(!set.served()[2].default);
    }

    #[test]
    fn the_first_claim_on_a_name_keeps_it() {
        let mut set = CertificateSet::default();
        set.add(served(
            "a/old",
            &["shop.example.com", "*.example.com"],
            false,
        ));
        set.add(served(
            "a/new",
            &["SHOP.example.com", "api.example.com", "*.example.com"],
            false,
        ));
        assert_eq!(who(&set, Some("shop.example.com")), Some("a/old"));
        assert_eq!(who(&set, Some("api.example.com")), Some("a/new"));
        assert_eq!(who(&set, Some("x.example.com")), Some("a/old"));
        let lost: Vec<&str> = set.conflicts.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(lost, ["shop.example.com", "*.example.com"]);
        assert_eq!(set.served()[1].hosts, ["api.example.com"]);
    }
}
