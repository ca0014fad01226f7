//! The data plane against real backends: balancing order, failover and error answers, and a
//! configuration change under load. Real sockets on 127.0.0.1, real HTTP clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::backend::{Backend, refusing_port};
use crate::support::client::{Answer, client, full, get, read};
use crate::support::proxy::{Proxy, cluster_yaml};
use crate::support::wait;
use http::StatusCode;

#[tokio::test]
async fn requests_alternate_between_two_members_in_order() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&cluster_yaml(&[a.url(), b.url()], ""));
    let mut seen = Vec::new();
    for _ in 0..6 {
        let Answer {
            status,
            backend,
            body,
            ..
        } = get(&proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(backend, body);
        seen.push(backend);
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);
    assert_eq!((a.hits(), b.hits()), (3, 3));
}

#[tokio::test]
async fn load_factors_seventy_thirty_give_seven_in_ten() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let yaml = format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n  members:\n    - {{url: {}, loadFactor: 70}}\n    - {{url: {}, loadFactor: 30}}\n",
        a.url(),
        b.url()
    );
    let proxy = Proxy::start(&yaml);
    let mut order = String::new();
    for _ in 0..20 {
        order.push_str(&get(&proxy.url("/")).await.backend);
    }
    // One period of 7:3 is abaaabaaba (the tie at the fifth pick goes to the first member).
    assert_eq!(order, "abaaabaabaabaaabaaba");
    assert_eq!((a.hits(), b.hits()), (14, 6));
}

#[tokio::test]
async fn disabled_member_gets_nothing_and_the_rest_keep_their_turns() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let yaml = format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n  members:\n    - {{url: {}}}\n    - {{url: {}, state: Disabled}}\n    - {{url: {}}}\n    - {{url: {}}}\n",
        backends[0].url(),
        backends[1].url(),
        backends[2].url(),
        backends[3].url()
    );
    let proxy = Proxy::start(&yaml);
    let mut order = String::new();
    for _ in 0..6 {
        order.push_str(&get(&proxy.url("/")).await.backend);
    }
    assert_eq!(order, "acdacd");
    assert_eq!(backends[1].hits(), 0);
}

#[tokio::test]
async fn lower_lbset_first_then_the_next_when_it_is_down() {
    let primary = Backend::start("primary").await;
    let backup = Backend::start("backup").await;
    let (dead, _reserved) = refusing_port();
    let yaml = format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n  members:\n    - {{url: {}, lbset: 1}}\n    - {{url: {}, lbset: 0}}\n    - {{url: 'http://{dead}', lbset: 0}}\n  failover: {{maxAttempts: 1}}\n",
        backup.url(),
        primary.url()
    );
    let proxy = Proxy::start(&yaml);
    // Set 0 has primary and a dead member: the dead one fails over to primary, then is in error.
    for _ in 0..4 {
        let Answer {
            status, backend, ..
        } = get(&proxy.url("/")).await;
        assert_eq!((status, backend.as_str()), (StatusCode::OK, "primary"));
    }
    assert_eq!(backup.hits(), 0);
    primary.stop();
    // Now set 0 has nothing usable once the primary's failure is seen: set 1 serves.
    let Answer {
        status, backend, ..
    } = get(&proxy.url("/")).await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "backup"));
    let Answer {
        status, backend, ..
    } = get(&proxy.url("/")).await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "backup"));
}

#[tokio::test]
async fn a_refused_member_fails_over_and_is_put_in_error() {
    let live = Backend::start("live").await;
    let (dead, _reserved) = refusing_port();
    let proxy = Proxy::start(&cluster_yaml(&[format!("http://{dead}"), live.url()], ""));
    for _ in 0..5 {
        let Answer {
            status, backend, ..
        } = get(&proxy.url("/")).await;
        assert_eq!((status, backend.as_str()), (StatusCode::OK, "live"));
    }
    assert_eq!(live.hits(), 5);
    let snapshot = proxy.plane.snapshot_full();
    let cluster = snapshot.cluster("default", "web").expect("cluster");
    let rows = kube_balancer::status::member_rows(cluster, kube_balancer::clock::now_ms());
    assert_eq!(rows[0].state, "Error");
    // Tried once, then left alone for retryAfterError.
    assert_eq!(rows[0].elected, 1);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("connect: "),
        "{:?}",
        rows[0].last_error
    );
    assert_eq!(rows[1].state, "Ok");
    assert_eq!(rows[1].elected, 5);
}

