//! The Gateway API front door against a real kube-apiserver and kube-controller-manager
//! (docs/testenv.md), with the pinned release's standard CRDs: Gateways and HTTPRoutes reach the
//! data plane's snapshot as fronts at the Gateway's address, their Services' endpoints (published
//! by the real EndpointSlice controller) as clusters, HTTPS listeners' Secrets as the
//! certificates real TLS handshakes get, and status is written as the Gateway API asks.
//!

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{Balancer, install_crd, options, web_pods, web_service};
use crate::support::podrunner::conformance::{ExclusiveGuard, exclusive, install_crds};
use crate::support::{netns, pods, wait};
use kube_balancer::gateway::api::{
    BackendTLSPolicy, Gateway, GatewayClass, HTTPRoute, ReferenceGrant,
};
use kube_balancer::gateway::{self, CONTROLLER_NAME};
use kube_balancer::plane::matching::RequestView;
use kube_balancer::plane::{DataPlane, FrontCertificates};

const MANAGER: &str = "kube-balancer-tests";

async fn apply<K>(api: &Api<K>, value: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let name = value["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

/// The test's client and namespace; the guard keeps every other Gateway API controller of this
/// binary away while the test runs (they all serve the same controller name).
async fn setup(prefix: &str) -> (Client, String, ExclusiveGuard) {
    netns::require();
    let guard = exclusive().await;
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    install_crds().await;
    pods::ensure_node(&client).await;
    let ns = pods::namespace(&client, prefix).await;
    (client, ns, guard)
}

async fn gateway_class(client: &Client, name: &str) {
    apply(
        &Api::<GatewayClass>::all(client.clone()),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": name},
            "spec": {"controllerName": CONTROLLER_NAME},
        }),
    )
    .await;
}

