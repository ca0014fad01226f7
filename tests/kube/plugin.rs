//! The `kubectl balancer` plugin as a user runs it: the real kubectl finds `kubectl-balancer` on
//! the PATH and runs it against the real API server (docs/testenv.md); the controller and the data
//! plane run in-process, and backends answer on their pod IPs. An edit through the plugin changes
//! what the data plane does; `members` prints what status holds.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::support::backend::Backend;
use crate::support::client::{Answer, get_at};
use crate::support::controlplane::{BIN_ENV, ControlPlane};
use crate::support::fixtures::{install_crd, web_pods, web_service};
use crate::support::pods::{self, FakePod};
use crate::support::{netns, proxy, wait};
use kube_balancer::api::BalancerCluster;
use kube_balancer::controller::{self, Options, index::Scope};
use kube_balancer::plane::DataPlane;
use kube_balancer::proxy::Server;

/// Runs `kubectl ARGS` with the plugin's directory first on the PATH, as the administrator.
async fn kubectl(args: &[&str]) -> Output {
    kubectl_with(ControlPlane::shared().kubeconfig(), args).await
}

async fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> Output {
    let bin = std::env::var_os(BIN_ENV).expect("the control plane checked KB_TESTENV_BIN");
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-balancer"))
        .parent()
        .expect("the plugin's directory");
    let path = std::env::join_paths(std::iter::once(plugin_dir.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("a PATH");
    let mut command = Command::new(Path::new(&bin).join("kubectl"));
    command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", path)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the thread running kubectl")
        .expect("run kubectl")
}

/// `kubectl balancer ARGS`, which must succeed; its standard output.
async fn balancer(args: &[&str]) -> String {
    let mut all = vec!["balancer"];
    all.extend_from_slice(args);
    succeeded(&all, kubectl(&all).await)
}

fn succeeded(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "`kubectl {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// A namespace with a Service `web` over pods that each run a backend on their pod IP, a
/// BalancerCluster `web` (`spec`, plus the Service) in front, and a controller and data plane
/// serving it.
struct Shop {
    ns: String,
    pods: Vec<(FakePod, Backend)>,
    plane: Arc<DataPlane>,
    server: Option<Server>,
    controller: controller::Controller,
}

impl Shop {
    async fn open(client: &Client, prefix: &str, names: &[&str], spec: Value) -> Shop {
        install_crd(client).await;
        let ns = pods::namespace(client, prefix).await;
        web_service(client, &ns).await;
        let pods = web_pods(client, &ns, names).await;
        let mut spec = spec;
        spec["service"] = json!({"name": "web", "port": "http"});
        let bc = json!({"apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
            "metadata": {"name": "web", "namespace": ns}, "spec": spec});
        Api::<BalancerCluster>::namespaced(client.clone(), &ns)
            .patch(
                "web",
                &PatchParams::apply("kube-balancer-tests").force(),
                &Patch::Apply(&bc),
            )
            .await
            .expect("apply the BalancerCluster");

        let plane = DataPlane::new();
        let options = Options {
            kubeconfig: None,
            namespaces: vec![ns.clone()],
            scope: Scope {
                class: "default".into(),
                only: None,
            },
            status_interval: Duration::from_millis(500),
            write_status: true,
            identity: "replica-1".into(),
            lease_namespace: ns.clone(),
            lease_name: "kube-balancer".into(),
            lease_duration: Duration::from_secs(3),
            peers_service: None,
            admin_port: 9901,
            admin_token: None,
            gateway: None,
        };
        let controller = controller::start(client.clone(), options, plane.clone())
            .await
            .expect("the controller starts");
        let server = Server::start(plane.clone(), proxy::options()).expect("the data plane starts");
        let shop = Shop {
            ns,
            pods,
            plane,
            server: Some(server),
            controller,
        };
        let all: Vec<String> = names.iter().map(|n| format!("{n}:Enabled:1")).collect();
        shop.wait_members(&all.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        shop
    }

    fn api(&self, client: &Client) -> Api<BalancerCluster> {
        Api::namespaced(client.clone(), &self.ns)
    }

    /// The data plane's members now, as `pod:State:factor`.
    fn members(&self) -> Vec<String> {
        self.plane
            .snapshot()
            .cluster(&self.ns, "web")
            .map(|c| {
                c.config
                    .members
                    .iter()
                    .map(|m| {
                        format!(
                            "{}:{:?}:{}",
                            m.pod.clone().unwrap_or_default(),
                            m.state,
                            m.load_factor
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_members(&self, want: &[&str]) {
        let deadline = Instant::now() + wait::TIMEOUT;
        loop {
            let now = self.members();
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the data plane's members {want:?}; last seen {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends `n` requests through the data plane; the backends' names, in order.
    async fn send(&self, n: usize) -> Vec<String> {
        let addr = self.server.as_ref().expect("running").local_addr();
        let mut out = Vec::new();
        for _ in 0..n {
            let Answer { status, body, .. } = get_at(addr, "/").await;
            assert_eq!(status, 200, "{body}");
            out.push(body);
        }
        out
    }

    /// The BalancerCluster's spec.memberOverrides, as the API server holds it.
    async fn overrides(&self, client: &Client) -> Value {
        let bc = self.api(client).get("web").await.expect("get");
        serde_json::to_value(&bc.spec.member_overrides).expect("json")
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.controller.stop();
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_through_kubectl_stops_new_requests_and_enable_brings_the_member_back() {
    netns::require();
    let client = ControlPlane::shared().client();
    // An override of someone else's, which every edit must keep.
    let theirs = json!({"address": "10.0.0.99:80", "loadFactor": 2});
    let shop = Shop::open(
        &client,
        "drain",
        &["web-a", "web-b"],
        json!({"memberOverrides": [theirs]}),
    )
    .await;
    let ns = shop.ns.as_str();

    assert_eq!(
        balancer(&["drain", "web", "web-a", "-n", ns]).await,
        format!("{ns}/web: web-a Enabled -> Drain\n")
    );
    assert_eq!(
        shop.overrides(&client).await,
        json!([theirs, {"pod": "web-a", "state": "Drain"}])
    );
    shop.wait_members(&["web-a:Drain:1", "web-b:Enabled:1"])
        .await;
    let before = shop.pods[0].1.hits();
    assert_eq!(shop.send(6).await, ["web-b"; 6]);
    assert_eq!(
        shop.pods[0].1.hits(),
        before,
        "a drained member gets no new request"
    );
    // The write is the plugin's own, declarative and visible as such.
    let bc = shop.api(&client).get("web").await.expect("get");
    let managers: Vec<String> = bc
        .metadata
        .managed_fields
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"kubectl-balancer".to_owned()),
        "{managers:?}"
    );

    // Draining again changes nothing and says so.
    assert_eq!(
        balancer(&["drain", "web", "web-a", "-n", ns]).await,
        format!("{ns}/web: web-a Drain -> Drain (unchanged)\n")
    );

    // disable and stop take web-b out as well: no member is left to serve.
    assert_eq!(
        balancer(&["disable", "web", "web-b", "-n", ns]).await,
        format!("{ns}/web: web-b Enabled -> Disabled\n")
    );
    shop.wait_members(&["web-a:Drain:1", "web-b:Disabled:1"])
        .await;
    assert_eq!(
        balancer(&["stop", "web", "web-b", "-n", ns]).await,
        format!("{ns}/web: web-b Disabled -> Stopped\n")
    );
    shop.wait_members(&["web-a:Drain:1", "web-b:Stopped:1"])
        .await;
    let addr = shop.server.as_ref().expect("running").local_addr();
    assert_eq!(get_at(addr, "/").await.status, 503);

    // enable removes each entry (it held nothing else); the other override stays.
    assert_eq!(
        balancer(&["enable", "web", "web-b", "-n", ns]).await,
        format!("{ns}/web: web-b Stopped -> Enabled\n")
    );
    assert_eq!(
        balancer(&["enable", "web", "web-a", "-n", ns]).await,
        format!("{ns}/web: web-a Drain -> Enabled\n")
    );
    assert_eq!(shop.overrides(&client).await, json!([theirs]));
    shop.wait_members(&["web-a:Enabled:1", "web-b:Enabled:1"])
        .await;
    let mut two = shop.send(2).await;
    two.sort();
    assert_eq!(two, ["web-a", "web-b"]);

    // A cluster that is not there is named.
    let output = kubectl(&["balancer", "drain", "nope", "web-a", "-n", ns]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!("error: balancercluster \"nope\" not found in namespace \"{ns}\"\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_prints_the_balancer_manager_table_with_the_exact_counts() {
    netns::require();
    let client = ControlPlane::shared().client();
    let shop = Shop::open(&client, "members", &["web-a", "web-b"], json!({})).await;
    let ns = shop.ns.clone();
    // byrequests over two equal members: a b a b a.
    assert_eq!(
        shop.send(5).await,
        ["web-a", "web-b", "web-a", "web-b", "web-a"]
    );
    let bc = wait::until_object(
        shop.api(&client),
        "web",
        "status to count the 5 requests",
        |bc: &BalancerCluster| {
            bc.status
                .as_ref()
                .is_some_and(|s| s.members.iter().map(|m| m.elected).sum::<u64>() == 5)
        },
    )
    .await;

    // The context's namespace is the default, as with kubectl: a kubeconfig whose second
    // context points at the shop's namespace, chosen with --context, and no -n.
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = context_kubeconfig(dir.path(), "shop", &ns);
    let args = ["balancer", "members", "web", "--context", "shop"];
    let table = succeeded(&args, kubectl_with(&kubeconfig, &args).await);

    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "URL", "POD", "ROUTE", "FACTOR", "SET", "STATUS", "ELECTED", "BUSY", "TO", "FROM"
        ],
        "{table}"
    );
    // Each answer's body is the backend's name, 5 bytes: From counts them. Routes are whatever
    // status holds (none unless the members have sticky-session routes).
    let url = |i: usize| format!("http://{}", shop.pods[i].1.addr);
    let status = bc.status.expect("status");
    let route = |i: usize| {
        status.members[i]
            .route
            .clone()
            .unwrap_or_else(|| "<none>".to_owned())
    };
    assert_eq!(
        lines[1],
        [
            url(0).as_str(),
            "web-a",
            route(0).as_str(),
            "1",
            "0",
            "Ok",
            "3",
            "0",
            "0",
            "15"
        ],
        "{table}"
    );
    assert_eq!(
        lines[2],
        [
            url(1).as_str(),
            "web-b",
            route(1).as_str(),
            "1",
            "0",
            "Ok",
            "2",
            "0",
            "0",
            "10"
        ],
        "{table}"
    );
    assert_eq!(
        table.lines().last(),
        Some("READY 2/2   METHOD byrequests"),
        "{table}"
    );

    // The same table with KUBECONFIG and -n, as most people will run it.
    assert_eq!(balancer(&["members", "web", "-n", &ns]).await, table);
    // Without -n, the admin context's namespace ("default") has no such cluster.
    let output = kubectl(&["balancer", "members", "web"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: balancercluster \"web\" not found in namespace \"default\"\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_factor_changes_the_share_and_refuses_a_factor_out_of_range() {
    netns::require();
    let client = ControlPlane::shared().client();
    let shop = Shop::open(&client, "factor", &["web-a", "web-b"], json!({})).await;
    let ns = shop.ns.as_str();

    assert_eq!(
        balancer(&["set-factor", "web", "web-a", "3", "-n", ns]).await,
        format!("{ns}/web: web-a loadFactor 1 -> 3\n")
    );
    shop.wait_members(&["web-a:Enabled:3", "web-b:Enabled:1"])
        .await;
    let before: Vec<u64> = shop.pods.iter().map(|(_, b)| b.hits()).collect();
    // Apache's byrequests with factors 3:1 — a a b a, twice.
    assert_eq!(
        shop.send(8).await,
        [
            "web-a", "web-a", "web-b", "web-a", "web-a", "web-a", "web-b", "web-a"
        ]
    );
    let after: Vec<u64> = shop.pods.iter().map(|(_, b)| b.hits()).collect();
    assert_eq!([after[0] - before[0], after[1] - before[1]], [6, 2]);
    assert_eq!(
        shop.overrides(&client).await,
        json!([{"pod": "web-a", "loadFactor": 3}])
    );

    // Draining keeps the factor: one entry carries both.
    balancer(&["drain", "web", "web-a", "-n", ns]).await;
    assert_eq!(
        shop.overrides(&client).await,
        json!([{"pod": "web-a", "loadFactor": 3, "state": "Drain"}])
    );
    // enable then leaves the factor in place.
    balancer(&["enable", "web", "web-a", "-n", ns]).await;
    assert_eq!(
        shop.overrides(&client).await,
        json!([{"pod": "web-a", "loadFactor": 3}])
    );

    // Out of range: refused before anything is written, with the rule in the message.
    for bad in ["0", "101", "three"] {
        let output = kubectl(&["balancer", "set-factor", "web", "web-a", bad, "-n", ns]).await;
        assert_eq!(output.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(
                "the load factor must be a whole number from 1 to 100 (Apache's loadfactor)"
            ),
            "{stderr}"
        );
    }
    assert_eq!(
        shop.overrides(&client).await,
        json!([{"pod": "web-a", "loadFactor": 3}])
    );
}

/// A copy of the test kubeconfig with one more context, `name`, whose namespace is `namespace`.
fn context_kubeconfig(dir: &Path, name: &str, namespace: &str) -> PathBuf {
    let mut kubeconfig: Value = serde_json::from_str(
        &std::fs::read_to_string(ControlPlane::shared().kubeconfig()).expect("kubeconfig"),
    )
    .expect("the test kubeconfig is JSON");
    let mut context = kubeconfig["contexts"][0].clone();
    context["name"] = json!(name);
    context["context"]["namespace"] = json!(namespace);
    kubeconfig["contexts"]
        .as_array_mut()
        .expect("contexts")
        .push(context);
    let path = dir.join("kubeconfig");
    std::fs::write(&path, kubeconfig.to_string()).expect("write the kubeconfig");
    path
}
