//! Traces into a real OpenTelemetry Collector, and the Grafana dashboard's queries against a real Prometheus (the test environment's, built from
//! its Go module by scripts/testenv.sh) scraping the real kube-balancer binary under load: every
//! panel's PromQL must return data. Loopback only; every process started is stopped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::wait::until_some as wait_for;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube_balancer::plane::DataPlane;
use kube_balancer::telemetry::{Telemetry, Tracer};
use tokio::net::TcpListener;

use crate::support::telemetry::{Echo, cluster, request, start_proxy, stop_proxy};

const WAIT: Duration = Duration::from_secs(60);
const CHART_DASHBOARD: &str = "charts/kube-balancer/dashboards/kube-balancer.json";
const DOCS_DASHBOARD: &str = "docs/grafana/kube-balancer.json";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every panel's queries: (panel title, PromQL).
fn queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo(CHART_DASHBOARD)).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a query").to_owned();
            found.push((panel["title"].as_str().unwrap_or("").to_owned(), expr));
        }
    }
    found
}

#[test]
fn the_docs_carry_the_charts_dashboard() {
    let chart = std::fs::read_to_string(repo(CHART_DASHBOARD)).expect("chart dashboard");
    let docs = std::fs::read_to_string(repo(DOCS_DASHBOARD)).expect("docs dashboard");
    assert_eq!(chart, docs, "copy {CHART_DASHBOARD} to {DOCS_DASHBOARD}");
    assert!(queries().len() >= 25);
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A backend answering `status` to everything.
async fn backend(status: u16) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| async move {
                    let mut answer = Response::new(Full::new(Bytes::from_static(b"hello")));
                    *answer.status_mut() = StatusCode::from_u16(status).expect("status");
                    Ok::<_, Infallible>(answer)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn config(ok: SocketAddr, bad: SocketAddr, ok_factor: u32) -> String {
    format!(
        r#"apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {{name: web, namespace: shop}}
spec:
  members:
    - {{url: "http://{ok}", loadFactor: {ok_factor}}}
    - {{url: "http://{bad}", loadFactor: 1}}
  tls:
    - hosts: [shop.example.com]
      certFile: cert.pem
      keyFile: key.pem
"#
    )
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_returns_data_from_a_real_prometheus_scraping_kube_balancer_under_load() {
    let prometheus = match std::env::var_os("KB_TESTENV_PROMETHEUS") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "KB_TESTENV_PROMETHEUS is not set: run this test through `scripts/testenv.sh run`, \
             or `eval \"$(scripts/testenv.sh env)\"` first (it builds Prometheus)"
        ),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, _ok_task) = backend(200).await;
    let (bad, _bad_task) = backend(503).await;
    let cert = rcgen::generate_simple_self_signed(vec!["shop.example.com".to_owned()])
        .expect("certificate");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).expect("key");
    let config_path = dir.path().join("balancer.yaml");
    std::fs::write(&config_path, config(ok, bad, 4)).expect("config");

    let (listen, tls, admin) = (free_port(), free_port(), free_port());
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().expect("address");
    let _balancer = Process(
        Command::new(env!("CARGO_BIN_EXE_kube-balancer"))
            .args(["standalone", "-f"])
            .arg(&config_path)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--listen-tls", &format!("127.0.0.1:{tls}")])
            .args(["--admin", &admin_addr.to_string()])
            .args(["--workers", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("kb.log")).expect("log"))
            .spawn()
            .expect("start kube-balancer"),
    );
    wait_for("kube-balancer to be ready", WAIT, || async {
        let ready = tokio::net::TcpStream::connect(admin_addr).await.is_ok()
            && get(admin_addr, "/readyz").await.status == 200;
        ready.then_some(())
    })
    .await;

    let prom_port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().expect("address");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: kube-balancer\n    static_configs:\n      - targets: ['{admin_addr}']\n"
        ),
    )
    .expect("prometheus config");
    let _prometheus = Process(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );
    wait_for("Prometheus to be ready", WAIT, || async {
        let up = tokio::net::TcpStream::connect(prom_addr).await.is_ok()
            && get(prom_addr, "/-/ready").await.status == 200;
        up.then_some(())
    })
    .await;

    // Load for a few seconds on one keep-alive connection, bounded in count and time; the
    // configuration changes once on the way (a file event, a reload).
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut sent = 0u32;
    let mut changed = false;
    while started.elapsed() < Duration::from_secs(8) && sent < 20_000 {
        let req = Request::get("/")
            .header("host", "shop.example.com")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let answer = sender.send_request(req).await.expect("answer");
        let _ = answer.into_body().collect().await.expect("body");
        sent += 1;
        if !changed && started.elapsed() > Duration::from_secs(3) {
            std::fs::write(&config_path, config(ok, bad, 3)).expect("config");
            changed = true;
        }
        // A paced load: a few hundred requests a second.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(sent > 100, "{sent} requests");
    // A TLS handshake that fails (plain text to the HTTPS port).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", tls))
            .await
            .expect("connect");
        let _ = plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut rest)).await;
    }

    // Every query of every panel returns at least one series.
    let mut empty = Vec::new();
    for (title, expr) in queries() {
        let query = expr
            .replace("$__rate_interval", "15s")
            .replace("$cluster", ".*")
            .replace("$job", ".*");
        let path = format!("/api/v1/query?query={}", encode(&query));
        let answer = get(prom_addr, &path).await;
        assert_eq!(answer.status, 200, "{title}: {query}: {}", answer.body);
        let result: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        assert_eq!(result["status"], "success", "{title}: {query}");
        if result["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            empty.push(format!("{title}: {query}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
}

/// `GET path` from `addr` on a new connection.
async fn get(addr: SocketAddr, path: &str) -> crate::support::client::Answer {
    crate::support::client::get_at(addr, path).await
}

/// The test environment's OpenTelemetry Collector (scripts/testenv.sh builds it).
fn otelcol() -> std::path::PathBuf {
    match std::env::var_os("KB_TESTENV_OTELCOL") {
        Some(path) => path.into(),
        None => panic!(
            "KB_TESTENV_OTELCOL is not set: run this test through `scripts/testenv.sh run`, or \
             `eval \"$(scripts/testenv.sh env)\"` first (it builds the collector)"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_collector_with_their_parents() {
    let collector = otelcol();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let out = dir.path().join("traces.json");
    let config = dir.path().join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
             exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n\
             \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
            out.display()
        ),
    )
    .expect("config");
    let child = std::process::Command::new(&collector)
        .arg(format!("--config={}", config.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("otelcol.log")).expect("log"))
        .spawn()
        .expect("start the collector");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _collector = Kill(child);
    wait_for("the collector to listen", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;

    let web = Echo::start("web", 200).await;
    let plane = DataPlane::new();
    plane.publish(vec![cluster(&format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\n\
         metadata: {{name: web, namespace: shop}}\nspec:\n  members: [{{url: \"{}\"}}]\n",
        web.url()
    ))]);
    let tracer = Tracer::start(
        &format!("http://127.0.0.1:{port}"),
        1.0,
        tokio::runtime::Handle::current(),
    )
    .expect("tracer");
    let telemetry = Telemetry {
        tracer: Some(tracer.clone()),
        ..Telemetry::default()
    };
    let proxy = start_proxy(plane.clone(), telemetry);
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (status, body) = request(
        proxy.local_addr(),
        "/checkout?x=1",
        "shop.example",
        &[
            (
                "traceparent",
                &format!("00-{caller_trace}-{caller_span}-01"),
            ),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // A request that starts a trace here.
    let (status, fresh) = request(proxy.local_addr(), "/", "shop.example", &[]).await;
    assert_eq!(status, 200);
    stop_proxy(proxy).await;
    tokio::task::spawn_blocking(move || tracer.shutdown())
        .await
        .expect("flushed");

    // The member got a traceparent in the caller's trace, naming a span of ours.
    let got = body.split(' ').nth(2).expect("traceparent").to_owned();
    let parts: Vec<&str> = got.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", caller_trace, "01"),
        "{got}"
    );
    let member_parent = parts[2].to_owned();
    assert_ne!(member_parent, caller_span);
    let fresh_parent = fresh.split(' ').nth(2).expect("traceparent").to_owned();
    assert_ne!(fresh_parent.split('-').nth(1), Some(caller_trace));

    let spans = wait_for("four spans in the collector's file", WAIT, || async {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let spans: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|doc| {
                let mut found = Vec::new();
                for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        found.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                    }
                }
                found
            })
            .collect();
        (spans.len() >= 4).then_some(spans)
    })
    .await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let in_trace: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["traceId"] == caller_trace)
        .collect();
    assert_eq!(in_trace.len(), 2, "{spans:#?}");
    let server = in_trace
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("a server span");
    let client = in_trace
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("a client span");
    assert_eq!(
        server["parentSpanId"], caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(client["parentSpanId"], server["spanId"]);
    assert_eq!(
        client["spanId"],
        member_parent.as_str(),
        "the member got the client span"
    );
    assert_eq!(server["name"], "GET /checkout");
    // The other trace: a root server span here, with its client span.
    let other: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["traceId"] != caller_trace)
        .collect();
    let root = other.iter().find(|s| s["kind"] == 2).expect("root span");
    assert!(
        root["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "{root}"
    );
    let child = other.iter().find(|s| s["kind"] == 3).expect("child span");
    assert_eq!(child["parentSpanId"], root["spanId"]);
}
