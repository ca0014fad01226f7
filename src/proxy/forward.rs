//! One request: route it, pick a member, forward it, fail over, stream the answer back.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::{Answer, Lease, ResponseBody, UpstreamBody};
use super::deadline::Deadline;
use super::error::ProxyError;
use super::head::{self, Field, HOP_BY_HOP, RawHead, UPGRADE, hop_by_hop};
use super::pool::{self, Member, Pool, Sender};
use crate::api::LbMethod;
use crate::balancer::{Affinity, ewma, sticky};
use crate::clock;
use crate::discovery::MemberConfig;
use crate::plane::routes::strip_port;
use crate::plane::{Cluster, DataPlane};

/// What a worker shares between its connections.
pub struct Worker {
    pub plane: Arc<DataPlane>,
    pub pool: Rc<Pool>,
    /// Spare buffers of the lean HTTP/1 server's connections.
    pub buffers: super::lean::Buffers,
    pub access_log: bool,
    /// The limits of a request head, as hyper's servers are configured with them.
    pub limits: super::lean::Limits,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client at the other end of one connection.
pub struct Client {
    pub addr: SocketAddr,
    /// Its address as the last X-Forwarded-For entry, formatted once per connection.
    forwarded_for: HeaderValue,
    /// An HTTP/1 connection's one timer (header read and response); none for HTTP/2.
    deadline: Option<Rc<Deadline>>,
}

impl Client {
    pub fn new(addr: SocketAddr, deadline: Option<Rc<Deadline>>) -> Self {
        Client {
            addr,
            forwarded_for: forwarded_for(addr.ip()),
            deadline,
        }
    }
}

/// The client's address as an X-Forwarded-For entry, made once per connection.
fn forwarded_for(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        // By hand: `to_string` goes through the formatting machinery, about 700 instructions,
        // which a new connection for every request pays every time.
        IpAddr::V4(v4) => {
            let mut text = Vec::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                text.extend_from_slice(super::lean::itoa(u64::from(octet), &mut [0; 20]));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string().into_bytes(),
    };
    // An IP address in text is digits, dots, colons and hex letters: always a valid value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A request as its client sent it: hyper's parts and body, and for a request the lean HTTP/1
/// server parsed (see [`lean`](super::lean)), its head as the client wrote it.
pub struct ClientRequest {
    pub req: Request<UpstreamBody>,
    pub lean: Option<LeanHead>,
}

/// A head the lean server parsed. Its request's header map stays empty, and its field lines go
/// to the member as the client wrote them (less the hop-by-hop ones), unless the cluster reads
/// fields to choose a member or to replay (sticky sessions, hashing, `failOnStatus`) or the
/// proxy rewrites them (the client's own X-Forwarded-* lines, an absolute-form target): the
/// map is filled then, and the request goes on as one hyper parsed would.
pub struct LeanHead {
    /// The end-to-end fields.
    pub fields: RawHead,
    /// The Host value, found among all the fields (as hyper's path reads it from the whole
    /// map before the hop-by-hop fields are taken out).
    pub host: Option<Bytes>,
    /// What routing looks for among all the field names, found as the head was parsed.
    pub scan: Scan,
}

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
    let logged = worker
        .access_log
        .then(|| (req.req.method().clone(), req.req.uri().path().to_owned()));
    match route(&worker, &client, req) {
        Ok(mut routed) => Either::Left(async move {
            let mut response = match forward(&worker, &mut routed, client.deadline.as_deref()).await
            {
                Ok(response) => response,
                Err(e) => e.into_response(),
            };
            answered(&mut response, &client, logged);
            // The request's box and header map are parsed into again (lean::Buffers).
            worker.buffers.put_request(routed.req);
            Ok(response)
        }),
        Err(e) => {
            let mut response = e.into_response();
            answered(&mut response, &client, logged);
            Either::Right(std::future::ready(Ok(response)))
        }
    }
}

/// The answer to a request, on its way to the client.
fn answered(
    response: &mut Response<ResponseBody>,
    client: &Client,
    logged: Option<(Method, String)>,
) {
    if let Some(deadline) = &client.deadline {
        response.body_mut().then_await_head(deadline.clone());
    }
    if let Some((method, path)) = logged {
        tracing::info!(target: "access", client = %client.addr.ip(), %method, %path, status = response.status().as_u16());
    }
}

/// A request on its way to a cluster's members.
struct Routed {
    cluster: Arc<Cluster>,
    req: Box<ClientRequest>,
    forwarding: Forwarding,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    affinity: Affinity,
}

/// Finds the request's cluster and prepares the request for its members.
fn route(
    worker: &Worker,
    client: &Client,
    mut incoming: Box<ClientRequest>,
) -> Result<Routed, ProxyError> {
    let ClientRequest { req, lean } = &mut *incoming;
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectRefused);
    }
    // HTTP/1 heads are limited by hyper itself; HTTP/2 header lists are counted here.
    if req.headers().len() > worker.limits.max_headers {
        return Err(ProxyError::TooManyHeaders {
            count: req.headers().len(),
            limit: worker.limits.max_headers,
        });
    }
    // RFC 9112 3.2.2: an absolute-form target's authority replaces Host. Either way, it only
    // chooses among our own clusters: the request never goes anywhere but to their members.
    let host_value = match (req.uri().authority(), lean.as_mut()) {
        (Some(a), _) => HeaderValue::from_str(a.as_str()).ok(),
        (None, Some(lean)) => lean
            .host
            .take()
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok()),
        (None, None) => req.headers().get(header::HOST).cloned(),
    };
    let host = host_value
        .as_ref()
        .map_or(&b""[..], |h| strip_port(h.as_bytes()));
    let cluster = {
        let snapshot = worker.plane.snapshot();
        match snapshot.route(host, req.uri().path()) {
            Some(c) => c.clone(),
            None => {
                return Err(ProxyError::NoRoute {
                    host: String::from_utf8_lossy(host).into_owned(),
                    path: req.uri().path().to_owned(),
                });
            }
        }
    };

    let scan = match lean {
        Some(head) => {
            let scan = head.scan;
            let origin_form = req.uri().scheme().is_none() && req.uri().authority().is_none();
            if cluster.reads_fields() || scan.forwarded || !origin_form {
                head.fields.fill(req.headers_mut());
                *lean = None;
            }
            scan
        }
        None => Scan::of(req.headers()),
    };
    let affinity = cluster.affinity(req.headers(), req.uri(), client.addr.ip());
    let upgrade = upgrade_protocol(req, &scan);
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut *req));
    let forwarding = prepare_request(req, &client.forwarded_for, host_value, upgrade, scan);
    Ok(Routed {
        cluster,
        req: incoming,
        forwarding,
        client_upgrade,
        affinity,
    })
}

