//! The admin server against the real data plane: real backends, real requests through the proxy,
//! then what /balancer-manager (JSON and, in headless Chromium, HTML), /metrics and /readyz say.
//! Everything listens on 127.0.0.1 ephemeral ports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use kube_balancer::admin::{self, manager::ManagerView};
use kube_balancer::api::BalancerCluster;
use kube_balancer::discovery::{self, ClusterConfig};
use kube_balancer::plane::DataPlane;

use crate::support::backend::{Backend, refusing_port};
use crate::support::chromium::{Browser, chromium, dump_dom, screenshot};
use crate::support::client::{client, get, send};
use crate::support::metrics::Samples;
use crate::support::proxy::Proxy;
use crate::support::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// A served cluster from BalancerCluster YAML, as standalone mode would build it.
fn cluster(yaml: &str) -> ClusterConfig {
    let bc: BalancerCluster = serde_norway::from_str(yaml).expect("BalancerCluster YAML");
    discovery::cluster_config(&bc, vec![]).expect("servable cluster")
}

struct RunningAdmin {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningAdmin {
    async fn start(plane: Arc<DataPlane>) -> RunningAdmin {
        let listener = admin::bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind admin");
        let addr = listener.local_addr().expect("admin address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(admin::serve(listener, plane, async {
            let _ = stopped.await;
        }));
        RunningAdmin { addr, stop, task }
    }

    /// Stops the server and checks that it returned cleanly and closed an idle keep-alive
    /// connection that was open at the time.
    async fn stop(self) {
        let mut idle = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to admin");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("send");
        let mut first = Vec::new();
        while !first.ends_with(b"\r\n\r\nok\n") {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
                .await
                .expect("answer within 10 s")
                .expect("read");
            assert!(n > 0, "closed before answering: {first:?}");
            first.extend_from_slice(&buf[..n]);
        }

        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("admin server stops within 10 s")
            .expect("admin task")
            .expect("admin server returns Ok");
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, idle.read_to_end(&mut rest))
            .await
            .expect("idle connection closed at shutdown")
            .expect("clean close");
        assert!(rest.is_empty(), "{rest:?}");
    }
}

