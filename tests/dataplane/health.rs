//! Health through the real data plane: active checks (HTTP and TCP, thresholds, body match,
//! Stopped members left alone, verdicts kept across snapshots), passive ejection, forced
//! recovery and slow start. Members on 127.0.0.1 whose health the tests switch while they run.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::StatusCode;
use kube_balancer::plane::DataPlane;

use crate::support::backend::{Backend, refusing_port};
use crate::support::client::{client, order, send};
use crate::support::proxy::{Proxy, cluster, rows, states, web};
use crate::support::wait;

const LIMIT: Duration = Duration::from_secs(10);

fn members(ms: &[&Backend]) -> Vec<String> {
    ms.iter().map(|m| format!("url: {}", m.url())).collect()
}

fn publish(plane: &DataPlane, yaml: &str) {
    plane.publish(kube_balancer::standalone::parse("test.yaml", yaml).expect("valid"));
}

async fn wait_state(plane: &DataPlane, member: usize, state: &str) {
    wait::until(&format!("member {member} to be {state}"), LIMIT, || {
        states(plane)[member] == state
    })
    .await;
}

#[tokio::test]
async fn a_member_failing_health_checks_gets_no_traffic_and_returns_when_it_passes() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&cluster(
        &members(&[&a, &b]),
        "healthCheck: {path: /health, interval: 100ms, passes: 2, fails: 1}",
    ));
    wait::until("checks of both members", LIMIT, || {
        a.health_checks() >= 1 && b.health_checks() >= 1
    })
    .await;
    let c = client();
    assert_eq!(order(&c, &proxy.url("/"), 4).await, "abab");

    b.set_health(500);
    wait_state(&proxy.plane, 1, "HealthCheckFailed").await;
    let before = b.hits();
    assert_eq!(order(&c, &proxy.url("/"), 6).await, "aaaaaa");
    assert_eq!(b.hits(), before, "no traffic while it fails its checks");
    let row = &rows(&proxy.plane)[1];
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("health check: GET /health answered 500 ("),
        "{row:?}"
    );
    // The balancer-manager shows the health columns and the member's health.
    let view = kube_balancer::admin::manager::view(&proxy.plane, kube_balancer::clock::now_ms());
    let m = &view.clusters[0].members[1];
    assert_eq!(m.health, "HealthCheckFailed");
    let hc = m.health_check.as_ref().expect("health check columns");
    assert_eq!(
        (
            hc.method.as_str(),
            hc.interval_ms,
            hc.passes,
            hc.fails,
            hc.uri.as_str()
        ),
        ("GET", 100, 2, 1, "/health")
    );

    b.set_health(200);
    wait_state(&proxy.plane, 1, "Ok").await;
    // Back in: the rotation starts again from the top.
    assert_eq!(order(&c, &proxy.url("/"), 4).await, "abab");
}

#[tokio::test]
async fn body_match_expected_statuses_and_tcp_checks() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&cluster(
        &members(&[&a]),
        "healthCheck: {path: /health, interval: 100ms, expectStatus: '200-599', bodyContains: up}",
    ));
    wait::until("a first check", LIMIT, || a.health_checks() >= 1).await;
    assert_eq!(states(&proxy.plane), ["Ok"]);
    // 503 is an expected status here, but the body says "down", not "up".
    a.set_health(503);
    wait_state(&proxy.plane, 0, "HealthCheckFailed").await;
    let row = &rows(&proxy.plane)[0];
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("GET /health answered 503 without \"up\" in its body"),
        "{row:?}"
    );

    // TCP: a port where nobody listens fails before any request is sent to it.
    let (dead, _reserved) = refusing_port();
    let tcp = Proxy::start(&cluster(
        &[format!("url: 'http://{dead}'"), format!("url: {}", a.url())],
        "healthCheck: {method: TCP, interval: 100ms}",
    ));
    wait_state(&tcp.plane, 0, "HealthCheckFailed").await;
    assert_eq!(rows(&tcp.plane)[0].elected, 0);
    assert_eq!(states(&tcp.plane)[1], "Ok");
}

