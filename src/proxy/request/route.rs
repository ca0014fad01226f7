//! Routing a request: the route table (of our own listener or of a Gateway's), the rule and its
//! backend by weight, the rule's filters before the request goes; refusing what no route may
//! serve.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};

use crate::balancer::Affinity;
use crate::plane::matching::RequestView;
use crate::plane::routes::strip_port;
use crate::plane::{Cluster, Snapshot};
use crate::proxy::client::{Client, ClientRequest, Front};
use crate::proxy::error::ProxyError;
use crate::proxy::filters::{self, Applied, Context};
use crate::proxy::forward::Routed;
use crate::proxy::headers::{Forwarding, prepare_request, upgrade_protocol};
use crate::proxy::http1::LeanHead;
use crate::proxy::http1::field::Scan;
use crate::proxy::upstream::body::RequestBody;
use crate::proxy::worker::Worker;
use crate::telemetry::{Field, Observed};
use crate::tls;

/// Finds the request's cluster and prepares the request for its members; a request that goes
/// to none is given back with the error that answers it (its answer is written into its box).
pub fn route(
    worker: &Worker,
    client: &Client,
    mut incoming: Box<ClientRequest>,
    observed: &mut Option<Box<Observed>>,
) -> Result<Routed, (ProxyError, Box<ClientRequest>)> {
    match prepare(worker, client, &mut incoming, observed) {
        Ok((cluster, forwarding, affinity, filters)) => Ok(Routed {
            cluster,
            req: incoming,
            forwarding,
            affinity,
            filters,
        }),
        Err(e) => Err((e, incoming)),
    }
}

/// What routing finds for a request: its cluster, its X-Forwarded-* fields, what a sticky or
/// hashing balancer reads of it, and its rule's filters.
type Way = (Arc<Cluster>, Forwarding, Affinity, Option<Box<Applied>>);

/// [`route`]'s work, on the request in its box.
fn prepare(
    worker: &Worker,
    client: &Client,
    incoming: &mut ClientRequest,
    observed: &mut Option<Box<Observed>>,
) -> Result<Way, ProxyError> {
    let ClientRequest {
        req,
        lean,
        upgrade: client_upgrade,
        ..
    } = incoming;
    refuse(worker, req, lean.is_some())?;
    let host_value = host_of(req, lean);
    let host = host_value
        .as_ref()
        .map_or(&b""[..], |h| strip_port(h.as_bytes()));
    let snapshot = worker.plane.snapshot();
    let view = View::of(req, lean.as_ref());
    let (cluster, mut filters, prefix) = choose(&snapshot, client, host, &view, observed)?;
    https_only(worker, client, cluster.as_deref(), req, host_value.as_ref())?;
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
    Ok((cluster, forwarding, affinity, filters))
}

/// What no route may serve: CONNECT (this is not a forward proxy), more fields than the limit
/// (HTTP/1 heads are limited by the servers themselves; HTTP/2 header lists here), and two
/// Host fields (the lean server's parser hands a head with two to hyper: `lean` heads have one
/// at most, and an empty map).
fn refuse(worker: &Worker, req: &Request<RequestBody>, lean: bool) -> Result<(), ProxyError> {
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
    if lean {
        return Ok(());
    }
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

/// A BalancerCluster's `httpsRedirect`: a plain request to it is sent to HTTPS, not to members.
fn https_only(
    worker: &Worker,
    client: &Client,
    cluster: Option<&Cluster>,
    req: &Request<RequestBody>,
    host: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    if client.entry.tls || !cluster.is_some_and(|c| c.config.tls.https_redirect) {
        return Ok(());
    }
    Err(to_https(worker, req, host))
}

/// The redirect to HTTPS: the same host and target, on our HTTPS port.
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
            let filters = if matched.plain {
                None
            } else {
                picked.and_then(|i| Applied::of(rule, i))
            };
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

impl<'a> View<'a> {
    fn of(req: &'a Request<RequestBody>, lean: Option<&'a LeanHead>) -> Self {
        View { req, lean }
    }
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
