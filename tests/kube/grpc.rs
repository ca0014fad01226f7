//! gRPC members from Kubernetes, against the real control plane (docs/testenv.md): a Service
//! port whose `appProtocol` is `grpc` makes its endpoints h2c members without a word in the
//! BalancerCluster, and real gRPC calls (tests/support/grpc-peer, grpc-go) reach the pods through the
//! data plane the controller feeds.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{Balancer, apply_cluster, install_crd, options};
use crate::support::netns;
use crate::support::pods::{self, FakePod};
use kube_balancer::api::Protocol;

/// The grpc-peer binary, built once (scripts/test-deps.sh has fetched its modules, so this
/// needs no network).
fn peer_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-peer-controller");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc-peer"))
            .env("GOFLAGS", "-mod=readonly")
            .status()
            .expect("run go build");
        assert!(
            status.success(),
            "go build of tests/support/grpc-peer failed"
        );
        out
    })
}

/// A gRPC server on a pod's address, killed when dropped.
struct GrpcPod(Child, u16);

impl GrpcPod {
    fn start(name: &str, ip: std::net::Ipv4Addr) -> GrpcPod {
        let mut child = Command::new(peer_binary())
            .args(["serve", "-listen", &format!("{ip}:0"), "-name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start grpc-peer serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("its address");
        // Its later lines are read too: a closed pipe would stop it at its next line.
        std::thread::spawn(move || for _ in out.lines().map_while(Result::ok) {});
        let port = first
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        GrpcPod(child, port)
    }
}

impl Drop for GrpcPod {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_port_whose_app_protocol_is_grpc_gets_h2c_members_and_calls_go_through() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "grpc").await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "grpc", "port": 50051, "targetPort": "grpc", "appProtocol": "grpc"},
        ]},
    }))
    .expect("a service");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("create the service");
    let mut servers = Vec::new();
    for name in ["api-a", "api-b"] {
        let ip = netns::next_pod_ip();
        let server = GrpcPod::start(name, ip);
        FakePod::new(&ns, name, ip)
            .label("app", "web")
            .port("grpc", server.1)
            .create(&client)
            .await;
        servers.push(server);
    }
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "grpc"}}),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "replica-1")).await;
    balancer
        .wait_members_shown(&ns, &["api-a:h2c", "api-b:h2c"], |m| {
            format!(
                "{}:{}",
                m.pod.clone().unwrap_or_default(),
                m.protocol.as_str()
            )
        })
        .await;
    assert!(
        balancer
            .member_configs(&ns)
            .iter()
            .all(|m| m.protocol == Protocol::H2c)
    );
    let target = balancer.addr().to_string();
    let errors = || {
        balancer
            .plane
            .snapshot()
            .cluster(&ns, "web")
            .map(|c| {
                c.balancer
                    .members()
                    .iter()
                    .map(|m| m.stats.last_error())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let backends = tokio::task::spawn_blocking(move || {
        (0..4)
            .map(|_| {
                let output = Command::new(peer_binary())
                    .args(["call", "-target", &target, "-kind", "unary"])
                    .output()
                    .expect("run a call");
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                let done = text
                    .lines()
                    .find(|l| l.starts_with("done "))
                    .unwrap_or_else(|| panic!("the call did not end: {text}"))
                    .to_owned();
                assert!(done.starts_with("done code=0 "), "{done}");
                done.split_whitespace()
                    .find_map(|f| f.strip_prefix("backend="))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; the members' last errors: {:?}", errors()));
    assert_eq!(backends, ["api-a", "api-b", "api-a", "api-b"]);
    drop(servers);
}

/// The API server runs the same rules on protocols and gRPC settings as standalone mode, with
/// the same messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_bad_protocol_and_grpc_settings_with_the_cel_message() {
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "badgrpc").await;
    let resource = kube::api::ApiResource::erase::<kube_balancer::api::BalancerCluster>(&());
    let api = Api::<kube::api::DynamicObject>::namespaced_with(client, &ns, &resource);
    for (spec, expected) in [
        (
            json!({"members": [{"url": "http://10.0.0.1:80", "protocol": "h2"}]}),
            "protocol h2 is HTTP/2 over TLS, for https:// members",
        ),
        (
            json!({"members": [{"url": "https://10.0.0.1:443", "protocol": "h2c"}], "upstreamTLS": {}}),
            "h2c is HTTP/2 without TLS, for http:// members",
        ),
        (
            json!({"members": [{"url": "http://10.0.0.1:80"}], "http2": {"maxConcurrentStreams": 0}}),
            "http2.maxConcurrentStreams must be between 1 and 10000",
        ),
        (
            json!({"members": [{"url": "http://10.0.0.1:80"}], "failover": {"safeGrpcMethods": ["/a.B/C/D"]}}),
            "safeGrpcMethods entries look like /package.Service/Method",
        ),
        (
            json!({"members": [{"url": "http://10.0.0.1:80"}], "healthCheck": {"grpcService": "a.B"}}),
            "healthCheck.grpcService needs method: GRPC",
        ),
    ] {
        let bc: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
            "metadata": {"name": "bad"}, "spec": spec,
        }))
        .expect("well-formed");
        match api.create(&PostParams::default(), &bc).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{e:?}");
                assert!(
                    e.message.contains(expected),
                    "{expected:?} in {}",
                    e.message
                );
            }
            other => panic!("expected a refusal of {spec}, got {other:?}"),
        }
    }
    let good: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "good"},
        "spec": {
            "protocol": "h2c",
            "members": [{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.2:80", "protocol": "http1"}],
            "http2": {"maxConcurrentStreams": 8},
            "failover": {"safeGrpcMethods": ["/shop.Cart/Get", "/grpc.health.v1.Health/*"]},
            "healthCheck": {"method": "GRPC", "grpcService": "shop.Cart"},
        },
    }))
    .expect("well-formed");
    api.create(&PostParams::default(), &good)
        .await
        .expect("a good resource is accepted");
}
