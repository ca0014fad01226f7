//! From what the API server holds to what the data plane serves. Pure: the watch loop hands in
//! the stores' contents and publishes the result when it differs from the last one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use crate::api::BalancerCluster;
use crate::discovery::endpoints::{AnnotationProblem, SERVICE_NAME_LABEL, members_from_slices};
use crate::discovery::{ClusterConfig, cluster_config};

/// Which BalancerClusters this installation serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Serve clusters whose `spec.className` is this (a missing className means `default`).
    pub class: String,
    /// Sidecar mode: serve only this `namespace/name`, for every host and path.
    pub only: Option<(String, String)>,
}

/// Everything the watches hold at one moment.
pub struct World<'a> {
    pub clusters: &'a [Arc<BalancerCluster>],
    pub slices: &'a [Arc<EndpointSlice>],
    pub services: &'a [Arc<Service>],
    pub pods: &'a [Arc<PartialObjectMeta<Pod>>],
}

/// What to serve, and what to tell the user about.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// In order of precedence for route conflicts: oldest first.
    pub clusters: Vec<ClusterConfig>,
    /// Pod annotations that could not be used, by cluster `namespace/name`.
    pub problems: Vec<(String, AnnotationProblem)>,
}

impl Scope {
    pub fn serves(&self, bc: &BalancerCluster) -> bool {
        let namespace = bc.namespace().unwrap_or_default();
        match &self.only {
            Some((ns, name)) => *ns == namespace && *name == bc.name_any(),
            None => bc.spec.class_name.as_deref().unwrap_or("default") == self.class,
        }
    }
}

/// The pods' annotations, by namespace then pod, for those that carry `kubebalancer.io/` ones.
pub fn pod_annotations(
    pods: &[Arc<PartialObjectMeta<Pod>>],
) -> HashMap<String, HashMap<String, BTreeMap<String, String>>> {
    let mut annotations: HashMap<String, HashMap<String, BTreeMap<String, String>>> =
        HashMap::new();
    for pod in pods {
        if let Some(a) = &pod.metadata.annotations
            && a.keys()
                .any(|k| k.starts_with(crate::api::annotations::PREFIX))
        {
            annotations
                .entry(pod.namespace().unwrap_or_default())
                .or_default()
                .insert(pod.name_any(), a.clone());
        }
    }
    annotations
}

