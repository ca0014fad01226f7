//! Members from a Service's EndpointSlices, with the pods' `kubebalancer.io/*` annotations.
//!
//! Ready endpoints are members. An endpoint that is terminating but still serving stays as a
//! `Drain` member until it disappears, so a rolling update drops nothing. Pure: the caller hands
//! in the slices, the Service and the pods' annotations.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::MemberConfig;
use crate::api::{MemberState, Protocol, ServiceRef, annotations};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A pod annotation that could not be used, for an Event on the pod's cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationProblem {
    pub pod: String,
    pub annotation: &'static str,
    pub value: String,
}

/// Members of `service` from its EndpointSlices (all of them, any order), sorted by pod name
/// then URL so that byrequests visits them in a stable order.
pub fn members_from_slices<'a>(
    service_ref: &ServiceRef,
    service: Option<&Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pod_annotations: &HashMap<String, BTreeMap<String, String>>,
    problems: &mut Vec<AnnotationProblem>,
) -> Vec<MemberConfig> {
    let port_name = port_name(service_ref, service);
    let mut by_url: BTreeMap<String, MemberConfig> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some((port, app_protocol)) = slice_port(slice, &service_ref.port, port_name.as_deref())
        else {
            continue;
        };
        let protocol = app_protocol
            .or_else(|| service_app_protocol(service, port_name.as_deref()))
            .and_then(Protocol::from_app_protocol)
            .unwrap_or_default();
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let state = if ready && !terminating {
                MemberState::Enabled
            } else if serving && terminating {
                MemberState::Drain
            } else {
                continue;
            };
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let authority = if address.contains(':') {
                format!("[{address}]:{port}")
            } else {
                format!("{address}:{port}")
            };
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            let mut member = MemberConfig {
                url: format!("http://{authority}"),
                authority,
                pod: pod.clone(),
                load_factor: 1,
                lbset: 0,
                route: None,
                state,
                protocol,
            };
            if let Some(pod) = &pod
                && let Some(annotations) = pod_annotations.get(pod)
            {
                apply_annotations(&mut member, pod, annotations, problems);
            }
            // The same endpoint can sit in two slices while they are rebalanced: a ready copy wins.
            match by_url.get(&member.url) {
                Some(existing)
                    if existing.state != MemberState::Drain
                        || member.state == MemberState::Drain => {}
                _ => {
                    by_url.insert(member.url.clone(), member);
                }
            }
        }
    }
    let mut members: Vec<MemberConfig> = by_url.into_values().collect();
    members.sort_by(|a, b| a.pod.cmp(&b.pod).then_with(|| a.url.cmp(&b.url)));
    members
}

/// The name the slices give the wanted port: Service ports are named in EndpointSlices, and a
/// port given by number is found through the Service.
fn port_name(service_ref: &ServiceRef, service: Option<&Service>) -> Option<String> {
    match &service_ref.port {
        IntOrString::String(name) => Some(name.clone()),
        IntOrString::Int(number) => service
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == *number))
            .map(|p| p.name.clone().unwrap_or_default()),
    }
}

/// The wanted port's number in a slice, and its `appProtocol` when it has one.
fn slice_port<'a>(
    slice: &'a EndpointSlice,
    wanted: &IntOrString,
    name: Option<&str>,
) -> Option<(i32, Option<&'a str>)> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let by_name = name.and_then(|n| ports.iter().find(|p| p.name.as_deref().unwrap_or("") == n));
    let found = match (by_name, wanted) {
        (Some(p), _) => Some(p),
        // Without the Service, a number is taken as the target port itself.
        (None, IntOrString::Int(n)) if name.is_none() => ports.iter().find(|p| p.port == Some(*n)),
        _ => None,
    };
    found.and_then(|p| Some((p.port?, p.app_protocol.as_deref())))
}

/// The Service port's `appProtocol` (EndpointSlices carry a copy, which is read first).
fn service_app_protocol<'a>(service: Option<&'a Service>, name: Option<&str>) -> Option<&'a str> {
    let name = name?;
    service?
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref().unwrap_or("") == name)?
        .app_protocol
        .as_deref()
}

