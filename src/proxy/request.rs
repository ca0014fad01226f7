//! The request core's entry: one request of a client connection, from whichever server read it
//! (the lean HTTP/1 server, or hyper's HTTP/1 and HTTP/2 servers): route it to a cluster,
//! forward it to the members the cluster picks, and answer.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;

use futures_util::future::Either;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};

use super::client::{Client, ClientRequest, Front};
use super::error::ProxyError;
use super::filters::{self, Applied, Context};
use super::forward::{Routed, forward};
use super::grpc::is_grpc;
use super::headers::{TRACEPARENT, TRACESTATE, X_REQUEST_ID, prepare_request, upgrade_protocol};
use super::http1::LeanHead;
use super::http1::field::Scan;
use super::response::ResponseBody;
use super::upstream::body::RequestBody;
use super::worker::Worker;
use crate::plane::matching::RequestView;
use crate::plane::routes::strip_port;
use crate::plane::{Cluster, Snapshot};
use crate::telemetry::{self, Field, Observed, Record};
use crate::tls;

/// One request of a client connection: hyper's service function, and the lean HTTP/1 server's.
///
/// Routing is done here, before the first poll: a request that goes nowhere is answered by a
/// ready future, and one that goes to members by a future holding only what the exchange
/// needs. An async function's future holds every argument twice (as an argument, then as a
/// local), and this future is copied whole into its box when the request starts; above about
/// 2 KiB that copy is a `rep movsb`, which costs far more than its size on the machines
/// measured (docs/benchmarks.md, "Copies").
pub fn handle(
    worker: Rc<Worker>,
    client: Rc<Client>,
    req: Box<ClientRequest>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> {
    if let Some(deadline) = &client.deadline {
        deadline.busy();
    }
    // A gRPC client is answered in gRPC's terms when the proxy answers for a member.
    let grpc = is_grpc(req.req.headers());
    // Boxed, and only with the access log or tracing on.
    let mut observed = worker
        .telemetry
        .observes()
        .then(|| observe(&worker, &client, &req));
    match route(&worker, &client, req, &mut observed) {
        Ok(mut routed) => {
            if let Some(mut observed) = observed {
                observe_routed(&mut observed, &mut routed.req, &mut routed.forwarding);
                routed.req.observed = Some(observed);
            }
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
                let mut response = match forwarded {
                    Ok(response) => response,
                    Err(e) => e.into_response_for(grpc),
                };
                if let Some(applied) = &routed.filters {
                    filters::after(applied, &mut response);
                }
                if client.entry.tls
                    && let Some(hsts) = &routed.cluster.config.tls.hsts
                {
                    let value = tls::hsts_value(hsts);
                    response
                        .headers_mut()
                        .insert(header::STRICT_TRANSPORT_SECURITY, value);
                }
                answered(&mut response, &client, routed.req.observed.take());
                // The request's box and header map are parsed into again.
                worker.put_request(routed.req);
                Ok(response)
            })
        }
        Err(e) => {
            let mut response = e.into_response_for(grpc);
            answered(&mut response, &client, observed);
            Either::Right(std::future::ready(Ok(response)))
        }
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

/// The record of a request, as it came: who sent it, what for, and its trace's server span.
fn observe(worker: &Worker, client: &Client, incoming: &ClientRequest) -> Box<Observed> {
    let req = &incoming.req;
    let lean = incoming.lean.as_ref();
    let mut record = Record::new(client.addr.ip(), req.method().clone(), req.version());
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    record.set(Field::Target, target.as_bytes());
    let field = |record: &mut Record, name: &HeaderName, into: Field| {
        let mut found = false;
        let mut keep = |value: &[u8]| {
            record.set(into, value);
            found = true;
            true
        };
        match lean {
            Some(head) => {
                head.fields.any_value(name.as_str().as_bytes(), &mut keep);
            }
            None => {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| keep(v.as_bytes()));
            }
        }
        found
    };
    match (req.uri().authority(), lean.and_then(|l| l.host.as_ref())) {
        (Some(authority), _) => record.set(Field::Host, authority.as_str().as_bytes()),
        (None, Some(host)) => record.set(Field::Host, host),
        (None, None) => {
            field(&mut record, &header::HOST, Field::Host);
        }
    }
    field(&mut record, &header::USER_AGENT, Field::UserAgent);
    field(&mut record, &header::REFERER, Field::Referer);
    field(&mut record, &X_REQUEST_ID, Field::RequestId);
    let declared = match lean {
        Some(head) => {
            let mut length = None;
            head.fields.any_value(b"content-length", &mut |v| {
                length = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
                true
            });
            length
        }
        None => req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
    };
    record.bytes_in = match declared {
        Some(n) => Some(n),
        None if http_body::Body::is_end_stream(req.body()) => Some(0),
        None => None,
    };
    let span = worker.telemetry.tracer.as_ref().map(|tracer| {
        let mut parent = None;
        let mut state = None;
        let take = |name: &HeaderName, into: &mut Option<Vec<u8>>| match lean {
            Some(head) => {
                head.fields.any_value(name.as_str().as_bytes(), &mut |v| {
                    *into = Some(v.to_vec());
                    true
                });
            }
            None => *into = req.headers().get(name).map(|v| v.as_bytes().to_vec()),
        };
        take(&TRACEPARENT, &mut parent);
        take(&TRACESTATE, &mut state);
        tracer.request(
            parent.as_deref(),
            state.as_deref(),
            req.method().as_str(),
            target,
        )
    });
    record.trace_id = span.as_ref().map(|s| s.trace_id());
    Box::new(Observed {
        record: Box::new(record),
        span,
        telemetry: worker.telemetry.clone(),
    })
}

