//! The controller against a real control plane (docs/testenv.md): a real kube-apiserver with etcd
//! and the real EndpointSlice controller, kubelet-less pods whose backends listen on their pod IPs
//! inside the run's network namespace, the real data plane, and the real kubectl.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::client::{Answer, get_at};
use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{
    Balancer, apply_cluster, install_crd, options, web_pods, web_service,
};
use crate::support::pods::{self, FakePod};
use crate::support::{netns, wait};
use kube_balancer::api::BalancerCluster;
use kube_balancer::controller;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_pods_receive_traffic_in_byrequests_order_and_status_shows_it() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "order").await;
    web_service(&client, &ns).await;
    let pods = web_pods(&client, &ns, &["web-a", "web-b", "web-c"]).await;
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;

    let balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    balancer
        .wait_members(&ns, &["web-a:Enabled", "web-b:Enabled", "web-c:Enabled"])
        .await;

    let mut order = Vec::new();
    for _ in 0..6 {
        let Answer { status, body, .. } = get_at(balancer.addr(), "/").await;
        assert_eq!(status, 200);
        order.push(body);
    }
    assert_eq!(
        order,
        ["web-a", "web-b", "web-c", "web-a", "web-b", "web-c"]
    );
    for (_, b) in &pods {
        assert_eq!(b.hits(), 2, "{}", b.name);
    }

    // The real kubectl shows the balancer-manager view.
    let cp = ControlPlane::shared();
    let mut table = String::new();
    for _ in 0..200 {
        table = cp
            .run("kubectl", &["get", "balancerclusters", "-n", &ns])
            .await;
        if table.contains("3/3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "METHOD", "READY", "ROUTES", "AGE"]
    );
    assert_eq!(
        lines[1].split_whitespace().take(4).collect::<Vec<_>>(),
        ["web", "byrequests", "3/3", "*/"]
    );

    let yaml = cp
        .run("kubectl", &["get", "bc", "web", "-n", &ns, "-o", "json"])
        .await;
    let bc: serde_json::Value = serde_json::from_str(&yaml).expect("json");
    let members = bc["status"]["members"].as_array().expect("a member table");
    let rows: Vec<(String, u64, String)> = members
        .iter()
        .map(|m| {
            (
                m["pod"].as_str().unwrap_or("").to_owned(),
                m["elected"].as_u64().unwrap_or(0),
                m["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("web-a".to_owned(), 2, "Ok".to_owned()),
            ("web-b".to_owned(), 2, "Ok".to_owned()),
            ("web-c".to_owned(), 2, "Ok".to_owned())
        ]
    );
    let conditions = bc["status"]["conditions"].as_array().expect("conditions");
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("MembersAvailable"))
    );
    assert_eq!(
        bc["status"]["observedGeneration"],
        bc["metadata"]["generation"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pod_under_load_fails_no_request_and_sends_it_nothing_more() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "remove").await;
    web_service(&client, &ns).await;
    let names = ["web-a", "web-b", "web-c", "web-d", "web-e", "web-f"];
    let pods = web_pods(&client, &ns, &names).await;
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    let all: Vec<String> = names.iter().map(|n| format!("{n}:Enabled")).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    balancer.wait_members(&ns, &all).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    // Requests ended, answered or not: the load sends one at a time.
    let ended = || served.load(Ordering::SeqCst) + failures.load(Ordering::SeqCst);
    let addr = balancer.addr();
    let load = {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        tokio::spawn(async move {
            // Bounded: at most 50 000 requests.
            for _ in 0..50_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // A refused connection or a broken answer panics here and fails the test.
                let Answer { status, .. } = get_at(addr, "/").await;
                if status == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    // Take pods away one by one: not ready first (as a failing readiness probe), then deleted.
    let mut seen = Vec::new();
    let mut remaining: Vec<String> = names.iter().map(|n| format!("{n}:Enabled")).collect();
    for (pod, backend) in pods.iter().take(4) {
        pod.set_ready(&client, false).await;
        let t0 = Instant::now();
        remaining.retain(|m| !m.starts_with(&format!("{}:", pod.name)));
        let want: Vec<&str> = remaining.iter().map(String::as_str).collect();
        balancer.wait_members(&ns, &want).await;
        seen.push(t0.elapsed());
        // The request in flight when the member list changed may have chosen the pod, and
        // reach it only now: once it has ended, every later request was routed on the new list.
        let now = ended();
        wait::until("the request in flight to end", wait::TIMEOUT, || {
            ended() >= now + 2
        })
        .await;
        let after = backend.hits();
        // Let traffic flow: nothing more reaches the removed pod.
        let target = ended() + 50;
        wait::until("50 more requests", wait::TIMEOUT, || ended() >= target).await;
        assert_eq!(
            backend.hits(),
            after,
            "{} got requests after it left",
            pod.name
        );
        pod.delete(&client).await;
    }
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request may fail while pods leave"
    );
    seen.sort();
    // A figure, not a threshold: how long a change takes depends on the machine's load
    // (wait_members fails after wait::TIMEOUT).
    eprintln!(
        "EndpointSlice change to data plane (pod readiness patch to member gone), {} changes: median {:?}, worst {:?}",
        seen.len(),
        seen[seen.len() / 2],
        seen[seen.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_annotation_stops_new_requests_and_shows_in_status() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "drain").await;
    web_service(&client, &ns).await;
    let pods = web_pods(&client, &ns, &["web-a", "web-b"]).await;
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    balancer
        .wait_members(&ns, &["web-a:Enabled", "web-b:Enabled"])
        .await;

    ControlPlane::shared()
        .run(
            "kubectl",
            &[
                "annotate",
                "pod",
                "web-a",
                "-n",
                &ns,
                "kubebalancer.io/state=Drain",
            ],
        )
        .await;
    balancer
        .wait_members(&ns, &["web-a:Drain", "web-b:Enabled"])
        .await;
    let before = pods[0].1.hits();
    for _ in 0..6 {
        let Answer { status, body, .. } = get_at(balancer.addr(), "/").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "web-b"));
    }
    assert_eq!(pods[0].1.hits(), before);

    let api = Api::<BalancerCluster>::namespaced(client.clone(), &ns);
    let bc = wait::until_object(
        api,
        "web",
        "status to show web-a draining",
        |bc: &BalancerCluster| {
            bc.status.as_ref().is_some_and(|s| {
                s.members
                    .iter()
                    .any(|m| m.pod.as_deref() == Some("web-a") && m.state == "Drain")
            })
        },
    )
    .await;
    let status = bc.status.expect("status");
    assert_eq!(
        (
            status.ready_members,
            status.total_members,
            status.ready.as_deref()
        ),
        (1, 2, Some("1/2"))
    );
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_deref()),
        ("True", Some("MembersUnavailable"))
    );
}