/// Sends the request to the members the cluster picks, in turn, until one answers or the
/// attempts run out. `routed` is borrowed, not moved: every value an async function takes is
/// stored twice in its future (as an argument, then as a local), and this future is copied
/// whole when the request starts (see docs/benchmarks.md, "Copies").
async fn forward(
    worker: &Rc<Worker>,
    routed: &mut Routed,
    deadline: Option<&Deadline>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Routed {
        cluster,
        req,
        forwarding,
        client_upgrade,
        affinity,
    } = routed;
    let ClientRequest { req, lean } = &mut **req;
    let (cluster, affinity) = (&*cluster, &*affinity);
    let config = &cluster.config;
    let tries = if config.no_failover {
        1
    } else {
        1 + config.max_attempts as usize
    };
    // A body-less request can be sent again after a `failOnStatus` answer.
    let replay = (!config.fail_on_status.is_empty()
        && client_upgrade.is_none()
        && req.body().is_end_stream())
    .then(|| {
        // Boxed: only clusters with `failOnStatus` need it, and inline it would make every
        // request's future larger.
        Box::new((
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        ))
    });
    let mut tried: Vec<usize> = Vec::new();
    // Boxed, as rare: a smaller request future fits the allocator's small size classes.
    let mut last_failure: Option<Box<ProxyError>> = None;

    loop {
        // One clock reading serves the pick, the pooled connection's age, the response
        // deadline and the latency sample.
        let started = tokio::time::Instant::now();
        let now = clock::ms_at(started.into_std());
        let Some(index) = cluster.balancer.pick_for(now, &tried, affinity) else {
            return Err(last_failure.map_or_else(
                || ProxyError::NoMember {
                    cluster: cluster.key.clone(),
                },
                |failure| *failure,
            ));
        };
        let member = &config.members[index];
        let stats = &cluster.balancer.members()[index].stats;
        stats.elected.fetch_add(1, Relaxed);
        let mut lease = Lease::new(stats.clone());
        if !req.body().is_end_stream() {
            req.body_mut().count_for(stats.clone());
        }
        let key = worker.pool.member(&member.authority);

        // A request without a body (most of them) takes the lean exchange; one with a body to
        // stream, or an upgrade, goes through hyper's client.
        let sent = if client_upgrade.is_none() && req.body().is_end_stream() {
            let fields = lean.as_ref().map(|head| &head.fields);
            exchange_lean(&key, config, req, fields, forwarding, started, deadline).await
        } else {
            // hyper's client takes the request, and gives it back when it never left. Boxed:
            // inline, its state would make every request's future larger. It sends the map.
            if let Some(head) = lean.take() {
                head.fields.fill(req.headers_mut());
            }
            let mut owned = std::mem::replace(req, Request::new(UpstreamBody::empty()));
            forwarding.insert(owned.headers_mut());
            Box::pin(exchange(&key, config, owned, started, deadline)).await
        };
        match sent {
            Err(Failure {
                timed_out: true, ..
            }) => {
                cluster.balancer.report(index, false, clock::now_ms());
                return Err(ProxyError::Timeout {
                    cluster: cluster.key.clone(),
                    member: member.url.clone(),
                    after: config.response_timeout,
                });
            }
            Err(Failure {
                cause,
                unsent,
                resend,
                ..
            }) => {
                cluster.balancer.report(index, false, clock::now_ms());
                cluster.balancer.mark_error(
                    index,
                    clock::now_ms(),
                    cluster.retry_ms,
                    error_note(&cause),
                );
                let failure = ProxyError::MemberFailed {
                    cluster: cluster.key.clone(),
                    member: member.url.clone(),
                    cause,
                };
                tried.push(index);
                if let Some(back) = unsent {
                    *req = *back;
                }
                if !resend || tried.len() >= tries {
                    return Err(failure);
                }
                last_failure = Some(Box::new(failure));
            }
            Ok((sender, mut response)) => {
                let status = response.status();
                // The clock is read again only for what uses the answer's time: the latency
                // sample (ewma) and outlier detection.
                let ewma = config.lb_method == LbMethod::Ewma;
                if ewma || cluster.balancer.detects_outliers() {
                    let answered = tokio::time::Instant::now();
                    let now = clock::ms_at(answered.into_std());
                    if ewma {
                        let took = answered.saturating_duration_since(started).as_nanos();
                        ewma::observe(stats, u64::try_from(took).unwrap_or(u64::MAX), now);
                    }
                    cluster
                        .balancer
                        .report(index, !status.is_server_error(), now);
                }
                if config.fail_on_status.contains(&status.as_u16()) {
                    let cause = format!("answered {status}, listed in failOnStatus");
                    cluster.balancer.mark_error(
                        index,
                        clock::now_ms(),
                        cluster.retry_ms,
                        error_note(&cause),
                    );
                    tried.push(index);
                    if let Some((method, uri, headers)) =
                        replay.as_deref().filter(|_| tried.len() < tries)
                    {
                        *req = rebuild(method, uri, headers);
                        continue;
                    }
                }
                insert_sticky_cookie(cluster, member, affinity, response.headers_mut());
                if status == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_upgrade) = client_upgrade.take()
                {
                    let member_upgrade = hyper::upgrade::on(&mut response);
                    tokio::task::spawn_local(tunnel(client_upgrade, member_upgrade, lease));
                    let (parts, _) = response.into_parts();
                    return Ok(Response::from_parts(parts, ResponseBody::empty()));
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                lease.reuse(key, sender);
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::upstream(body, lease),
                ));
            }
        }
    }
}

