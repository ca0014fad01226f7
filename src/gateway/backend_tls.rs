//! BackendTLSPolicy: which Service ports the Gateways reach over TLS, how their certificates
//! are verified, and what each policy's status says. Pure, like [`super::translate`], which
//! calls it.
//!
//! - A policy targets Services of its namespace (`targetRefs`, kind Service), each whole or one
//!   port (`sectionName`, a port's name). For a Service port, a policy naming that port wins
//!   over one naming the whole Service. Two policies with the same target conflict: the older
//!   (then the first by name) holds it, and the other is not applied anywhere (`Accepted=False`,
//!   `Conflicted`).
//! - The Service port's cluster then reaches its endpoints over TLS with the existing member
//!   client ([`crate::tls::Upstream`]): `validation.hostname` as SNI and as the name verified
//!   (or `subjectAltNames` when given), and the `ca.crt` of the first usable ConfigMap of
//!   `caCertificateRefs` as the trust anchors (or, with `wellKnownCACertificates: System`, the
//!   system's).
//! - A policy that applies but has no usable CA certificate leaves its Service port without a
//!   cluster: requests to it get 500, never a connection verified otherwise or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::api::{BackendTLSPolicy, SubjectAltName};
use super::reasons;
use crate::discovery::{TlsSource, UpstreamTlsConfig};
use crate::tls::material::Material;

/// Why something is refused: a condition reason, and a message in words.
type Problem = (&'static str, String);

/// A policy's target: namespace, Service, and port name (`None`: every port).
type Target = (String, String, Option<String>);

/// What one policy comes to.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluated {
    /// `Accepted`: `Ok` with a message, or why not.
    pub accepted: Result<String, Problem>,
    /// `ResolvedRefs`: `Ok` with a message, or the first problem's reason with every problem.
    pub resolved: Result<String, Problem>,
    /// How its targets are reached; `None` when it has no usable CA certificate (or is refused).
    pub upstream: Option<UpstreamTlsConfig>,
    /// Whether it holds its targets (it lost none to an older policy).
    pub holds: bool,
}

/// Every policy evaluated, by `namespace/name`, and which one holds each target.
#[derive(Debug, Default)]
pub struct Policies {
    pub evaluated: BTreeMap<String, Evaluated>,
    targets: BTreeMap<Target, String>,
}

fn key(policy: &BackendTLSPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// The ConfigMaps the policies name: the CA bundles the controller watches and loads.
pub fn ca_sources(policies: &[Arc<BackendTLSPolicy>]) -> BTreeSet<TlsSource> {
    policies
        .iter()
        .flat_map(|p| {
            let namespace = p.namespace().unwrap_or_default();
            p.spec
                .validation
                .ca_certificate_refs
                .iter()
                .filter(|r| r.group.is_empty() && r.kind == "ConfigMap")
                .map(move |r| TlsSource::ConfigMap {
                    namespace: namespace.clone(),
                    name: r.name.clone(),
                })
        })
        .collect()
}

/// Why the CA bundle `source` cannot be trusted now, if it cannot: not read yet, holding no CA
/// certificate, or refused. A newer content that was refused (or is gone) is not trusted in
/// place of the old one, which the loader keeps for others: whoever names it is refused.
pub fn ca_unusable(material: &Material, source: &TlsSource) -> Option<String> {
    let Some(loaded) = material.cas.get(source) else {
        return Some(format!("{source}: not read yet"));
    };
    match (&loaded.problem, &loaded.current) {
        (Some(p), _) => Some(
            p.message
                .split("; the certificate loaded before")
                .next()
                .unwrap_or(&p.message)
                .to_owned(),
        ),
        (None, None) => Some(format!("{source}: no usable CA certificate")),
        (None, Some(_)) => None,
    }
}

/// Evaluates every policy against the CA bundles loaded (`material`).
pub fn evaluate(policies: &[Arc<BackendTLSPolicy>], material: &Material) -> Policies {
    let mut ordered: Vec<&Arc<BackendTLSPolicy>> = policies.iter().collect();
    // Older first, then by namespace and name: the conflict rules of policy attachment.
    ordered.sort_by(|a, b| {
        let created = |p: &BackendTLSPolicy| p.metadata.creation_timestamp.clone().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| key(a).cmp(&key(b)))
    });
    let mut out = Policies::default();
    for policy in ordered {
        let namespace = policy.namespace().unwrap_or_default();
        let name = key(policy);
        let mut holds = true;
        let mut mine = Vec::new();
        for target in &policy.spec.target_refs {
            if !target.group.is_empty() || target.kind != "Service" {
                continue;
            }
            let t = (
                namespace.clone(),
                target.name.clone(),
                target.section_name.clone(),
            );
            match out.targets.get(&t) {
                Some(other) if *other != name => holds = false,
                _ => mine.push(t),
            }
        }
        let mut evaluated = validation(policy, &namespace, material);
        if holds {
            for t in mine {
                out.targets.insert(t, name.clone());
            }
        } else {
            evaluated.holds = false;
            evaluated.upstream = None;
            evaluated.accepted = Err((
                reasons::CONFLICTED,
                "an older BackendTLSPolicy already targets the same Service (and port): this one is not applied".to_owned(),
            ));
        }
        out.evaluated.insert(name, evaluated);
    }
    out
}

