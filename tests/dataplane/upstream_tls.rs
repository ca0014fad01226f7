//! `https://` members through the real data plane in standalone mode: real TLS servers as
//! members (a rustls server in the test, which counts its handshakes and requests and says
//! what each request came with; nginx for OpenSSL's side; grpc-go over TLS for gRPC), with
//! certificates made with rcgen and CA and client certificate files rotated on disk.
//! Loopback only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use kube_balancer::plane::DataPlane;

use crate::support::client::{Answer, Client, client, send};
use crate::support::process::Process;
use crate::support::proxy::{Proxy, rows};
use crate::support::tls::{Ca, Leaf, TlsMember, ca, field, leaf, replace};
use crate::support::wait;

// ---- the data plane ----------------------------------------------------------------------

/// The data plane in standalone mode on a file of ours, in a folder that also holds the
/// certificate files the file names.
struct Site {
    _folder: tempfile::TempDir,
    dir: PathBuf,
    plane: Arc<DataPlane>,
    proxy: Proxy,
    client: Client,
}

impl Site {
    /// Writes `files` (name, content) and `balancer.yaml` (`yaml`) into a new folder and serves
    /// it.
    async fn start(yaml: &str, files: &[(&str, &str)]) -> Site {
        let folder = tempfile::tempdir().expect("a folder");
        let dir = folder.path().to_path_buf();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let file = dir.join("balancer.yaml");
        std::fs::write(&file, yaml).expect("write");
        let plane = DataPlane::new();
        kube_balancer::standalone::run(Some(file), plane.clone())
            .await
            .expect("the file loads");
        let proxy = Proxy::serve(plane.clone(), |_| {});
        Site {
            _folder: folder,
            dir,
            plane,
            proxy,
            client: client(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    async fn get(&self, host: &str, path: &str) -> Answer {
        let url = format!("http://{}{path}", self.addr());
        send(&self.client, "GET", &url, &[("host", host)], "").await
    }

    async fn post(&self, host: &str, path: &str, body: &[u8]) -> Answer {
        let url = format!("http://{}{path}", self.addr());
        send(&self.client, "POST", &url, &[("host", host)], body).await
    }

    /// The client configuration the plane serves for cluster `name` now.
    fn upstream(&self, name: &str) -> Option<Arc<kube_balancer::tls::Upstream>> {
        self.plane
            .snapshot_full()
            .cluster("default", name)
            .and_then(|c| c.upstream_tls.clone())
    }
}

/// A BalancerCluster `name` routed by `host` (every request when empty), with `spec` lines
/// (the spec's body, indented by two spaces).
fn cluster(name: &str, host: &str, spec: &str) -> String {
    let routes = match host {
        "" => String::new(),
        host => format!("  routes: [{{host: {host}}}]\n"),
    };
    format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: {name}}}\n\
         spec:\n{routes}{spec}"
    )
}

const HOST: &str = "shop.test";

// ---- the tests ------------------------------------------------------------------------------

/// Requests with and without a body reach an `https://` member over TLS (ALPN http/1.1),
/// verified against the CA file, all of them on one kept-alive member connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_member_gets_every_request_over_one_verified_connection() {
    let ca = ca("Member CA");
    let member = TlsMember::start("tls-a", &leaf(&ca, &["127.0.0.1"], 0x11), None).await;
    let yaml = cluster(
        "web",
        HOST,
        &format!(
            "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n",
            member.url()
        ),
    );
    let site = Site::start(&yaml, &[("ca.pem", &ca.pem)]).await;

    for n in 0..30 {
        let answer = site.get(HOST, &format!("/get/{n}")).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "tls-a"),
            "{answer:?}"
        );
        assert_eq!(field(&answer, "x-proto"), "HTTP/1.1");
        assert_eq!(field(&answer, "x-alpn"), "http/1.1");
        // No SNI for an IP address (RFC 6066); the certificate was checked for the address.
        assert_eq!(field(&answer, "x-sni"), "none");
    }
    for _ in 0..5 {
        let answer = site.post(HOST, "/upload", &[7u8; 1000]).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "tls-a got 1000 bytes")
        );
        assert_eq!(field(&answer, "x-conn"), "1");
    }
    assert_eq!(
        (member.handshakes(), member.refused(), member.requests()),
        (1, 0, 35)
    );
    let row = &rows(&site.plane)[0];
    assert_eq!((row.state.as_str(), row.elected), ("Ok", 35));
}