/// What a routed request adds to its record, and what its members get for it: the request id
/// (the client's, or one made here), and with tracing, the try's `traceparent` in place of the
/// client's.
fn observe_routed(
    observed: &mut Observed,
    incoming: &mut ClientRequest,
    forwarding: &mut super::headers::Forwarding,
) {
    if observed.record.request_id().is_empty() {
        let id = telemetry::new_request_id();
        observed.record.set(Field::RequestId, id.as_bytes());
        forwarding.extra_mut().set(&X_REQUEST_ID, id);
    }
    if observed.span.is_some() {
        let ClientRequest { req, lean, .. } = incoming;
        if let Some(head) = lean.as_ref()
            && head
                .fields
                .any_value(TRACEPARENT.as_str().as_bytes(), &mut |_| true)
            && let Some(head) = lean.take()
        {
            // The client's traceparent gives way to the try's: the head goes as a map.
            head.fields.fill(req.headers_mut());
        }
        req.headers_mut().remove(&TRACEPARENT);
    }
}

/// Finds the request's cluster and prepares the request for its members.
fn route(
    worker: &Worker,
    client: &Client,
    mut incoming: Box<ClientRequest>,
    observed: &mut Option<Box<Observed>>,
) -> Result<Routed, ProxyError> {
    let ClientRequest {
        req,
        lean,
        upgrade: client_upgrade,
        ..
    } = &mut *incoming;
    refuse(worker, req)?;
    let host_value = host_of(req, lean);
    let host = host_value
        .as_ref()
        .map_or(&b""[..], |h| strip_port(h.as_bytes()));
    let view = View {
        req,
        lean: lean.as_ref(),
    };
    let snapshot = worker.plane.snapshot();
    let (cluster, mut filters, prefix) = choose(&snapshot, client, host, &view, observed)?;
    if !client.entry.tls
        && let Some(cluster) = &cluster
        && cluster.config.tls.https_redirect
    {
        return Err(to_https(worker, req, host_value.as_ref()));
    }
    if let Some(applied) = filters.as_deref_mut() {
        let cx = Context {
            worker,
            client,
            host: host_value.as_ref(),
            prefix,
        };
        filters::before(applied, req, lean, &cx)?;
    }
    drop(snapshot);
    let Some(cluster) = cluster else {
        // Only a rule that redirects has none, and its redirect answered above.
        let rule = filters.map(|f| f.rule.name.clone()).unwrap_or_default();
        return Err(ProxyError::NoBackend { rule });
    };
    let scan = scan_fields(&cluster, req, lean);
    let affinity = cluster.affinity(req.headers(), req.uri(), client.addr.ip());
    let upgrade = upgrade_protocol(req, &scan);
    *client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut *req));
    let forwarding = prepare_request(
        req,
        &client.forwarded_for,
        client.entry.tls,
        host_value,
        upgrade,
        scan,
    );
    Ok(Routed {
        cluster,
        req: incoming,
        forwarding,
        affinity,
        filters,
    })
}

/// What no route may serve: CONNECT (this is not a forward proxy), more fields than the limit
/// (HTTP/1 heads are limited by the servers themselves; HTTP/2 header lists here), and two
/// Host fields.
fn refuse(worker: &Worker, req: &Request<RequestBody>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectRefused);
    }
    if req.headers().len() > worker.limits.max_headers {
        return Err(ProxyError::TooManyHeaders {
            count: req.headers().len(),
            limit: worker.limits.max_headers,
        });
    }
    // RFC 9112 3.2: a request with more than one Host field is refused. Passed on, members
    // would disagree about the host (a strict one closes the connection, which would count
    // against it).
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    Ok(())
}

