//! The API server goes away: the data plane keeps serving the last member lists. On a control
//! plane of the test's own, since it takes that control plane down for good.

use std::time::Duration;

use serde_json::json;

use crate::support::client::{Answer, get_at};
use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::{apply_cluster, install_crd, options, web_pods, web_service};
use crate::support::{netns, pods, proxy, wait};
use kube_balancer::controller;
use kube_balancer::plane::DataPlane;
use kube_balancer::proxy::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_keeps_serving_when_the_api_server_is_gone() {
    netns::require();
    let cp = ControlPlane::own();
    let client = cp.client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "outage").await;
    web_service(&client, &ns).await;
    let _pods = web_pods(&client, &ns, &["web-a", "web-b"]).await;
    apply_cluster(
        &client,
        &ns,
        json!({"service": {"name": "web", "port": "http"}}),
    )
    .await;
    let plane = DataPlane::new();
    let options = options(&ns, "replica-1");
    let _controller = controller::start(client.clone(), options, plane.clone())
        .await
        .expect("start");
    let server = Server::start(plane.clone(), proxy::options()).expect("data plane");
    let deadline = tokio::time::Instant::now() + wait::TIMEOUT;
    while plane
        .snapshot()
        .cluster(&ns, "web")
        .map_or(0, |c| c.config.members.len())
        != 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "members never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    cp.stop_apiserver();
    // The watches now fail and back off; for the next 3 seconds every request is still served,
    // alternating between the last known members.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut served = Vec::new();
    while tokio::time::Instant::now() < until {
        let Answer { status, body, .. } = get_at(server.local_addr(), "/").await;
        assert_eq!(
            status,
            200,
            "request {} failed with the API server gone",
            served.len()
        );
        served.push(body);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served.len() > 20);
    for (i, body) in served.iter().enumerate() {
        assert_eq!(body, ["web-a", "web-b"][i % 2]);
    }
    assert!(plane.is_ready());
    tokio::task::spawn_blocking(move || server.shutdown(Duration::from_millis(100)))
        .await
        .expect("join");
}
