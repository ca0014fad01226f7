//! Upstream TLS through the controller, against a real kube-apiserver (docs/testenv.md): a
//! BalancerCluster's `upstreamTLS.caSecret` and `clientCertSecret` are real Secrets; its
//! `https://` member is a real HTTPS server (rustls) that asks for a client certificate. A
//! Secret named before it exists keeps the member unreached; an updated one is used by the
//! next new connection. A Service's endpoints (fake pods at pod IPs of the run's namespace) are
//! reached over TLS too. Certificates are made with rcgen.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::StatusCode;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::client::{Answer, get_at};
use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{Balancer, apply_cluster, install_crd, options, web_service};
use crate::support::pods::FakePod;
use crate::support::tls::{Leaf, TlsMember, ca, field, leaf};
use crate::support::{netns, pods, wait};
use kube_balancer::api::BalancerCluster;

/// Applies the Secret `name` with `data` (and `type`).
async fn put_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    kind: &str,
    data: &[(&str, &str)],
) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some(kind.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("kube-balancer-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply the Secret");
}

async fn put_ca(client: &kube::Client, ns: &str, pem: &str) {
    put_secret(client, ns, "member-ca", "Opaque", &[("ca.crt", pem)]).await;
}

async fn put_client(client: &kube::Client, ns: &str, leaf: &Leaf) {
    put_secret(
        client,
        ns,
        "balancer-client",
        "kubernetes.io/tls",
        &[("tls.crt", &leaf.chain), ("tls.key", &leaf.key)],
    )
    .await;
}

fn tls_ready(bc: &BalancerCluster) -> Option<(String, String)> {
    bc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "TLSReady")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// Asks through the balancer until an answer shows `serial` as the client certificate the