/// The request's host: an absolute-form target's authority, which replaces Host (RFC 9112
/// 3.2.2), or the Host field. Either way it only chooses among our own clusters: the request
/// never goes anywhere but to their members.
fn host_of(req: &Request<RequestBody>, lean: &mut Option<LeanHead>) -> Option<HeaderValue> {
    match (req.uri().authority(), lean.as_mut()) {
        (Some(a), _) => HeaderValue::from_str(a.as_str()).ok(),
        (None, Some(lean)) => lean
            .host
            .take()
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok()),
        (None, None) => req.headers().get(header::HOST).cloned(),
    }
}

/// A BalancerCluster's `httpsRedirect`: a plain request is sent to HTTPS, not to members.
fn to_https(worker: &Worker, req: &Request<RequestBody>, host: Option<&HeaderValue>) -> ProxyError {
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or("");
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match tls::redirect_location(host, target, worker.https_port) {
        Some(location) => ProxyError::Redirect {
            status: tls::redirect_status(req.method()),
            location,
        },
        None => ProxyError::NoHost,
    }
}

/// What routing chose for a request: the cluster that serves it (none for a rule that only
/// redirects), what its rule asks beyond that, and what the rule's PathPrefix matched.
type Chosen<'s> = (Option<Arc<Cluster>>, Option<Box<Applied>>, Option<&'s str>);

/// The cluster that serves a request: its route's rule, then the rule's backend by weight.
fn choose<'s>(
    snapshot: &'s Snapshot,
    client: &Client,
    host: &[u8],
    view: &View<'_>,
    observed: &mut Option<Box<Observed>>,
) -> Result<Chosen<'s>, ProxyError> {
    let table = match client.entry.front {
        Front::Own => Some(&snapshot.routes),
        Front::At(address, port) => snapshot.front_at(address, port).map(|f| &f.routes),
    };
    if let (Some(name), Some(table)) = (client.server_name.as_deref(), table)
        && table.misdirected(name.as_bytes(), host)
    {
        return Err(ProxyError::Misdirected {
            server_name: name.to_owned(),
            host: String::from_utf8_lossy(host).into_owned(),
        });
    }
    let Some(matched) = table.and_then(|t| t.lookup(host, view)) else {
        return Err(ProxyError::NoRoute {
            host: String::from_utf8_lossy(host).into_owned(),
            path: view.path().to_owned(),
        });
    };
    let rule = matched.rule;
    if let Some(observed) = observed {
        observed.record.set(Field::Route, rule.name.as_bytes());
    }
    let picked = rule.pick_index();
    let backend = picked.and_then(|i| rule.backends.get(i));
    match backend.and_then(|b| snapshot.backend(b)) {
        Some(cluster) => {
            let filters = picked.and_then(|i| Applied::of(rule, i));
            Ok((Some(cluster.clone()), filters, matched.prefix))
        }
        // A rule that redirects answers by itself: it needs no backend.
        None if rule.filters.redirect.is_some() => {
            let filters = Applied::of(rule, picked.unwrap_or(usize::MAX));
            Ok((None, filters, matched.prefix))
        }
        None => Err(ProxyError::NoBackend {
            rule: rule.name.clone(),
        }),
    }
}

/// A request as routing sees it: hyper's parts, and the fields as the client wrote them when
/// the lean server read it.
struct View<'a> {
    req: &'a Request<RequestBody>,
    lean: Option<&'a LeanHead>,
}

impl RequestView for View<'_> {
    fn method(&self) -> &Method {
        self.req.method()
    }

    fn path(&self) -> &str {
        self.req.uri().path()
    }

    fn query(&self) -> Option<&str> {
        self.req.uri().query()
    }

    fn any_header(&self, name: &HeaderName, test: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        match self.lean {
            Some(lean) => lean.fields.any_value(name.as_str().as_bytes(), test),
            None => self
                .req
                .headers()
                .get_all(name)
                .iter()
                .any(|v| test(v.as_bytes())),
        }
    }
}

/// What routing needs to know of the request's field names. A head the lean server read keeps
/// its lines as written, unless the cluster reads fields (to choose a member or to send the
/// request again) or the proxy rewrites them (the client's own X-Forwarded-* lines, an
/// absolute-form target): its header map is filled then.
fn scan_fields(
    cluster: &Cluster,
    req: &mut Request<RequestBody>,
    lean: &mut Option<LeanHead>,
) -> Scan {
    let Some(head) = lean else {
        return Scan::of(req.headers());
    };
    let scan = head.scan;
    let origin_form = req.uri().scheme().is_none() && req.uri().authority().is_none();
    if cluster.reads_fields() || scan.forwarded || !origin_form {
        head.fields.fill(req.headers_mut());
        *lean = None;
    }
    scan
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
        let size = returned(handle);
        eprintln!("a request's future takes {size} bytes");
        assert!(size <= 1024, "a request's future takes {size} bytes");
    }
}
