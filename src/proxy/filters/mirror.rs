//! A route's mirrors (HTTPRoute `RequestMirror`): copies of a request sent to other clusters,
//! their answers read and dropped.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::Request;
use http_body::Body;

use crate::clock;
use crate::plane::Cluster;
use crate::plane::filters::Mirror;
use crate::proxy::headers::Forwarding;
use crate::proxy::upstream::body::RequestBody;
use crate::proxy::upstream::exchange::Replay;
use crate::proxy::upstream::lease::Lease;
use crate::proxy::upstream::{self, Upstream};
use crate::proxy::worker::Worker;

/// Sends copies of a body-less request to the mirrors, each for its share of requests; their
/// answers are read and dropped on tasks of their own, never holding up the request. A request
/// with a body is not mirrored (the body streams to its member once; docs/gateway.md).
pub fn mirror(
    mirrors: &[&Mirror],
    req: &Request<RequestBody>,
    forwarding: Forwarding,
    worker: &Worker,
) {
    if !req.body().is_end_stream() {
        return;
    }
    let snapshot = worker.plane.snapshot_full();
    for m in mirrors {
        if !worker.sample(m.numerator, m.denominator) {
            continue;
        }
        let Some(cluster) = snapshot
            .clusters
            .iter()
            .find(|c| c.key == m.cluster)
            .cloned()
        else {
            continue;
        };
        let copy = Replay::of(req);
        let forwarding = forwarding.clone();
        tokio::task::spawn_local(mirrored(worker.pool.clone(), cluster, copy, forwarding));
    }
}

async fn mirrored(
    pool: Rc<upstream::pool::Pool>,
    cluster: Arc<Cluster>,
    copy: Replay,
    forwarding: Forwarding,
) {
    let now = clock::now_ms();
    let Some(index) = cluster.balancer.pick_for(now, &[], &Default::default()) else {
        return;
    };
    let config = &cluster.config;
    let member = &config.members[index];
    let stats = &cluster.balancer.members()[index].stats;
    stats.elected.fetch_add(1, Relaxed);
    let _lease = Lease::new(stats.clone());
    let key = upstream::member(&pool, &cluster, member);
    let mut req = copy.request();
    let mut lean = None;
    let started = tokio::time::Instant::now();
    let sent = upstream::send(
        Upstream::for_member(Upstream::Hyper, member, false),
        &key,
        config,
        config.policy.limits_of(index),
        &mut req,
        &mut lean,
        &forwarding,
        started,
        started + config.response_timeout,
        None,
    );
    if let Ok((_, response)) = sent.await {
        let mut body = response.into_body();
        while let Some(Ok(_)) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {}
    }
}