/// The clusters to serve, oldest first (the older keeps a contested route).
pub fn desired(world: &World<'_>, scope: &Scope) -> Desired {
    let mut clusters: Vec<&Arc<BalancerCluster>> = world
        .clusters
        .iter()
        .filter(|bc| scope.serves(bc))
        .collect();
    clusters.sort_by(|a, b| {
        let key = |bc: &BalancerCluster| {
            (
                bc.metadata.creation_timestamp.clone().map(|t| t.0),
                bc.namespace(),
                bc.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });

    let annotations = pod_annotations(world.pods);
    let no_annotations = HashMap::new();

    let mut out = Desired::default();
    for bc in clusters {
        let namespace = bc.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", bc.name_any());
        let mut problems = Vec::new();
        let discovered = match &bc.spec.service {
            Some(service_ref) => {
                let service = world
                    .services
                    .iter()
                    .find(|s| {
                        s.namespace().as_deref() == Some(namespace.as_str())
                            && s.name_any() == service_ref.name
                    })
                    .map(|s| s.as_ref());
                let slices = world.slices.iter().map(|s| s.as_ref()).filter(|s| {
                    s.namespace().as_deref() == Some(namespace.as_str())
                        && s.labels().get(SERVICE_NAME_LABEL) == Some(&service_ref.name)
                });
                let pods = annotations.get(&namespace).unwrap_or(&no_annotations);
                members_from_slices(service_ref, service, slices, pods, &mut problems)
            }
            None => Vec::new(),
        };
        out.problems
            .extend(problems.into_iter().map(|p| (key.clone(), p)));
        match cluster_config(bc, discovered) {
            Ok(mut config) => {
                if scope.only.is_some() {
                    config.serve_everything();
                }
                out.clusters.push(config);
            }
            Err(e) => tracing::warn!(cluster = %key, error = %e, "cluster not served"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemberState;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cluster(
        ns: &str,
        name: &str,
        age_secs: i64,
        spec: serde_json::Value,
    ) -> Arc<BalancerCluster> {
        let mut bc = BalancerCluster::new(name, serde_json::from_value(spec).expect("spec"));
        bc.metadata.namespace = Some(ns.into());
        let created =
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age_secs).expect("time");
        bc.metadata.creation_timestamp = Some(Time(created));
        Arc::new(bc)
    }

    fn slice(ns: &str, service: &str, ips: &[(&str, &str)]) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{service}-x"), "namespace": ns, "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": ips.iter().map(|(ip, pod)| serde_json::json!({
                    "addresses": [ip], "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}
                })).collect::<Vec<_>>(),
            }))
            .expect("slice"),
        )
    }

    fn pod(ns: &str, name: &str, annotations: &[(&str, &str)]) -> Arc<PartialObjectMeta<Pod>> {
        let mut meta = PartialObjectMeta::<Pod>::default();
        meta.metadata.name = Some(name.into());
        meta.metadata.namespace = Some(ns.into());
        meta.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        Arc::new(meta)
    }

    #[test]
    fn service_members_static_members_overrides_and_annotations_combine() {
        let clusters = [cluster(
            "shop",
            "web",
            10,
            serde_json::json!({
                "service": {"name": "web", "port": "http"},
                "members": [{"url": "http://10.0.0.5:80"}],
                "memberOverrides": [{"pod": "web-b", "loadFactor": 7}],
            }),
        )];
        let slices = [
            slice(
                "shop",
                "web",
                &[("10.244.0.2", "web-b"), ("10.244.0.1", "web-a")],
            ),
            slice("other", "web", &[("10.244.0.9", "web-z")]),
        ];
        let pods = [pod(
            "shop",
            "web-a",
            &[("kubebalancer.io/state", "Disabled")],
        )];
        let world = World {
            clusters: &clusters,
            slices: &slices,
            services: &[],
            pods: &pods,
        };
        let d = desired(
            &world,
            &Scope {
                class: "default".into(),
                only: None,
            },
        );
        let members: Vec<(&str, u32, MemberState)> = d.clusters[0]
            .members
            .iter()
            .map(|m| (m.url.as_str(), m.load_factor, m.state))
            .collect();
        assert_eq!(
            members,
            vec![
                ("http://10.0.0.5:80", 1, MemberState::Enabled),
                ("http://10.244.0.1:8080", 1, MemberState::Disabled),
                ("http://10.244.0.2:8080", 7, MemberState::Enabled),
            ]
        );
    }

    #[test]
    fn oldest_first_and_other_classes_left_alone() {
        let clusters = [
            cluster(
                "a",
                "young",
                1,
                serde_json::json!({"members": [{"url": "http://10.0.0.1:80"}]}),
            ),
            cluster(
                "a",
                "old",
                100,
                serde_json::json!({"members": [{"url": "http://10.0.0.2:80"}]}),
            ),
            cluster(
                "a",
                "theirs",
                50,
                serde_json::json!({"className": "internal", "members": [{"url": "http://10.0.0.3:80"}]}),
            ),
        ];
        let world = World {
            clusters: &clusters,
            slices: &[],
            services: &[],
            pods: &[],
        };
        let d = desired(
            &world,
            &Scope {
                class: "default".into(),
                only: None,
            },
        );
        let names: Vec<&str> = d.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["old", "young"]);
        let d = desired(
            &world,
            &Scope {
                class: "internal".into(),
                only: None,
            },
        );
        let names: Vec<&str> = d.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["theirs"]);
    }

    #[test]
    fn sidecar_serves_one_cluster_on_every_path() {
        let clusters = [
            cluster(
                "a",
                "web",
                1,
                serde_json::json!({"routes": [{"host": "x.example.com"}], "members": [{"url": "http://10.0.0.1:80"}]}),
            ),
            cluster(
                "a",
                "api",
                1,
                serde_json::json!({"members": [{"url": "http://10.0.0.2:80"}]}),
            ),
        ];
        let world = World {
            clusters: &clusters,
            slices: &[],
            services: &[],
            pods: &[],
        };
        let d = desired(
            &world,
            &Scope {
                class: "default".into(),
                only: Some(("a".into(), "web".into())),
            },
        );
        assert_eq!(d.clusters.len(), 1);
        assert_eq!(d.clusters[0].routes, crate::api::default_routes());
        assert_eq!(
            d.clusters[0].route_configs,
            vec![crate::discovery::routes::RouteConfig::everything()]
        );
    }
}