fn apply_annotations(
    member: &mut MemberConfig,
    pod: &str,
    annotations: &BTreeMap<String, String>,
    problems: &mut Vec<AnnotationProblem>,
) {
    let mut problem = |annotation: &'static str, value: &str| {
        problems.push(AnnotationProblem {
            pod: pod.to_owned(),
            annotation,
            value: value.to_owned(),
        });
    };
    if let Some(v) = annotations.get(annotations::LOAD_FACTOR) {
        match v.trim().parse::<u32>() {
            Ok(f) if (1..=100).contains(&f) => member.load_factor = f,
            _ => problem(annotations::LOAD_FACTOR, v),
        }
    }
    if let Some(v) = annotations.get(annotations::LBSET) {
        match v.trim().parse::<u32>() {
            Ok(s) if s <= 99 => member.lbset = s,
            _ => problem(annotations::LBSET, v),
        }
    }
    if let Some(v) = annotations.get(annotations::ROUTE) {
        member.route = Some(v.clone());
    }
    if let Some(v) = annotations.get(annotations::STATE) {
        match serde_json::from_value::<MemberState>(serde_json::Value::String(v.trim().to_owned()))
        {
            // A terminating endpoint stays draining whatever the annotation says.
            Ok(state) if member.state != MemberState::Drain => member.state = state,
            Ok(_) => {}
            Err(_) => problem(annotations::STATE, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn endpoint(ip: &str, pod: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_owned()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn by_name() -> ServiceRef {
        ServiceRef {
            name: "web".into(),
            port: IntOrString::String("http".into()),
        }
    }

    #[test]
    fn ready_endpoints_are_members_and_terminating_ones_drain() {
        let s = slice(vec![
            endpoint("10.244.0.2", "web-b", true, true, false),
            endpoint("10.244.0.1", "web-a", true, true, false),
            endpoint("10.244.0.3", "web-c", false, true, true),
            endpoint("10.244.0.4", "web-d", false, false, false),
        ]);
        let members = members_from_slices(&by_name(), None, [&s], &HashMap::new(), &mut Vec::new());
        let seen: Vec<(&str, Option<&str>, MemberState)> = members
            .iter()
            .map(|m| (m.url.as_str(), m.pod.as_deref(), m.state))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "http://10.244.0.1:8080",
                    Some("web-a"),
                    MemberState::Enabled
                ),
                (
                    "http://10.244.0.2:8080",
                    Some("web-b"),
                    MemberState::Enabled
                ),
                ("http://10.244.0.3:8080", Some("web-c"), MemberState::Drain),
            ]
        );
    }

    #[test]
    fn port_by_number_goes_through_the_service() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .expect("service");
        let s = slice(vec![endpoint("10.244.0.1", "web-a", true, true, false)]);
        let wanted = ServiceRef {
            name: "web".into(),
            port: IntOrString::Int(80),
        };
        let members = members_from_slices(
            &wanted,
            Some(&service),
            [&s],
            &HashMap::new(),
            &mut Vec::new(),
        );
        assert_eq!(members[0].url, "http://10.244.0.1:8080");
        let unknown = ServiceRef {
            name: "web".into(),
            port: IntOrString::Int(81),
        };
        assert!(
            members_from_slices(
                &unknown,
                Some(&service),
                [&s],
                &HashMap::new(),
                &mut Vec::new()
            )
            .is_empty()
        );
    }

    #[test]
    fn annotations_set_factor_set_route_and_state_and_bad_ones_are_reported() {
        let s = slice(vec![
            endpoint("10.244.0.1", "web-a", true, true, false),
            endpoint("10.244.0.2", "web-b", true, true, false),
        ]);
        let mut pods = HashMap::new();
        pods.insert(
            "web-a".to_owned(),
            BTreeMap::from([
                (annotations::LOAD_FACTOR.to_owned(), "5".to_owned()),
                (annotations::LBSET.to_owned(), "1".to_owned()),
                (annotations::ROUTE.to_owned(), "a1".to_owned()),
                (annotations::STATE.to_owned(), "Drain".to_owned()),
            ]),
        );
        pods.insert(
            "web-b".to_owned(),
            BTreeMap::from([(annotations::LOAD_FACTOR.to_owned(), "500".to_owned())]),
        );
        let mut problems = Vec::new();
        let members = members_from_slices(&by_name(), None, [&s], &pods, &mut problems);
        assert_eq!(
            (
                members[0].load_factor,
                members[0].lbset,
                members[0].route.as_deref(),
                members[0].state
            ),
            (5, 1, Some("a1"), MemberState::Drain)
        );
        assert_eq!(members[1].load_factor, 1);
        assert_eq!(
            problems,
            vec![AnnotationProblem {
                pod: "web-b".into(),
                annotation: annotations::LOAD_FACTOR,
                value: "500".into()
            }]
        );
    }

    #[test]
    fn an_endpoint_in_two_slices_counts_once_and_ready_wins() {
        let a = slice(vec![endpoint("10.244.0.1", "web-a", false, true, true)]);
        let b = slice(vec![endpoint("10.244.0.1", "web-a", true, true, false)]);
        let members =
            members_from_slices(&by_name(), None, [&a, &b], &HashMap::new(), &mut Vec::new());
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].state, MemberState::Enabled);
    }

    #[test]
    fn the_ports_app_protocol_picks_http2_for_grpc_and_h2c() {
        let protocol_of = |app: Option<&str>| {
            let mut s = slice(vec![endpoint("10.0.0.1", "web-0", true, true, false)]);
            if let Some(ports) = s.ports.as_mut() {
                ports[0].app_protocol = app.map(str::to_owned);
            }
            members_from_slices(&by_name(), None, [&s], &HashMap::new(), &mut Vec::new())[0]
                .protocol
        };
        for app in ["kubernetes.io/h2c", "grpc", "http2"] {
            assert_eq!(protocol_of(Some(app)), Protocol::H2c, "{app}");
        }
        for app in [None, Some("http"), Some("kubernetes.io/ws"), Some("tcp")] {
            assert_eq!(protocol_of(app), Protocol::Http1, "{app:?}");
        }
    }
}
