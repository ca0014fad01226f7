//! The balancing methods through the real data plane: bytraffic, bybusyness, ewma and hash,
//! against members on 127.0.0.1, and the CEL rules of their fields.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::StatusCode;

use crate::support::backend::Backend;
use crate::support::client::{client, load, send};
use crate::support::proxy::{Proxy, cluster};

fn member(m: &Backend) -> String {
    format!("url: {}", m.url())
}

#[tokio::test]
async fn bytraffic_sends_each_member_bytes_in_proportion_to_its_factor() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&cluster(
        &[
            format!("url: {}, loadFactor: 1", a.url()),
            format!("url: {}, loadFactor: 2", b.url()),
        ],
        "lbMethod: bytraffic",
    ));
    let c = client();
    let body = "x".repeat(100);
    let mut seen = String::new();
    for _ in 0..9 {
        // 100 bytes each way: the member with the fewest bytes per factor is next.
        let answer = send(&c, "POST", &proxy.url("/echo"), &[], &body).await;
        assert_eq!((answer.status, answer.body.len()), (StatusCode::OK, 100));
        seen.push_str(&answer.backend);
    }
    // a: 0, b: 0 -> a (tie, first); b: 0 < 200 -> b; b: 100 < 200 -> b; 200 = 200 -> a; ...
    assert_eq!(seen, "abbabbabb");
    let rows = crate::support::proxy::rows(&proxy.plane);
    assert_eq!(
        (rows[0].sent_bytes, rows[0].received_bytes),
        (300, 300),
        "a carried 3 x 100 bytes each way"
    );
    assert_eq!((rows[1].sent_bytes, rows[1].received_bytes), (600, 600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bybusyness_sends_less_to_a_slow_member() {
    let fast = Backend::start("fast").await;
    let slow = Backend::slow("slow", Duration::from_millis(300)).await;
    let proxy = Proxy::start(&cluster(
        &[member(&slow), member(&fast)],
        "lbMethod: bybusyness",
    ));
    let statuses = load(&proxy.url("/"), 200, 8).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(fast.hits() + slow.hits(), 200);
    // The slow member holds its requests longer, so it is busier whenever a request arrives
    // while one of its own is in flight: it gets a small part.
    assert!(
        slow.hits() * 4 < fast.hits(),
        "slow {} fast {}",
        slow.hits(),
        fast.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ewma_sends_less_to_a_slow_member() {
    let fast = Backend::start("fast").await;
    let slow = Backend::slow("slow", Duration::from_millis(300)).await;
    let proxy = Proxy::start(&cluster(&[member(&slow), member(&fast)], "lbMethod: ewma"));
    let statuses = load(&proxy.url("/"), 200, 8).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(fast.hits() + slow.hits(), 200);
    // One slow answer sets its average at once; from then on the fast member is cheaper
    // unless it has far more requests in flight.
    assert!(
        slow.hits() * 4 < fast.hits(),
        "slow {} fast {}",
        slow.hits(),
        fast.hits()
    );
}

#[tokio::test]
async fn hash_keeps_each_key_on_one_member_and_moves_only_the_keys_of_a_member_that_leaves() {
    let members = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let proxy = Proxy::start(&cluster(
        &members.iter().map(member).collect::<Vec<_>>(),
        "lbMethod: hash\nhash: {key: Header, name: X-User}",
    ));
    let c = client();
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut owner: HashMap<&str, String> = HashMap::new();
    for round in 0..3 {
        for user in &users {
            let answer = send(&c, "GET", &proxy.url("/"), &[("x-user", user)], "").await;
            assert_eq!(answer.status, StatusCode::OK);
            match owner.get(user.as_str()) {
                Some(first) => assert_eq!(&answer.backend, first, "{user} moved in round {round}"),
                None => {
                    owner.insert(user, answer.backend);
                }
            }
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "60 keys spread over all three members");

    // b leaves the cluster: its keys move and stay on their new member. The table is built
    // again for two members, and Maglev keeps the others' keys where they were but for a few
    // (its "minimal disruption": which ones depends on the members' URLs, whose ports change
    // from run to run), which then stay on their new member too.
    publish(
        &proxy,
        &cluster(
            &[member(&members[0]), member(&members[2])],
            "lbMethod: hash\nhash: {key: Header, name: X-User}",
        ),
    );
    let mut moved_to: HashMap<&str, String> = HashMap::new();
    for _ in 0..2 {
        for user in &users {
            let answer = send(&c, "GET", &proxy.url("/"), &[("x-user", user)], "").await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_ne!(answer.backend, "b");
            let first = moved_to
                .entry(user)
                .or_insert_with(|| answer.backend.clone());
            assert_eq!(&answer.backend, first, "{user} keeps its new member");
        }
    }
    let stayed: Vec<&str> = users
        .iter()
        .map(String::as_str)
        .filter(|user| owner[user] != "b")
        .collect();
    let moved = stayed
        .iter()
        .filter(|user| moved_to[*user] != owner[*user])
        .count();
    assert!(
        moved * 10 <= stayed.len(),
        "{moved} of the {} keys of a and c moved when b left",
        stayed.len()
    );
    // A request without the key is still served.
    assert_eq!(
        send(&c, "GET", &proxy.url("/"), &[], "").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hash_with_bounded_load_spreads_a_hot_key() {
    let a = Backend::slow("a", Duration::from_millis(500)).await;
    let b = Backend::slow("b", Duration::from_millis(500)).await;
    let proxy = Proxy::start(&cluster(
        &[member(&a), member(&b)],
        "lbMethod: hash\nhash: {key: Header, name: X-User, boundedLoad: 150}",
    ));
    // Ten requests for one key at once: its member takes at most ceil(150% x 10 / 2) = 8.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = proxy.url("/");
        tasks.push(tokio::spawn(async move {
            send(&client(), "GET", &url, &[("x-user", "hot")], "").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("request").status, StatusCode::OK);
    }
    assert_eq!(a.hits() + b.hits(), 10);
    assert!(a.hits().max(b.hits()) <= 8, "a {} b {}", a.hits(), b.hits());
    assert!(a.hits().min(b.hits()) >= 2, "a {} b {}", a.hits(), b.hits());
}

#[tokio::test]
async fn every_method_keeps_to_lbsets_and_states() {
    for method in ["bytraffic", "bybusyness", "ewma", "hash"] {
        let primary = Backend::start("primary").await;
        let drained = Backend::start("drained").await;
        let standby = Backend::start("standby").await;
        let backup = Backend::start("backup").await;
        let proxy = Proxy::start(&cluster(
            &[
                format!("url: {}, lbset: 1", backup.url()),
                format!("url: {}, state: Drain", drained.url()),
                format!("url: {}, state: HotStandby", standby.url()),
                member(&primary),
            ],
            &format!("lbMethod: {method}\nfailover: {{forceRecovery: false}}"),
        ));
        let c = client();
        for _ in 0..6 {
            assert_eq!(
                send(&c, "GET", &proxy.url("/"), &[], "").await.backend,
                "primary"
            );
        }
        // The primary goes into error: the standby alone serves.
        let web = crate::support::proxy::web(&proxy.plane);
        web.balancer
            .mark_error(3, kube_balancer::clock::now_ms(), 60_000, "test".into());
        for _ in 0..4 {
            assert_eq!(
                send(&c, "GET", &proxy.url("/"), &[], "").await.backend,
                "standby",
                "{method}"
            );
        }
        // Nothing in lbset 0 is usable: lbset 1 serves.
        web.balancer
            .mark_error(2, kube_balancer::clock::now_ms(), 60_000, "test".into());
        for _ in 0..4 {
            assert_eq!(
                send(&c, "GET", &proxy.url("/"), &[], "").await.backend,
                "backup",
                "{method}"
            );
        }
        assert_eq!(drained.hits(), 0, "{method}");
    }
}

fn publish(proxy: &Proxy, yaml: &str) {
    proxy
        .plane
        .publish(kube_balancer::standalone::parse("test.yaml", yaml).expect("valid"));
}

fn refusal(spec: &str) -> String {
    let yaml = format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n  members: [{{url: 'http://127.0.0.1:1'}}]\n{spec}"
    );
    kube_balancer::standalone::parse("bad.yaml", &yaml)
        .expect_err("refused")
        .to_string()
}

#[test]
fn bad_method_settings_are_refused_with_a_message_a_person_understands() {
    let cases = [
        (
            "  hash: {key: Header, name: X-User}\n",
            "spec: spec.hash only applies to lbMethod: hash",
        ),
        (
            "  lbMethod: hash\n  hash: {key: Cookie}\n",
            "spec.hash: hash.name names the header, cookie or query parameter to hash on",
        ),
        (
            "  lbMethod: hash\n  hash: {key: ClientIP, name: x}\n",
            "spec.hash: hash.name is not used with key: ClientIP; leave it out",
        ),
        (
            "  lbMethod: hash\n  hash: {key: Header, name: X-User, boundedLoad: 100}\n",
            "spec.hash.boundedLoad: hash.boundedLoad is a percentage of the average load between 101 and 1000, such as 125",
        ),
        ("  lbMethod: roundrobin\n", "spec.lbMethod"),
        (
            "  slowStart: soon\n",
            "spec.slowStart: must be a duration such as 500ms, 5s or 1m30s",
        ),
    ];
    for (spec, expected) in cases {
        let message = refusal(spec);
        assert!(message.contains(expected), "{spec}: {message}");
    }
}

#[test]
fn every_method_is_accepted() {
    for method in ["byrequests", "bytraffic", "bybusyness", "ewma", "hash"] {
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n  members: [{{url: 'http://127.0.0.1:1'}}]\n  lbMethod: {method}\n"
        );
        let clusters = kube_balancer::standalone::parse("ok.yaml", &yaml).expect(method);
        assert_eq!(clusters[0].lb_method.as_str(), method);
    }
}

#[test]
fn every_example_is_a_valid_configuration() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut methods = HashSet::new();
    for entry in std::fs::read_dir(dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let clusters = kube_balancer::standalone::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        methods.extend(clusters.iter().map(|c| c.lb_method.as_str()));
    }
    for method in ["byrequests", "bytraffic", "bybusyness", "ewma", "hash"] {
        assert!(methods.contains(method), "no example uses {method}");
    }
}