/// A request for the route table.
struct Get(&'static str);

impl RequestView for Get {
    fn method(&self) -> &http::Method {
        &http::Method::GET
    }
    fn path(&self) -> &str {
        self.0
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn any_header(&self, _: &http::HeaderName, _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        false
    }
}

/// The run's GatewayClass (`kb-NS`) and its Gateway `gw` in `ns`, with one HTTP listener on
/// port 80: the class's name.
async fn http_gateway(client: &Client, ns: &str) -> String {
    let class = format!("kb-{ns}");
    gateway_class(client, &class).await;
    apply(
        &Api::<Gateway>::namespaced(client.clone(), ns),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": ns},
            "spec": {"gatewayClassName": class, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
        }),
    )
    .await;
    class
}

/// Where the snapshot sends `GET path` for `host` at `address:port` now: `None` when no front or
/// route takes it, `Some(None)` for a route whose backend cannot be served, else the cluster's
/// key and its members' URLs.
#[allow(clippy::type_complexity)]
fn routed(
    plane: &DataPlane,
    address: IpAddr,
    port: u16,
    host: &str,
    path: &'static str,
) -> Option<Option<(String, Vec<String>)>> {
    let snapshot = plane.snapshot_full();
    let front = snapshot.front_at(Some(address), port)?;
    let matched = front.routes.lookup(host.as_bytes(), &Get(path))?;
    let cluster = matched.rule.pick().and_then(|b| snapshot.backend(b));
    Some(cluster.map(|c| {
        (
            c.key.clone(),
            c.config.members.iter().map(|m| m.url.clone()).collect(),
        )
    }))
}

/// Waits until `done` holds of what the snapshot shows; panics after `wait::TIMEOUT` with it.
async fn until_plane<T: std::fmt::Debug>(
    plane: &DataPlane,
    what: &str,
    show: impl Fn(&DataPlane) -> T,
    done: impl Fn(&T) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let now = show(plane);
        if done(&now) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < wait::TIMEOUT,
            "timed out waiting for {what}; the snapshot shows {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// (type, status, reason) of conditions.
fn conditions(
    c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Vec<(String, String, String)> {
    c.iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn has(c: &[(String, String, String)], type_: &str, status: &str, reason: &str) -> bool {
    c.iter()
        .any(|(t, s, r)| t == type_ && s == status && r == reason)
}

/// The status entry kube-balancer wrote on a route, as (type, status, reason) triples, with the
/// observedGeneration of each.
fn our_parent(route: &HTTPRoute) -> Option<Vec<(String, String, String)>> {
    let parent = route
        .status
        .as_ref()?
        .parents
        .iter()
        .find(|p| p.controller_name == CONTROLLER_NAME)?;
    parent
        .conditions
        .iter()
        .all(|c| c.observed_generation == route.metadata.generation)
        .then(|| conditions(&parent.conditions))
}

#[tokio::test]
async fn a_route_on_a_gateway_is_published_at_its_address_and_reported() {
    let (client, ns, _exclusive) = setup("gw").await;
    web_service(&client, &ns).await;
    let _pods = web_pods(&client, &ns, &["web-a", "web-b"]).await;
    let class = http_gateway(&client, &ns).await;
    let gateways = Api::<Gateway>::namespaced(client.clone(), &ns);
    let routes = Api::<HTTPRoute>::namespaced(client.clone(), &ns);
    let route = |backend: &str| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"parentRefs": [{"name": "gw"}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/shop"}}],
                                "backendRefs": [{"name": backend, "port": 80}]}]},
        })
    };
    apply(&routes, route("web")).await;

    let address = IpAddr::V4(netns::next_pod_ip());
    let mut opts = options(&ns, "replica-1");
    opts.gateway = Some(gateway::Options {
        addresses: vec![address],
        service: None,
    });
    let balancer = Balancer::start(&client, opts).await;
    let plane = balancer.plane.clone();
    let key = format!("{ns}/web:80");

    // The route's rule at the Gateway's address, to the Service's two pods.
    until_plane(
        &plane,
        "the route at the Gateway's address",
        |p| routed(p, address, 80, "shop.example.com", "/shop/cart"),
        |r| matches!(r, Some(Some((k, members))) if *k == key && members.len() == 2),
    )
    .await;
    assert_eq!(routed(&plane, address, 80, "h", "/other"), None);
    assert!(
        plane.snapshot().routes.is_empty(),
        "nothing on --listen: the Gateway's routes are only on its front"
    );

    // Status, written by the leader.
    let class_status = wait::until_object(
        Api::<GatewayClass>::all(client.clone()),
        &class,
        "the GatewayClass to be accepted",
        |gc| {
            gc.status.as_ref().is_some_and(|s| {
                has(&conditions(&s.conditions), "Accepted", "True", "Accepted")
                    && s.conditions
                        .iter()
                        .all(|c| c.observed_generation == gc.metadata.generation)
            })
        },
    )
    .await;
    let features: Vec<String> = class_status
        .status
        .iter()
        .flat_map(|s| &s.supported_features)
        .map(|f| f.name.clone())
        .collect();
    // The features claimed (those the conformance suite passes with), sorted as the API asks.
    assert_eq!(features, gateway::SUPPORTED_FEATURES);
    assert!(features.is_sorted(), "{features:?}");
    assert_eq!(features.len(), 39, "3 core features and 36 extended ones");
    let gw = wait::until_object(
        gateways.clone(),
        "gw",
        "the Gateway to be programmed",
        |g| {
            g.status.as_ref().is_some_and(|s| {
                let c = conditions(&s.conditions);
                has(&c, "Accepted", "True", "Accepted")
                    && has(&c, "Programmed", "True", "Programmed")
                    && s.listeners.first().is_some_and(|l| l.attached_routes == 1)
                    && s.conditions
                        .iter()
                        .all(|c| c.observed_generation == g.metadata.generation)
            })
        },
    )
    .await;
    let status = gw.status.expect("status");
    assert_eq!(status.addresses.len(), 1);
    assert_eq!(
        (
            status.addresses[0].type_.as_deref(),
            status.addresses[0].value.as_str()
        ),
        (Some("IPAddress"), address.to_string().as_str())
    );
    let listener = conditions(&status.listeners[0].conditions);
    for (type_, s, reason) in [
        ("Accepted", "True", "Accepted"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Programmed", "True", "Programmed"),
        ("Conflicted", "False", "NoConflicts"),
    ] {
        assert!(has(&listener, type_, s, reason), "{type_}: {listener:?}");
    }
    wait::until_object(routes.clone(), "web", "the route to be accepted", |r| {
        our_parent(r).is_some_and(|c| {
            has(&c, "Accepted", "True", "Accepted")
                && has(&c, "ResolvedRefs", "True", "ResolvedRefs")
        })
    })
    .await;

    // Sent to a Service that does not exist: a 500 for its share, and BackendNotFound.
    apply(&routes, route("nowhere")).await;
    until_plane(
        &plane,
        "the route's backend to be unservable",
        |p| routed(p, address, 80, "h", "/shop"),
        |r| *r == Some(None),
    )
    .await;
    wait::until_object(routes.clone(), "web", "BackendNotFound", |r| {
        our_parent(r).is_some_and(|c| {
            has(&c, "Accepted", "True", "Accepted")
                && has(&c, "ResolvedRefs", "False", "BackendNotFound")
        })
    })
    .await;
    assert!(
        plane.snapshot().cluster(&ns, "web:80").is_none(),
        "a Service port no route sends to is no cluster"
    );

    // The Gateway gone: its front goes, and the route's entry from kube-balancer too.
    gateways
        .delete("gw", &DeleteParams::default())
        .await
        .expect("delete the Gateway");
    until_plane(
        &plane,
        "the front to go",
        |p| p.snapshot().fronts.len(),
        |n| *n == 0,
    )
    .await;
    wait::until_object(routes, "web", "the route's entry to go", |r| {
        r.status.as_ref().is_some_and(|s| s.parents.is_empty())
    })
    .await;
}