#[tokio::test]
async fn stopped_members_are_not_checked() {
    let a = Backend::start("a").await;
    let stopped = Backend::start("stopped").await;
    let _proxy = Proxy::start(&cluster(
        &[
            format!("url: {}", a.url()),
            format!("url: {}, state: Stopped", stopped.url()),
        ],
        "healthCheck: {path: /health, interval: 100ms}",
    ));
    wait::until("three checks of the enabled member", LIMIT, || {
        a.health_checks() >= 3
    })
    .await;
    assert_eq!(stopped.health_checks(), 0);
}

#[tokio::test]
async fn verdicts_survive_a_snapshot_rebuild_and_checks_go_on() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let yaml = cluster(
        &members(&[&a, &b]),
        "healthCheck: {path: /health, interval: 100ms}",
    );
    let proxy = Proxy::start(&yaml);
    b.set_health(500);
    wait_state(&proxy.plane, 1, "HealthCheckFailed").await;
    // A new snapshot of the same members (any configuration change): still out, at once.
    let generation = proxy.plane.snapshot().generation;
    publish(&proxy.plane, &yaml);
    assert_eq!(proxy.plane.snapshot().generation, generation + 1);
    assert_eq!(states(&proxy.plane), ["Ok", "HealthCheckFailed"]);
    let c = client();
    assert_eq!(order(&c, &proxy.url("/"), 3).await, "aaa");
    // The checker follows the new snapshot.
    b.set_health(200);
    wait_state(&proxy.plane, 1, "Ok").await;
    // Without healthCheck any more, no verdict sticks.
    b.set_health(500);
    wait_state(&proxy.plane, 1, "HealthCheckFailed").await;
    publish(&proxy.plane, &cluster(&members(&[&a, &b]), ""));
    assert_eq!(states(&proxy.plane), ["Ok", "Ok"]);
}

