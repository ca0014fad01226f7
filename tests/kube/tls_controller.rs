//! TLS through the controller, against a real kube-apiserver (docs/testenv.md): a Secret that a
//! BalancerCluster names reaches the data plane's snapshot and the real TLS handshakes of its
//! listener; a rotated Secret replaces it; a broken one is refused with `TLSReady=False` and an
//! Event while the certificate before keeps serving. Certificates are made with rcgen.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{Balancer, apply_cluster, install_crd, options};
use crate::support::{netns, pods, wait};
use kube_balancer::api::BalancerCluster;
use kube_balancer::plane::DataPlane;

const DAY: i64 = 86_400;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn time(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).expect("time")
}

fn now() -> i64 {
    kube_balancer::tls::unix_now()
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "Test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = time(now() - DAY);
    params.not_after = time(now() + 365 * DAY);
    let cert = params.self_signed(&key).expect("CA");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A chain (leaf, then CA) and its PKCS#8 key, valid from `from` to `until`.
fn leaf(ca: &Ca, serial: u8, from: i64, until: i64) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["shop.example.com".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "shop.example.com");
    params.serial_number = Some(SerialNumber::from(vec![serial]));
    params.not_before = time(from);
    params.not_after = time(until);
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    (format!("{}{}", cert.pem(), ca.pem), key.serialize_pem())
}

async fn put_secret(client: &kube::Client, ns: &str, chain: &str, key: &str) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("web-tls".into()),
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
            "web-tls",
            &PatchParams::apply("kube-balancer-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply the Secret");
}

/// The serial of the certificate the snapshot serves for shop.example.com now.
fn served_serial(plane: &DataPlane) -> Option<String> {
    plane
        .snapshot()
        .tls
        .certificates
        .resolve(Some("shop.example.com"))
        .map(|s| s.certificate.info.serial.clone())
}

/// Waits until the snapshot serves `serial`; returns how long that took.
async fn wait_serial(plane: &DataPlane, serial: &str) -> Duration {
    let start = Instant::now();
    loop {
        if served_serial(plane).as_deref() == Some(serial) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < wait::TIMEOUT,
            "timed out waiting for serial {serial}; serving {:?}",
            served_serial(plane)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An HTTPS listener on the plane, as the proxy will run one: it only does handshakes.
async fn listener(plane: Arc<DataPlane>) -> std::net::SocketAddr {
    let acceptor = kube_balancer::tls::acceptor(plane).expect("acceptor");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                }
            });
        }
    });
    addr
}