/// A self-signed certificate for `host`, as a kubernetes.io/tls Secret's data.
fn certificate(host: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![host.to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, host);
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

async fn put_secret(client: &Client, ns: &str, name: &str, chain: &str, key: &str) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(chain.as_bytes().to_vec())),
            ("tls.key".to_owned(), ByteString(key.as_bytes().to_vec())),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply the Secret");
}

/// The certificate a real TLS client, trusting `chain`, is served at a front for `host`; `None`
/// when the handshake fails.
async fn handshake(
    plane: Arc<DataPlane>,
    address: IpAddr,
    host: &str,
    chain: &str,
) -> Option<Vec<String>> {
    let acceptor = kube_balancer::tls::acceptor(Arc::new(FrontCertificates {
        plane,
        address: Some(address),
        port: 443,
    }))
    .expect("acceptor");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        if let Ok((stream, _)) = tcp.accept().await
            && let Ok(mut tls) = acceptor.accept(stream).await
        {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    let der = kube_balancer::tls::cert::read_chain(chain.as_bytes()).expect("chain");
    roots.add(der[0].clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(kube_balancer::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let result = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_owned()).expect("name"), stream)
        .await;
    let _ = server.await;
    let tls = result.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    Some(
        kube_balancer::tls::cert::describe(&certs[0])
            .expect("readable")
            .hosts,
    )
}

#[tokio::test]
async fn https_listeners_serve_their_secrets_and_say_when_they_cannot() {
    let (client, ns, _exclusive) = setup("gws").await;
    let other = pods::namespace(&client, "gws-certs").await;
    let (chain, key) = certificate("secure.example.com");
    put_secret(&client, &ns, "secure", &chain, &key).await;
    let (other_chain, other_key) = certificate("other.example.com");
    put_secret(&client, &other, "elsewhere", &other_chain, &other_key).await;
    put_secret(&client, &ns, "broken", "Hello world", "Hello world").await;
    let class = format!("kb-{ns}");
    gateway_class(&client, &class).await;
    let gateways = Api::<Gateway>::namespaced(client.clone(), &ns);
    let https = |name: &str, host: &str, secret: serde_json::Value| {
        json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
               "tls": {"certificateRefs": [secret]}})
    };
    apply(
        &gateways,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": ns},
            "spec": {"gatewayClassName": class, "listeners": [
                https("secure", "secure.example.com", json!({"name": "secure"})),
                https("other", "other.example.com", json!({"name": "elsewhere", "namespace": other})),
                https("broken", "broken.example.com", json!({"name": "broken"})),
                https("missing", "missing.example.com", json!({"name": "missing"})),
            ]},
        }),
    )
    .await;
    let address = IpAddr::V4(netns::next_pod_ip());
    let mut opts = options(&ns, "replica-1");
    opts.namespaces.push(other.clone());
    opts.gateway = Some(gateway::Options {
        addresses: vec![address],
        service: None,
    });
    let balancer = Balancer::start(&client, opts).await;
    let plane = balancer.plane.clone();

    let resolved = |gw: &Gateway, listener: &str| -> Option<(String, String)> {
        let s = gw.status.as_ref()?;
        if !s
            .conditions
            .iter()
            .all(|c| c.observed_generation == gw.metadata.generation)
        {
            return None;
        }
        let l = s.listeners.iter().find(|l| l.name == listener)?;
        let c = l.conditions.iter().find(|c| c.type_ == "ResolvedRefs")?;
        Some((c.status.clone(), c.reason.clone()))
    };
    let pair = |s: &str, r: &str| Some((s.to_owned(), r.to_owned()));
    wait::until_object(
        gateways.clone(),
        "gw",
        "each listener's ResolvedRefs",
        |g| {
            resolved(g, "secure") == pair("True", "ResolvedRefs")
                && resolved(g, "other") == pair("False", "RefNotPermitted")
                && resolved(g, "broken") == pair("False", "InvalidCertificateRef")
                && resolved(g, "missing") == pair("False", "InvalidCertificateRef")
        },
    )
    .await;
    until_plane(
        &plane,
        "the HTTPS front",
        |p| p.snapshot().front_at(Some(address), 443).map(|f| f.tls),
        |tls| *tls == Some(true),
    )
    .await;
    // A real handshake gets the Secret's certificate; a name no served listener takes fails.
    assert_eq!(
        handshake(plane.clone(), address, "secure.example.com", &chain).await,
        Some(vec!["secure.example.com".to_owned()])
    );
    assert_eq!(
        handshake(plane.clone(), address, "other.example.com", &other_chain).await,
        None
    );

    // A ReferenceGrant in the Secret's namespace lets the Gateway use it.
    apply(
        &Api::<ReferenceGrant>::namespaced(client.clone(), &other),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "certs", "namespace": other},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns}],
                     "to": [{"group": "", "kind": "Secret", "name": "elsewhere"}]},
        }),
    )
    .await;
    wait::until_object(gateways, "gw", "the granted listener to resolve", |g| {
        resolved(g, "other") == pair("True", "ResolvedRefs")
    })
    .await;
    let start = Instant::now();
    loop {
        if handshake(plane.clone(), address, "other.example.com", &other_chain).await
            == Some(vec!["other.example.com".to_owned()])
        {
            break;
        }
        assert!(
            start.elapsed() < wait::TIMEOUT,
            "the granted certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn only_the_replica_holding_the_lease_writes_status() {
    let (client, ns, _exclusive) = setup("gwl").await;
    http_gateway(&client, &ns).await;
    let gateways = Api::<Gateway>::namespaced(client.clone(), &ns);
    // Another replica holds the Lease, and renewed it just now.
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let lease = k8s_openapi::api::coordination::v1::Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("kube-balancer".into()),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("replica-0".into()),
            lease_duration_seconds: Some(3600),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    apply(&leases, serde_json::to_value(&lease).expect("a Lease")).await;
    let address = IpAddr::V4(netns::next_pod_ip());
    let mut opts = options(&ns, "replica-1");
    opts.gateway = Some(gateway::Options {
        addresses: vec![address],
        service: None,
    });
    let balancer = Balancer::start(&client, opts).await;
    until_plane(
        &balancer.plane,
        "the Gateway's front",
        |p| p.snapshot().fronts.len(),
        |n| *n == 1,
    )
    .await;
    // Served, and not reported: the follower writes nothing. Its writer looks at leadership
    // every second; three seconds of nothing is a follower, not a slow leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!balancer.leads());
    let gw = gateways.get("gw").await.expect("the Gateway");
    // Only the CRD's defaults: Accepted and Programmed Unknown, "Waiting for controller".
    assert!(
        gw.status.as_ref().is_none_or(|s| {
            s.addresses.is_empty() && s.conditions.iter().all(|c| c.reason == "Pending")
        }),
        "a follower wrote status: {:?}",
        gw.status
    );

    // The other replica gone, its Lease with it: this one leads and writes.
    leases
        .delete("kube-balancer", &DeleteParams::default())
        .await
        .expect("delete the Lease");
    wait::until_object(gateways, "gw", "the new leader's status", |g| {
        g.status.as_ref().is_some_and(|s| {
            has(
                &conditions(&s.conditions),
                "Programmed",
                "True",
                "Programmed",
            )
        })
    })
    .await;
    assert!(balancer.leads());
}

/// The controller, serving Gateways at a new pod address of the run's namespace, and a proxy of
/// one worker serving that address's fronts: the address, the controller and the proxy.
async fn served_at_new_address(
    client: &Client,
    ns: &str,
) -> (
    IpAddr,
    kube_balancer::controller::Controller,
    kube_balancer::proxy::Server,
) {
    let address = IpAddr::V4(netns::next_pod_ip());
    let mut opts = options(ns, "replica-1");
    opts.gateway = Some(gateway::Options {
        addresses: vec![address],
        service: None,
    });
    let plane = DataPlane::new();
    let controller = kube_balancer::controller::start(client.clone(), opts, plane.clone())
        .await
        .expect("the controller starts");
    let mut proxy = kube_balancer::proxy::ProxyOptions::new("127.0.0.1:0".parse().expect("addr"));
    proxy.workers = 1;
    proxy.gateway_address = Some(address);
    let server = kube_balancer::proxy::Server::start(plane, proxy).expect("the proxy starts");
    (address, controller, server)
}

/// `GET path` to `addr` with `Host: host` and an optional Cookie, over a new connection: the
/// status, the body and the Set-Cookie value; `None` when the connection is refused.
async fn get(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    cookie: Option<&str>,
) -> Option<(u16, String, Option<String>)> {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let mut request = http::Request::get(path).header(http::header::HOST, host);
    if let Some(c) = cookie {
        request = request.header(http::header::COOKIE, c);
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a request");
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let set_cookie = response
        .headers()
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        set_cookie,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancercluster_named_as_a_backend_brings_its_sticky_sessions_to_the_route() {
    let (client, ns, _exclusive) = setup("gwbc").await;
    web_service(&client, &ns).await;
    let _pods = web_pods(&client, &ns, &["web-a", "web-b"]).await;
    crate::support::fixtures::apply_cluster(
        &client,
        &ns,
        json!({"routes": [], "service": {"name": "web", "port": "http"},
               "stickySession": {"cookie": "ROUTEID", "insert": true}}),
    )
    .await;
    http_gateway(&client, &ns).await;
    apply(
        &Api::<HTTPRoute>::namespaced(client.clone(), &ns),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["shop.example.com"], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/sticky"}}],
                 "backendRefs": [{"group": "kubebalancer.io", "kind": "BalancerCluster", "name": "web"}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/plain"}}],
                 "backendRefs": [{"name": "web", "port": 80}]},
            ]},
        }),
    )
    .await;

    let (address, controller, server) = served_at_new_address(&client, &ns).await;
    let front = std::net::SocketAddr::new(address, 80);

    // Until the route is served: the front's port opens with the publication.
    let start = Instant::now();
    while get(front, "shop.example.com", "/plain", None)
        .await
        .map(|r| r.0)
        != Some(200)
    {
        assert!(
            start.elapsed() < wait::TIMEOUT,
            "the route is never served at {front}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A Service: byrequests over its two pods, no cookie.
    let mut plain = Vec::new();
    for _ in 0..2 {
        let (status, body, cookie) = get(front, "shop.example.com", "/plain", None)
            .await
            .expect("answered");
        assert_eq!((status, cookie), (200, None));
        plain.push(body);
    }
    plain.sort();
    assert_eq!(plain, ["web-a", "web-b"]);
    // The BalancerCluster: its sticky session, inserted, then followed.
    let (status, first, cookie) = get(front, "shop.example.com", "/sticky", None)
        .await
        .expect("answered");
    assert_eq!(status, 200);
    let cookie = cookie.expect("the BalancerCluster inserts its cookie");
    assert!(cookie.starts_with("ROUTEID="), "{cookie}");
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    for _ in 0..4 {
        let (status, body, _) = get(front, "shop.example.com", "/sticky", Some(&pair))
            .await
            .expect("answered");
        assert_eq!((status, body.as_str()), (200, first.as_str()));
    }
    // Its `routes: []` keeps it off --listen.
    let (status, _, _) = get(server.local_addr(), "shop.example.com", "/sticky", None)
        .await
        .expect("answered");
    assert_eq!(status, 404);
    controller.stop();
    server.shutdown(Duration::from_millis(100));
}

/// (type, status, reason) triples, and the conditions' messages.
type Reported = (Vec<(String, String, String)>, Vec<String>);

/// The status entry kube-balancer wrote on a BackendTLSPolicy for its Gateway, once its
/// conditions carry the policy's generation.
fn our_ancestor(policy: &BackendTLSPolicy) -> Option<Reported> {
    let ancestor = policy
        .status
        .as_ref()?
        .ancestors
        .iter()
        .find(|a| a.controller_name == CONTROLLER_NAME)?;
    ancestor
        .conditions
        .iter()
        .all(|c| c.observed_generation == policy.metadata.generation)
        .then(|| {
            (
                conditions(&ancestor.conditions),
                ancestor
                    .conditions
                    .iter()
                    .map(|c| c.message.clone())
                    .collect(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_tls_policy_with_a_wrong_ca_is_refused_and_says_why() {
    use crate::support::client::{client as http_client, send};
    use crate::support::pods::FakePod;
    use crate::support::tls::{TlsMember, ca, field, leaf};
    use k8s_openapi::api::core::v1::ConfigMap;

    let (client, ns, _exclusive) = setup("gwbt").await;
    // A pod whose endpoint serves TLS with a certificate for abc.example.com, signed by
    // "Backend CA", behind a Service port that says nothing of TLS.
    let backend_ca = ca("Backend CA");
    let ip = netns::next_pod_ip();
    let listener = TcpListener::bind((ip, 0))
        .await
        .expect("bind on the pod IP");
    let member = TlsMember::serve_on(
        listener,
        "tls-a",
        &leaf(&backend_ca, &["abc.example.com"], 1),
        None,
    );
    let pod = FakePod::new(&ns, "tls-a", ip)
        .label("app", "tls")
        .port("https", member.addr.port());
    pod.create(&client).await;
    apply(
        &Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "tls", "namespace": ns},
            "spec": {"selector": {"app": "tls"},
                     "ports": [{"name": "btls", "port": 443, "targetPort": "https"}]},
        }),
    )
    .await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let ca_map = |pem: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "backend-ca", "namespace": ns},
               "data": {"ca.crt": pem}})
    };
    apply(&config_maps, ca_map("Hello world")).await;
    http_gateway(&client, &ns).await;
    apply(
        &Api::<HTTPRoute>::namespaced(client.clone(), &ns),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "tls", "namespace": ns},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["shop.example.com"],
                     "rules": [{"backendRefs": [{"name": "tls", "port": 443}]}]},
        }),
    )
    .await;
    let policies = Api::<BackendTLSPolicy>::namespaced(client.clone(), &ns);
    apply(
        &policies,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "tls", "namespace": ns},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "tls", "sectionName": "btls"}],
                "validation": {
                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "backend-ca"}],
                    "hostname": "abc.example.com",
                },
            },
        }),
    )
    .await;

    let (address, controller, server) = served_at_new_address(&client, &ns).await;
    let url = format!("http://{}/", std::net::SocketAddr::new(address, 80));
    let http = http_client();
    let ask = || send(&http, "GET", &url, &[("host", "shop.example.com")], "");
    let until_status = |status: u16, what: &'static str| {
        let ask = &ask;
        async move {
            let start = Instant::now();
            loop {
                // The front's port opens with the first publication: until then, no answer.
                let answered = TcpStream::connect(std::net::SocketAddr::new(address, 80))
                    .await
                    .is_ok();
                if answered {
                    let answer = ask().await;
                    if answer.status.as_u16() == status {
                        return answer;
                    }
                }
                assert!(start.elapsed() < wait::TIMEOUT, "never {status}: {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // A ca.crt that is no certificate: refused, the policy says why, and requests get 500
    // without the member ever being dialled.
    let (_, messages) = our_ancestor(
        &wait::until_object(policies.clone(), "tls", "NoValidCACertificate", |p| {
            our_ancestor(p).is_some_and(|(c, _)| {
                has(&c, "Accepted", "False", "NoValidCACertificate")
                    && has(&c, "ResolvedRefs", "False", "InvalidCACertificateRef")
            })
        })
        .await,
    )
    .expect("our entry");
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("configmap {ns}/backend-ca"))),
        "the message names the ConfigMap: {messages:?}"
    );
    until_status(500, "a policy without a usable CA").await;
    assert_eq!(member.handshakes() + member.refused(), 0);

    // A usable CA that did not sign the member's certificate: accepted (nothing says it is the
    // wrong one until a handshake), and each handshake is refused: 502.
    let other_ca = ca("Other CA");
    apply(&config_maps, ca_map(&other_ca.pem)).await;
    wait::until_object(policies.clone(), "tls", "Accepted", |p| {
        our_ancestor(p).is_some_and(|(c, _)| {
            has(&c, "Accepted", "True", "Accepted")
                && has(&c, "ResolvedRefs", "True", "ResolvedRefs")
        })
    })
    .await;
    until_status(502, "a CA that did not sign the member's certificate").await;
    // The member counts a refused handshake when its side of it ends, which may come after
    // the proxy's 502 has reached us.
    wait::until(
        "the member to see a handshake refused",
        wait::TIMEOUT,
        || member.refused() > 0,
    )
    .await;
    assert_eq!(
        member.requests(),
        0,
        "nothing was sent to an unverified member"
    );

    // The right CA: served, with the policy's hostname as SNI.
    apply(&config_maps, ca_map(&backend_ca.pem)).await;
    let answer = until_status(200, "the CA that signed it").await;
    assert_eq!(answer.body, "tls-a");
    assert_eq!(field(&answer, "x-sni"), "abc.example.com");
    controller.stop();
    server.shutdown(Duration::from_millis(100));
    drop(pod);
}