#[tokio::test]
async fn passive_ejection_takes_out_a_member_whose_requests_fail() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.answer_with(500);
    let proxy = Proxy::start(&cluster(
        &members(&[&a, &b]),
        "outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 1h, maxEjectionTime: 2h, maxEjectionPercent: 50}",
    ));
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            send(&c, "GET", &proxy.url("/"), &[], "")
                .await
                .status
                .as_u16(),
        );
    }
    // a b a b a b: b's third 500 ejects it; then a alone.
    assert_eq!(
        statuses,
        [200, 500, 200, 500, 200, 500, 200, 200, 200, 200, 200, 200]
    );
    assert_eq!((a.hits(), b.hits()), (9, 3));
    assert_eq!(states(&proxy.plane), ["Ok", "Error"]);
    let view = kube_balancer::admin::manager::view(&proxy.plane, kube_balancer::clock::now_ms());
    assert_eq!(view.clusters[0].members[1].health, "Ejected");
    assert!(
        rows(&proxy.plane)[1]
            .last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("ejected for 3600000 ms: 3 failures in a row"),
    );

    // With the cap at one member in two, a's failures do not take it out too.
    a.answer_with(500);
    for _ in 0..5 {
        assert_eq!(
            send(&c, "GET", &proxy.url("/"), &[], "").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(states(&proxy.plane), ["Ok", "Error"]);
}

#[tokio::test]
async fn forced_recovery_tries_every_member_when_all_fail_their_checks() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.set_health(500);
    b.set_health(500);
    let checks = "healthCheck: {path: /health, interval: 100ms}";
    let forced = Proxy::start(&cluster(&members(&[&a, &b]), checks));
    let strict = Proxy::start(&cluster(
        &members(&[&a, &b]),
        &format!("{checks}\nfailover: {{forceRecovery: false}}"),
    ));
    for plane in [&forced.plane, &strict.plane] {
        wait::until("both members to fail their checks", LIMIT, || {
            states(plane) == ["HealthCheckFailed", "HealthCheckFailed"]
        })
        .await;
    }
    let c = client();
    // Apache's forcerecovery (the default): rather than refuse everything, try them.
    assert_eq!(order(&c, &forced.url("/"), 4).await, "abab");
    // Without it: 503.
    assert_eq!(
        send(&c, "GET", &strict.url("/"), &[], "").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn slow_start_ramps_a_joining_and_a_recovering_member() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let extra = "slowStart: 1h\nhealthCheck: {path: /health, interval: 100ms}";
    let proxy = Proxy::start(&cluster(&members(&[&a]), extra));
    let c = client();
    assert_eq!(order(&c, &proxy.url("/"), 2).await, "aa");

    // b joins: its factor in effect starts at a tenth of a's, 1 request in 11.
    publish(&proxy.plane, &cluster(&members(&[&a, &b]), extra));
    let share = |seen: &str| seen.matches('b').count();
    assert_eq!(share(&order(&c, &proxy.url("/"), 110).await), 10);

    // Half-way through the window (moved back by the test, rather than waited for): half
    // of a's factor, 1 request in 3.
    let ramping = web(&proxy.plane);
    let stats = &ramping.balancer.members()[1].stats;
    let half_hour = 30 * 60 * 1000;
    stats.ramp_from_ms.fetch_sub(half_hour, Relaxed);
    ramping.balancer.invalidate();
    assert_eq!(share(&order(&c, &proxy.url("/"), 30).await), 10);
    // At the end of the window: an equal share.
    stats.ramp_from_ms.fetch_sub(half_hour, Relaxed);
    ramping.balancer.invalidate();
    assert_eq!(share(&order(&c, &proxy.url("/"), 20).await), 10);

    // Back from a failed health check, it ramps again from a tenth.
    b.set_health(500);
    wait_state(&proxy.plane, 1, "HealthCheckFailed").await;
    b.set_health(200);
    wait_state(&proxy.plane, 1, "Ok").await;
    assert_eq!(share(&order(&c, &proxy.url("/"), 110).await), 10);
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
fn bad_health_settings_are_refused_with_a_message_a_person_understands() {
    let cases = [
        (
            "  healthCheck: {interval: 10ms}\n",
            "spec.healthCheck.interval: healthCheck.interval must be at least 100ms",
        ),
        (
            "  healthCheck: {method: HEAD, bodyContains: up}\n",
            "spec.healthCheck: healthCheck.bodyContains needs method: GET",
        ),
        (
            "  healthCheck: {expectStatus: '2xx'}\n",
            "spec.healthCheck.expectStatus: healthCheck.expectStatus is a list of codes and ranges such as 200-399 or 200,204",
        ),
        (
            "  healthCheck: {expectStatus: '399-200'}\n",
            "spec.healthCheck.expectStatus: \"399-200\": a range must go from the lower code to the higher",
        ),
        (
            "  healthCheck: {passes: 0}\n",
            "spec.healthCheck.passes: healthCheck.passes must be between 1 and 100",
        ),
        (
            "  healthCheck: {path: health}\n",
            "spec.healthCheck.path: healthCheck.path must start with / and contain no spaces",
        ),
        ("  healthCheck: {method: PUT}\n", "spec.healthCheck.method"),
        (
            "  outlierDetection: {consecutiveFailures: 0}\n",
            "spec.outlierDetection: outlierDetection needs consecutiveFailures above 0 or a failurePercent",
        ),
        (
            "  outlierDetection: {baseEjectionTime: 10m, maxEjectionTime: 5m}\n",
            "spec.outlierDetection: outlierDetection.baseEjectionTime must not be longer than maxEjectionTime",
        ),
        (
            "  outlierDetection: {failurePercent: 0}\n",
            "spec.outlierDetection.failurePercent: outlierDetection.failurePercent must be between 1 and 100",
        ),
        (
            "  outlierDetection: {maxEjectionPercent: 0}\n",
            "spec.outlierDetection.maxEjectionPercent: outlierDetection.maxEjectionPercent must be between 1 and 100",
        ),
    ];
    for (spec, expected) in cases {
        let message = refusal(spec);
        assert!(message.contains(expected), "{spec}: {message}");
    }
}