/// A TLS connection never serves a plain member at the same address, nor a cluster with
/// another client configuration: each request's client certificate is its own cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_connections_and_two_clusters_configurations_never_mix() {
    let server_ca = ca("Member CA");
    let client_ca = ca("Client CA");
    let member = TlsMember::start(
        "tls-a",
        &leaf(&server_ca, &["127.0.0.1"], 0x11),
        Some(&client_ca),
    )
    .await;
    let (x, y) = (
        leaf(&client_ca, &["x.internal"], 0x2a),
        leaf(&client_ca, &["y.internal"], 0x2b),
    );
    let plain = format!("http://{}", member.addr);
    let yaml = [
        cluster(
            "x",
            "x.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem, clientCertFile: x.crt, clientKeyFile: x.key}}\n",
                member.url()
            ),
        ),
        cluster(
            "y",
            "y.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem, clientCertFile: y.crt, clientKeyFile: y.key}}\n",
                member.url()
            ),
        ),
        cluster("plain", "plain.test", &format!("  members: [{{url: '{plain}'}}]\n")),
    ]
    .join("---\n");
    let site = Site::start(
        &yaml,
        &[
            ("ca.pem", &server_ca.pem),
            ("x.crt", &x.chain),
            ("x.key", &x.key),
            ("y.crt", &y.chain),
            ("y.key", &y.key),
        ],
    )
    .await;

    let x1 = site.get("x.test", "/").await;
    assert_eq!(x1.status, 200, "{x1:?}");
    assert_eq!(field(&x1, "x-client-serial"), "2a");
    // A pooled TLS connection to this address exists now: the plain member must not get it.
    let plain = site.get("plain.test", "/").await;
    assert_eq!(plain.status, StatusCode::BAD_GATEWAY, "{plain:?}");
    // Nor cluster y, whose client certificate is another.
    let y1 = site.get("y.test", "/").await;
    assert_eq!(y1.status, 200, "{y1:?}");
    assert_eq!(field(&y1, "x-client-serial"), "2b");
    // Each reuses its own.
    let x2 = site.get("x.test", "/").await;
    let y2 = site.get("y.test", "/").await;
    assert_eq!(
        [x2.status, y2.status],
        [StatusCode::OK, StatusCode::OK],
        "{x2:?} {y2:?}"
    );
    assert_eq!(
        [field(&x2, "x-conn"), field(&y2, "x-conn")],
        [field(&x1, "x-conn"), field(&y1, "x-conn")]
    );
    assert_eq!(
        [field(&x2, "x-client-serial"), field(&y2, "x-client-serial")],
        ["2a", "2b"]
    );
    // Two handshakes (x's and y's), and the plain request's bytes refused as no handshake.
    assert_eq!(
        (member.handshakes(), member.refused(), member.requests()),
        (2, 1, 4)
    );
}

