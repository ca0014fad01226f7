//! BalancerCluster routes against the real API server (issue 20): the CRD with every route
//! rule fits the API server's CEL cost budget, a bad route is refused with the message standalone
//! mode gives, and a route the CEL rules cannot judge (a regular expression, a mirror naming a
//! cluster that is not there) is reported in status while the cluster's other routes serve.
//!
//! These tests need scripts/test.sh (binaries and network namespace); elsewhere they fail, saying so.

use kube::Api;
use kube::api::{DynamicObject, PostParams};
use serde_json::json;

use crate::support::backend::Backend;
use crate::support::client::{self as http, send};
use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{Balancer, apply_cluster, install_crd, options};
use crate::support::{netns, pods, wait};
use kube_balancer::api::BalancerCluster;

/// Creates BalancerCluster `name` with `spec`: the API server's refusal (code and message), if
/// it refuses.
async fn create(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<(), (u16, String)> {
    let resource = kube::api::ApiResource::erase::<BalancerCluster>(&());
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
    let bc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("well-formed");
    match api.create(&PostParams::default(), &bc).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err((e.code, e.message)),
        Err(e) => panic!("create {name}: {e}"),
    }
}

/// What standalone mode says of a file holding BalancerCluster `web` with `spec`: the field and
/// the message.
fn standalone_refusal(spec: &serde_json::Value) -> (String, String) {
    let document = json!({
        "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "web"}, "spec": spec,
    });
    let yaml = serde_norway::to_string(&document).expect("YAML");
    match kube_balancer::standalone::parse("web.yaml", &yaml) {
        Err(kube_balancer::standalone::ConfigError::Invalid { field, message, .. }) => {
            (field, message)
        }
        other => panic!("not refused for a field: {other:?}"),
    }
}

fn members() -> serde_json::Value {
    json!([{"url": "http://10.244.0.250:80"}])
}