#[tokio::test]
async fn an_invalid_balancer_cluster_is_refused_with_the_cel_message() {
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "invalid").await;
    // Untyped, so that values our own types would not even parse reach the API server.
    let resource = kube::api::ApiResource::erase::<BalancerCluster>(&());
    let api = Api::<kube::api::DynamicObject>::namespaced_with(client, &ns, &resource);
    let refuse = |spec: serde_json::Value| {
        let api = api.clone();
        async move {
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
    let (code, message) =
        refuse(json!({"members": [{"url": "http://10.0.0.1:80", "loadFactor": 0}]})).await;
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.members[0].loadFactor: Invalid value")
            && message.contains("loadFactor must be between 1 and 100"),
        "{message}"
    );
    let (_, message) = refuse(json!({})).await;
    assert!(
        message.contains("a balancer needs members: give spec.service, spec.members, or both"),
        "{message}"
    );
    let (_, message) = refuse(
        json!({"members": [{"url": "http://10.0.0.1:80"}], "timeouts": {"connect": "5 seconds"}}),
    )
    .await;
    assert!(
        message.contains("spec.timeouts.connect")
            && message.contains("must be a duration such as 500ms, 5s or 1m30s"),
        "{message}"
    );
    let (_, message) = refuse(
        json!({"members": [{"url": "http://10.0.0.1:80"}], "routes": [{"host": "Bad_Host"}]}),
    )
    .await;
    assert!(
        message.contains("host must be a lower-case DNS name"),
        "{message}"
    );
}

