//! The controller at scale: how long an EndpointSlice change takes to reach the data plane, and
//! what the controller costs in memory and CPU, with 10, 1,000 and 5,000 endpoints behind one
//! BalancerCluster, against the real test control plane (etcd + kube-apiserver).
//!
//! Run it with `bench/controller.sh` (docs/benchmarks.md), which builds the release binary and runs
//! this inside the test network namespace. For each size it:
//!
//! 1. creates a namespace with N pods (metadata only: nothing schedules them), a Service `web`
//!    without a selector, and EndpointSlices of 100 endpoints each that point at those pods, as
//!    the EndpointSlice controller would write them (but managed by this program, so the real
//!    controller leaves them alone), and a BalancerCluster in front;
//! 2. starts the real `kube-balancer run` binary on that namespace and waits for its first
//!    publication of N members;
//! 3. makes CHANGES changes, one at a time: one endpoint, in a different slice each time, turns
//!    not ready (N-1 members), then ready again (N). The clock starts just before the slice is
//!    written to the API server and stops when the binary logs that it published the member list
//!    with the expected count (the log line follows the swap of the data plane's snapshot, so the
//!    next request uses it). The log is read through a pipe as it is written.
//!
//! With `--via pods` (run by default after the above) the real EndpointSlice controller writes
//! the slices instead: N kubelet-less pods behind a Service with a selector, and each change flips
//! one pod's Ready condition, as a kubelet would. The clock then starts just before the pod's
//! status is written, so the figure includes the EndpointSlice controller: what a user sees.
//!
//! Memory is the binary's PSS and peak RSS; CPU is its user + system time over the changes.
//!
//! Not a test: a `cargo bench` target (Cargo.toml), kept in tests/ beside the harness it reuses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking: the harness may unwrap and expect too"
)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{PostParams, ResourceExt};
use kube::{Api, Client};
use serde_json::json;

use support::controlplane::ControlPlane;
use support::fixtures::{apply_cluster, install_crd};
use support::pods::{self, FakePod};

/// Endpoints per EndpointSlice, as the EndpointSlice controller writes them by default.
const PER_SLICE: usize = 100;
/// How long one change may take before the run gives up on it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

struct Settings {
    binary: String,
    sizes: Vec<usize>,
    changes: usize,
    sources: Vec<Source>,
}

/// Who writes the EndpointSlices.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// This program, directly: the controller's own latency.
    Slices,
    /// The real EndpointSlice controller, from pods whose readiness this program flips, as a
    /// kubelet would: what a user sees end to end.
    Pods,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Slices => "EndpointSlice written",
            Source::Pods => "pod readiness (EndpointSlice controller)",
        }
    }
}