/// The serial a real TLS client verifying against `ca` is served for shop.example.com.
async fn handshake_serial(addr: std::net::SocketAddr, ca: &Ca) -> String {
    let mut roots = rustls::RootCertStore::empty();
    let der = kube_balancer::tls::cert::read_chain(ca.pem.as_bytes()).expect("CA");
    roots.add(der[0].clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(kube_balancer::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("shop.example.com").expect("name"), tcp)
        .await
        .expect("handshake");
    let certs = tls.get_ref().1.peer_certificates().expect("certificates");
    kube_balancer::tls::cert::describe(&certs[0])
        .expect("readable")
        .serial
}

fn tls_ready(bc: &BalancerCluster) -> Option<(String, String, String)> {
    bc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "TLSReady")
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_secret_is_served_rotated_and_a_broken_one_refused_while_the_old_one_serves() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "tls").await;
    let clusters = Api::<BalancerCluster>::namespaced(client.clone(), &ns);
    apply_cluster(
        &client,
        &ns,
        json!({
            "members": [{"url": "http://127.0.0.1:1"}],
            "tls": [{"hosts": ["shop.example.com"], "secretName": "web-tls"}],
        }),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "tls-0")).await;
    let plane = balancer.plane.clone();

    // Named before it exists: said so, and nothing is served for the name.
    wait::until_object(clusters.clone(), "web", "TLSReady=False, not found", |bc| {
        tls_ready(bc).is_some_and(|(s, r, m)| {
            s == "False" && r == "CertificateNotFound" && m.contains("no such Secret")
        })
    })
    .await;
    assert_eq!(served_serial(&plane), None);

    // Created: served, and shown in status.
    let ca = ca();
    let (chain, key) = leaf(&ca, 1, now() - DAY, now() + 90 * DAY);
    put_secret(&client, &ns, &chain, &key).await;
    wait_serial(&plane, "01").await;
    let addr = listener(plane.clone()).await;
    assert_eq!(handshake_serial(addr, &ca).await, "01");
    let bc = wait::until_object(clusters.clone(), "web", "TLSReady=True", |bc| {
        tls_ready(bc).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let shown = &bc.status.as_ref().expect("status").certificates;
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (
            shown[0].role.as_str(),
            shown[0].source.as_str(),
            shown[0].serial.as_str(),
        ),
        ("server", format!("secret {ns}/web-tls").as_str(), "01")
    );
    // 90 days from its making, less the moments since (89 once a second has passed).
    assert!(
        (89..=90).contains(&shown[0].days_left),
        "{}",
        shown[0].days_left
    );
    assert_eq!(shown[0].hosts, ["shop.example.com"]);
    assert_eq!(shown[0].issuer, "CN=Test CA");

    // Rotated: the next handshake gets the new serial, within 2 s of the write.
    let (chain2, key2) = leaf(&ca, 2, now() - DAY, now() + 90 * DAY);
    let start = Instant::now();
    put_secret(&client, &ns, &chain2, &key2).await;
    wait_serial(&plane, "02").await;
    let took = start.elapsed();
    eprintln!("the rotated Secret reached the snapshot in {took:?}");
    assert!(took < Duration::from_secs(2), "the rotation took {took:?}");
    assert_eq!(handshake_serial(addr, &ca).await, "02");

    // Broken (the key of another certificate): refused, and the serial 2 keeps serving.
    let (chain3, _) = leaf(&ca, 3, now() - DAY, now() + 90 * DAY);
    put_secret(&client, &ns, &chain3, &key2).await;
    let bc = wait::until_object(clusters.clone(), "web", "TLSReady=False, refused", |bc| {
        tls_ready(bc).is_some_and(|(s, r, _)| s == "False" && r == "CertificateRefused")
    })
    .await;
    let (_, _, message) = tls_ready(&bc).expect("condition");
    assert_eq!(
        message,
        format!(
            "secret {ns}/web-tls: the private key does not belong to the certificate (the first certificate of the chain must be the server's own); the certificate loaded before keeps serving"
        )
    );
    assert_eq!(served_serial(&plane).as_deref(), Some("02"));
    assert_eq!(handshake_serial(addr, &ca).await, "02");
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    wait::until_list(
        events,
        kube::runtime::watcher::Config::default(),
        "a CertificateRefused event",
        |events| {
            events.iter().any(|e| {
                e.reason.as_deref() == Some("CertificateRefused")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("does not belong"))
            })
        },
    )
    .await;

    // Expired: refused too, naming when.
    let (chain4, key4) = leaf(&ca, 4, now() - 30 * DAY, now() - DAY);
    put_secret(&client, &ns, &chain4, &key4).await;
    wait::until_object(clusters.clone(), "web", "TLSReady=False, expired", |bc| {
        tls_ready(bc).is_some_and(|(s, r, m)| {
            s == "False" && r == "CertificateRefused" && m.contains("the certificate expired on ")
        })
    })
    .await;
    assert_eq!(served_serial(&plane).as_deref(), Some("02"));

    // Mended: served again, and ready.
    let (chain5, key5) = leaf(&ca, 5, now() - DAY, now() + 90 * DAY);
    put_secret(&client, &ns, &chain5, &key5).await;
    wait_serial(&plane, "05").await;
    wait::until_object(clusters, "web", "TLSReady=True again", |bc| {
        tls_ready(bc).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(handshake_serial(addr, &ca).await, "05");
}

#[tokio::test]
async fn tls_mistakes_are_refused_by_the_api_server_with_the_cel_message() {
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "tls-invalid").await;
    let resource = kube::api::ApiResource::erase::<BalancerCluster>(&());
    let api = Api::<kube::api::DynamicObject>::namespaced_with(client, &ns, &resource);
    for (spec, expected) in [
        (
            json!({"members": [{"url": "https://10.0.0.1:443"}], "tls": [{"hosts": ["a.example.com"]}]}),
            "a tls entry names secretName (in a cluster) or certFile and keyFile (standalone): exactly one of them",
        ),
        (
            json!({"members": [{"url": "http://10.0.0.1:80"}], "upstreamTLS": {"caSecret": "ca"}}),
            "with spec.upstreamTLS every member is reached over TLS: member urls must start with https://",
        ),
        (
            json!({"members": [{"url": "https://10.0.0.1"}], "tls": [{"hosts": ["*.Example.com"], "secretName": "x"}]}),
            "tls hosts must be lower-case DNS names like shop.example.com, or wildcards like *.example.com",
        ),
    ] {
        let bc: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
            "metadata": {"name": "bad"}, "spec": spec,
        }))
        .expect("well-formed");
        match api.create(&PostParams::default(), &bc).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422);
                assert!(e.message.contains(expected), "{}", e.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // And a good one is taken.
    let good: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "good"},
        "spec": {
            "members": [{"url": "https://10.0.0.1:8443"}],
            "tls": [{"hosts": ["shop.example.com", "*.shop.example.com"], "secretName": "web-tls", "default": true}],
            "httpsRedirect": true,
            "hsts": {"maxAgeSeconds": 600, "includeSubDomains": true},
            "upstreamTLS": {"caSecret": "member-ca", "serverName": "backend.internal", "clientCertSecret": "client"},
        },
    }))
    .expect("well-formed");
    api.create(&PostParams::default(), &good)
        .await
        .expect("a valid TLS spec is taken");
}