#[tokio::test]
async fn every_member_down_gives_503_with_a_plain_text_reason() {
    let (dead_1, _reserved_1) = refusing_port();
    let (dead_2, _reserved_2) = refusing_port();
    let proxy = Proxy::start(&cluster_yaml(
        &[format!("http://{}", dead_1), format!("http://{}", dead_2)],
        // Without forced recovery (on by default, as in Apache), members in error stay out.
        "  failover: {forceRecovery: false}",
    ));
    // The first request tries both (maxAttempts 1) and fails with 502; then none is usable.
    let Answer { status, .. } = get(&proxy.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let Answer {
        status,
        backend,
        body,
        ..
    } = get(&proxy.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend, "");
    assert_eq!(
        body,
        "503 Service Unavailable: no member of this balancer is available\n"
    );
}

#[tokio::test]
async fn no_failover_answers_502_instead_of_trying_another_member() {
    let live = Backend::start("live").await;
    let (dead, _reserved) = refusing_port();
    let proxy = Proxy::start(&cluster_yaml(
        &[format!("http://{dead}"), live.url()],
        "  failover: {noFailover: true}",
    ));
    let Answer { status, body, .. } = get(&proxy.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "502 Bad Gateway: the member failed to answer\n");
    assert_eq!(live.hits(), 0);
}

#[tokio::test]
async fn a_slow_member_gives_504_after_the_response_timeout() {
    let slow = Backend::start("slow").await;
    let proxy = Proxy::start(&cluster_yaml(
        &[slow.url()],
        "  timeouts: {response: 200ms}",
    ));
    let Answer { status, body, .. } = get(&proxy.url("/slow/5000")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        body,
        "504 Gateway Timeout: the member did not answer in time\n"
    );
    // A timeout is not a member error (as in Apache without failontimeout): it keeps serving.
    let Answer {
        status, backend, ..
    } = get(&proxy.url("/fast")).await;
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "slow"));
}