async fn manager_json(admin: SocketAddr) -> (serde_json::Value, ManagerView) {
    let answer = get(&format!("http://{admin}/balancer-manager?format=json")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/json");
    let raw: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    let typed: ManagerView = serde_json::from_value(raw.clone()).expect("balancer-manager JSON");
    (raw, typed)
}

/// Waits until no member of any cluster has a request in flight: the client has its whole
/// answer slightly before the proxy drops its side of the exchange.
async fn settled(admin: SocketAddr) -> (serde_json::Value, ManagerView) {
    wait::until_some("busy to return to 0 on every member", WAIT, || async {
        let (raw, view) = manager_json(admin).await;
        view.clusters
            .iter()
            .flat_map(|c| &c.members)
            .all(|m| m.status.busy == 0)
            .then_some((raw, view))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_first_publication() {
    let plane = DataPlane::new();
    let admin = RunningAdmin::start(plane.clone()).await;

    let health = get(&format!("http://{}/healthz", admin.addr)).await;
    assert_eq!((health.status.as_u16(), health.body.trim()), (200, "ok"));

    let before = get(&format!("http://{}/readyz", admin.addr)).await;
    assert_eq!(before.status, 503);
    let reason = before.body;
    assert_eq!(
        reason.trim_end().lines().count(),
        1,
        "one-line reason: {reason:?}"
    );
    assert!(reason.contains("no configuration"), "{reason}");

    let backend = Backend::start("a").await;
    plane.publish(vec![cluster(&format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\n\
         metadata: {{name: web, namespace: shop}}\nspec:\n  members: [{{url: \"{}\"}}]\n",
        backend.url()
    ))]);
    let after = get(&format!("http://{}/readyz", admin.addr)).await;
    assert_eq!(after.status, 200, "{}", after.body);

    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_manager_and_metrics_count_exactly_what_went_through_the_proxy() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let (dead, _reserved) = refusing_port();
    let dead_url = format!("http://{dead}");

    let plane = DataPlane::new();
    let admin = RunningAdmin::start(plane.clone()).await;
    plane.publish(vec![
        cluster(&format!(
            r#"
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {{name: web, namespace: shop}}
spec:
  members:
    - url: "{a}"
    - url: "{b}"
    - url: "{c}"
      state: Stopped
"#,
            a = a.url(),
            b = b.url(),
            c = c.url(),
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
    // A configuration load refused by a source.
    plane.rejected_configs.fetch_add(1, Relaxed);
    let proxy = Proxy::serve(plane.clone(), |_| {});

    // Six requests with bodies of known sizes; each answer names its backend.
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut received: HashMap<String, u64> = HashMap::new();
    let mut served: HashMap<String, u64> = HashMap::new();
    for size in [10usize, 200, 3000, 40, 5, 1] {
        let answer = send(
            &client(),
            "POST",
            &proxy.url("/upload"),
            &[("host", "shop.example")],
            vec![b'x'; size],
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let text = answer.body.clone();
        assert!(text.ends_with(&format!(" got {size} bytes")), "{text}");
        let url = match text.split(' ').next() {
            Some("a") => a.url(),
            Some("b") => b.url(),
            other => panic!("answered by {other:?}"),
        };
        *sent.entry(url.clone()).or_default() += size as u64;
        *received.entry(url.clone()).or_default() += answer.body.len() as u64;
        *served.entry(url).or_default() += 1;
    }
    assert_eq!(served[&a.url()], 3);
    assert_eq!(served[&b.url()], 3);

    // One request to a member that refuses connections.
    let refused = send(
        &client(),
        "GET",
        &proxy.url("/"),
        &[("host", "broken.test")],
        "",
    )
    .await;
    assert!(refused.status.is_server_error(), "{}", refused.status);

    let (raw, view) = settled(admin.addr).await;
    assert_eq!(view.generation, 1);
    assert!(view.ready);
    assert_eq!(view.rejected_configs, 1);
    assert_eq!(view.clusters.len(), 2);

    let web = &view.clusters[0];
    assert_eq!(web.name, "shop/web");
    assert_eq!(web.lb_method, "byrequests");
    assert_eq!(web.sticky_session, None);
    assert_eq!((web.ready_members, web.total_members), (2, 3));
    let member = |url: &str| {
        web.members
            .iter()
            .find(|m| m.status.url == url)
            .unwrap_or_else(|| panic!("no member {url}"))
    };
    for backend in [&a, &b] {
        let m = member(&backend.url());
        let url = backend.url();
        assert_eq!(m.status.elected, 3, "{url}");
        assert_eq!(m.status.busy, 0, "{url}");
        assert_eq!(m.status.state, "Ok", "{url}");
        assert_eq!(m.errors, 0, "{url}");
        assert_eq!(m.status.sent_bytes, sent[&url], "{url}");
        assert_eq!(m.status.received_bytes, received[&url], "{url}");
        assert!(m.status.sent_bytes > 0 && m.status.received_bytes > 0);
    }
    let stopped = member(&c.url());
    assert_eq!(stopped.status.state, "Stopped");
    assert_eq!((stopped.status.elected, stopped.status.sent_bytes), (0, 0));
    // Totals over the whole cluster, as a cross-check of the per-member figures.
    assert_eq!(
        web.members.iter().map(|m| m.status.sent_bytes).sum::<u64>(),
        10 + 200 + 3000 + 40 + 5 + 1
    );

    let broken = &view.clusters[1];
    assert_eq!(broken.name, "shop/broken");
    let down = &broken.members[0];
    assert_eq!(down.status.url, dead_url);
    assert_eq!(down.status.state, "Error");
    assert_eq!(
        (down.status.elected, down.errors, down.status.busy),
        (1, 1, 0)
    );
    assert!(down.status.last_error.is_some());

    // The wire names are the status subresource's (a leader sums its peers' JSON).
    let raw_a = &raw["clusters"][0]["members"][0];
    assert_eq!(raw_a["url"], a.url());
    assert_eq!(raw_a["elected"], 3);
    assert_eq!(raw_a["sentBytes"], sent[&a.url()]);
    assert_eq!(raw_a["receivedBytes"], received[&a.url()]);
    assert_eq!(raw["clusters"][0]["routes"][0]["pathPrefix"], "/");
    assert_eq!(raw["clusters"][1]["routes"][0]["host"], "broken.test");
    assert_eq!(raw["clusters"][0]["retryAfterErrorMs"], 60_000);

    // The same figures through /metrics.
    let scrape = get(&format!("http://{}/metrics", admin.addr)).await;
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = scrape.body;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let metrics = Samples::parse(&text);
    for backend in [&a, &b] {
        let url = backend.url();
        let labels = [("cluster", "shop/web"), ("member", url.as_str())];
        assert_eq!(
            metrics.value("kube_balancer_member_requests_total", &labels),
            3.0
        );
        assert_eq!(
            metrics.value("kube_balancer_member_in_flight", &labels),
            0.0
        );
        assert_eq!(
            metrics.value("kube_balancer_member_sent_bytes_total", &labels),
            sent[&url] as f64
        );
        assert_eq!(
            metrics.value("kube_balancer_member_received_bytes_total", &labels),
            received[&url] as f64
        );
        assert_eq!(
            metrics.value("kube_balancer_member_errors_total", &labels),
            0.0
        );
        assert_eq!(metrics.value("kube_balancer_member_up", &labels), 1.0);
        assert_eq!(
            metrics.labels("kube_balancer_member_up", &labels)["state"],
            "Ok"
        );
    }
    let c_url = c.url();
    let c_labels = [("cluster", "shop/web"), ("member", c_url.as_str())];
    assert_eq!(
        metrics.value("kube_balancer_member_requests_total", &c_labels),
        0.0
    );
    assert_eq!(metrics.value("kube_balancer_member_up", &c_labels), 0.0);
    assert_eq!(
        metrics.labels("kube_balancer_member_up", &c_labels)["state"],
        "Stopped"
    );
    let dead_labels = [("cluster", "shop/broken"), ("member", dead_url.as_str())];
    assert_eq!(
        metrics.value("kube_balancer_member_errors_total", &dead_labels),
        1.0
    );
    assert_eq!(
        metrics.labels("kube_balancer_member_up", &dead_labels)["state"],
        "Error"
    );
    let web_labels = [("cluster", "shop/web")];
    assert_eq!(
        metrics.value("kube_balancer_cluster_ready_members", &web_labels),
        2.0
    );
    assert_eq!(
        metrics.value("kube_balancer_cluster_members", &web_labels),
        3.0
    );
    assert_eq!(
        metrics.value("kube_balancer_config_rejected_total", &[]),
        1.0
    );
    assert_eq!(metrics.value("kube_balancer_snapshot_generation", &[]), 1.0);
    assert_eq!(metrics.value("kube_balancer_ready", &[]), 1.0);

    // A new snapshot without member b: b leaves the scrape, a keeps its counters.
    plane.publish(vec![cluster(&format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\n\
         metadata: {{name: web, namespace: shop}}\nspec:\n  members: [{{url: \"{}\"}}]\n",
        a.url()
    ))]);
    let metrics = Samples::parse(&get(&format!("http://{}/metrics", admin.addr)).await.body);
    let a_url = a.url();
    assert_eq!(
        metrics.value(
            "kube_balancer_member_requests_total",
            &[("member", a_url.as_str())]
        ),
        3.0
    );
    assert!(
        !get(&format!("http://{}/metrics", admin.addr))
            .await
            .body
            .contains(&b.url())
    );
    assert_eq!(metrics.value("kube_balancer_snapshot_generation", &[]), 2.0);

    proxy.stop(Duration::from_secs(1)).await;
    admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_manager_page_renders_in_headless_chromium() {
    // Fails here, with the install line, when the browser is missing.
    chromium();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let plane = DataPlane::new();
    // The second route's host is hostile markup: the page must show it as text.
    plane.publish(vec![cluster(&format!(
        r#"
apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {{name: web, namespace: shop}}
spec:
  routes:
    - pathPrefix: /
    - host: "<i id=injected>evil</i>"
      pathPrefix: /x
  members:
    - url: "{a}"
      loadFactor: 2
    - url: "{b}"
      loadFactor: 2
"#,
        a = a.url(),
        b = b.url(),
    ))]);
    let admin = RunningAdmin::start(plane.clone()).await;
    let proxy = Proxy::serve(plane.clone(), |_| {});
    for _ in 0..6 {
        let answer = send(
            &client(),
            "GET",
            &proxy.url("/"),
            &[("host", "shop.example")],
            "",
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    settled(admin.addr).await;

    let url = format!("http://{}/balancer-manager", admin.addr);
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url, Duration::from_secs(90)))
        .await
        .expect("chromium run");

    assert!(
        dom.contains("<title>kube-balancer: balancer-manager</title>"),
        "{dom}"
    );
    assert!(dom.contains("<table class=\"members\">"), "{dom}");
    for backend in [&a, &b] {
        let url = backend.url();
        let start = dom
            .find(&format!("<tr data-member=\"{url}\">"))
            .unwrap_or_else(|| panic!("no row for {url} in:\n{dom}"));
        let row = &dom[start..start + dom[start..].find("</tr>").expect("row end")];
        for cell in [
            format!("<td class=\"url\">{url}</td>"),
            "<td class=\"num elected\">3</td>".to_owned(),
            "<td class=\"num busy\">0</td>".to_owned(),
            "<td class=\"num factor\">2</td>".to_owned(),
            "<td class=\"status state-ok\">Ok</td>".to_owned(),
        ] {
            assert!(row.contains(&cell), "row for {url} lacks {cell}: {row}");
        }
    }
    // Escaped, so shown as text and never turned into an element.
    assert!(
        dom.contains("&lt;i id=injected&gt;evil&lt;/i&gt;/x"),
        "{dom}"
    );
    assert!(!dom.contains("id=\"injected\""), "{dom}");
    assert!(dom.contains("<td>(None)</td>"), "{dom}");

    // Each member's figures of the last minute: 3 answers, all 2xx, so a rate and answer times.
    let url = format!("http://{}/balancer-manager", admin.addr);
    let mut page = Browser::open(&url, 1280, 900).await;
    for backend in [&a, &b] {
        let cell = |class: &str| {
            format!(
                "document.querySelector('tr[data-member=\"{}\"] td.{class}').textContent",
                backend.url()
            )
        };
        assert_eq!(page.eval(&cell("classes")).await, "2xx\u{a0}3");
        for figure in ["rps", "p50", "p99"] {
            let shown = page.eval(&cell(figure)).await;
            assert_ne!(shown, "-", "{figure} of {}", backend.url());
        }
        assert_eq!(page.eval(&cell("eps")).await, "0.0");
    }
    // The page fits a 1,280-pixel window: nothing to scroll sideways, with the details of every
    // member closed (as it loads) and open.
    let widths = "[document.documentElement.scrollWidth, window.innerWidth]";
    let closed = page.eval(widths).await;
    assert_eq!(closed[1], 1280, "{closed}");
    assert!(
        closed[0].as_u64() <= closed[1].as_u64(),
        "wider than the window: {closed}"
    );
    page.eval("document.querySelectorAll('details').forEach(d => d.open = true)")
        .await;
    assert_eq!(
        page.eval("document.querySelectorAll('details[open]').length")
            .await,
        2
    );
    let open = page.eval(widths).await;
    assert!(
        open[0].as_u64() <= open[1].as_u64(),
        "wider than the window, details open: {open}"
    );
    drop(page);
    // KB_MANAGER_SCREENSHOT=docs/balancer-manager.png saves the page as the docs show it.
    if let Some(to) = std::env::var_os("KB_MANAGER_SCREENSHOT") {
        tokio::task::spawn_blocking(move || screenshot(&url, 1280, 720, std::path::Path::new(&to)))
            .await
            .expect("screenshot");
    }

    proxy.stop(Duration::from_secs(1)).await;
    admin.stop().await;
}