/// HAProxy's `cookie insert`: when the request's sticky value does not name the member that
/// answered, the answer sets the cookie to that member's route.
fn insert_sticky_cookie(
    cluster: &Cluster,
    member: &MemberConfig,
    affinity: &Affinity,
    headers: &mut HeaderMap,
) {
    let Some(config) = cluster.config.policy.sticky.as_ref().filter(|s| s.insert) else {
        return;
    };
    let (Some(name), Some(route)) = (config.cookie.as_deref(), member.route.as_deref()) else {
        return;
    };
    if affinity
        .sticky
        .as_deref()
        .is_some_and(|value| sticky::carries(value, route))
    {
        return;
    }
    if let Some(cookie) = sticky::set_cookie(name, route) {
        headers.append(header::SET_COOKIE, cookie);
    }
}

struct Failure {
    cause: String,
    timed_out: bool,
    /// The request never left: it can go to another member.
    resend: bool,
    /// The request, when hyper's client had taken it and it never left.
    /// Boxed: it is rare, and inline it would make every exchange's result several times
    /// larger, and that result is moved on every request (docs/benchmarks.md, "Copies").
    unsent: Option<Box<Request<UpstreamBody>>>,
}

/// A member's answer head, with hyper's client connection when it came on one.
type Exchanged = (Option<Sender>, Response<Answer>);

