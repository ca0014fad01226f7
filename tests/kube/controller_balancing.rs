//! Sticky sessions, methods and health settings for Service pods, against the real control plane
//! (docs/testenv.md): routes derived from pod names, a terminating pod that keeps its sessions
//! while it drains, and the API server refusing bad settings with the CEL message.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::net::SocketAddr;

use http::StatusCode;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::backend::Backend;
use crate::support::client::{client, send};
use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{
    Balancer, apply_cluster, install_crd, options, web_pods, web_service,
};
use crate::support::netns;
use crate::support::pods::{self, FakePod};
use kube_balancer::api::BalancerCluster;

/// `(pod, State, route)` of each member.
fn members_of(balancer: &Balancer, ns: &str) -> Vec<(String, String, String)> {
    balancer
        .member_configs(ns)
        .iter()
        .map(|m| {
            (
                m.pod.clone().unwrap_or_default(),
                format!("{:?}", m.state),
                m.route.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// `GET /` through the balancer with an optional Cookie header: status, body (the pod's name)
/// and the Set-Cookie header, if any.
async fn get(addr: SocketAddr, cookie: Option<&str>) -> (StatusCode, String, Option<String>) {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let answer = send(&client(), "GET", &format!("http://{addr}/"), &headers, "").await;
    (
        answer.status,
        answer.body,
        answer.set_cookie.into_iter().next(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_routes_from_their_names_and_a_draining_pod_keeps_its_sessions() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "sticky").await;
    web_service(&client, &ns).await;
    let pods = web_pods(&client, &ns, &["web-a", "web-b", "web-c"]).await;
    apply_cluster(
        &client,
        &ns,
        json!({
            "service": {"name": "web", "port": "http"},
            "stickySession": {"cookie": "ROUTEID", "insert": true},
            "healthCheck": {"method": "TCP", "interval": "1s"},
        }),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    balancer
        .wait_members(&ns, &["web-a:Enabled", "web-b:Enabled", "web-c:Enabled"])
        .await;
    let members = members_of(&balancer, &ns);
    // Each pod's route is derived from its name: the same in every replica, and for a pod
    // of the same name (a StatefulSet's) whatever its address.
    let route_of = |pod: &str| {
        members
            .iter()
            .find(|(p, _, _)| p == pod)
            .map(|(_, _, r)| r.clone())
            .expect("member")
    };
    let mut expected = kube_balancer::discovery::MemberConfig {
        url: "http://192.0.2.1:1".into(),
        authority: "192.0.2.1:1".into(),
        pod: Some("web-b".into()),
        load_factor: 1,
        lbset: 0,
        route: None,
        state: kube_balancer::api::MemberState::Enabled,
        protocol: kube_balancer::api::Protocol::Http1,
    };
    assert_eq!(
        route_of("web-b"),
        kube_balancer::discovery::default_route(&expected)
    );
    expected.pod = Some("web-a".into());
    assert_eq!(
        route_of("web-a"),
        kube_balancer::discovery::default_route(&expected)
    );

    // The first answer (web-a's turn) sets the cookie to web-a's route; the client keeps it.
    let (status, body, set_cookie) = get(balancer.addr(), None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "web-a"));
    let cookie = format!("ROUTEID={}", route_of("web-a"));
    assert_eq!(
        set_cookie.as_deref(),
        Some(format!("{cookie}; Path=/; HttpOnly").as_str())
    );
    for _ in 0..4 {
        assert_eq!(get(balancer.addr(), Some(&cookie)).await.1, "web-a");
    }

    // web-a terminates: it drains, taking its sessions and nothing else.
    pods[0].0.terminate(&client).await;
    balancer
        .wait_members(&ns, &["web-a:Drain", "web-b:Enabled", "web-c:Enabled"])
        .await;
    let before = pods[0].1.hits();
    for _ in 0..4 {
        let (_, body, _) = get(balancer.addr(), None).await;
        assert_ne!(body, "web-a", "a draining pod takes no new sessions");
    }
    assert_eq!(pods[0].1.hits(), before);
    for _ in 0..3 {
        let (status, body, set_cookie) = get(balancer.addr(), Some(&cookie)).await;
        assert_eq!(
            (status, body.as_str(), set_cookie),
            (StatusCode::OK, "web-a", None)
        );
    }

    // web-a is gone: its sessions move, and the answer moves the cookie with them.
    pods[0].0.delete(&client).await;
    balancer
        .wait_members(&ns, &["web-b:Enabled", "web-c:Enabled"])
        .await;
    let (status, body, set_cookie) = get(balancer.addr(), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(body, "web-a");
    assert_eq!(
        set_cookie.as_deref(),
        Some(format!("ROUTEID={}; Path=/; HttpOnly", route_of(&body)).as_str())
    );

    // A pod's own route annotation wins over the derived one.
    let ip = netns::next_pod_ip();
    let backend = Backend::start_on("web-d", ip).await;
    FakePod::new(&ns, "web-d", ip)
        .label("app", "web")
        .annotation("kubebalancer.io/route", "dee")
        .port("http", backend.addr.port())
        .create(&client)
        .await;
    balancer
        .wait_members(&ns, &["web-b:Enabled", "web-c:Enabled", "web-d:Enabled"])
        .await;
    let members = members_of(&balancer, &ns);
    assert_eq!(members[2].2, "dee");
    assert_eq!(get(balancer.addr(), Some("ROUTEID=x.dee")).await.1, "web-d");
}

#[tokio::test]
async fn the_api_server_refuses_bad_balancing_settings_with_the_cel_message() {
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "badmethods").await;
    let resource = kube::api::ApiResource::erase::<BalancerCluster>(&());
    let api = Api::<kube::api::DynamicObject>::namespaced_with(client, &ns, &resource);
    let refuse = |spec: serde_json::Value| {
        let api = api.clone();
        async move {
            let mut spec = spec;
            spec["members"] = json!([{"url": "http://10.0.0.1:80"}]);
            let bc: kube::api::DynamicObject = serde_json::from_value(json!({
                "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
                "metadata": {"name": "bad"}, "spec": spec,
            }))
            .expect("well-formed");
            match api.create(&PostParams::default(), &bc).await {
                Err(kube::Error::Api(e)) => (e.code, e.message),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    let cases = [
        (
            json!({"hash": {"key": "Header", "name": "X-User"}}),
            "spec.hash only applies to lbMethod: hash",
        ),
        (
            json!({"lbMethod": "hash", "hash": {"key": "Cookie"}}),
            "hash.name names the header, cookie or query parameter to hash on",
        ),
        (
            json!({"stickySession": {"param": "jsessionid", "insert": true}}),
            "stickySession.insert sets a cookie: name it in stickySession.cookie",
        ),
        (
            json!({"healthCheck": {"interval": "10ms"}}),
            "healthCheck.interval must be at least 100ms",
        ),
        (
            json!({"healthCheck": {"method": "HEAD", "bodyContains": "ok"}}),
            "healthCheck.bodyContains needs method: GET",
        ),
        (
            json!({"outlierDetection": {"baseEjectionTime": "10m", "maxEjectionTime": "5m"}}),
            "outlierDetection.baseEjectionTime must not be longer than maxEjectionTime",
        ),
        (
            json!({"slowStart": "soon"}),
            "must be a duration such as 500ms, 5s or 1m30s",
        ),
    ];
    for (spec, expected) in cases {
        let (code, message) = refuse(spec.clone()).await;
        assert_eq!(code, 422, "{spec}: {message}");
        assert!(message.contains(expected), "{spec}: {message}");
    }
    // And a resource using everything is accepted.
    let good: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "good"},
        "spec": {
            "members": [{"url": "http://10.0.0.1:80"}],
            "lbMethod": "hash",
            "hash": {"key": "Header", "name": "X-User", "boundedLoad": 125},
            "stickySession": {"cookie": "JSESSIONID", "param": "jsessionid", "insert": true},
            "healthCheck": {"method": "GET", "path": "/healthz", "interval": "5s", "passes": 2,
                            "fails": 3, "expectStatus": "200-299,404", "bodyContains": "ok"},
            "outlierDetection": {"consecutiveFailures": 5, "failurePercent": 50},
            "slowStart": "30s",
            "failover": {"forceRecovery": false},
        },
    }))
    .expect("well-formed");
    api.create(&PostParams::default(), &good)
        .await
        .expect("the API server accepts every new field");
}
