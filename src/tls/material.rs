//! What the sources read for TLS (Secrets in a cluster, files in standalone mode), checked and
//! kept: for each source, the last certificate that passed its checks and, when its newest
//! content did not pass, why. A refused or missing certificate never replaces a good one: the
//! good one keeps serving, and the problem is reported next to it.
//!
//! The [`Loader`] belongs to a source; it hands the data plane a [`Material`] with each
//! publication. It reads nothing itself: the source hands it the bytes.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::cert::{self, CertError};
use super::upstream::{self, CaBundle};
use super::{Certificate, Problem, reasons};
use crate::discovery::TlsSource;

/// One source's state, as the data plane sees it.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The last content that passed the checks.
    pub current: Option<Arc<T>>,
    /// Why the newest content is not the one served (refused, or gone).
    pub problem: Option<Problem>,
}

impl<T> Clone for Loaded<T> {
    fn clone(&self) -> Self {
        Loaded {
            current: self.current.clone(),
            problem: self.problem.clone(),
        }
    }
}

/// Everything resolved for TLS at one moment: key pairs (served certificates and client
/// certificates) and CA bundles, by source.
#[derive(Debug, Default, Clone)]
pub struct Material {
    pub keypairs: HashMap<TlsSource, Loaded<Certificate>>,
    pub cas: HashMap<TlsSource, Loaded<CaBundle>>,
}

struct Slot<T> {
    /// Digest of the content last offered; `None` after it went missing.
    digest: Option<u64>,
    loaded: Loaded<T>,
    /// A certificate refused as not yet valid is tried again from this time on.
    retry_at: Option<i64>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            digest: None,
            loaded: Loaded {
                current: None,
                problem: None,
            },
            retry_at: None,
        }
    }
}

/// A source's checked certificates; see the module documentation.
#[derive(Default)]
pub struct Loader {
    keypairs: HashMap<TlsSource, Slot<Certificate>>,
    cas: HashMap<TlsSource, Slot<CaBundle>>,
    version: u64,
}

impl Loader {
    /// Counts changes of what [`Loader::material`] returns: a source compares it with the one it
    /// last published to know whether to publish again.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Offers the current content of a key pair source: `Ok((chain, key))`, or `Err(why)` when
    /// it cannot be read (a Secret that does not exist, a file that cannot be opened). Content
    /// equal to the last offered is no change. Returns whether the material changed.
    pub fn offer_keypair(
        &mut self,
        source: &TlsSource,
        content: Result<(&[u8], &[u8]), String>,
        now: i64,
    ) -> bool {
        let slot = self.keypairs.entry(source.clone()).or_default();
        let changed = match content {
            Err(why) => gone(slot, source, why),
            Ok((chain, key)) => {
                let digest = digest(&[chain, key]);
                if !fresh(slot, digest, now) {
                    return false;
                }
                let result = cert::load(chain, key, now);
                if let Ok(c) = &result {
                    tracing::info!(source = %source, hosts = ?c.info.hosts, serial = %c.info.serial, not_after = %cert::timestamp(c.info.not_after), "certificate loaded");
                }
                take(slot, source, digest, result)
            }
        };
        self.version += u64::from(changed);
        changed
    }

    /// Offers the current content of a CA bundle source (see [`Loader::offer_keypair`]).
    pub fn offer_ca(
        &mut self,
        source: &TlsSource,
        content: Result<&[u8], String>,
        now: i64,
    ) -> bool {
        let slot = self.cas.entry(source.clone()).or_default();
        let changed = match content {
            Err(why) => gone(slot, source, why),
            Ok(pem) => {
                let digest = digest(&[pem]);
                if !fresh(slot, digest, now) {
                    return false;
                }
                let result = upstream::load_ca(pem);
                if let Ok(c) = &result {
                    tracing::info!(source = %source, certificates = c.infos.len(), "CA bundle loaded");
                }
                take(slot, source, digest, result)
            }
        };
        self.version += u64::from(changed);
        changed
    }

    /// Forgets the sources no cluster names any more.
    pub fn retain(&mut self, keypairs: &HashSet<TlsSource>, cas: &HashSet<TlsSource>) {
        let before = self.keypairs.len() + self.cas.len();
        self.keypairs.retain(|s, _| keypairs.contains(s));
        self.cas.retain(|s, _| cas.contains(s));
        if self.keypairs.len() + self.cas.len() != before {
            self.version += 1;
        }
    }

    /// What the data plane is handed.
    pub fn material(&self) -> Material {
        Material {
            keypairs: self
                .keypairs
                .iter()
                .map(|(s, slot)| (s.clone(), slot.loaded.clone()))
                .collect(),
            cas: self
                .cas
                .iter()
                .map(|(s, slot)| (s.clone(), slot.loaded.clone()))
                .collect(),
        }
    }
}