/// member got (each Secret update reaches the data plane a moment after it is written);
/// returns the answer and how long that took.
async fn until_client_serial(balancer: &Balancer, serial: &str) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = wait::until_some(
        &format!("client certificate {serial} presented"),
        wait::WAIT,
        || async {
            let answer = get_at(balancer.addr(), "/").await;
            (answer.status == StatusCode::OK && field(&answer, "x-client-serial") == serial)
                .then_some(answer)
        },
    )
    .await;
    (answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_ca_and_client_certificate_come_from_secrets_and_updates_serve_new_connections() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "upstream-tls").await;
    let clusters = Api::<BalancerCluster>::namespaced(client.clone(), &ns);
    let (server_ca, client_ca) = (ca("Member CA 1"), ca("Client CA"));
    let member = TlsMember::start(
        "secure",
        &leaf(&server_ca, &["backend.internal"], 0x11),
        Some(&client_ca),
    )
    .await;
    apply_cluster(
        &client,
        &ns,
        json!({
            "members": [{"url": member.url()}],
            "upstreamTLS": {
                "caSecret": "member-ca",
                "serverName": "backend.internal",
                "clientCertSecret": "balancer-client",
            },
        }),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "upstream-tls-0")).await;

    // Named before they exist: said so, and the member is never reached (not with other
    // roots, not in plain HTTP).
    wait::until_object(clusters.clone(), "web", "TLSReady=False", |bc| {
        tls_ready(bc).is_some_and(|(s, r)| s == "False" && r == "CertificateNotFound")
    })
    .await;
    let answer = get_at(balancer.addr(), "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(
        (member.handshakes(), member.refused(), member.requests()),
        (0, 0, 0)
    );

    // Created: the member is verified against the Secret's CA, for serverName, and gets the
    // Secret's client certificate.
    put_ca(&client, &ns, &server_ca.pem).await;
    let first = leaf(&client_ca, &["balancer.internal"], 0x31);
    put_client(&client, &ns, &first).await;
    let (answer, _) = until_client_serial(&balancer, "31").await;
    assert_eq!(answer.body, "secure");
    assert_eq!(field(&answer, "x-sni"), "backend.internal");
    wait::until_object(clusters.clone(), "web", "TLSReady=True", |bc| {
        tls_ready(bc).is_some_and(|(s, _)| s == "True")
    })
    .await;

    // The client certificate Secret is renewed: the next new connection presents the new one.
    let second = leaf(&client_ca, &["balancer.internal"], 0x32);
    let before = field(&answer, "x-conn");
    put_client(&client, &ns, &second).await;
    let (answer, took) = until_client_serial(&balancer, "32").await;
    eprintln!("the renewed client certificate Secret was presented after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_ne!(field(&answer, "x-conn"), before, "a new connection");

    // The member's certificate is renewed by another CA, and the CA Secret follows: the next
    // new connection is verified with it.
    let next_ca = ca("Member CA 2");
    member.serve(&leaf(&next_ca, &["backend.internal"], 0x12));
    let before = field(&answer, "x-conn");
    put_ca(&client, &ns, &next_ca.pem).await;
    let started = Instant::now();
    // Until then the connection made before serves on (its member was verified when it was
    // made); a new one made with the old CA would fail.
    let answer = wait::until_some("the new CA trusted", wait::WAIT, || async {
        let answer = get_at(balancer.addr(), "/").await;
        (answer.status == StatusCode::OK && field(&answer, "x-conn") != before).then_some(answer)
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(field(&answer, "x-client-serial"), "32");
}

/// A Service's endpoints with `upstreamTLS`: pods reached over TLS at their pod IPs, verified
/// for `serverName` (the Service's DNS name, which their certificates carry, not the pod IPs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_endpoints_are_reached_over_tls_verified_for_server_name() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "upstream-tls-svc").await;
    web_service(&client, &ns).await;
    let server_ca = ca("Member CA");
    let dns = format!("web.{ns}.svc");
    let mut members = Vec::new();
    for (n, name) in ["tls-a", "tls-b"].into_iter().enumerate() {
        let ip = netns::next_pod_ip();
        let listener = tokio::net::TcpListener::from_std(netns::bind_local(ip).expect("bind"))
            .expect("a tokio listener");
        let member = TlsMember::serve_on(
            listener,
            name,
            &leaf(&server_ca, &[&dns], 0x20 + n as u8),
            None,
        );
        FakePod::new(&ns, name, ip)
            .label("app", "web")
            .port("http", member.addr.port())
            .create(&client)
            .await;
        members.push(member);
    }
    put_ca(&client, &ns, &server_ca.pem).await;
    apply_cluster(
        &client,
        &ns,
        json!({
            "service": {"name": "web", "port": "http"},
            "upstreamTLS": {"caSecret": "member-ca", "serverName": dns},
        }),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "upstream-tls-svc-0")).await;
    balancer
        .wait_members_shown(&ns, &["tls-a:https", "tls-b:https"], |m| {
            let scheme = m.url.split(':').next().unwrap_or_default().to_owned();
            format!("{}:{scheme}", m.pod.clone().unwrap_or_default())
        })
        .await;
    // The CA Secret reaches the data plane with the cluster, or a moment after it: the first
    // answer is waited for, the next ones are not.
    let first = wait::until_some("an answer over TLS", wait::WAIT, || async {
        let answer = get_at(balancer.addr(), "/").await;
        (answer.status == StatusCode::OK).then_some(answer)
    })
    .await;
    let mut answers = vec![first];
    for _ in 0..3 {
        answers.push(get_at(balancer.addr(), "/").await);
    }
    let mut seen = Vec::new();
    for answer in answers {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(field(&answer, "x-sni"), dns);
        assert_eq!(field(&answer, "x-alpn"), "http/1.1");
        seen.push(answer.body);
    }
    seen.sort();
    assert_eq!(seen, ["tls-a", "tls-a", "tls-b", "tls-b"]);
    assert_eq!(
        [members[0].handshakes(), members[1].handshakes()],
        [1, 1],
        "one kept-alive connection each"
    );
}