/// Two replicas, each a controller with its own data plane and admin server on its own "pod IP",
/// found by the leader through their Service: one writes status, with the figures of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_status_writer_and_counters_summed() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "replicas").await;
    web_service(&client, &ns).await;
    let backends = web_pods(&client, &ns, &["web-a", "web-b"]).await;
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "kube-balancer", "namespace": ns},
        "spec": {"selector": {"app": "kube-balancer"}, "ports": [{"name": "admin", "port": 9901, "targetPort": "admin"}]},
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("create");

    let mut replicas = Vec::new();
    for name in ["replica-1", "replica-2"] {
        let mut opts = options(&ns, name);
        opts.peers_service = Some((ns.clone(), "kube-balancer".into()));
        let balancer = Balancer::start(&client, opts).await;
        let ip = netns::next_pod_ip();
        let admin = kube_balancer::admin::start((ip, 0).into(), balancer.plane.clone())
            .await
            .expect("admin");
        FakePod::new(&ns, name, ip)
            .label("app", "kube-balancer")
            .port("admin", admin.port())
            .create(&client)
            .await;
        balancer
            .wait_members(&ns, &["web-a:Enabled", "web-b:Enabled"])
            .await;
        replicas.push(balancer);
    }
    let leaders = || replicas.iter().filter(|r| r.leads()).count();
    let deadline = Instant::now() + wait::TIMEOUT;
    while leaders() != 1 {
        assert!(Instant::now() < deadline, "no single leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 4 requests through one replica, 6 through the other.
    for (replica, n) in replicas.iter().zip([4, 6]) {
        for _ in 0..n {
            assert_eq!(get_at(replica.addr(), "/").await.status, 200);
        }
    }
    assert_eq!(backends[0].1.hits() + backends[1].1.hits(), 10);
    let api = Api::<BalancerCluster>::namespaced(client.clone(), &ns);
    let bc = wait::until_object(
        api.clone(),
        "web",
        "status to sum both replicas",
        |bc: &BalancerCluster| {
            bc.status
                .as_ref()
                .is_some_and(|s| s.members.iter().map(|m| m.elected).sum::<u64>() == 10)
        },
    )
    .await;
    let per_member: Vec<u64> = bc
        .status
        .expect("status")
        .members
        .iter()
        .map(|m| m.elected)
        .collect();
    assert_eq!(per_member, [backends[0].1.hits(), backends[1].1.hits()]);

    // The leader goes away: the other replica takes the Lease and keeps status current.
    let leader = replicas.iter().position(|r| r.leads()).expect("a leader");
    replicas[leader].controller.stop();
    let other = 1 - leader;
    let deadline = Instant::now() + wait::TIMEOUT;
    while !replicas[other].leads() {
        assert!(
            Instant::now() < deadline,
            "the other replica never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        assert_eq!(get_at(replicas[other].addr(), "/").await.status, 200);
    }
    wait::until_object(
        api,
        "web",
        "the new leader to write status",
        |bc: &BalancerCluster| {
            bc.status
                .as_ref()
                .is_some_and(|s| s.members.iter().map(|m| m.elected).sum::<u64>() == 12)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_its_one_cluster_on_every_host_and_writes_no_status() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "sidecar").await;
    web_service(&client, &ns).await;
    let _pods = web_pods(&client, &ns, &["web-a"]).await;
    apply_cluster(&client, &ns, json!({"service": {"name": "web", "port": "http"}, "routes": [{"host": "shop.example.com"}]})).await;
    let mut opts = options(&ns, "sidecar");
    opts.scope.only = Some((ns.clone(), "web".into()));
    opts.write_status = false;
    let balancer = Balancer::start(&client, opts).await;
    balancer.wait_members(&ns, &["web-a:Enabled"]).await;
    // get_at sends Host: the proxy's own address, not shop.example.com.
    let answer = get_at(balancer.addr(), "/any/path").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (http::StatusCode::OK, "web-a")
    );
    assert!(balancer.controller.leadership.is_none());
    let bc = Api::<BalancerCluster>::namespaced(client, &ns)
        .get("web")
        .await
        .expect("get");
    assert!(bc.status.is_none(), "a sidecar writes no status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_younger_of_two_clusters_on_one_route_is_not_accepted() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "conflict").await;
    let api = Api::<BalancerCluster>::namespaced(client.clone(), &ns);
    for name in ["older", "younger"] {
        let bc = json!({"apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"routes": [{"host": "shop.example.com"}], "members": [{"url": "http://10.244.0.250:80"}]}});
        api.patch(
            name,
            &PatchParams::apply("kube-balancer-tests").force(),
            &Patch::Apply(&bc),
        )
        .await
        .expect("apply");
        // creationTimestamp has a one-second resolution: make the second clearly younger.
        if name == "older" {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    let _balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    let accepted = |bc: &BalancerCluster| {
        bc.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted").cloned())
    };
    let young = wait::until_object(
        api.clone(),
        "younger",
        "the younger cluster's Accepted condition",
        |bc: &BalancerCluster| accepted(bc).is_some(),
    )
    .await;
    let condition = accepted(&young).expect("Accepted");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_deref()),
        ("False", Some("RouteConflict"))
    );
    assert_eq!(
        condition.message.as_deref(),
        Some(format!("shop.example.com/ is already served by {ns}/older, which is older").as_str())
    );
    let old = wait::until_object(
        api,
        "older",
        "the older cluster's Accepted condition",
        |bc: &BalancerCluster| accepted(bc).is_some(),
    )
    .await;
    assert_eq!(accepted(&old).expect("Accepted").status, "True");
}

/// Status is written when something changed, not on every interval; membership changes become
/// Events; and the controller part restarting under load fails no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_only_on_change_events_on_membership_and_restart_under_load() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "quiet").await;
    web_service(&client, &ns).await;
    let pods = web_pods(&client, &ns, &["web-a", "web-b"]).await;
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;
    let mut balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    balancer
        .wait_members(&ns, &["web-a:Enabled", "web-b:Enabled"])
        .await;
    let api = Api::<BalancerCluster>::namespaced(client.clone(), &ns);
    let settled = wait::until_object(
        api.clone(),
        "web",
        "a first status",
        |bc: &BalancerCluster| {
            bc.status
                .as_ref()
                .is_some_and(|s| s.ready.as_deref() == Some("2/2"))
        },
    )
    .await;
    // Six status intervals without traffic or change: not one write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = api.get("web").await.expect("get");
    assert_eq!(
        quiet.metadata.resource_version, settled.metadata.resource_version,
        "nothing changed, nothing written"
    );

    // A membership change is an Event on the cluster.
    pods[1].0.set_ready(&client, false).await;
    balancer.wait_members(&ns, &["web-a:Enabled"]).await;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
    let event = wait::until_list(
        events,
        kube::runtime::watcher::Config::default(),
        "a MembersChanged event",
        |list: &[Arc<k8s_openapi::api::events::v1::Event>]| {
            list.iter()
                .any(|e| e.reason.as_deref() == Some("MembersChanged"))
        },
    )
    .await;
    let note = event
        .iter()
        .find(|e| e.reason.as_deref() == Some("MembersChanged"))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(
        note.starts_with("1 members: added none, removed http://10.244.0."),
        "{note}"
    );

    // Restart the controller part against the same data plane while requests flow.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let addr = balancer.addr();
    let load = {
        let (stop, failures) = (stop.clone(), failures.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            // Bounded: at most 20 000 requests.
            while !stop.load(Ordering::SeqCst) && sent < 20_000 {
                if get_at(addr, "/").await.status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                sent += 1;
            }
            sent
        })
    };
    balancer.controller.stop();
    let generation = balancer.plane.snapshot().generation;
    balancer.controller = controller::start(
        client.clone(),
        options(&ns, "replica-1"),
        balancer.plane.clone(),
    )
    .await
    .expect("restart");
    // The new controller publishes the same member list once; the counters carry on.
    assert_eq!(balancer.plane.snapshot().generation, generation + 1);
    pods[1].0.set_ready(&client, true).await;
    balancer
        .wait_members(&ns, &["web-a:Enabled", "web-b:Enabled"])
        .await;
    stop.store(true, Ordering::SeqCst);
    let sent = load.await.expect("load");
    assert!(sent > 0);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request fails while the controller restarts"
    );
}

/// A rolling update: a terminating pod that still serves stays as Drain (no new requests) until
/// it is gone, and nothing fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_drains_until_it_is_gone() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "rolling").await;
    web_service(&client, &ns).await;
    let pods = web_pods(&client, &ns, &["web-a", "web-b"]).await;
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    balancer
        .wait_members(&ns, &["web-a:Enabled", "web-b:Enabled"])
        .await;

    pods[0].0.terminate(&client).await;
    balancer
        .wait_members(&ns, &["web-a:Drain", "web-b:Enabled"])
        .await;
    let before = pods[0].1.hits();
    for _ in 0..6 {
        let answer = get_at(balancer.addr(), "/").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (http::StatusCode::OK, "web-b")
        );
    }
    assert_eq!(
        pods[0].1.hits(),
        before,
        "a draining pod gets no new requests"
    );
    pods[0].0.delete(&client).await;
    balancer.wait_members(&ns, &["web-b:Enabled"]).await;
}
