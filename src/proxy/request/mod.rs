//! The request core's entry: one request of a client connection, from whichever server read it
//! (the lean HTTP/1 server, or hyper's HTTP/1 and HTTP/2 servers): route it to a cluster,
//! forward it to the members the cluster picks, and answer. [`route`] finds the cluster and
//! readies the request; [`observe`] fills its record and trace when the telemetry asks.

mod observe;
mod route;

use std::convert::Infallible;
use std::rc::Rc;

use futures_util::future::Either;
use http::Response;
use http::header;

use self::observe::{observe, observe_routed};
use self::route::route;
use super::client::Client;
use super::client::ClientRequest;
use super::error::ProxyError;
use super::filters;
use super::filters::Applied;
use super::forward::{Routed, forward};
use super::grpc::is_grpc;
use super::response::ResponseBody;
use super::worker::Worker;
use crate::plane::Cluster;
use crate::telemetry::Observed;
use crate::tls;

/// One request of a client connection as hyper's servers take it: the answer taken out of
/// the request's box, which is kept for the next request to be parsed into.
pub async fn handle(
    worker: Rc<Worker>,
    client: Rc<Client>,
    req: Box<ClientRequest>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut done = answer(worker.clone(), client, req).await;
    let response = done.answer.take().unwrap_or_else(unanswered);
    worker.put_request(done);
    Ok(response)
}

/// One request of a client connection: the future ends with the request's box, its answer in
/// it ([`ClientRequest::answer`], always there), where the lean HTTP/1 server writes it out
/// from. The answer is written once, there: not returned by value through every frame.
///
/// Routing is done here, before the first poll: a request that goes nowhere is answered by a
/// ready future, and one that goes to members by a future holding only what the exchange
/// needs. An async function's future holds every argument twice (as an argument, then as a
/// local), and this future is copied whole into its box when the request starts; above about
/// 2 KiB that copy is a `rep movsb`, which costs far more than its size on the machines
/// measured (docs/benchmarks.md, "Copies").
pub fn answer(
    worker: Rc<Worker>,
    client: Rc<Client>,
    mut req: Box<ClientRequest>,
) -> impl Future<Output = Box<ClientRequest>> {
    if let Some(deadline) = &client.deadline {
        deadline.busy();
    }
    // A gRPC client is answered in gRPC's terms when the proxy answers for a member.
    let grpc = is_grpc(req.req.headers());
    req.grpc = grpc;
    // Boxed, and only with the access log or tracing on.
    let mut observed = worker
        .telemetry
        .observes()
        .then(|| observe(&worker, &client, &req));
    match route(&worker, &client, req, &mut observed) {
        Ok(mut routed) => {
            observe_routed(observed, &mut routed);
            Either::Left(async move {
                let request_timeout = routed.filters.as_ref().and_then(|f| f.request_timeout());
                let deadline = client.deadline.as_deref();
                // Each arm makes its own future where it is awaited: one made before the match
                // would be moved into it (a copy of the whole future on every request).
                let forwarded = match request_timeout {
                    // The route's limit on the whole request, all tries (HTTPRoute
                    // `timeouts.request`). Boxed: few routes have one.
                    Some(limit) => {
                        // Boxed in a statement of its own: the unboxed future, a temporary of
                        // it, would otherwise keep room in every request's future.
                        let limited = Box::pin(tokio::time::timeout(
                            limit,
                            forward(&worker, &mut routed, deadline),
                        ));
                        match limited.await {
                            Ok(forwarded) => forwarded,
                            Err(_) => Err(ProxyError::RequestTimeout { after: limit }),
                        }
                    }
                    None => forward(&worker, &mut routed, deadline).await,
                };
                finish(&mut routed, &client, forwarded, grpc);
                routed.req
            })
        }
        Err((e, mut req)) => {
            let mut response = e.into_response_for(grpc);
            answered(&mut response, &client, observed);
            req.answer = Some(response);
            Either::Right(std::future::ready(req))
        }
    }
}

/// The answer readied in the request's box: the proxy's own when forwarding failed, then what
/// the route and the cluster add, and the request's record.
fn finish(routed: &mut Routed, client: &Client, forwarded: Result<(), ProxyError>, grpc: bool) {
    if let Err(e) = forwarded {
        routed.req.answer = Some(e.into_response_for(grpc));
    }
    let ClientRequest {
        answer, observed, ..
    } = &mut *routed.req;
    if let Some(response) = answer {
        shape(&routed.cluster, routed.filters.as_deref(), client, response);
        answered(response, client, observed.take());
    }
}

/// What both servers answer should a request end without an answer, which none does: every
/// way through [`answer`] writes one.
#[cold]
pub fn unanswered() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// What the route and the cluster add to any answer: the rule's answer filters, and HSTS on
/// a TLS connection.
fn shape(
    cluster: &Cluster,
    applied: Option<&Applied>,
    client: &Client,
    response: &mut Response<ResponseBody>,
) {
    if let Some(applied) = applied {
        filters::after(applied, response);
    }
    if client.entry.tls
        && let Some(hsts) = &cluster.config.tls.hsts
    {
        let value = tls::hsts_value(hsts);
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, value);
    }
}

/// The answer to a request, on its way to the client.
fn answered(
    response: &mut Response<ResponseBody>,
    client: &Client,
    observed: Option<Box<Observed>>,
) {
    if let Some(deadline) = &client.deadline {
        response.body_mut().then_await_head(deadline.clone());
    }
    if let Some(mut observed) = observed {
        observed.record.status = response.status().as_u16();
        response.body_mut().observe(observed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's future is boxed as the request starts: it must stay within mimalloc's small
    /// size classes (1 KiB on 64-bit machines), whose allocation is a few instructions where a
    /// larger block's takes a slower path, and far under the 2,112 bytes from which glibc
    /// copies with `rep movsb`, which is slow on the machines measured (docs/benchmarks.md,
    /// "Copies"). A change that grows it past that shows here: box the new state.
    #[test]
    fn a_requests_future_fits_the_allocators_small_blocks() {
        fn returned<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = returned(answer);
        eprintln!("a request's future takes {size} bytes");
        assert!(size <= 1024, "a request's future takes {size} bytes");
    }

    /// The answer is written once, into the request's box ([`ClientRequest::answer`]), and the
    /// lean server writes it out from there: what a request's future gives back is the box, a
    /// pointer. Given back by value, the answer was copied in every frame on its way, which
    /// cost about 200 instructions per request (docs/benchmarks.md, "Before and after the
    /// proxy/ reshape").
    #[test]
    fn a_requests_future_gives_back_its_box_not_its_answer() {
        fn output<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F::Output>()
        }
        assert_eq!(output(answer), std::mem::size_of::<usize>());
    }
}