/// Whether a front's listener completes a handshake with a client that trusts `server_ca` and
/// presents `client` (none: no certificate). In TLS 1.3 the client is done before the listener
/// has judged its certificate: the listener's side says.
async fn accepts_client(
    plane: Arc<DataPlane>,
    address: IpAddr,
    host: &str,
    server_ca: &str,
    client: Option<&crate::support::tls::Leaf>,
) -> bool {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    let acceptor = kube_balancer::tls::acceptor(Arc::new(FrontCertificates {
        plane,
        address: Some(address),
        port: 443,
    }))
    .expect("acceptor");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (stream, _) = tcp.accept().await.ok()?;
        let mut tls = acceptor.accept(stream).await.ok()?;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        Some(())
    });
    let mut roots = rustls::RootCertStore::empty();
    for der in kube_balancer::tls::cert::read_chain(server_ca.as_bytes()).expect("CA") {
        roots.add(der).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(kube_balancer::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                kube_balancer::tls::cert::read_chain(leaf.chain.as_bytes()).expect("chain"),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key"),
            )
            .expect("a client certificate"),
        None => builder.with_no_client_auth(),
    };
    let stream = TcpStream::connect(addr).await.expect("connect");
    let connected = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_owned()).expect("name"), stream)
        .await;
    let accepted = server.await.expect("the listener's task").is_some();
    drop(connected);
    accepted
}