/// The lean exchange (see [`upstream`](super::upstream)) for a request without a body: on a
/// pooled connection, or on a new one when the pool has none or the pooled one turned out
/// closed before the answer began.
async fn exchange_lean(
    key: &Member,
    config: &crate::discovery::ClusterConfig,
    req: &Request<UpstreamBody>,
    fields: Option<&RawHead>,
    forwarding: &Forwarding,
    now: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    let timeout = config.response_timeout;
    let mut failed = None;
    if let Some(conn) = key.checkout_lean(config.idle_timeout, now) {
        let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
        match within(send, now + timeout, deadline).await {
            Some(Ok(response)) => return Ok((None, response.map(Answer::Lean))),
            // The member closed the pooled connection as the request went: not its fault.
            Some(Err(e)) if e.retry => failed = Some(e.cause),
            Some(Err(e)) => return Err(Failure::new(e.cause, false)),
            None => return Err(Failure::timed_out()),
        }
    }
    let conn = match pool::connect_lean(key.authority(), config.connect_timeout).await {
        Ok(conn) => conn,
        Err(e) => return Err(Failure::new(e.to_string(), true)),
    };
    if let Some(cause) = failed {
        tracing::debug!(member = key.authority(), %cause, "pooled connection closed, sent again on a new one");
    }
    let until = tokio::time::Instant::now() + timeout;
    let send = std::pin::pin!(conn.send(req, fields, forwarding.fields()));
    match within(send, until, deadline).await {
        Some(Ok(response)) => Ok((None, response.map(Answer::Lean))),
        Some(Err(e)) => Err(Failure::new(e.cause, e.retry)),
        None => Err(Failure::timed_out()),
    }
}

impl Failure {
    fn new(cause: String, resend: bool) -> Self {
        Failure {
            cause,
            timed_out: false,
            resend,
            unsent: None,
        }
    }

    /// hyper's client failed; it gives the request back when it never left.
    fn unsent(cause: String, unsent: Option<Request<UpstreamBody>>) -> Self {
        Failure {
            cause,
            timed_out: false,
            resend: unsent.is_some(),
            unsent: unsent.map(Box::new),
        }
    }

    fn timed_out() -> Self {
        Failure {
            cause: String::new(),
            timed_out: true,
            resend: false,
            unsent: None,
        }
    }
}

