//! The data plane under test, in the test process: `options` is the one place where the tests
//! build its `ProxyOptions` (every proxy a test starts, `Proxy` or the controller's `Balancer`,
//! takes them from here, so a mode to test under is set here once); `Proxy` serves a
//! configuration; the YAML of a cluster `web`; what the data plane serves for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube_balancer::health::Checker;
use kube_balancer::plane::{Cluster, DataPlane};
use kube_balancer::proxy::{Http1Mode, ProxyOptions, Server};

/// The options of every data plane the tests start: one worker on an ephemeral 127.0.0.1 port,
/// with the HTTP/1 implementation `KB_TEST_HTTP1` names (`fast`, the default, or `hyper`):
/// scripts/test.sh runs the data-plane tier under both.
pub fn options() -> ProxyOptions {
    let mut options = ProxyOptions::new("127.0.0.1:0".parse().expect("an address"));
    options.workers = 1;
    options.http1 = http1();
    options
}

/// The HTTP/1 implementation the tests run under (`KB_TEST_HTTP1`).
pub fn http1() -> Http1Mode {
    match std::env::var("KB_TEST_HTTP1").as_deref() {
        Ok("hyper") => Http1Mode::Hyper,
        Ok("fast") | Err(_) => Http1Mode::Fast,
        Ok(other) => panic!("KB_TEST_HTTP1 must be fast or hyper, not {other:?}"),
    }
}

/// A real data plane in front of the backends, with its active health checks, as the binary
/// starts them next to each other.
pub struct Proxy {
    pub plane: Arc<DataPlane>,
    pub addr: SocketAddr,
    server: Option<Server>,
    checker: Option<Checker>,
}

impl Proxy {
    /// Serves the BalancerCluster documents of `yaml`, as standalone mode reads them.
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, |_| {})
    }

    /// `start`, with `tune` applied to the options.
    pub fn start_with(yaml: &str, tune: impl FnOnce(&mut ProxyOptions)) -> Proxy {
        let plane = DataPlane::new();
        plane.publish(
            kube_balancer::standalone::parse("test.yaml", yaml).expect("valid test configuration"),
        );
        Proxy::serve(plane, tune)
    }

    /// Serves what `plane` publishes (also later), with `tune` applied to the options.
    pub fn serve(plane: Arc<DataPlane>, tune: impl FnOnce(&mut ProxyOptions)) -> Proxy {
        let mut options = options();
        tune(&mut options);
        let server = Server::start(plane.clone(), options).expect("start the data plane");
        let checker = Checker::start(plane.clone()).expect("start the health checks");
        Proxy {
            addr: server.local_addr(),
            plane,
            server: Some(server),
            checker: Some(checker),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the data plane, letting requests in flight finish within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let (server, checker) = (self.server.take(), self.checker.take());
        tokio::task::spawn_blocking(move || {
            if let Some(server) = server {
                server.shutdown(grace);
            }
            if let Some(checker) = checker {
                checker.stop();
            }
        })
        .await
        .expect("join");
    }
}

/// YAML for one BalancerCluster `web` whose members have the given URLs, then `extra` spec lines
/// as they are (indented by two spaces, e.g. "  failover: {maxAttempts: 2}").
pub fn cluster_yaml(urls: &[String], extra: &str) -> String {
    let mut yaml = head();
    for url in urls {
        yaml.push_str(&format!("    - url: {url}\n"));
    }
    yaml.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        yaml.push('\n');
    }
    yaml
}

/// YAML for one BalancerCluster `web` with `members` (each the body of a flow mapping, such as
/// `url: http://..., route: web1`), then `extra` spec lines, each indented by two spaces here.
pub fn cluster(members: &[String], extra: &str) -> String {
    let mut yaml = head();
    for m in members {
        yaml.push_str(&format!("    - {{{m}}}\n"));
    }
    for line in extra.lines() {
        yaml.push_str("  ");
        yaml.push_str(line.trim_start());
        yaml.push('\n');
    }
    yaml
}

fn head() -> String {
    "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web}\nspec:\n  members:\n"
        .to_owned()
}

/// The served cluster `default/web`.
pub fn web(plane: &DataPlane) -> Arc<Cluster> {
    plane
        .snapshot_full()
        .cluster("default", "web")
        .cloned()
        .expect("cluster default/web is served")
}

/// The member rows (balancer-manager / status) of `default/web` now.
pub fn rows(plane: &DataPlane) -> Vec<kube_balancer::api::MemberStatus> {
    kube_balancer::status::member_rows(&web(plane), kube_balancer::clock::now_ms())
}

/// The status words of `default/web`'s members now.
pub fn states(plane: &DataPlane) -> Vec<String> {
    rows(plane).into_iter().map(|r| r.state).collect()
}
