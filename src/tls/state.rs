//! The TLS side of one snapshot, built at publication from the clusters' TLS settings and the
//! material their sources resolved: the certificates served by name, each cluster's client
//! configuration for its `https://` members, and what is shown (and reported) per cluster.

use std::collections::HashMap;
use std::sync::Arc;

use super::material::{Loaded, Material};
use super::sni::{CertificateSet, Served};
use super::upstream::Upstream;
use super::{CertInfo, Problem, reasons};
use crate::discovery::{ClusterConfig, TlsSource};

/// What a certificate is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    /// Served to clients on the HTTPS listener.
    Server,
    /// Presented to members (mTLS).
    Client,
    /// Trusted to sign members' certificates.
    Ca,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Ca => "ca",
        }
    }
}

/// A certificate a cluster uses, as the balancer-manager and the status show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    pub role: Role,
    /// `secret shop/web-tls` or `file /etc/tls/tls.crt`.
    pub source: String,
    /// The names it is served for (server certificates); otherwise its own names.
    pub hosts: Vec<String>,
    pub default: bool,
    #[serde(flatten)]
    pub info: CertInfo,
}

/// One cluster's TLS, as shown and reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterTls {
    pub certificates: Vec<CertificateView>,
    /// Why something the cluster asks for is not (or not exactly) served; empty when all is.
    pub problems: Vec<Problem>,
}

/// The TLS side of a snapshot.
#[derive(Debug, Default)]
pub struct TlsState {
    /// What the HTTPS listener serves, by name.
    pub certificates: CertificateSet,
    /// By cluster `namespace/name`: only clusters that use TLS.
    pub clusters: HashMap<String, ClusterTls>,
    upstreams: HashMap<String, Arc<Upstream>>,
}

impl TlsState {
    /// Builds the TLS side of a snapshot for `clusters` (in order of precedence: the first claim
    /// on a name keeps it), from `material`. `previous` gives a cluster's client configuration
    /// in the snapshot before, which is kept when nothing it was built from changed.
    pub fn build<'a>(
        clusters: &[ClusterConfig],
        material: &Material,
        previous: impl Fn(&str) -> Option<&'a Arc<Upstream>>,
    ) -> TlsState {
        let mut state = TlsState::default();
        for config in clusters {
            let tls = &config.tls;
            if tls.certificates.is_empty() && tls.upstream.is_none() {
                continue;
            }
            let key = config.key();
            let mut view = ClusterTls::default();
            for entry in &tls.certificates {
                let Some(certificate) = current(&material.keypairs, &entry.source, &mut view)
                else {
                    continue;
                };
                let hosts = if entry.hosts.is_empty() {
                    certificate.info.hosts.clone()
                } else {
                    entry.hosts.clone()
                };
                for host in &hosts {
                    if !certificate.info.covers(host) {
                        view.problems.push(Problem {
                            reason: reasons::HOST_NOT_COVERED,
                            message: format!(
                                "{}: the certificate does not name {host} (it names {}); clients will refuse it",
                                entry.source,
                                certificate.info.hosts.join(", ")
                            ),
                        });
                    }
                }
                let conflicts_before = state.certificates.conflicts.len();
                state.certificates.add(Served {
                    certificate: certificate.clone(),
                    cluster: key.clone(),
                    source: entry.source.to_string(),
                    hosts,
                    default: entry.default,
                });
                for c in &state.certificates.conflicts[conflicts_before..] {
                    view.problems.push(Problem {
                        reason: reasons::HOST_TAKEN,
                        message: format!(
                            "{}: {} already has a certificate from {}, which is older",
                            entry.source, c.host, c.held_by
                        ),
                    });
                }
                if let Some(served) = state.certificates.served().last() {
                    view.certificates.push(CertificateView {
                        role: Role::Server,
                        source: served.source.clone(),
                        hosts: served.hosts.clone(),
                        default: served.default,
                        info: certificate.info.clone(),
                    });
                }
            }
            if let Some(settings) = &tls.upstream {
                let ca = match &settings.ca {
                    Some(source) => match current(&material.cas, source, &mut view) {
                        Some(ca) => Some(ca.clone()),
                        None => {
                            state.clusters.insert(key, view);
                            continue;
                        }
                    },
                    None => None,
                };
                let client = match &settings.client_cert {
                    Some(source) => match current(&material.keypairs, source, &mut view) {
                        Some(c) => Some(c.clone()),
                        None => {
                            state.clusters.insert(key, view);
                            continue;
                        }
                    },
                    None => None,
                };
                if let (Some(c), Some(source)) = (&ca, &settings.ca) {
                    for info in &c.infos {
                        view.certificates.push(CertificateView {
                            role: Role::Ca,
                            source: source.to_string(),
                            hosts: info.hosts.clone(),
                            default: false,
                            info: info.clone(),
                        });
                    }
                }
                if let (Some(c), Some(source)) = (&client, &settings.client_cert) {
                    view.certificates.push(CertificateView {
                        role: Role::Client,
                        source: source.to_string(),
                        hosts: c.info.hosts.clone(),
                        default: false,
                        info: c.info.clone(),
                    });
                }
                let kept = previous(&key)
                    .filter(|u| u.is_built_from(settings, ca.as_ref(), client.as_ref()))
                    .cloned();
                let upstream = match kept {
                    Some(u) => Some(u),
                    None => {
                        if settings.insecure_skip_verify {
                            tracing::warn!(cluster = %key, "upstreamTLS.insecureSkipVerify: the members' certificates are NOT verified");
                        }
                        match Upstream::build(settings, ca, client) {
                            Ok(u) => Some(Arc::new(u)),
                            Err(e) => {
                                view.problems.push(Problem {
                                    reason: reasons::UPSTREAM_TLS_INVALID,
                                    message: format!("upstreamTLS: {e}"),
                                });
                                None
                            }
                        }
                    }
                };
                if let Some(u) = upstream {
                    state.upstreams.insert(key.clone(), u);
                }
            }
            state.clusters.insert(key, view);
        }
        state
    }

    /// The client configuration for a cluster's `https://` members; `None` when the cluster has
    /// none, or when what it names could not be loaded (then its `https://` members cannot be
    /// reached, and its TLS status says why).
    pub fn upstream(&self, cluster: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(cluster)
    }
}

/// The content served for `source`; a problem with it goes to `view`.
fn current<'m, T>(
    loaded: &'m HashMap<TlsSource, Loaded<T>>,
    source: &TlsSource,
    view: &mut ClusterTls,
) -> Option<&'m Arc<T>> {
    match loaded.get(source) {
        Some(l) => {
            if let Some(p) = &l.problem {
                view.problems.push(p.clone());
            }
            l.current.as_ref()
        }
        None => {
            view.problems.push(Problem {
                reason: reasons::SOURCE_MISSING,
                message: format!("{source}: not loaded yet"),
            });
            None
        }
    }
}