#[tokio::test]
async fn frontend_validation_refuses_clients_without_a_valid_certificate_and_follows_its_ca() {
    use crate::support::tls::{ca, leaf};
    use k8s_openapi::api::core::v1::ConfigMap;

    let (client, ns, _exclusive) = setup("gwfv").await;
    let server_ca = ca("Server CA");
    let served = leaf(&server_ca, &["secure.example.com"], 1);
    put_secret(&client, &ns, "secure", &served.chain, &served.key).await;
    let (clients, partners) = (ca("Clients CA"), ca("Partners CA"));
    let (a_client, a_partner) = (
        leaf(&clients, &["client.example.com"], 2),
        leaf(&partners, &["partner.example.com"], 3),
    );
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let ca_map = |pem: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "clients-ca", "namespace": ns},
               "data": {"ca.crt": pem}})
    };
    apply(&config_maps, ca_map(&clients.pem)).await;
    let class = format!("kb-{ns}");
    gateway_class(&client, &class).await;
    let gateways = Api::<Gateway>::namespaced(client.clone(), &ns);
    apply(
        &gateways,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": ns},
            "spec": {
                "gatewayClassName": class,
                "tls": {"frontend": {"default": {"validation": {
                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "clients-ca"}],
                }}}},
                "listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                               "hostname": "secure.example.com",
                               "tls": {"certificateRefs": [{"name": "secure"}]}}],
            },
        }),
    )
    .await;
    let address = IpAddr::V4(netns::next_pod_ip());
    let mut opts = options(&ns, "replica-1");
    opts.gateway = Some(gateway::Options {
        addresses: vec![address],
        service: None,
    });
    let balancer = Balancer::start(&client, opts).await;
    let plane = balancer.plane.clone();
    until_plane(
        &plane,
        "the HTTPS front validating its clients",
        |p| {
            p.snapshot()
                .front_at(Some(address), 443)
                .map(|f| f.client_verifier.is_some())
        },
        |validating| *validating == Some(true),
    )
    .await;
    let host = "secure.example.com";
    let pem = server_ca.pem.as_str();
    // AllowValidOnly: a certificate of the CA is required; none, or another CA's, is refused.
    assert!(
        accepts_client(plane.clone(), address, host, pem, Some(&a_client)).await,
        "a client of the CA"
    );
    assert!(
        !accepts_client(plane.clone(), address, host, pem, None).await,
        "a client without a certificate"
    );
    assert!(
        !accepts_client(plane.clone(), address, host, pem, Some(&a_partner)).await,
        "a client of another CA"
    );

    // A new CA in the ConfigMap reaches the next handshake, with no new listener.
    apply(&config_maps, ca_map(&partners.pem)).await;
    let start = Instant::now();
    while !accepts_client(plane.clone(), address, host, pem, Some(&a_partner)).await {
        assert!(start.elapsed() < wait::TIMEOUT, "the new CA is never used");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !accepts_client(plane.clone(), address, host, pem, Some(&a_client)).await,
        "the CA taken away"
    );

    // A CA that cannot be read: the listener is not served rather than served without
    // validation, and says why.
    apply(&config_maps, ca_map("Hello world")).await;
    wait::until_object(gateways, "gw", "NoValidCACertificate", |g| {
        g.status.as_ref().is_some_and(|s| {
            s.listeners.iter().any(|l| {
                l.conditions.iter().any(|c| {
                    c.type_ == "Accepted"
                        && c.status == "False"
                        && c.reason == "NoValidCACertificate"
                }) && l.conditions.iter().any(|c| {
                    c.type_ == "ResolvedRefs"
                        && c.status == "False"
                        && c.reason == "InvalidCACertificateRef"
                })
            })
        })
    })
    .await;
    until_plane(
        &plane,
        "the front to go",
        |p| p.snapshot().front_at(Some(address), 443).map(|f| f.tls),
        |front| front.is_none(),
    )
    .await;
}