#[tokio::test]
async fn fail_on_status_puts_the_member_in_error_and_retries_a_bodyless_request() {
    let sick = Backend::start("sick").await;
    let well = Backend::start("well").await;
    let proxy = Proxy::start(&cluster_yaml(
        &[sick.url(), well.url()],
        "  failover: {failOnStatus: [503], forceRecovery: false}",
    ));
    // /status/503 makes both answer 503; the first member is put in error, the request retried
    // on the second (maxAttempts 1), whose 503 is then passed through.
    let Answer {
        status, backend, ..
    } = get(&proxy.url("/status/503")).await;
    assert_eq!(
        (status, backend.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "well")
    );
    assert_eq!((sick.hits(), well.hits()), (1, 1));
    // Both are now in error: nothing is usable.
    let Answer { status, .. } = get(&proxy.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn unknown_host_gets_404_when_no_route_matches() {
    let a = Backend::start("a").await;
    let yaml = format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n  routes: [{{host: shop.example.com, pathPrefix: /api}}]\n  members: [{{url: {}}}]\n",
        a.url()
    );
    let proxy = Proxy::start(&yaml);
    let client = client();
    let send = |host: &'static str, path: &'static str| {
        let req = http::Request::get(proxy.url(path))
            .header("host", host)
            .body(full(""))
            .expect("request");
        client.request(req)
    };
    assert_eq!(
        send("shop.example.com", "/api/cart")
            .await
            .expect("response")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send("shop.example.com:8000", "/api")
            .await
            .expect("response")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send("shop.example.com", "/apix")
            .await
            .expect("response")
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send("other.example.com", "/api")
            .await
            .expect("response")
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(a.hits(), 2);
}

/// Rewrites the standalone file while a stream of requests runs: no request fails, and the new
/// member list is served within a second of the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reload_under_load_drops_nothing() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("balancer.yaml");
    std::fs::write(&file, cluster_yaml(&[old.url()], "")).expect("write");

    let plane = kube_balancer::plane::DataPlane::new();
    kube_balancer::standalone::run(Some(file.clone()), plane.clone())
        .await
        .expect("first load");
    let proxy = Proxy::serve(plane.clone(), |options| options.workers = 2);
    let url = proxy.url("/");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served, url) =
            (stop.clone(), failures.clone(), served.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let client = client();
            // Bounded: at most 20 000 requests per task.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match client.get(url.parse().expect("uri")).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = read(r).await;
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    wait::until("requests to flow", Duration::from_secs(10), || {
        served.load(Ordering::SeqCst) > 200
    })
    .await;

    let generation = plane.snapshot().generation;
    std::fs::write(&file, cluster_yaml(&[new.url()], "")).expect("rewrite");
    wait::until("the new file to be served", Duration::from_secs(1), || {
        plane.snapshot().generation > generation
    })
    .await;
    let before = new.hits();
    wait::until(
        "requests to reach the new member",
        Duration::from_secs(5),
        || new.hits() > before + 100,
    )
    .await;

    // An invalid edit is refused; the previous configuration keeps serving.
    std::fs::write(&file, "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web}\nspec: {}\n")
        .expect("rewrite");
    wait::until(
        "the invalid file to be refused",
        Duration::from_secs(2),
        || plane.rejected_configs.load(Ordering::SeqCst) >= 1,
    )
    .await;
    let after_refusal = new.hits();
    wait::until(
        "the previous configuration to keep serving",
        Duration::from_secs(5),
        || new.hits() > after_refusal + 100,
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.expect("load task");
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request may fail during reloads"
    );
    assert!(served.load(Ordering::SeqCst) > 400);
    proxy.stop(Duration::from_secs(1)).await;
}

/// Reading the watched file (as `cat` does), touching it or writing the same bytes again is no
/// change: nothing is reloaded or refused, and byrequests' turns go on where they were. Before
/// the fix, the watcher's own read raised events that made it reload about 19 times a second,
/// each reload restarting the schedule.
#[tokio::test]
async fn reading_or_touching_the_file_reloads_nothing_and_keeps_the_turns() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("balancer.yaml");
    let yaml = cluster_yaml(&[a.url(), b.url()], "");
    std::fs::write(&file, &yaml).expect("write");
    let other = dir.path().join("other.yaml");

    let plane = kube_balancer::plane::DataPlane::new();
    kube_balancer::standalone::run(Some(file.clone()), plane.clone())
        .await
        .expect("first load");
    let proxy = Proxy::serve(plane.clone(), |_| {});
    let url = proxy.url("/");
    assert_eq!(get(&url).await.backend, "a");

    for _ in 0..20 {
        std::fs::read(&file).expect("read");
    }
    std::fs::File::options()
        .append(true)
        .open(&file)
        .expect("open")
        .set_modified(std::time::SystemTime::now())
        .expect("touch");
    std::fs::write(&file, &yaml).expect("the same bytes again");
    // Another file in the watched folder is none of our business.
    std::fs::write(&other, "not yaml: [").expect("write");
    // Bounded wait for what must not happen: the old watcher reloaded within 50 ms of a read.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(plane.snapshot().generation, 1, "nothing was reloaded");
    assert_eq!(
        plane.rejected_configs.load(Ordering::SeqCst),
        0,
        "nothing was refused"
    );
    let mut order = String::new();
    for _ in 0..3 {
        order.push_str(&get(&url).await.backend);
    }
    assert_eq!(order, "bab", "the turns go on from the first request");

    // A real edit is served, once.
    std::fs::write(&file, cluster_yaml(&[b.url(), a.url()], "")).expect("rewrite");
    wait::until("the edit to be served", Duration::from_secs(2), || {
        plane.snapshot().generation == 2
    })
    .await;
    for _ in 0..5 {
        std::fs::read(&file).expect("read");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(plane.snapshot().generation, 2, "one edit, one load");
    proxy.stop(Duration::from_secs(1)).await;
}