fn digest(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// Whether content with `digest` needs loading: it is new, or it was refused only for not
/// being valid yet and that time has come.
fn fresh<T>(slot: &mut Slot<T>, digest: u64, now: i64) -> bool {
    slot.digest != Some(digest) || slot.retry_at.is_some_and(|at| now >= at)
}

fn gone<T>(slot: &mut Slot<T>, source: &TlsSource, why: String) -> bool {
    let problem = Problem {
        reason: reasons::SOURCE_MISSING,
        message: match slot.loaded.current {
            Some(_) => format!("{source}: {why}; the certificate loaded before keeps serving"),
            None => format!("{source}: {why}"),
        },
    };
    slot.digest = None;
    slot.retry_at = None;
    if slot.loaded.problem.as_ref() == Some(&problem) {
        return false;
    }
    tracing::warn!(source = %source, problem = %problem.message, "TLS source not readable");
    slot.loaded.problem = Some(problem);
    true
}

fn take<T>(
    slot: &mut Slot<T>,
    source: &TlsSource,
    digest: u64,
    result: Result<T, CertError>,
) -> bool {
    slot.digest = Some(digest);
    slot.retry_at = None;
    match result {
        Ok(value) => {
            slot.loaded.current = Some(Arc::new(value));
            slot.loaded.problem = None;
        }
        Err(e) => {
            if let CertError::NotYetValid { .. } = e {
                slot.retry_at = not_before_of(&e);
            }
            let message = match slot.loaded.current {
                Some(_) => format!("{source}: {e}; the certificate loaded before keeps serving"),
                None => format!("{source}: {e}"),
            };
            tracing::error!(source = %source, error = %e, kept_previous = slot.loaded.current.is_some(), "certificate refused");
            slot.loaded.problem = Some(Problem {
                reason: reasons::CERTIFICATE_REFUSED,
                message,
            });
        }
    }
    true
}

fn not_before_of(e: &CertError) -> Option<i64> {
    match e {
        CertError::NotYetValid { not_before } => not_before
            .parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::cert::testing::*;
    use super::*;

    fn secret(name: &str) -> TlsSource {
        TlsSource::Secret {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_refused_certificate_never_replaces_a_good_one() {
        let ca = ca("Test CA");
        let good = leaf(&ca, &["shop.example.com"], 1);
        let mut loader = Loader::default();
        let s = secret("web-tls");
        assert!(loader.offer_keypair(&s, Ok((good.chain.as_bytes(), good.key.as_bytes())), NOW));
        assert_eq!(loader.version(), 1);
        // The same bytes again: no change.
        assert!(!loader.offer_keypair(&s, Ok((good.chain.as_bytes(), good.key.as_bytes())), NOW));
        assert_eq!(loader.version(), 1);

        let other = leaf(&ca, &["shop.example.com"], 2);
        assert!(loader.offer_keypair(&s, Ok((good.chain.as_bytes(), other.key.as_bytes())), NOW));
        let m = loader.material();
        let loaded = &m.keypairs[&s];
        assert_eq!(
            loaded.current.as_ref().map(|c| c.info.serial.as_str()),
            Some("01"),
            "the good one keeps serving"
        );
        let problem = loaded.problem.clone().expect("a problem");
        assert_eq!(problem.reason, reasons::CERTIFICATE_REFUSED);
        assert_eq!(
            problem.message,
            "secret shop/web-tls: the private key does not belong to the certificate (the first certificate of the chain must be the server's own); the certificate loaded before keeps serving"
        );

        // Renewed properly: served, and the problem is gone.
        assert!(loader.offer_keypair(&s, Ok((other.chain.as_bytes(), other.key.as_bytes())), NOW));
        let m = loader.material();
        assert_eq!(
            m.keypairs[&s]
                .current
                .as_ref()
                .map(|c| c.info.serial.as_str()),
            Some("02")
        );
        assert_eq!(m.keypairs[&s].problem, None);

        // Deleted: kept, and said so, once.
        assert!(loader.offer_keypair(&s, Err("not found".into()), NOW));
        assert!(!loader.offer_keypair(&s, Err("not found".into()), NOW));
        let m = loader.material();
        assert!(m.keypairs[&s].current.is_some());
        assert_eq!(
            m.keypairs[&s]
                .problem
                .as_ref()
                .map(|p| (p.reason, p.message.as_str())),
            Some((
                reasons::SOURCE_MISSING,
                "secret shop/web-tls: not found; the certificate loaded before keeps serving"
            ))
        );
        assert_eq!(loader.version(), 4);
    }

    #[test]
    fn a_certificate_not_yet_valid_is_taken_once_its_time_comes() {
        let ca = ca("Test CA");
        let early = leaf_with(
            &ca,
            &["a.example.com"],
            NOW + 60,
            NOW + DAY,
            3,
            rcgen::KeyPair::generate().expect("key"),
        );
        let mut loader = Loader::default();
        let s = secret("early");
        let content = || Ok((early.chain.as_bytes(), early.key.as_bytes()));
        assert!(loader.offer_keypair(&s, content(), NOW));
        assert!(loader.material().keypairs[&s].current.is_none());
        assert!(!loader.offer_keypair(&s, content(), NOW + 59));
        assert!(loader.offer_keypair(&s, content(), NOW + 60));
        assert!(loader.material().keypairs[&s].current.is_some());
    }

    #[test]
    fn ca_bundles_and_forgotten_sources() {
        let ca1 = ca("CA one");
        let ca2 = ca("CA two");
        let bundle = format!("{}{}", ca1.pem, ca2.pem);
        let mut loader = Loader::default();
        let s = secret("ca");
        assert!(loader.offer_ca(&s, Ok(bundle.as_bytes()), NOW));
        let m = loader.material();
        let infos: Vec<&str> = m.cas[&s]
            .current
            .as_ref()
            .map(|c| c.infos.iter().map(|i| i.subject.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(infos, ["CN=CA one", "CN=CA two"]);
        assert!(loader.offer_ca(&s, Ok(b"garbage".as_slice()), NOW));
        assert!(loader.material().cas[&s].current.is_some());
        loader.retain(&HashSet::new(), &HashSet::new());
        assert!(loader.material().cas.is_empty());
    }
}