#[tokio::test]
async fn every_route_rule_fits_the_cost_budget_and_refuses_as_standalone_does() {
    let client = ControlPlane::shared().client();
    // The API server takes the CRD: every rule, and their sum, within its cost budget.
    install_crd(&client).await;
    let ns = pods::namespace(&client, "route-rules").await;

    // Every kind of match and filter, at once.
    let full = json!({"members": members(), "routes": [
        {"host": "shop.example.com", "match": {
            "path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"},
            "headers": [{"name": "X-Version", "value": "2"}, {"type": "RegularExpression", "name": "x-user", "value": "a.*"}],
            "queryParams": [{"name": "debug", "value": "on"}], "method": "GET"},
         "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}], "add": [{"name": "X-B", "value": "2"}], "remove": ["X-C"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["Server"]}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "copy"}, "fraction": {"numerator": 1, "denominator": 10}}},
            {"type": "CORS", "cors": {"allowOrigins": ["https://*.example.com"], "allowMethods": ["GET"], "allowHeaders": ["X-Token"], "exposeHeaders": ["X-Id"], "maxAge": 60}}],
         "timeouts": {"request": "10s", "backendRequest": "2s"}, "proxyPassReverse": true,
         "retry": {"codes": [500, 502, 503, 504], "attempts": 3, "backoff": "100ms"}},
        {"pathPrefix": "/app", "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "backend.internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]},
        {"match": {"path": {"type": "Exact", "value": "/old"}}, "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "hostname": "new.example.com", "port": 8443, "statusCode": 308, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]},
    ]});
    create(&client, &ns, "full", full)
        .await
        .expect("a cluster using every route field is accepted");

    let route = |r: serde_json::Value| json!({"members": members(), "routes": [r]});
    let refused = [
        route(json!({"pathPrefix": "/a", "match": {"path": {"value": "/b"}}})),
        route(json!({"match": {"path": {"type": "Exact", "value": "/a/../b"}}})),
        route(
            json!({"match": {"headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]}}),
        ),
        route(
            json!({"filters": [{"type": "CORS", "requestMirror": {"backendRef": {"name": "copy"}}}]}),
        ),
        route(
            json!({"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "Content-Length", "value": "1"}]}}]}),
        ),
        route(
            json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}]}),
        ),
        route(
            json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {}}, {"type": "URLRewrite", "urlRewrite": {"hostname": "a"}}]}),
        ),
        route(
            json!({"match": {"path": {"type": "Exact", "value": "/a"}}, "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}),
        ),
        route(
            json!({"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "copy"}, "percent": 5, "fraction": {"numerator": 1}}}]}),
        ),
        route(json!({"filters": [{"type": "CORS", "cors": {"allowMethods": ["GET", "*"]}}]})),
        route(json!({"timeouts": {"request": "1s", "backendRequest": "2s"}})),
        route(json!({"retry": {"codes": [503, 200]}})),
        route(json!({"retry": {"attempts": 0}})),
        route(json!({"retry": {"backoff": "soon"}})),
    ];
    for (i, spec) in refused.into_iter().enumerate() {
        let (field, message) = standalone_refusal(&spec);
        let (code, refusal) = create(&client, &ns, &format!("bad-{i}"), spec.clone())
            .await
            .expect_err("refused");
        assert_eq!(code, 422, "{refusal}");
        // `spec.routes[0].match.path: Invalid value: "object": MESSAGE`, as standalone says it.
        assert!(
            refusal.contains(&format!("{field}: Invalid value: ")) && refusal.contains(&message),
            "the API server: {refusal}\nstandalone: {field}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_cannot_be_served_is_reported_and_the_others_serve() {
    netns::require();
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "route-status").await;
    let web = Backend::start("web").await;
    apply_cluster(
        &client,
        &ns,
        json!({"members": [{"url": web.url()}], "routes": [
            {"pathPrefix": "/ok", "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Route", "value": "ok"}]}},
                {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]},
            // CEL cannot judge an expression: the API server takes it.
            {"match": {"path": {"type": "RegularExpression", "value": "/(unclosed"}}},
            {"pathPrefix": "/mirrored", "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone"}}}]},
        ]}),
    )
    .await;
    let balancer = Balancer::start(&client, options(&ns, "replica-1")).await;

    let api = Api::<BalancerCluster>::namespaced(client.clone(), &ns);
    let accepted = |bc: &BalancerCluster| {
        bc.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted").cloned())
    };
    let bc = wait::until_object(api, "web", "the Accepted condition", |bc| {
        accepted(bc).is_some()
    })
    .await;
    let condition = accepted(&bc).expect("Accepted");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_deref()),
        ("False", Some("InvalidRoute"))
    );
    assert_eq!(
        condition.message.as_deref(),
        Some(
            format!(
                "spec.routes[1].match.path.value: \"/(unclosed\" is not a regular expression this proxy can run: unclosed group; the route is not served; \
                 spec.routes[2]: requestMirror names the BalancerCluster {ns}/gone, which is not served here (missing, or of another className): no copies are sent"
            )
            .as_str()
        )
    );

    // The other routes serve, with their filters.
    let c = http::client();
    let ok = send(
        &c,
        "GET",
        &format!("http://{}/ok/headers", balancer.addr()),
        &[],
        "",
    )
    .await;
    assert_eq!((ok.status.as_u16(), ok.backend.as_str()), (200, "web"));
    assert!(ok.body.contains("x-route: ok"), "{}", ok.body);
    let mirrored = send(
        &c,
        "GET",
        &format!("http://{}/mirrored", balancer.addr()),
        &[],
        "",
    )
    .await;
    assert_eq!(mirrored.status.as_u16(), 200);
    let none = send(
        &c,
        "GET",
        &format!("http://{}/other", balancer.addr()),
        &[],
        "",
    )
    .await;
    assert_eq!(none.status.as_u16(), 404);
}
