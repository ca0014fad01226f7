//! Security of the binary as deployed: the admin server's bearer token (`--admin-token-file`),
//! which it must have on an address other than loopback, and no open proxy for hosts no route
//! serves. Real binary, real clients, 127.0.0.1.

use hyper::StatusCode;

use crate::support::backend::Backend;
use crate::support::client::{client, send};
use crate::support::process::Process;
use crate::support::proxy::{Proxy, cluster_yaml};
use crate::support::raw;
use crate::support::wait;

const TOKEN: &str = "k7Qx2p9Lw4Zr8Vn3Tb6Hs1Jd";

/// Starts the binary in standalone mode on a file serving `member`, with `extra` flags.
fn standalone(dir: &tempfile::TempDir, member: &Backend, extra: &[&str]) -> Process {
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, cluster_yaml(&[member.url()], "")).expect("write");
    let file = file.to_str().expect("a UTF-8 path").to_owned();
    let mut args = vec![
        "standalone",
        "-f",
        &file,
        "--listen=127.0.0.1:0",
        "--workers=1",
    ];
    args.extend_from_slice(extra);
    Process::start("kube-balancer", &args, &[])
}

/// With a token, everything but `/healthz` and `/readyz` answers 401 (with
/// `WWW-Authenticate: Bearer`) without it or with a wrong one, and as usual with it; the
/// admin server stays read-only with the token too.
#[tokio::test]
async fn the_admin_token_is_asked_for_everywhere_but_the_probes() {
    let member = Backend::start("a").await;
    let dir = tempfile::tempdir().expect("a folder");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
    let token_flag = format!("--admin-token-file={}", token_file.display());
    let proxy = standalone(&dir, &member, &["--admin=127.0.0.1:0", &token_flag]);
    let admin = proxy.address_in("admin server listening").await;
    let client = client();
    let url = |path: &str| format!("http://{admin}{path}");
    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");

    for probe in ["/healthz", "/readyz"] {
        wait::until_some(probe, wait::TIMEOUT, || async {
            let answer = send(&client, "GET", &url(probe), &[], "").await;
            (answer.status == StatusCode::OK).then_some(())
        })
        .await;
    }
    for path in [
        "/metrics",
        "/balancer-manager",
        "/balancer-manager?format=json",
        "/",
        "/nothing-here",
    ] {
        for headers in [vec![], vec![("authorization", wrong.as_str())]] {
            let answer = send(&client, "GET", &url(path), &headers, "").await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{path} {headers:?}"
            );
            assert_eq!(
                answer.headers.get("www-authenticate").map(|v| v.as_bytes()),
                Some(&b"Bearer realm=\"kube-balancer admin\""[..]),
                "{path}"
            );
            assert!(!answer.body.contains("default/web"), "{}", answer.body);
        }
    }
    // A change asked for without the token is refused before anything else.
    let answer = send(&client, "POST", &url("/balancer-manager"), &[], "w=x").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let with = [("authorization", bearer.as_str())];
    let metrics = send(&client, "GET", &url("/metrics"), &with, "").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.body.contains("kube_balancer_"), "{}", metrics.body);
    let view = send(
        &client,
        "GET",
        &url("/balancer-manager?format=json"),
        &with,
        "",
    )
    .await;
    assert_eq!(view.status, StatusCode::OK);
    assert!(view.body.contains(&member.url()), "{}", view.body);
    let lower = format!("bearer {TOKEN}");
    let answer = send(
        &client,
        "GET",
        &url("/metrics"),
        &[("authorization", &lower)],
        "",
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the scheme is case-insensitive"
    );
    // Read-only, token or not.
    let answer = send(&client, "POST", &url("/balancer-manager"), &with, "w=x").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        answer.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"GET, HEAD"[..])
    );
}

/// An admin server on an address other than loopback without a token does not start: it would
/// show every balancer and member to whoever reaches it. A token too short is refused too.
#[tokio::test]
async fn the_admin_server_off_loopback_without_a_token_refuses_to_start() {
    let member = Backend::start("a").await;
    let dir = tempfile::tempdir().expect("a folder");
    // Refused before anything is bound.
    let mut proxy = standalone(&dir, &member, &["--admin=0.0.0.0:0"]);
    assert!(!proxy.exit_status().await.success());
    let log = proxy.all_stderr();
    assert!(log.contains("not a loopback address"), "{log}");
    assert!(log.contains("--admin-token-file"), "{log}");

    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").expect("write");
    let flag = format!("--admin-token-file={}", short.display());
    let mut proxy = standalone(&dir, &member, &["--admin=127.0.0.1:0", &flag]);
    assert!(!proxy.exit_status().await.success());
    let log = proxy.all_stderr();
    assert!(log.contains("holds 3 characters"), "{log}");
}

/// Not an open proxy: an absolute-form request for a host no route serves is answered 404 by
/// the proxy and reaches no member (RFC 9112 3.2.2: the target's authority is the host).
#[tokio::test]
async fn an_absolute_form_request_for_a_host_no_route_serves_gets_404() {
    let member = Backend::start("a").await;
    let proxy = Proxy::start(&format!(
        "{}  routes: [{{host: shop.example.com}}]\n",
        cluster_yaml(&[member.url()], "")
    ));
    for request in [
        &b"GET http://elsewhere.example/x HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n"[..],
        // The Host field names a served host; the target's authority wins.
        b"GET http://elsewhere.example/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
    ] {
        let mut conn = raw::Client::connect(proxy.addr).await;
        conn.write(request).await;
        let answer = conn.answer(false).await;
        assert_eq!(answer.status, 404, "{}", String::from_utf8_lossy(request));
    }
    assert_eq!(member.hits(), 0);
    // The served host, in absolute form, is served.
    let mut conn = raw::Client::connect(proxy.addr).await;
    conn.write(b"GET http://shop.example.com/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        .await;
    assert_eq!(conn.answer(false).await.status, 200);
    assert_eq!(member.hits(), 1);
}