/// A member whose certificate the CA file did not sign is refused before any request: 502, the
/// member in error with the reason, nothing reached it; as is a member whose certificate does
/// not name what is checked, until `serverName` names what it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_name_is_refused_before_a_request_and_server_name_overrides() {
    let right = ca("Member CA");
    let wrong = ca("Other CA");
    let by_ip = TlsMember::start("by-ip", &leaf(&right, &["127.0.0.1"], 0x11), None).await;
    let by_name =
        TlsMember::start("by-name", &leaf(&right, &["backend.internal"], 0x12), None).await;
    let yaml = [
        cluster(
            "wrong",
            "wrong.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: wrong.pem}}\n",
                by_ip.url()
            ),
        ),
        cluster(
            "unnamed",
            "unnamed.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: right.pem}}\n",
                by_name.url()
            ),
        ),
        cluster(
            "named",
            "named.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: right.pem, serverName: backend.internal}}\n",
                by_name.url()
            ),
        ),
    ]
    .join("---\n");
    let site = Site::start(
        &yaml,
        &[("wrong.pem", &wrong.pem), ("right.pem", &right.pem)],
    )
    .await;

    let answer = site.get("wrong.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(
        (by_ip.handshakes(), by_ip.requests()),
        (0, 0),
        "nothing reached the member"
    );
    wait::until("the refused handshake counted", wait::WAIT, || {
        by_ip.refused() == 1
    })
    .await;
    let row = kube_balancer::status::member_rows(
        site.plane
            .snapshot_full()
            .cluster("default", "wrong")
            .expect("served"),
        kube_balancer::clock::now_ms(),
    )
    .remove(0);
    assert_eq!(row.state, "Error");
    let error = row.last_error.unwrap_or_default();
    assert!(
        error.contains("TLS handshake") && error.contains("UnknownIssuer"),
        "{error}"
    );

    let answer = site.get("unnamed.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    let answer = site.get("named.test", "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "by-name")
    );
    assert_eq!(field(&answer, "x-sni"), "backend.internal");
    assert_eq!((by_name.handshakes(), by_name.requests()), (1, 1));
}

/// A member that asks for a client certificate gets the configured one (and its requests go
/// through), and refuses a cluster that has none (502, and no request reaches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_the_client_certificate_and_fails_without() {
    let server_ca = ca("Member CA");
    let client_ca = ca("Client CA");
    let member = TlsMember::start(
        "mtls",
        &leaf(&server_ca, &["127.0.0.1"], 0x11),
        Some(&client_ca),
    )
    .await;
    let client_leaf = leaf(&client_ca, &["balancer.internal"], 0x42);
    let yaml = [
        cluster(
            "with",
            "with.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem, clientCertFile: client.crt, clientKeyFile: client.key}}\n",
                member.url()
            ),
        ),
        cluster(
            "without",
            "without.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n",
                member.url()
            ),
        ),
    ]
    .join("---\n");
    let site = Site::start(
        &yaml,
        &[
            ("ca.pem", &server_ca.pem),
            ("client.crt", &client_leaf.chain),
            ("client.key", &client_leaf.key),
        ],
    )
    .await;

    for _ in 0..3 {
        let answer = site.get("with.test", "/").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "mtls")
        );
        assert_eq!(field(&answer, "x-client-serial"), "42");
    }
    let answer = site.get("without.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    let row = kube_balancer::status::member_rows(
        site.plane
            .snapshot_full()
            .cluster("default", "without")
            .expect("served"),
        kube_balancer::clock::now_ms(),
    )
    .remove(0);
    // TLS 1.3: the member refuses after the handshake, with an alert that names why.
    let error = row.last_error.unwrap_or_default();
    assert!(error.contains("CertificateRequired"), "{error}");
    wait::until("the refusal counted", wait::WAIT, || member.refused() == 1).await;
    assert_eq!((member.handshakes(), member.requests()), (1, 3));
}

/// `insecureSkipVerify: true` reaches a member whose certificate nobody trusts and which names
/// something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_reaches_an_unverifiable_member() {
    let nobody = ca("Nobody's CA");
    let member = TlsMember::start(
        "anything",
        &leaf(&nobody, &["elsewhere.example"], 0x11),
        None,
    )
    .await;
    let yaml = cluster(
        "web",
        HOST,
        &format!(
            "  members: [{{url: '{}'}}]\n  upstreamTLS: {{insecureSkipVerify: true}}\n",
            member.url()
        ),
    );
    let site = Site::start(&yaml, &[]).await;
    let answer = site.get(HOST, "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "anything")
    );
    assert_eq!((member.handshakes(), member.requests()), (1, 1));
}