/// Runs `answer` until `until`: on the HTTP/1 connection's own timer when there is one, else
/// on a timer of its own. `None` when the time ran out. The caller pins `answer` in its own
/// state: taken by value, it would be stored twice (argument and pinned local).
async fn within<F: Future>(
    mut answer: std::pin::Pin<&mut F>,
    until: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Option<F::Output> {
    match deadline {
        Some(deadline) => {
            deadline.await_response(until);
            let answered = std::future::poll_fn(|cx| {
                if deadline.response_expired() {
                    return std::task::Poll::Ready(None);
                }
                answer.as_mut().poll(cx).map(Some)
            })
            .await;
            deadline.response_arrived();
            answered
        }
        None => tokio::time::timeout_at(until, answer).await.ok(),
    }
}

/// Sends the request through hyper's client, on a pooled connection, or on a new one when the
/// pool has none or the pooled one turned out closed before the request left, and waits for the
/// response head.
async fn exchange(
    key: &Member,
    config: &crate::discovery::ClusterConfig,
    mut req: Request<UpstreamBody>,
    now: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Exchanged, Failure> {
    let timeout = config.response_timeout;
    if let Some(mut sender) = key.checkout(config.idle_timeout, now).await {
        match await_response(&mut sender, req, now + timeout, deadline).await {
            Ok(response) => return Ok((Some(sender), response.map(Answer::Hyper))),
            // The pooled connection was closed under us: not the member's fault, try a new one.
            Err(Failure {
                unsent: Some(back),
                timed_out: false,
                ..
            }) => req = *back,
            Err(failure) => return Err(failure),
        }
    }
    let mut sender = match pool::connect(key.authority(), config.connect_timeout).await {
        Ok(sender) => sender,
        Err(e) => {
            return Err(Failure::unsent(e.to_string(), Some(req)));
        }
    };
    let until = tokio::time::Instant::now() + timeout;
    let response = await_response(&mut sender, req, until, deadline).await?;
    Ok((Some(sender), response.map(Answer::Hyper)))
}

/// Sends the request through hyper's client and waits for the response head until `until`.
async fn await_response(
    sender: &mut Sender,
    req: Request<UpstreamBody>,
    until: tokio::time::Instant,
    deadline: Option<&Deadline>,
) -> Result<Response<Incoming>, Failure> {
    let send = std::pin::pin!(sender.try_send_request(req));
    match within(send, until, deadline).await {
        Some(Ok(response)) => Ok(response),
        Some(Err(mut e)) => {
            let unsent = e.take_message();
            Err(Failure::unsent(format!("request: {}", e.error()), unsent))
        }
        None => Err(Failure::timed_out()),
    }
}

fn rebuild(method: &Method, uri: &Uri, headers: &HeaderMap) -> Request<UpstreamBody> {
    let mut req = Request::new(UpstreamBody::empty());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    req
}

fn error_note(cause: &str) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("{cause} ({})", now.strftime("%Y-%m-%dT%H:%M:%SZ"))
}

async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    member: hyper::upgrade::OnUpgrade,
    lease: Lease,
) {
    match tokio::try_join!(client, member) {
        Ok((client, member)) => {
            let mut client = TokioIo::new(client);
            let mut member = TokioIo::new(member);
            match tokio::io::copy_bidirectional(&mut client, &mut member).await {
                Ok((to_member, from_member)) => {
                    lease.stats().sent_bytes.fetch_add(to_member, Relaxed);
                    lease.stats().received_bytes.fetch_add(from_member, Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// The protocol a request asks to switch to, when it is an HTTP/1.1 Upgrade request.
fn upgrade_protocol<B>(req: &Request<B>, scan: &Scan) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !scan.has_upgrade() {
        return None;
    }
    let upgrade = req.headers().get(header::UPGRADE)?;
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// The fields the proxy adds to a request for its members: X-Forwarded-For (the client's
/// address after any chain the client sent), X-Forwarded-Proto and X-Forwarded-Host. They are
/// not put in the request's header map: the lean exchange writes them as the head goes out, and
/// only hyper's client path inserts them into the map (see [`Forwarding::insert`]). The
/// client's own lines of those names are taken out of the map when the request is routed.
pub struct Forwarding {
    forwarded_for: HeaderValue,
    host: Option<HeaderValue>,
}

static HTTP: HeaderValue = HeaderValue::from_static("http");

impl Forwarding {
    /// The fields: X-Forwarded-For, X-Forwarded-Proto, and X-Forwarded-Host when there is a host.
    pub fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        [
            (&X_FORWARDED_FOR, &self.forwarded_for),
            (&X_FORWARDED_PROTO, &HTTP),
        ]
        .into_iter()
        .chain(self.host.as_ref().map(|host| (&X_FORWARDED_HOST, host)))
    }

    /// Puts the fields into `headers`, replacing the client's lines of the same names.
    fn insert(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Readies the request for its members: hop-by-hop fields left out, an upgrade asked for again,
/// an absolute-form target made origin-form with its authority as Host. Returns the forwarding
/// fields to add. `client` is the client's address, formatted as an X-Forwarded-For entry.
fn prepare_request<B>(
    req: &mut Request<B>,
    client: &HeaderValue,
    host: Option<HeaderValue>,
    upgrade: Option<HeaderValue>,
    scan: Scan,
) -> Forwarding {
    let origin_form = req.uri().scheme().is_none() && req.uri().authority().is_none();
    let headers = req.headers_mut();
    strip_present(headers, scan.hop_by_hop);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // Every X-Forwarded-For line the client sent stays in the chain, in order. Without one (the
    // usual case) the client's formatted address goes as it is, with no formatting or allocation.
    let mut previous = scan
        .forwarded
        .then(|| headers.get_all(&X_FORWARDED_FOR).iter())
        .into_iter()
        .flatten()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    let forwarded_for = if previous.peek().is_none() {
        client.clone()
    } else {
        let mut chain = String::new();
        for previous in previous {
            chain.push_str(previous);
            chain.push_str(", ");
        }
        chain.push_str(client.to_str().unwrap_or(""));
        HeaderValue::from_str(&chain).unwrap_or_else(|_| client.clone())
    };
    if scan.forwarded {
        // The client's own lines give way to ours (the chain above keeps its X-Forwarded-For).
        for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
            headers.remove(name);
        }
    }
    if !origin_form {
        // The authority replaces Host (RFC 9112 3.2.2); with an origin-form target, Host is
        // already the value it would get.
        if let Some(host) = &host {
            headers.insert(header::HOST, host.clone());
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = Uri::try_from(path) {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    Forwarding {
        forwarded_for,
        host,
    }
}

/// True when the only Connection header is "keep-alive" (what most members answer): it names no
/// other header, so the general parse of its tokens can be skipped.
fn only_keep_alive(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONNECTION).iter();
    values
        .next()
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
        && values.next().is_none()
}

/// Removes the headers that describe one connection and must not be forwarded (RFC 9110 7.6.1),
/// including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = Scan::of(headers).hop_by_hop;
    strip_present(headers, present);
}

/// What one pass over a request's field names finds, so that the names looked for are not
/// each looked up by hash: the hop-by-hop fields present (a bit per [`HOP_BY_HOP`] entry,
/// usually none or only Connection), and whether any X-Forwarded-For, -Proto or -Host is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    hop_by_hop: u16,
    forwarded: bool,
}

impl Scan {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut scan = Scan::default();
        for name in headers.keys() {
            scan.see(head::field(name.as_str().as_bytes()));
        }
        scan
    }

    /// Takes in one field name, of the kind `field` found.
    pub fn see(&mut self, field: Field) {
        match field {
            Field::HopByHop(i) => self.hop_by_hop |= 1 << i,
            Field::Forwarded => self.forwarded = true,
            _ => {}
        }
    }

    fn has_upgrade(&self) -> bool {
        self.hop_by_hop & (1 << UPGRADE) != 0
    }
}

/// Removes the hop-by-hop fields `present` marks, and those the Connection header names.
fn strip_present(headers: &mut HeaderMap, present: u16) {
    if present == 0 {
        return;
    }
    if present & 1 != 0 && !only_keep_alive(headers) {
        // Headers the Connection header names beyond the fixed ones ("close" names none): looked
        // up, and their names built, only for such tokens.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| hop_by_hop(t.as_bytes()).is_none() && headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_client_address_is_written_as_the_standard_library_writes_it(
            octets in any::<[u8; 4]>(),
            segments in any::<[u16; 8]>(),
        ) {
            let v4 = std::net::Ipv4Addr::from(octets);
            prop_assert_eq!(forwarded_for(v4.into()), v4.to_string());
            let v6 = std::net::Ipv6Addr::from(segments);
            prop_assert_eq!(forwarded_for(v6.into()), v6.to_string());
        }
    }

    #[test]
    fn client_addresses_at_the_edges_of_each_octet() {
        for (ip, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.255"),
            ("10.0.100.9", "10.0.100.9"),
            ("1.20.199.200", "1.20.199.200"),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(forwarded_for(ip).as_bytes(), text.as_bytes());
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
        let mut req = Request::builder()
            .uri("http://shop.example.com/cart?x=1")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.9")
            .header("host", "shop.example.com")
            .body(())
            .expect("request");
        // The absolute-form target's authority is what Host becomes.
        let host = Some(HeaderValue::from_static("shop.example.com"));
        let client = forwarded_for("127.0.0.1".parse().expect("ip"));
        let scan = Scan::of(req.headers());
        let forwarding = prepare_request(&mut req, &client, host, None, scan);
        let h = req.headers();
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone} must be removed");
        }
        assert_eq!(h["host"], "shop.example.com");
        assert_eq!(req.uri().to_string(), "/cart?x=1");
        let added: Vec<(&str, &str)> = forwarding
            .fields()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("text")))
            .collect();
        assert_eq!(
            added,
            [
                ("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "shop.example.com"),
            ]
        );
        // On hyper's path they replace the client's lines in the map.
        let mut headers = req.headers().clone();
        forwarding.insert(&mut headers);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        // Without a host, no X-Forwarded-Host.
        let mut bare = Request::new(());
        let forwarding =
            prepare_request(&mut bare, &client, None, None, Scan::of(&HeaderMap::new()));
        assert_eq!(forwarding.fields().count(), 2);
        assert!(!bare.headers().contains_key("host"));
    }

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
        assert!(size <= 1024, "a request's future takes {size} bytes");
    }

    /// What is moved from hand to hand on every request stays small: the request and the
    /// member connection go as pointers, and a failed exchange's result does not carry the
    /// request inline (each move of a value over about 128 bytes is a call to memcpy).
    #[test]
    fn what_moves_on_every_request_stays_small() {
        use std::mem::size_of;
        assert_eq!(
            size_of::<super::super::upstream::Conn>(),
            size_of::<usize>()
        );
        assert!(
            size_of::<Routed>() <= 160,
            "Routed: {}",
            size_of::<Routed>()
        );
        assert!(
            size_of::<Failure>() <= 64,
            "Failure: {}",
            size_of::<Failure>()
        );
        let exchanged = size_of::<Result<Exchanged, Failure>>();
        assert!(exchanged <= 256, "an exchange's result: {exchanged}");
    }

    #[test]
    fn a_scan_finds_upgrade_and_the_forwarded_chain() {
        assert_eq!(HOP_BY_HOP[UPGRADE], "upgrade");
        let req = Request::builder()
            .header("Upgrade", "websocket")
            .header("X-Forwarded-For", "203.0.113.9")
            .body(())
            .expect("request");
        let scan = Scan::of(req.headers());
        assert!(scan.has_upgrade() && scan.forwarded);
        assert_eq!(scan.hop_by_hop, 1 << UPGRADE);
        let scan = Scan::of(&HeaderMap::new());
        assert!(!scan.has_upgrade() && !scan.forwarded);
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade() {
        let mut req = Request::builder()
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .expect("request");
        let scan = Scan::of(req.headers());
        let protocol = upgrade_protocol(&req, &scan);
        assert_eq!(
            protocol.as_ref().map(|p| p.as_bytes()),
            Some(&b"websocket"[..])
        );
        let client = forwarded_for("::1".parse().expect("ip"));
        prepare_request(&mut req, &client, None, protocol, scan);
        assert_eq!(req.headers()["connection"], "upgrade");
        assert_eq!(req.headers()["upgrade"], "websocket");
    }
}