fn validation(policy: &BackendTLSPolicy, namespace: &str, material: &Material) -> Evaluated {
    let validation = &policy.spec.validation;
    let mut problems: Vec<Problem> = Vec::new();
    let mut ca: Option<Option<TlsSource>> = None;
    let mut unsupported = None;
    match validation.well_known_ca_certificates.as_deref() {
        Some("System") if validation.ca_certificate_refs.is_empty() => ca = Some(None),
        Some(other) if !other.is_empty() => {
            unsupported = Some(format!(
                "wellKnownCACertificates {other:?} is not supported (System is)"
            ))
        }
        _ => {}
    }
    for reference in &validation.ca_certificate_refs {
        if !reference.group.is_empty() || reference.kind != "ConfigMap" {
            problems.push((
                reasons::INVALID_KIND,
                format!(
                    "caCertificateRef {}: kind {:?} of group {:?} is not supported (ConfigMap of the core group is)",
                    reference.name, reference.kind, reference.group
                ),
            ));
            continue;
        }
        let source = TlsSource::ConfigMap {
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
        };
        let why = ca_unusable(material, &source);
        match why {
            Some(why) => problems.push((
                reasons::INVALID_CA_CERTIFICATE_REF,
                format!("caCertificateRef {}: {why}", reference.name),
            )),
            None => {
                if ca.is_none() {
                    ca = Some(Some(source));
                }
            }
        }
    }
    let resolved = match problems.first() {
        None => Ok("every caCertificateRef is a ConfigMap with a usable ca.crt".to_owned()),
        Some((reason, _)) => Err((
            *reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    };
    let upstream = ca.clone().map(|ca| UpstreamTlsConfig {
        ca,
        server_name: Some(validation.hostname.clone()),
        client_cert: None,
        insecure_skip_verify: false,
        subject_alt_names: subject_alt_names(&validation.subject_alt_names),
    });
    let accepted = match (&unsupported, &ca) {
        (Some(why), _) => Err((reasons::INVALID, why.clone())),
        (None, None) => Err((
            reasons::NO_VALID_CA_CERTIFICATE,
            "no caCertificateRef gives a usable CA certificate: requests to its targets fail"
                .to_owned(),
        )),
        (None, Some(Some(source))) => Ok(format!(
            "its targets are reached over TLS, verified for {} against the CA certificates of {source}",
            validation.hostname
        )),
        (None, Some(None)) => Ok(format!(
            "its targets are reached over TLS, verified for {} against the system's CA certificates",
            validation.hostname
        )),
    };
    Evaluated {
        upstream: if accepted.is_ok() { upstream } else { None },
        accepted,
        resolved,
        holds: true,
    }
}

fn subject_alt_names(names: &[SubjectAltName]) -> Vec<crate::discovery::SubjectAltName> {
    names
        .iter()
        .filter_map(|n| match n.type_.as_str() {
            "Hostname" => n
                .hostname
                .clone()
                .map(crate::discovery::SubjectAltName::Dns),
            "URI" => n.uri.clone().map(crate::discovery::SubjectAltName::Uri),
            _ => None,
        })
        .collect()
}

impl Policies {
    /// The policy that decides how the port `port` of Service `namespace/name` is reached: one
    /// naming that port, else one naming the whole Service.
    pub fn for_port(&self, service: &Service, port: i32) -> Option<(&str, &Evaluated)> {
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let port_name = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
            .and_then(|p| p.name.clone());
        let by_port = port_name.and_then(|p| {
            self.targets
                .get(&(namespace.clone(), name.clone(), Some(p)))
        });
        let holder = by_port.or_else(|| self.targets.get(&(namespace, name, None)))?;
        self.evaluated.get(holder).map(|e| (holder.as_str(), e))
    }

    /// Whether `policy` targets the Service `namespace/name` (any port).
    pub fn targets(policy: &BackendTLSPolicy, namespace: &str, name: &str) -> bool {
        policy.namespace().as_deref() == Some(namespace)
            && policy
                .spec
                .target_refs
                .iter()
                .any(|t| t.group.is_empty() && t.kind == "Service" && t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::cert::testing::ca;
    use crate::tls::material::Loader;

    fn policy(name: &str, age: i64, spec: serde_json::Value) -> Arc<BackendTLSPolicy> {
        let created = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + age)
            .expect("time")
            .to_string();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                "metadata": {"namespace": "infra", "name": name, "creationTimestamp": created},
                "spec": spec,
            }))
            .expect("a policy"),
        )
    }

    fn spec(service: &str, section: Option<&str>, refs: serde_json::Value) -> serde_json::Value {
        let mut target = serde_json::json!({"group": "", "kind": "Service", "name": service});
        if let Some(section) = section {
            target["sectionName"] = section.into();
        }
        serde_json::json!({
            "targetRefs": [target],
            "validation": {"caCertificateRefs": refs, "hostname": "abc.example.com"},
        })
    }

    fn config_map(name: &str) -> serde_json::Value {
        serde_json::json!([{"group": "", "kind": "ConfigMap", "name": name}])
    }

    fn service(name: &str, ports: &[(&str, i32)]) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "infra", "name": name},
            "spec": {"ports": ports.iter().map(|(n, p)| serde_json::json!({"name": n, "port": p})).collect::<Vec<_>>()},
        }))
        .expect("a service")
    }

    fn source(name: &str) -> TlsSource {
        TlsSource::ConfigMap {
            namespace: "infra".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_usable_ca_makes_the_target_tls_and_bad_references_say_why() {
        let mut loader = Loader::default();
        loader.offer_ca(&source("good"), Ok(ca("Backend CA").pem.as_bytes()), 0);
        loader.offer_ca(&source("empty"), Ok(b"".as_slice()), 0);
        loader.offer_ca(&source("gone"), Err("no such ConfigMap".into()), 0);
        let policies = [
            policy("good", 0, spec("web", None, config_map("good"))),
            policy("empty", 0, spec("api", None, config_map("empty"))),
            policy("gone", 0, spec("gone", None, config_map("gone"))),
            policy(
                "kind",
                0,
                spec(
                    "kind",
                    None,
                    serde_json::json!([{"group": "invalid.io", "kind": "InvalidKind", "name": "x"}]),
                ),
            ),
        ];
        assert_eq!(
            ca_sources(&policies),
            ["good", "empty", "gone"].map(source).into_iter().collect()
        );
        let evaluated = evaluate(&policies, &loader.material());
        let good = &evaluated.evaluated["infra/good"];
        assert!(good.accepted.is_ok() && good.resolved.is_ok(), "{good:?}");
        let upstream = good.upstream.as_ref().expect("TLS");
        assert_eq!(upstream.ca, Some(source("good")));
        assert_eq!(upstream.server_name.as_deref(), Some("abc.example.com"));
        let (holder, _) = evaluated
            .for_port(&service("web", &[("https", 443)]), 443)
            .expect("targeted");
        assert_eq!(holder, "infra/good");
        for (name, reason) in [
            ("empty", reasons::INVALID_CA_CERTIFICATE_REF),
            ("gone", reasons::INVALID_CA_CERTIFICATE_REF),
            ("kind", reasons::INVALID_KIND),
        ] {
            let e = &evaluated.evaluated[&format!("infra/{name}")];
            assert_eq!(e.upstream, None, "{name}");
            assert_eq!(
                e.accepted.as_ref().map_err(|(r, _)| *r),
                Err(reasons::NO_VALID_CA_CERTIFICATE),
                "{name}"
            );
            assert_eq!(
                e.resolved.as_ref().map_err(|(r, _)| *r),
                Err(reason),
                "{name}"
            );
        }
        let (_, gone) = &evaluated.evaluated["infra/gone"]
            .resolved
            .clone()
            .unwrap_err();
        assert_eq!(
            gone,
            "caCertificateRef gone: configmap infra/gone: no such ConfigMap"
        );
    }

    #[test]
    fn the_older_policy_holds_a_target_and_a_port_beats_the_whole_service() {
        let mut loader = Loader::default();
        loader.offer_ca(&source("ca"), Ok(ca("Backend CA").pem.as_bytes()), 0);
        let policies = [
            policy("newer", 5, spec("web", None, config_map("ca"))),
            policy("older", 1, spec("web", None, config_map("ca"))),
            policy("port", 9, spec("web", Some("https-1"), config_map("ca"))),
        ];
        let evaluated = evaluate(&policies, &loader.material());
        assert!(evaluated.evaluated["infra/older"].accepted.is_ok());
        let newer = &evaluated.evaluated["infra/newer"];
        assert_eq!(
            newer.accepted.as_ref().map_err(|(r, _)| *r),
            Err(reasons::CONFLICTED)
        );
        assert!(!newer.holds && newer.upstream.is_none());
        let web = service("web", &[("https-1", 443), ("https-2", 8443)]);
        assert_eq!(
            evaluated.for_port(&web, 443).map(|(k, _)| k),
            Some("infra/port")
        );
        assert_eq!(
            evaluated.for_port(&web, 8443).map(|(k, _)| k),
            Some("infra/older")
        );
        assert!(
            evaluated
                .for_port(&service("api", &[("http", 80)]), 80)
                .is_none()
        );
    }
}