/// `protocol: h2`: requests reach the member as HTTP/2 streams over TLS (ALPN h2), many at
/// once on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_members_get_http2_streams_over_tls_on_one_connection() {
    let ca = ca("Member CA");
    let member = TlsMember::start("h2", &leaf(&ca, &["127.0.0.1"], 0x11), None).await;
    let yaml = cluster(
        "web",
        HOST,
        &format!(
            "  protocol: h2\n  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n",
            member.url()
        ),
    );
    let site = Site::start(&yaml, &[("ca.pem", &ca.pem)]).await;
    let answers = futures_util::future::join_all((0..20).map(|n| {
        let url = format!("http://{}/{n}", site.addr());
        async move { send(&client(), "GET", &url, &[("host", HOST)], "").await }
    }))
    .await;
    for answer in &answers {
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "h2"),
            "{answer:?}"
        );
        assert_eq!(field(answer, "x-proto"), "HTTP/2.0");
        assert_eq!(field(answer, "x-alpn"), "h2");
    }
    let post = site.post(HOST, "/upload", &[1u8; 5000]).await;
    assert_eq!(post.body, "h2 got 5000 bytes");
    assert_eq!((member.handshakes(), member.requests()), (1, 21));
}

/// gRPC over TLS to a real grpc-go server (which insists on ALPN h2): the four kinds of call
/// through the proxy, with exact message counts, the member's trailer, and a status the member
/// ends a call with (in its trailers) reaching the client, message and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_reach_a_grpc_go_member_over_tls() {
    let ca = ca("Member CA");
    let leaf = leaf(&ca, &["127.0.0.1"], 0x11);
    let folder = tempfile::tempdir().expect("folder");
    let (cert, key) = (
        folder.path().join("peer.crt"),
        folder.path().join("peer.key"),
    );
    std::fs::write(&cert, &leaf.chain).expect("write");
    std::fs::write(&key, &leaf.key).expect("write");
    let peer = super::grpc::Server::start_with(
        "grpc-tls",
        &[
            "-cert",
            cert.to_str().expect("UTF-8"),
            "-key",
            key.to_str().expect("UTF-8"),
        ],
    );
    let yaml = cluster(
        "web",
        "",
        &format!(
            "  protocol: h2\n  members: [{{url: 'https://{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n",
            peer.addr
        ),
    );
    let site = Site::start(&yaml, &[("ca.pem", &ca.pem)]).await;
    let to = site.addr();
    let calls = tokio::task::spawn_blocking(move || {
        use super::grpc::call;
        let unary: Vec<_> = (0..3)
            .map(|_| call(to, &["-kind", "unary", "-size", "100"]))
            .collect();
        let server = call(to, &["-kind", "server", "-count", "25", "-size", "1000"]);
        let client = call(to, &["-kind", "client", "-count", "17", "-size", "300"]);
        let bidi = call(to, &["-kind", "bidi", "-count", "12", "-size", "50"]);
        let refused = call(
            to,
            &["-kind", "unary", "-code", "5", "-message", "no such thing"],
        );
        (unary, server, client, bidi, refused)
    })
    .await
    .expect("calls");
    let (unary, server, client, bidi, refused) = calls;
    for call in &unary {
        assert_eq!((call.code, call.messages), (0, 1), "{call:?}");
        assert_eq!(call.backend, "grpc-tls");
        assert_eq!(call.trailer, "grpc-tls", "the trailer came from the member");
    }
    assert_eq!((server.code, server.messages), (0, 25), "{server:?}");
    assert_eq!((client.code, client.messages), (0, 1), "{client:?}");
    assert!(
        client.lines.contains(&"aggregated 5100".to_owned()),
        "17 messages of 300 bytes reached the member: {client:?}"
    );
    assert_eq!((bidi.code, bidi.messages), (0, 12), "{bidi:?}");
    assert_eq!(
        (refused.code, refused.message.as_str()),
        (5, "no such thing")
    );
    // The member writes its lines before it answers; they are read on a thread of their own.
    wait::until("the member's calls counted", wait::WAIT, || {
        peer.events("event UnaryCall ok") == 3
            && peer.events("event StreamingOutputCall ok") == 1
            && peer.events("event StreamingInputCall ok") == 1
            && peer.events("event FullDuplexCall ok") == 1
    })
    .await;
}

