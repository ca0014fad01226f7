//! Sticky sessions through the real data plane, with Apache's semantics: a request carrying a
//! route goes to its member while that member can take it, a draining member takes only such
//! requests, noFailover breaks the session rather than move it, and the balancer can set the
//! cookie itself.

use http::StatusCode;

use crate::support::backend::{Backend, refusing_port};
use crate::support::client::{client, order, send};
use crate::support::proxy::{Proxy, cluster};

fn routed(members: &[(&Backend, &str)], extra: &str) -> String {
    cluster(
        &members
            .iter()
            .map(|(m, route)| format!("url: {}, route: {route}", m.url()))
            .collect::<Vec<_>>(),
        extra,
    )
}

#[tokio::test]
async fn sticky_requests_stay_on_their_member_and_move_only_when_it_is_unusable() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&routed(
        &[(&a, "web1"), (&b, "web2")],
        "stickySession: {cookie: JSESSIONID, param: jsessionid}",
    ));
    let c = client();
    let cookie = [("cookie", "theme=dark; JSESSIONID=5F2A9.web2")];
    for _ in 0..5 {
        assert_eq!(
            send(&c, "GET", &proxy.url("/"), &cookie, "").await.backend,
            "b"
        );
    }
    // The URL parameter is looked at first, the whole value may be the route.
    let by_param = send(&c, "GET", &proxy.url("/cart?jsessionid=web1"), &cookie, "").await;
    assert_eq!(by_param.backend, "a");
    let by_path = send(&c, "GET", &proxy.url("/cart;jsessionid=x.web1"), &[], "").await;
    assert_eq!(by_path.backend, "a");
    // Requests without a route keep byrequests' turns; an unknown route is no route.
    assert_eq!(order(&c, &proxy.url("/"), 4).await, "abab");
    let unknown = send(
        &c,
        "GET",
        &proxy.url("/"),
        &[("cookie", "JSESSIONID=abc.web9")],
        "",
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.backend.as_str()),
        (StatusCode::OK, "a")
    );
    assert_eq!((a.hits(), b.hits()), (5, 7));

    // b goes into error (as after a refused connection): its sessions move to a.
    let web = crate::support::proxy::web(&proxy.plane);
    let now = kube_balancer::clock::now_ms();
    web.balancer.mark_error(1, now, 60_000, "test".into());
    for _ in 0..3 {
        assert_eq!(
            send(&c, "GET", &proxy.url("/"), &cookie, "").await.backend,
            "a"
        );
    }
    assert_eq!(b.hits(), 7);
}

#[tokio::test]
async fn a_session_whose_member_refuses_fails_over_on_the_same_request() {
    let a = Backend::start("a").await;
    let (dead, _reserved) = refusing_port();
    let proxy = Proxy::start(&cluster(
        &[
            format!("url: {}, route: web1", a.url()),
            format!("url: 'http://{dead}', route: web2"),
        ],
        "stickySession: {cookie: JSESSIONID}",
    ));
    let c = client();
    let answer = send(
        &c,
        "GET",
        &proxy.url("/"),
        &[("cookie", "JSESSIONID=s.web2")],
        "",
    )
    .await;
    assert_eq!(
        (answer.status, answer.backend.as_str()),
        (StatusCode::OK, "a")
    );
    assert_eq!(crate::support::proxy::states(&proxy.plane), ["Ok", "Error"]);
}