fn settings() -> Result<Settings, String> {
    let mut s = Settings {
        binary: "target/release/kube-balancer".to_owned(),
        sizes: vec![10, 1_000, 5_000],
        changes: 200,
        sources: vec![Source::Slices, Source::Pods],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--binary" => s.binary = value("--binary")?,
            "--sizes" => {
                s.sizes = value("--sizes")?
                    .split(',')
                    .map(|n| n.trim().parse().map_err(|e| format!("--sizes {n:?}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--changes" => {
                let v = value("--changes")?;
                s.changes = v.parse().map_err(|e| format!("--changes {v:?}: {e}"))?;
            }
            "--via" => {
                s.sources = match value("--via")?.as_str() {
                    "slices" => vec![Source::Slices],
                    "pods" => vec![Source::Pods],
                    "both" => vec![Source::Slices, Source::Pods],
                    other => return Err(format!("--via {other:?}: slices, pods or both")),
                };
            }
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if s.changes == 0 || s.sizes.iter().any(|&n| n < 2) {
        return Err("--changes must be at least 1 and every size at least 2".into());
    }
    Ok(s)
}

fn main() {
    let settings = settings().unwrap_or_else(|e| {
        eprintln!("controller bench: {e}");
        eprintln!(
            "usage: controller [--binary PATH] [--sizes 10,1000,5000] [--changes 200] [--via slices|pods|both]"
        );
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let rows = runtime.block_on(async {
        support::netns::require();
        let client = ControlPlane::shared().client();
        install_crd(&client).await;
        let mut rows = Vec::new();
        for &source in &settings.sources {
            for &n in &settings.sizes {
                rows.push(measure(&client, &settings, n, source).await);
            }
        }
        rows
    });
    println!(
        "| change | endpoints | slices | changes | p50 ms | p90 ms | p99 ms | max ms | first list s | PSS MiB | peak RSS MiB | CPU ms per change |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} |",
            r.source.label(),
            r.endpoints,
            r.slices,
            r.latencies.len(),
            percentile(&r.latencies, 0.50),
            percentile(&r.latencies, 0.90),
            percentile(&r.latencies, 0.99),
            percentile(&r.latencies, 1.0),
            r.first_list.as_secs_f64(),
            r.pss_kib as f64 / 1024.0,
            r.peak_rss_kib as f64 / 1024.0,
            r.cpu_ms_per_change,
        );
    }
}

struct Row {
    source: Source,
    endpoints: usize,
    slices: usize,
    /// Milliseconds, one per change.
    latencies: Vec<f64>,
    first_list: Duration,
    pss_kib: u64,
    peak_rss_kib: u64,
    cpu_ms_per_change: f64,
}

fn percentile(sorted_or_not: &[f64], q: f64) -> f64 {
    let mut v = sorted_or_not.to_vec();
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn pod_ip(i: usize) -> Ipv4Addr {
    // 10.244.1.1 onwards: never the test run's own 10.244.0.0/24, and never sent any traffic.
    let host = 256 + 1 + i;
    Ipv4Addr::new(10, 244, (host / 256) as u8, (host % 256) as u8)
}

fn pod_name(i: usize) -> String {
    format!("web-{i:05}")
}

fn endpoint(ns: &str, i: usize, ready: bool) -> serde_json::Value {
    json!({
        "addresses": [pod_ip(i).to_string()],
        "conditions": {"ready": ready, "serving": ready, "terminating": false},
        "nodeName": pods::NODE_NAME,
        "targetRef": {"kind": "Pod", "namespace": ns, "name": pod_name(i)},
    })
}

fn slice(ns: &str, k: usize, n: usize, not_ready: Option<usize>) -> EndpointSlice {
    let range = k * PER_SLICE..((k + 1) * PER_SLICE).min(n);
    let endpoints: Vec<_> = range
        .map(|i| endpoint(ns, i, not_ready != Some(i)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("web-{k:03}"),
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "bench.kubebalancer.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice")
}

async fn measure(client: &Client, settings: &Settings, n: usize, source: Source) -> Row {
    let ns = pods::namespace(client, &format!("scale-{n}")).await;
    let slices_needed = n.div_ceil(PER_SLICE);
    let fake_pods: Vec<FakePod> = (0..n)
        .map(|i| FakePod::new(&ns, &pod_name(i), pod_ip(i)).label("app", "web"))
        .collect();
    let slice_api = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    let mut slices = Vec::new();
    match source {
        Source::Slices => {
            eprintln!("{n} endpoints: {n} pods and {slices_needed} EndpointSlices in {ns}");
            // Metadata is all the controller reads of these pods; nothing selects them.
            let pod_api = Api::<Pod>::namespaced(client.clone(), &ns);
            stream::iter(0..n)
                .map(|i| {
                    let api = pod_api.clone();
                    let ns = ns.clone();
                    async move {
                        let pod: Pod = serde_json::from_value(json!({
                            "metadata": {"name": pod_name(i), "namespace": ns},
                            "spec": {
                                "nodeName": pods::NODE_NAME,
                                "containers": [{"name": "app", "image": "kube-balancer.test/backend:0"}],
                            },
                        }))
                        .expect("a Pod");
                        api.create(&PostParams::default(), &pod).await.map(|_| ())
                    }
                })
                .buffer_unordered(16)
                .try_collect::<Vec<()>>()
                .await
                .unwrap_or_else(|e| panic!("create pods in {ns}: {e}"));
            create_service(client, &ns, None).await;
            for k in 0..slices_needed {
                let created = slice_api
                    .create(&PostParams::default(), &slice(&ns, k, n, None))
                    .await
                    .unwrap_or_else(|e| panic!("create EndpointSlice {k} in {ns}: {e}"));
                slices.push(created);
            }
        }
        Source::Pods => {
            eprintln!("{n} endpoints: {n} ready pods behind a Service with a selector in {ns}");
            create_service(client, &ns, Some("web")).await;
            stream::iter(&fake_pods)
                .map(|pod| pod.create(client))
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            // Wait for the EndpointSlice controller before starting the balancer.
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let listed = slice_api
                    .list(&Default::default())
                    .await
                    .unwrap_or_else(|e| panic!("list EndpointSlices in {ns}: {e}"));
                let ready = listed
                    .items
                    .iter()
                    .flat_map(|s| &s.endpoints)
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count();
                if ready == n {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the EndpointSlice controller published {ready} of {n} endpoints in 300 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    apply_cluster(
        client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;

    let started = Instant::now();
    let mut balancer = Binary::start(&settings.binary, &ns);
    let first_list = balancer.wait_members(n, started).await - started;
    eprintln!(
        "{n} endpoints: first member list after {:.2} s",
        first_list.as_secs_f64()
    );

    let cpu_before = balancer.cpu_ticks();
    let mut latencies = Vec::with_capacity(settings.changes);
    let mut down: Option<usize> = None;
    for c in 0..settings.changes {
        // Take one endpoint down, then bring it back; the next one is in another slice.
        let (i, want, not_ready) = match down.take() {
            Some(i) => (i, n, None),
            None => {
                let i = (c / 2 * 7919) % n;
                down = Some(i);
                (i, n - 1, Some(i))
            }
        };
        let t0 = Instant::now();
        match source {
            Source::Slices => {
                let k = i / PER_SLICE;
                let mut next = slice(&ns, k, n, not_ready);
                next.metadata.resource_version = slices[k].resource_version();
                let name = next.name_any();
                slices[k] = slice_api
                    .replace(&name, &PostParams::default(), &next)
                    .await
                    .unwrap_or_else(|e| panic!("replace EndpointSlice {name} in {ns}: {e}"));
            }
            Source::Pods => {
                fake_pods[i].set_ready(client, not_ready.is_none()).await;
            }
        }
        let seen = balancer.wait_members(want, t0).await;
        latencies.push((seen - t0).as_secs_f64() * 1000.0);
        // A short, varying pause, so the changes do not keep step with any periodic work.
        tokio::time::sleep(Duration::from_millis(5 + (c as u64 * 37) % 20)).await;
    }
    let cpu_ticks = balancer.cpu_ticks() - cpu_before;
    let (pss_kib, peak_rss_kib) = balancer.memory();
    balancer.stop();
    Row {
        source,
        endpoints: n,
        slices: slices_needed,
        latencies,
        first_list,
        pss_kib,
        peak_rss_kib,
        cpu_ms_per_change: cpu_ticks as f64 * 1000.0 / clock_ticks() / settings.changes as f64,
    }
}

/// A Service `web` with port `http` (80 -> 8080), selecting `app=SELECTOR` pods if given.
async fn create_service(client: &Client, ns: &str, selector: Option<&str>) {
    let mut spec = json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    if let Some(app) = selector {
        spec["selector"] = json!({"app": app});
    }
    let service: Service =
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": ns}, "spec": spec}))
            .expect("a Service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("create the Service");
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    #[allow(
        unsafe_code,
        reason = "a signal to, or a figure of, a process of ours: libc has no safe wrapper"
    )]
    unsafe {
        libc::sysconf(libc::_SC_CLK_TCK) as f64
    }
}

/// The real binary, `kube-balancer run`, on one namespace; its log lines reach `published` as
/// (time seen, member count) for every "member lists published".
struct Binary {
    child: Child,
    published: tokio::sync::mpsc::UnboundedReceiver<(Instant, usize)>,
}

impl Binary {
    fn start(binary: &str, ns: &str) -> Binary {
        let cp = ControlPlane::shared();
        let mut command = Command::new(binary);
        support::controlplane::die_with_parent(&mut command);
        let mut child = command
            .args(["run", "--kubeconfig"])
            .arg(cp.kubeconfig())
            .args([
                "--namespace",
                ns,
                "--lease-namespace",
                ns,
                "--identity",
                "bench",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--shutdown-grace",
                "1s",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, published) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let seen = Instant::now();
                if line.contains("member lists published") {
                    if let Some(count) = member_count(&line) {
                        let _ = tx.send((seen, count));
                    }
                } else if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("kube-balancer: {line}");
                }
            }
        });
        Binary { child, published }
    }

    /// Waits for a publication of `want` members made after `since`.
    async fn wait_members(&mut self, want: usize, since: Instant) -> Instant {
        let wait = async {
            loop {
                match self.published.recv().await {
                    Some((seen, count)) if count == want && seen >= since => return seen,
                    Some(_) => {}
                    None => panic!("kube-balancer exited while {want} members were awaited"),
                }
            }
        };
        tokio::time::timeout(CHANGE_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| {
                panic!("no publication of {want} members within {CHANGE_TIMEOUT:?}")
            })
    }

    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the binary's /proc stat");
        // Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
        num(14).unwrap_or(0) + num(15).unwrap_or(0)
    }

    /// (PSS, peak RSS) in KiB.
    fn memory(&self) -> (u64, u64) {
        let pid = self.child.id();
        let field = |file: &str, key: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0)
        };
        (field("smaps_rollup", "Pss:"), field("status", "VmHWM:"))
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on the PID of the child this program started and has not reaped.
        #[allow(
            unsafe_code,
            reason = "a signal to, or a figure of, a process of ours: libc has no safe wrapper"
        )]
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM)
        };
        let _ = self.child.wait();
    }
}

/// The count in `clusters=["ns/web (N members)"]`.
fn member_count(line: &str) -> Option<usize> {
    let end = line.find(" members)")?;
    let start = line[..end].rfind('(')? + 1;
    line[start..end].parse().ok()
}