/// Standalone mode watches the CA and client certificate files: a rotated one is used by the
/// next new connection within 2 s, without a restart, while the configuration before keeps
/// serving until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_ca_and_client_certificate_files_are_picked_up() {
    let (old_ca, new_ca) = (ca("Member CA 1"), ca("Member CA 2"));
    let client_ca = ca("Client CA");
    let member = TlsMember::start(
        "rotating",
        &leaf(&old_ca, &["127.0.0.1"], 0x11),
        Some(&client_ca),
    )
    .await;
    let first = leaf(&client_ca, &["balancer.internal"], 0x31);
    let yaml = cluster(
        "web",
        HOST,
        &format!(
            "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem, clientCertFile: client.crt, clientKeyFile: client.key}}\n",
            member.url()
        ),
    );
    let site = Site::start(
        &yaml,
        &[
            ("ca.pem", &old_ca.pem),
            ("client.crt", &first.chain),
            ("client.key", &first.key),
        ],
    )
    .await;
    let answer = site.get(HOST, "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(field(&answer, "x-client-serial"), "31");

    // The member renews its certificate with another CA; the CA file follows.
    member.serve(&leaf(&new_ca, &["127.0.0.1"], 0x12));
    let before = site.upstream("web").expect("configured");
    let written = Instant::now();
    replace(&site.dir.join("ca.pem"), &new_ca.pem);
    wait::until("the new CA file served", wait::WAIT, || {
        site.upstream("web")
            .is_some_and(|now| !Arc::ptr_eq(&now, &before))
    })
    .await;
    let took = written.elapsed();
    assert!(took < Duration::from_secs(2), "the CA file took {took:?}");
    let answer = site.get(HOST, "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        field(&answer, "x-conn"),
        "2",
        "a new connection, verified with the new CA"
    );

    // The client certificate is renewed: key first, then the certificate, as a renewal tool
    // may write them; the pair is used once it matches again.
    let second = leaf(&client_ca, &["balancer.internal"], 0x32);
    let before = site.upstream("web").expect("configured");
    let written = Instant::now();
    replace(&site.dir.join("client.key"), &second.key);
    replace(&site.dir.join("client.crt"), &second.chain);
    let seen = wait::until_some(
        "the new client certificate presented",
        wait::WAIT,
        || async {
            let now = site.upstream("web")?;
            if Arc::ptr_eq(&now, &before) {
                return None;
            }
            let answer = site.get(HOST, "/").await;
            (field(&answer, "x-client-serial") == "32").then_some(answer)
        },
    )
    .await;
    assert!(
        written.elapsed() < Duration::from_secs(2),
        "the client certificate took {:?}",
        written.elapsed()
    );
    assert_eq!(seen.status, 200);
    // Every request was answered; none failed on the way.
    assert_eq!(member.requests(), rows(&site.plane)[0].elected as usize);
}