#[tokio::test]
async fn no_failover_breaks_the_session_with_503_rather_than_move_it() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&routed(
        &[(&a, "web1"), (&b, "web2")],
        "stickySession: {cookie: JSESSIONID}\nfailover: {noFailover: true}",
    ));
    let c = client();
    let web = crate::support::proxy::web(&proxy.plane);
    web.balancer
        .mark_error(1, kube_balancer::clock::now_ms(), 60_000, "test".into());
    let broken = send(
        &c,
        "GET",
        &proxy.url("/"),
        &[("cookie", "JSESSIONID=s.web2")],
        "",
    )
    .await;
    assert_eq!(broken.status, StatusCode::SERVICE_UNAVAILABLE);
    let unknown = send(
        &c,
        "GET",
        &proxy.url("/"),
        &[("cookie", "JSESSIONID=s.web7")],
        "",
    )
    .await;
    assert_eq!(unknown.status, StatusCode::SERVICE_UNAVAILABLE);
    // Without a route the request is balanced as usual.
    assert_eq!(send(&c, "GET", &proxy.url("/"), &[], "").await.backend, "a");
    assert_eq!(
        send(
            &c,
            "GET",
            &proxy.url("/"),
            &[("cookie", "JSESSIONID=s.web1")],
            ""
        )
        .await
        .backend,
        "a"
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_draining_member_gets_only_its_sticky_requests() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let d = Backend::start("d").await;
    let proxy = Proxy::start(&cluster(
        &[
            format!("url: {}, route: web1", a.url()),
            format!("url: {}, route: web2", b.url()),
            format!("url: {}, route: web3, state: Drain", d.url()),
        ],
        "stickySession: {cookie: JSESSIONID}",
    ));
    let c = client();
    assert_eq!(order(&c, &proxy.url("/"), 6).await, "ababab");
    for _ in 0..3 {
        let answer = send(
            &c,
            "GET",
            &proxy.url("/"),
            &[("cookie", "JSESSIONID=zz.web3")],
            "",
        )
        .await;
        assert_eq!(answer.backend, "d");
    }
    assert_eq!(order(&c, &proxy.url("/"), 4).await, "abab");
    assert_eq!((a.hits(), b.hits(), d.hits()), (5, 5, 3));
    assert_eq!(
        crate::support::proxy::states(&proxy.plane),
        ["Ok", "Ok", "Drain"]
    );
}

#[tokio::test]
async fn the_balancer_inserts_the_cookie_and_the_route_defaults_to_a_stable_id() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    // No routes given: each member gets one derived from its URL.
    let proxy = Proxy::start(&cluster(
        &[format!("url: {}", a.url()), format!("url: {}", b.url())],
        "stickySession: {cookie: ROUTEID, insert: true}",
    ));
    let routes: Vec<String> = crate::support::proxy::rows(&proxy.plane)
        .into_iter()
        .map(|r| r.route.expect("a default route"))
        .collect();
    assert_eq!(routes.len(), 2);
    assert_ne!(routes[0], routes[1]);
    let c = client();
    let first = send(&c, "GET", &proxy.url("/"), &[], "").await;
    assert_eq!(first.backend, "a");
    assert_eq!(
        first.set_cookie,
        [format!("ROUTEID={}; Path=/; HttpOnly", routes[0])]
    );
    // The client sends it back: it stays on a, and no new cookie is set.
    let cookie = format!("ROUTEID={}", routes[0]);
    for _ in 0..4 {
        let again = send(
            &c,
            "GET",
            &proxy.url("/"),
            &[("cookie", cookie.as_str())],
            "",
        )
        .await;
        assert_eq!(again.backend, "a");
        assert!(again.set_cookie.is_empty(), "{:?}", again.set_cookie);
    }
    // A member that cannot take the session: the answer moves the cookie to the new member.
    let web = crate::support::proxy::web(&proxy.plane);
    web.balancer
        .mark_error(0, kube_balancer::clock::now_ms(), 60_000, "test".into());
    let moved = send(
        &c,
        "GET",
        &proxy.url("/"),
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(moved.backend, "b");
    assert_eq!(
        moved.set_cookie,
        [format!("ROUTEID={}; Path=/; HttpOnly", routes[1])]
    );
    assert_eq!(
        routes[0],
        kube_balancer::discovery::default_route(&web.config.members[0])
    );
}

#[test]
fn bad_sticky_settings_are_refused_with_a_message_a_person_understands() {
    let refusal = |spec: &str| {
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\nspec:\n  members: [{{url: 'http://127.0.0.1:1'}}]\n{spec}"
        );
        kube_balancer::standalone::parse("bad.yaml", &yaml)
            .expect_err("refused")
            .to_string()
    };
    let cases = [
        (
            "  stickySession: {}\n",
            "spec.stickySession: stickySession needs a cookie, a param, or both",
        ),
        (
            "  stickySession: {param: jsessionid, insert: true}\n",
            "spec.stickySession: stickySession.insert sets a cookie: name it in stickySession.cookie",
        ),
        (
            "  stickySession: {cookie: 'my cookie'}\n",
            "spec.stickySession.cookie: stickySession.cookie must be a cookie name",
        ),
    ];
    for (spec, expected) in cases {
        let message = refusal(spec);
        assert!(message.contains(expected), "{spec}: {message}");
    }
}
