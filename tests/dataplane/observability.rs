//! Metrics, the access log and traces against real parts: real backends on loopback, the real
//! data plane and admin server, and (with the test environment's tools) a real OpenTelemetry
//! Collector receiving the spans. Known traffic, then exact counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use kube_balancer::plane::DataPlane;
use kube_balancer::telemetry::access_log::Format;
use kube_balancer::telemetry::{AccessLog, Telemetry};

use crate::support::metrics::Samples;
use crate::support::telemetry::{Echo, cluster, request, start_admin, start_proxy, stop_proxy};
use crate::support::wait::until_some as wait_for;

const WAIT: Duration = Duration::from_secs(20);

/// Waits until no member has a request in flight (the client has its answer slightly before
/// the proxy lets go of the exchange).
async fn settled(admin: SocketAddr) -> Samples {
    wait_for("no request in flight", WAIT, || async {
        let text = get(admin, "/metrics").await.body;
        let samples = Samples::parse(&text);
        (samples.value("kube_balancer_requests_active", &[]) == 0.0).then_some(samples)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_requests_three_of_them_503_from_one_member_are_counted_exactly() {
    let ok = Echo::start("ok", 200).await;
    let bad = Echo::start("bad", 503).await;
    let (dead, _reserved) = crate::support::backend::refusing_port();
    let dead_url = format!("http://{dead}");
    let spare = Echo::start("spare", 200).await;
    let plane = DataPlane::new();
    plane.publish(vec![
        cluster(&format!(
            r#"
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {{name: web, namespace: shop}}
spec:
  members:
    - {{url: "{}", loadFactor: 7}}
    - {{url: "{}", loadFactor: 3}}
"#,
            ok.url(),
            bad.url()
        )),
        cluster(&format!(
            r#"
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {{name: flaky, namespace: shop}}
spec:
  routes: [{{host: flaky.test}}]
  failover: {{maxAttempts: 1}}
  members:
    - {{url: "{dead_url}", loadFactor: 100}}
    - {{url: "{}", loadFactor: 1}}
"#,
            spare.url()
        )),
        cluster(&format!(
            r#"
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {{name: broken, namespace: shop}}
spec:
  routes: [{{host: broken.test}}]
  members: [{{url: "{dead_url}"}}]
"#
        )),
    ]);
    let admin = start_admin(plane.clone()).await;
    let proxy = start_proxy(plane.clone(), Telemetry::default());

    let mut statuses: HashMap<u16, u32> = HashMap::new();
    for _ in 0..10 {
        let (status, _) = request(proxy.local_addr(), "/", "shop.example", &[]).await;
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(statuses, HashMap::from([(200, 7), (503, 3)]));
    // The first member of flaky refuses: the request fails over to the spare.
    let (status, body) = request(proxy.local_addr(), "/", "flaky.test", &[]).await;
    assert_eq!((status, body.split(' ').next()), (200, Some("spare")));
    // The only member of broken refuses: the client gets the proxy's 502.
    let (status, _) = request(proxy.local_addr(), "/", "broken.test", &[]).await;
    assert_eq!(status, 502);

    let m = settled(admin).await;
    let (ok_url, bad_url, spare_url) = (ok.url(), bad.url(), spare.url());
    let member = |cluster: &'static str, url: &str| {
        [("cluster", cluster), ("member", url)].map(|(k, v)| (k, v.to_owned()))
    };
    let value = |name: &str, labels: &[(&str, String)], extra: &[(&str, &str)]| {
        let mut all: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        m.value(name, &all)
    };
    let ok_m = member("shop/web", &ok_url);
    let bad_m = member("shop/web", &bad_url);
    let responses = "kube_balancer_member_responses_total";
    assert_eq!(
        value(responses, &ok_m, &[("code", "200"), ("class", "2xx")]),
        7.0
    );
    assert_eq!(
        value(responses, &bad_m, &[("code", "503"), ("class", "5xx")]),
        3.0
    );
    // Only what was counted is written: no 503 series for the member that never answered one.
    assert!(!m.has(responses, &[("member", &ok_url), ("code", "503")]));
    let cluster_responses = "kube_balancer_cluster_responses_total";
    let web = [("cluster", "shop/web")];
    assert_eq!(m.value(cluster_responses, &[web[0], ("code", "200")]), 7.0);
    assert_eq!(m.value(cluster_responses, &[web[0], ("code", "503")]), 3.0);
    // Answer times: one sample per answer, in the member's and the cluster's histograms.
    let count = "kube_balancer_member_response_seconds_count";
    assert_eq!(value(count, &ok_m, &[]), 7.0);
    assert_eq!(value(count, &bad_m, &[]), 3.0);
    assert_eq!(
        value(
            "kube_balancer_member_response_seconds_bucket",
            &ok_m,
            &[("le", "+Inf")]
        ),
        7.0
    );
    assert_eq!(
        m.value("kube_balancer_cluster_response_seconds_count", &web),
        10.0
    );
    // One worker, requests one after another: one connection to each member, reused.
    assert_eq!(
        value("kube_balancer_member_connect_seconds_count", &ok_m, &[]),
        1.0
    );
    assert_eq!(
        value("kube_balancer_member_connect_seconds_count", &bad_m, &[]),
        1.0
    );
    assert_eq!(
        value("kube_balancer_member_requests_total", &ok_m, &[]),
        7.0
    );
    assert_eq!(
        value("kube_balancer_member_requests_total", &bad_m, &[]),
        3.0
    );
    // The failover: counted on the member that failed, the answer on the one that gave it.
    let dead_flaky = member("shop/flaky", &dead_url);
    assert_eq!(
        value("kube_balancer_member_failovers_total", &dead_flaky, &[]),
        1.0
    );
    assert_eq!(
        m.value(
            "kube_balancer_cluster_failovers_total",
            &[("cluster", "shop/flaky")]
        ),
        1.0
    );
    assert_eq!(
        value(
            responses,
            &member("shop/flaky", &spare_url),
            &[("code", "200")]
        ),
        1.0
    );
    assert!(!m.has(
        responses,
        &[("cluster", "shop/flaky"), ("member", &dead_url)]
    ));
    // The proxy's 502 for the broken cluster counts for its member.
    assert_eq!(
        value(
            responses,
            &member("shop/broken", &dead_url),
            &[("code", "502"), ("class", "5xx")]
        ),
        1.0
    );
    // Process-wide figures.
    assert_eq!(m.value("kube_balancer_connections_total", &[]), 12.0);
    assert_eq!(
        m.value("kube_balancer_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.value(
            "kube_balancer_config_reloads_total",
            &[("result", "refused")]
        ),
        0.0
    );
    assert!(
        m.value(
            "kube_balancer_config_last_reload_timestamp_seconds",
            &[("result", "ok")]
        ) > 1.7e9
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m.value("kube_balancer_build_info", &[("version", version)]),
        1.0
    );
    assert!(m.value("process_cpu_seconds_total", &[]) > 0.0);
    assert!(m.value("process_resident_memory_bytes", &[]) > 0.0);

    // A member that leaves keeps its answers in its cluster's totals (counters never go down).
    plane.publish(vec![cluster(&format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\n\
         metadata: {{name: web, namespace: shop}}\nspec:\n  members: [{{url: \"{ok_url}\"}}]\n"
    ))]);
    let m = Samples::parse(&get(admin, "/metrics").await.body);
    assert_eq!(m.value(cluster_responses, &[web[0], ("code", "503")]), 3.0);
    assert!(!m.has(responses, &[("member", &bad_url)]));

    stop_proxy(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_5000_members_keeps_the_scrape_small() {
    let plane = DataPlane::new();
    let members: String = (0..5000)
        .map(|i| {
            format!(
                "    - url: \"http://10.{}.{}.{}:8080\"\n",
                i / 65536,
                (i / 256) % 256,
                i % 256
            )
        })
        .collect();
    plane.publish(vec![cluster(&format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\n\
         metadata: {{name: big, namespace: shop}}\nspec:\n  members:\n{members}"
    ))]);
    // Every member has answered: their detailed series would exist if the cluster were small.
    for m in plane.snapshot().clusters[0].balancer.members() {
        m.stats.traffic.answered(200, Duration::from_micros(300));
    }
    let admin = start_admin(plane.clone()).await;
    let text = get(admin, "/metrics").await.body;
    let m = Samples::parse(&text);
    assert!(!m.has("kube_balancer_member_response_seconds_bucket", &[]));
    assert!(!m.has("kube_balancer_member_responses_total", &[]));
    assert_eq!(
        m.value(
            "kube_balancer_cluster_responses_total",
            &[("cluster", "shop/big"), ("code", "200")]
        ),
        5000.0
    );
    assert_eq!(
        m.value(
            "kube_balancer_cluster_response_seconds_count",
            &[("cluster", "shop/big")]
        ),
        5000.0
    );
    // The basic member figures stay: requests, bytes, errors, ejections, checks, in flight,
    // load factor, up.
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        (5000 * 9..5000 * 10).contains(&series),
        "{series} series for 5,000 members"
    );
}

/// Lines of the access log file, once there are `n`.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    wait_for("the access log lines", WAIT, || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_in_json_and_text() {
    let web = Echo::start("web", 200).await;
    let plane = DataPlane::new();
    plane.publish(vec![cluster(&format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\n\
         metadata: {{name: web, namespace: shop}}\nspec:\n  members: [{{url: \"{}\"}}]\n",
        web.url()
    ))]);
    let dir = tempfile::tempdir().expect("temp dir");
    let re = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "GET (\S+) HTTP/1\.1" (\d{3}) (\d+|-) "([^"]*)" "((?:[^"\\]|\\.)*)" host="([^"]*)" in=(\d+|-) duration_ms=([\d.]+) connect_ms=([\d.]+|-) upstream_ms=([\d.]+|-) member="([^"]*)" cluster="([^"]*)" route="([^"]*)" attempts=(\d+) request_id="([^"]*)"$"#,
    )
    .expect("regex");
    for format in [Format::Json, Format::Text] {
        let path = dir.path().join(format!("{format:?}.log"));
        let file = std::fs::File::create(&path).expect("log file");
        let log = AccessLog::start(format, Box::new(file), plane.clone()).expect("writer");
        let telemetry = Telemetry {
            access_log: Some(log),
            ..Telemetry::default()
        };
        let proxy = start_proxy(plane.clone(), telemetry);
        let addr = proxy.local_addr();
        let (status, given) = request(
            addr,
            "/cart?item=42&q=a%20b",
            "shop.example",
            &[
                ("user-agent", "test-agent/1.0 (\"quoted\")"),
                ("referer", "http://shop.example/"),
                ("x-request-id", "client-id-7"),
            ],
        )
        .await;
        assert_eq!(status, 200);
        // The client's request id went to the member as it was.
        assert_eq!(given.split(' ').nth(1), Some("client-id-7"));
        let (status, made) = request(addr, "/", "shop.example", &[]).await;
        assert_eq!(status, 200);
        let made_id = made.split(' ').nth(1).expect("an id").to_owned();
        assert_eq!(made_id.len(), 36, "{made}");
        let (status, _) = request(addr, "/nowhere", "elsewhere.test", &[]).await;
        assert_eq!(status, 200, "the default route takes any host");

        let lines = log_lines(&path, 3).await;
        assert_eq!(lines.len(), 3, "{lines:#?}");
        match format {
            Format::Json => {
                let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
                assert_eq!(first["method"], "GET");
                assert_eq!(first["host"], "shop.example");
                assert_eq!(first["path"], "/cart");
                assert_eq!(first["query"], "item=42&q=a%20b");
                assert_eq!(first["protocol"], "HTTP/1.1");
                assert_eq!(first["status"], 200);
                assert_eq!(first["client"], "127.0.0.1");
                assert_eq!(first["bytes_in"], 0);
                assert_eq!(first["bytes_out"], given.len());
                assert_eq!(first["member"], web.url());
                assert_eq!(first["cluster"], "shop/web");
                assert_eq!(first["route"], "shop/web");
                assert_eq!(first["attempts"], 1);
                assert_eq!(first["request_id"], "client-id-7");
                assert_eq!(first["user_agent"], "test-agent/1.0 (\"quoted\")");
                assert_eq!(first["referer"], "http://shop.example/");
                let duration = first["duration_ms"].as_f64().expect("duration");
                let upstream = first["upstream_response_ms"].as_f64().expect("upstream");
                let connect = first["upstream_connect_ms"].as_f64().expect("connect");
                assert!(duration >= upstream && upstream >= connect && connect >= 0.0);
                assert!(first["time"].as_str().expect("time").ends_with('Z'));
                let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON");
                assert_eq!(second["request_id"], made_id.as_str());
                assert_eq!(second["query"], serde_json::Value::Null);
                // The pooled connection was reused: no connect time.
                assert_eq!(second["upstream_connect_ms"], serde_json::Value::Null);
            }
            Format::Text => {
                let c = re
                    .captures(&lines[0])
                    .unwrap_or_else(|| panic!("not the text format: {}", lines[0]));
                assert_eq!(&c[1], "/cart?item=42&q=a%20b");
                assert_eq!(&c[2], "200");
                assert_eq!(c[3].parse::<usize>().expect("bytes"), given.len());
                assert_eq!(&c[4], "http://shop.example/");
                assert_eq!(&c[5], r#"test-agent/1.0 (\"quoted\")"#);
                assert_eq!(&c[6], "shop.example");
                assert_eq!(&c[11], web.url());
                assert_eq!(
                    (&c[12], &c[13], &c[14], &c[15]),
                    ("shop/web", "shop/web", "1", "client-id-7")
                );
                let second = re.captures(&lines[1]).expect("text format");
                assert_eq!(&second[15], made_id.as_str());
                assert_eq!(&second[9], "-", "no new connection");
                let third = re.captures(&lines[2]).expect("text format");
                assert_eq!((&third[1], &third[6]), ("/nowhere", "elsewhere.test"));
            }
        }
        stop_proxy(proxy).await;
    }
    let m = Samples::parse(&get(start_admin(plane.clone()).await, "/metrics").await.body);
    assert_eq!(m.value("kube_balancer_access_log_lines_total", &[]), 6.0);
    assert_eq!(m.value("kube_balancer_access_log_dropped_total", &[]), 0.0);
}

/// `GET path` from `addr` on a new connection.
async fn get(addr: SocketAddr, path: &str) -> crate::support::client::Answer {
    crate::support::client::get_at(addr, path).await
}