/// OpenSSL's side: nginx (from Debian) as an HTTPS member asking for a client certificate,
/// in HTTP/1.1 and in HTTP/2 (ALPN h2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_as_an_https_member_with_mutual_tls_in_http1_and_h2() {
    let server_ca = ca("Member CA");
    let client_ca = ca("Client CA");
    let server = leaf(&server_ca, &["backend.internal"], 0x11);
    let client_leaf = leaf(&client_ca, &["balancer.internal"], 0x42);
    let nginx = Nginx::start(&server, &client_ca);
    let spec = |protocol: &str, client: bool| {
        let client = if client {
            ", clientCertFile: client.crt, clientKeyFile: client.key"
        } else {
            ""
        };
        format!(
            "  protocol: {protocol}\n  members: [{{url: 'https://{}'}}]\n  upstreamTLS: {{caFile: ca.pem, serverName: backend.internal{client}}}\n",
            nginx.addr
        )
    };
    let yaml = [
        cluster("h1", "h1.test", &spec("http1", true)),
        cluster("h2", "h2.test", &spec("h2", true)),
        cluster("none", "none.test", &spec("http1", false)),
    ]
    .join("---\n");
    let site = Site::start(
        &yaml,
        &[
            ("ca.pem", &server_ca.pem),
            ("client.crt", &client_leaf.chain),
            ("client.key", &client_leaf.key),
        ],
    )
    .await;
    for (host, protocol) in [("h1.test", "HTTP/1.1"), ("h2.test", "HTTP/2.0")] {
        for _ in 0..3 {
            let answer = site.get(host, "/who").await;
            assert_eq!(answer.status, 200, "{host}: {answer:?}");
            assert_eq!(answer.body, format!("{protocol} 42 backend.internal\n"));
        }
    }
    // nginx answers a client without a certificate 400 itself ("No required SSL certificate
    // was sent"), as it does for browsers.
    let answer = site.get("none.test", "/who").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
}

/// nginx serving HTTPS (HTTP/1.1 and HTTP/2) with one worker, asking for a client certificate;
/// `/who` answers `PROTOCOL CLIENT-SERIAL SNI`. Stopped when dropped.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
    _folder: tempfile::TempDir,
}

