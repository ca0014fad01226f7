//! The certificates of a front's HTTPS listeners (a Gateway's, one front per address and port),
//! chosen by SNI the way the Gateway API chooses a listener by hostname: the listener whose
//! hostname is the name itself, else the one with the longest wildcard that covers it
//! (`*.example.com` covers `a.example.com` and `a.b.example.com`, not `example.com`), else the
//! listener without a hostname. A handshake no listener takes, or one whose listener has no
//! loaded certificate, fails.
//!
//! This differs on purpose from [`super::sni`], the `--listen-tls` listener's choice, where a
//! wildcard covers one label as browsers check it: here the listener is chosen first, and the
//! certificate is the one its Gateway gives it.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::Certificate;
use super::material::Material;
use crate::discovery::TlsSource;

/// How a listener's hostname takes names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Takes {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Suffix(String),
    Any,
}

impl Takes {
    fn of(hostname: Option<&str>) -> Takes {
        match hostname {
            None | Some("") => Takes::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => Takes::Suffix(suffix.to_ascii_lowercase()),
                None => Takes::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    /// Smaller first: exact, then wildcards by length, then any.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        use std::cmp::Reverse;
        match self {
            Takes::Exact(_) => (0, Reverse(0)),
            Takes::Suffix(s) => (1, Reverse(s.len())),
            Takes::Any => (2, Reverse(0)),
        }
    }

    fn takes(&self, name: &str) -> bool {
        match self {
            Takes::Exact(h) => h.eq_ignore_ascii_case(name),
            Takes::Suffix(s) => {
                name.len() > s.len()
                    && name.is_char_boundary(name.len() - s.len())
                    && name[name.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            Takes::Any => true,
        }
    }
}

#[derive(Debug)]
struct Entry {
    takes: Takes,
    /// The first of the listener's certificates that is loaded; `None` when none is.
    certificate: Option<Arc<Certificate>>,
}

/// A front's listeners and their certificates, immutable once built.
#[derive(Debug, Default)]
pub struct ListenerCertificates {
    entries: Vec<Entry>,
}

impl ListenerCertificates {
    /// From each listener's hostname and certificate sources (in the order its Gateway names
    /// them), with what the source loaded. Listeners in order of precedence among equals: a
    /// second listener with the same hostname is never chosen.
    pub fn build<'a>(
        listeners: impl IntoIterator<Item = (Option<&'a str>, &'a [TlsSource])>,
        material: &Material,
    ) -> ListenerCertificates {
        let mut entries: Vec<Entry> = Vec::new();
        for (hostname, sources) in listeners {
            let takes = Takes::of(hostname);
            if entries.iter().any(|e| e.takes == takes) {
                continue;
            }
            let certificate = sources.iter().find_map(|source| {
                material
                    .keypairs
                    .get(source)
                    .and_then(|l| l.current.clone())
            });
            entries.push(Entry { takes, certificate });
        }
        // Stable: equals keep their order.
        entries.sort_by_key(|e| e.takes.rank());
        ListenerCertificates { entries }
    }

    /// The key for a handshake that asked for `server_name` (or for none, which only a listener
    /// without a hostname takes).
    pub fn resolve_key(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let entry = match server_name {
            Some(name) => {
                let name = name.strip_suffix('.').unwrap_or(name);
                self.entries.iter().find(|e| e.takes.takes(name))?
            }
            None => self.entries.iter().find(|e| e.takes == Takes::Any)?,
        };
        entry.certificate.as_ref().map(|c| c.key.clone())
    }

    /// Whether no listener of the front has a certificate loaded.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|e| e.certificate.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::super::cert::testing::*;
    use super::super::material::Loader;
    use super::*;

    fn secret(name: &str) -> TlsSource {
        TlsSource::Secret {
            namespace: "infra".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_handshake_gets_the_certificate_of_the_listener_its_name_selects() {
        let ca = ca("Test CA");
        let mut loader = Loader::default();
        let mut load = |name: &str, hosts: &[&str], serial: u64| {
            let leaf = leaf(&ca, hosts, serial);
            loader.offer_keypair(
                &secret(name),
                Ok((leaf.chain.as_bytes(), leaf.key.as_bytes())),
                NOW,
            );
        };
        load("any", &["example.org"], 1);
        load("wild", &["*.wildcard.org"], 2);
        load("exact", &["second-example.org"], 3);
        load("deep", &["*.b.wildcard.org"], 4);
        let material = loader.material();
        let sources = [
            secret("any"),
            secret("wild"),
            secret("exact"),
            secret("deep"),
            secret("missing"),
        ];
        let set = ListenerCertificates::build(
            [
                (None, &sources[0..1]),
                (Some("*.wildcard.org"), &sources[1..2]),
                (Some("second-example.org"), &sources[2..3]),
                (Some("*.b.wildcard.org"), &sources[3..4]),
                (Some("broken.org"), &sources[4..5]),
                // A second listener for a hostname already taken is never chosen.
                (Some("second-example.org"), &sources[1..2]),
            ],
            &material,
        );
        let serial = |name: Option<&str>| {
            set.resolve_key(name).map(|key| {
                let material = loader_serial(&material, &key);
                material.unwrap_or_default()
            })
        };
        assert_eq!(serial(Some("second-example.org")).as_deref(), Some("03"));
        assert_eq!(serial(Some("SECOND-example.org.")).as_deref(), Some("03"));
        assert_eq!(serial(Some("a.wildcard.org")).as_deref(), Some("02"));
        assert_eq!(serial(Some("a.c.wildcard.org")).as_deref(), Some("02"));
        assert_eq!(serial(Some("a.b.wildcard.org")).as_deref(), Some("04"));
        assert_eq!(serial(Some("wildcard.org")).as_deref(), Some("01"));
        assert_eq!(serial(Some("unknown.example")).as_deref(), Some("01"));
        assert_eq!(serial(None).as_deref(), Some("01"));
        // Its listener takes the name, and has no certificate: the handshake fails.
        assert_eq!(serial(Some("broken.org")), None);
        assert!(!set.is_empty());

        let only_named = ListenerCertificates::build([(Some("a.org"), &sources[0..1])], &material);
        assert_eq!(only_named.resolve_key(None).map(|_| ()), None);
        assert_eq!(only_named.resolve_key(Some("b.org")).map(|_| ()), None);
        assert!(only_named.resolve_key(Some("a.org")).is_some());
    }

    /// The serial of the loaded certificate whose key is `key`.
    fn loader_serial(material: &Material, key: &Arc<CertifiedKey>) -> Option<String> {
        material.keypairs.values().find_map(|l| {
            l.current
                .as_ref()
                .filter(|c| Arc::ptr_eq(&c.key, key))
                .map(|c| c.info.serial.clone())
        })
    }
}