impl Nginx {
    fn start(server: &Leaf, client_ca: &Ca) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is installed (scripts/test-deps.sh installs Debian's)");
        let folder = tempfile::tempdir().expect("folder");
        let dir = folder.path();
        std::fs::write(dir.join("server.crt"), &server.chain).expect("write");
        std::fs::write(dir.join("server.key"), &server.key).expect("write");
        std::fs::write(dir.join("client-ca.pem"), &client_ca.pem).expect("write");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen 127.0.0.1:{port} ssl http2;\n    \
             ssl_certificate {d}/server.crt;\n    ssl_certificate_key {d}/server.key;\n    \
             ssl_client_certificate {d}/client-ca.pem;\n    ssl_verify_client on;\n    \
             location /who {{ default_type text/plain; return 200 \"$server_protocol $ssl_client_serial $ssl_server_name\\n\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write");
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < wait::WAIT,
                "nginx did not listen on {addr}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Nginx {
            addr,
            child,
            _folder: folder,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary as an operator runs it: a member whose certificate the CA file did not sign
/// gets the client a 502 and a warning naming the cluster, the member and the reason; it counts
/// against the member (in error, so the next requests go to the other member, whose
/// certificate is good, without trying it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_is_logged_with_the_member_and_the_reason() {
    let right = ca("Member CA");
    let wrong = ca("Other CA");
    let bad = TlsMember::start("bad", &leaf(&wrong, &["127.0.0.1"], 0x11), None).await;
    let good = TlsMember::start("good", &leaf(&right, &["127.0.0.1"], 0x12), None).await;
    let folder = tempfile::tempdir().expect("folder");
    std::fs::write(folder.path().join("ca.pem"), &right.pem).expect("write");
    let yaml = [
        cluster(
            "alone",
            "alone.test",
            &format!(
                "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n",
                bad.url()
            ),
        ),
        cluster(
            "pair",
            "pair.test",
            &format!(
                "  lbMethod: byrequests\n  members: [{{url: '{}'}}, {{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n",
                bad.url(),
                good.url()
            ),
        ),
    ]
    .join("---\n");
    let file = folder.path().join("balancer.yaml");
    std::fs::write(&file, yaml).expect("write");
    let balancer = Process::start(
        "kube-balancer",
        &[
            "standalone",
            "-f",
            file.to_str().expect("a UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        &[],
    );
    let proxy = balancer.address_in("data plane listening").await;
    let client = client();
    let url = format!("http://{proxy}/");

    let answer = send(&client, "GET", &url, &[("host", "alone.test")], "").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    let line = balancer.line_with("502 Bad Gateway").await;
    for needed in [
        "default/alone",
        &bad.addr.to_string(),
        "TLS handshake",
        "UnknownIssuer",
    ] {
        assert!(line.contains(needed), "{needed:?} in {line:?}");
    }
    assert_eq!((bad.handshakes(), bad.requests()), (0, 0));

    // In the pair, the bad member is tried first (byrequests, first in the list), fails its
    // handshake, and the request goes to the good one; from then on the bad one is in error
    // and not tried.
    for n in 0..4 {
        let answer = send(&client, "GET", &url, &[("host", "pair.test")], "").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "good"),
            "request {n}: {answer:?}"
        );
    }
    assert_eq!((good.requests(), bad.requests()), (4, 0));
    wait::until("both refused handshakes counted", wait::WAIT, || {
        bad.refused() == 2
    })
    .await;
}

/// The state and last error of member `index` of cluster `name`.
fn member_state(site: &Site, name: &str, index: usize) -> (String, String) {
    let row = kube_balancer::status::member_rows(
        site.plane
            .snapshot_full()
            .cluster("default", name)
            .expect("served"),
        kube_balancer::clock::now_ms(),
    )
    .remove(index);
    (row.state, row.last_error.unwrap_or_default())
}

/// Active health checks of `https://` members go over TLS, verified as requests are: a member
/// with a good certificate passes (its checks arrive as HTTPS requests), one whose certificate
/// the CA did not sign is taken out, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_of_https_members_go_over_verified_tls() {
    let right = ca("Member CA");
    let wrong = ca("Other CA");
    let good = TlsMember::start("good", &leaf(&right, &["127.0.0.1"], 0x11), None).await;
    let bad = TlsMember::start("bad", &leaf(&wrong, &["127.0.0.1"], 0x12), None).await;
    let yaml = cluster(
        "web",
        HOST,
        &format!(
            "  members: [{{url: '{}'}}, {{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n  healthCheck: {{path: /health, interval: 100ms}}\n",
            good.url(),
            bad.url()
        ),
    );
    let site = Site::start(&yaml, &[("ca.pem", &right.pem)]).await;
    wait::until("the bad member taken out", wait::WAIT, || {
        member_state(&site, "web", 1).0 == "HealthCheckFailed"
    })
    .await;
    let (_, error) = member_state(&site, "web", 1);
    assert!(
        error.contains("health check: TLS handshake") && error.contains("UnknownIssuer"),
        "{error}"
    );
    wait::until("three checks of the good member", wait::WAIT, || {
        good.requests() >= 3
    })
    .await;
    assert_eq!(member_state(&site, "web", 0).0, "Ok");
    assert_eq!(bad.requests(), 0, "nothing reached the bad member");
    for _ in 0..4 {
        let answer = site.get(HOST, "/").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "good")
        );
    }
}

/// `healthCheck.method: GRPC` to a grpc-go member over TLS (h2, ALPN `h2`): NOT_SERVING takes
/// it out, SERVING brings it back (a failed handshake would take it out for good, saying so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_reach_a_grpc_go_member_over_tls() {
    let ca = ca("Member CA");
    let leaf = leaf(&ca, &["127.0.0.1"], 0x11);
    let folder = tempfile::tempdir().expect("folder");
    let (cert, key) = (
        folder.path().join("peer.crt"),
        folder.path().join("peer.key"),
    );
    std::fs::write(&cert, &leaf.chain).expect("write");
    std::fs::write(&key, &leaf.key).expect("write");
    let mut peer = super::grpc::Server::start_with(
        "grpc-tls",
        &[
            "-cert",
            cert.to_str().expect("UTF-8"),
            "-key",
            key.to_str().expect("UTF-8"),
        ],
    );
    let service = "grpc.testing.TestService";
    peer.set_health(service, "SERVING");
    let yaml = cluster(
        "web",
        "",
        &format!(
            "  protocol: h2\n  members: [{{url: 'https://{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n  healthCheck: {{method: GRPC, grpcService: {service}, interval: 100ms, timeout: 1s}}\n",
            peer.addr
        ),
    );
    let site = Site::start(&yaml, &[("ca.pem", &ca.pem)]).await;
    // Its answer (not a failed handshake) takes it out: the check reached it over TLS.
    peer.set_health(service, "NOT_SERVING");
    wait::until("taken out", wait::WAIT, || {
        member_state(&site, "web", 0).0 == "HealthCheckFailed"
    })
    .await;
    let (_, error) = member_state(&site, "web", 0);
    assert!(error.contains("NOT_SERVING"), "{error}");
    peer.set_health(service, "SERVING");
    wait::until("back", wait::WAIT, || {
        member_state(&site, "web", 0).0 == "Ok"
    })
    .await;
}

/// A reconnection resumes the TLS session (an abbreviated handshake): the member closed the
/// first connection after its answer, and the next request's connection is a resumed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_to_a_member_resumes_its_tls_session() {
    let ca = ca("Member CA");
    let member = TlsMember::start("tls-a", &leaf(&ca, &["127.0.0.1"], 0x11), None).await;
    let yaml = cluster(
        "web",
        HOST,
        &format!(
            "  members: [{{url: '{}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n",
            member.url()
        ),
    );
    let site = Site::start(&yaml, &[("ca.pem", &ca.pem)]).await;
    let first = site.get(HOST, "/close").await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(
        (
            field(&first, "x-conn").as_str(),
            field(&first, "x-resumed").as_str()
        ),
        ("1", "no")
    );
    // The member's close reaches the pooled connection a moment after the answer; a request
    // sent on it meanwhile is sent again on a new connection.
    let next = site.get(HOST, "/").await;
    assert_eq!(next.status, StatusCode::OK, "{next:?}");
    assert_eq!(
        (
            field(&next, "x-conn").as_str(),
            field(&next, "x-resumed").as_str()
        ),
        ("2", "yes")
    );
    assert_eq!(member.handshakes(), 2);
}

/// A WebSocket through the proxy to an `https://` member: the Upgrade goes in HTTP/1.1 over a
/// verified TLS connection (wss to the member), and messages go both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_reaches_an_https_member_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let ca = ca("Member CA");
    let served = leaf(&ca, &["127.0.0.1"], 0x11);
    let config = rustls::ServerConfig::builder_with_provider(kube_balancer::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(One(crate::support::tls::certified(&served))));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let echo = tokio::spawn(async move {
        // One connection: the TLS handshake, the WebSocket handshake, then echo.
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("TLS handshake");
        let mut ws = tokio_tungstenite::accept_async(tls)
            .await
            .expect("WebSocket handshake");
        let mut echoed = 0;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() {
                ws.send(message).await.expect("echo");
                echoed += 1;
            }
        }
        echoed
    });
    let yaml = cluster(
        "web",
        "",
        &format!("  members: [{{url: 'https://{addr}'}}]\n  upstreamTLS: {{caFile: ca.pem}}\n"),
    );
    let site = Site::start(&yaml, &[("ca.pem", &ca.pem)]).await;
    let (mut ws, handshake) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", site.addr()))
            .await
            .expect("a WebSocket through the proxy");
    assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
    for n in 0..5 {
        let text = format!("message {n}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let back = ws.next().await.expect("an echo").expect("a message");
        assert_eq!(back, Message::text(text));
    }
    ws.close(None).await.expect("close");
    let echoed = tokio::time::timeout(wait::WAIT, echo)
        .await
        .expect("the member's side ends")
        .expect("join");
    assert_eq!(echoed, 5);
}

/// Serves one certificate.
#[derive(Debug)]
struct One(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for One {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}
