//! Active health checks, like Apache's mod_proxy_hcheck: every member of a cluster with
//! `spec.healthCheck` is probed every `interval` (TCP connect, a HEAD, GET or OPTIONS request,
//! or gRPC's standard `grpc.health.v1.Health/Check` over h2c), and a member that fails `fails`
//! checks in a row is HealthCheckFailed, taking no requests, until it passes `passes` in a row.
//! An `https://` member's HTTP and gRPC checks go over TLS (gRPC's in h2, ALPN `h2`), made and
//! verified with its cluster's client configuration as its requests are.
//!
//! The checker is one task on its own thread, fed by the data plane's current snapshot. Its
//! schedule is keyed by member identity (cluster and URL) and the verdicts live in the members'
//! shared counters, so both survive snapshot rebuilds. Stopped members are not checked. The
//! first check of each member comes at a point of the interval derived from its identity, so
//! checks are spread out rather than fired all at once, and they stay spread.
//!
//! This module owns the probing and the scheduling; what a member's results mean is
//! [`record`], pure.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api::HealthCheckMethod;
use crate::api::text::quote;
use crate::balancer::{Health, MemberStats};
use crate::clock;
use crate::discovery::{HealthCheckConfig, fnv1a};
use crate::plane::DataPlane;
use crate::tls;

/// How much of an answer's body `bodyContains` searches.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How often the checker looks for a new snapshot when no check is due sooner.
const IDLE_WAKE_MS: u64 = 250;

/// The shortest interval the checker honours, whatever the configuration says.
const MIN_INTERVAL_MS: u64 = 100;

/// The running checker: started next to the data plane by whoever starts it, stopped with it.
pub struct Checker {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Checker {
    /// Starts the checker on its own thread, fed by `plane`'s current snapshot.
    pub fn start(plane: Arc<DataPlane>) -> std::io::Result<Checker> {
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("kb-health".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the health checker");
                        return;
                    }
                };
                runtime.block_on(run(plane, stopped));
            })?;
        Ok(Checker { stop, thread })
    }

    /// Stops checking and waits for the thread to end. Blocking: call it from a blocking
    /// context.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

struct Due {
    next_ms: u64,
    running: Arc<AtomicBool>,
}

/// Checks members as they come due until told to stop.
pub async fn run(plane: Arc<DataPlane>, mut stop: watch::Receiver<bool>) {
    let mut due: HashMap<(String, String), Due> = HashMap::new();
    loop {
        let now = clock::now_ms();
        let mut wake = now + IDLE_WAKE_MS;
        let mut seen = HashSet::new();
        let snapshot = plane.snapshot_full();
        for cluster in &snapshot.clusters {
            let Some(check) = &cluster.config.policy.health_check else {
                continue;
            };
            let interval = millis(check.interval).max(MIN_INTERVAL_MS);
            for (member, live) in cluster
                .config
                .members
                .iter()
                .zip(cluster.balancer.members())
            {
                if member.state == crate::api::MemberState::Stopped {
                    continue;
                }
                let id = (cluster.key.clone(), member.url.clone());
                let entry = due.entry(id.clone()).or_insert_with(|| Due {
                    next_ms: now + spread(&id.0, &id.1, interval),
                    running: Arc::default(),
                });
                if entry.next_ms <= now && !entry.running.swap(true, Relaxed) {
                    // Keep the member's place in the interval rather than drift.
                    entry.next_ms = (entry.next_ms + interval).max(now + 1);
                    let tls = member.is_tls().then(|| cluster.upstream_tls.clone());
                    tokio::spawn(check_member(
                        plane.clone(),
                        cluster.key.clone(),
                        member.authority.clone(),
                        tls,
                        check.clone(),
                        live.stats.clone(),
                        entry.running.clone(),
                    ));
                }
                wake = wake.min(entry.next_ms);
                seen.insert(id);
            }
        }
        drop(snapshot);
        due.retain(|id, _| seen.contains(id));
        let sleep = Duration::from_millis(wake.saturating_sub(clock::now_ms()));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Where in the interval a member's checks fall: the same for the same member, different
/// for different ones.
fn spread(cluster: &str, url: &str, interval_ms: u64) -> u64 {
    let id = format!("{cluster} {url}");
    fnv1a(id.as_bytes()) % interval_ms.max(1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn check_member(
    plane: Arc<DataPlane>,
    cluster: String,
    authority: String,
    tls: Option<Option<Arc<tls::Upstream>>>,
    check: HealthCheckConfig,
    stats: Arc<MemberStats>,
    running: Arc<AtomicBool>,
) {
    let outcome = probe(&authority, tls.as_ref().map(Option::as_deref), &check).await;
    running.store(false, Relaxed);
    let now = clock::now_ms();
    match record(
        &check,
        &stats,
        outcome.as_ref().map(|_| ()).map_err(String::as_str),
        now,
    ) {
        None => return,
        Some(Change::Out) => {
            let cause = outcome.err().unwrap_or_default();
            tracing::warn!(%cluster, member = %authority, %cause, "health check failed: member taken out");
        }
        Some(Change::Back(from)) => match stats.health(now) {
            Health::Ok => {
                tracing::info!(%cluster, member = %authority, from = from.describe(), "health check passed: member back");
            }
            // Passive ejection is not the checks' to end.
            still => {
                tracing::info!(%cluster, member = %authority, from = from.describe(), health = still.as_str(), "health check passed, but the member stays out");
            }
        },
    }
    // The verdict is in the shared counters; the snapshot serving now must rebuild its
    // schedule (loaded after the write, so a snapshot published meanwhile sees it too).
    let snapshot = plane.snapshot();
    if let Some(c) = snapshot.clusters.iter().find(|c| c.key == cluster) {
        c.balancer.invalidate();
    }
}

/// What a check's result changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The member failed `fails` checks in a row: it takes no requests.
    Out,
    /// The member passed `passes` checks in a row while it was out: what it came back from is
    /// cleared.
    Back(OutFrom),
}

/// Why a member was out when its checks brought it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutFrom {
    /// It had failed its health checks.
    pub checks: bool,
    /// It was in error from a failed request, waiting for `retryAfterError`.
    pub request: bool,
}

impl OutFrom {
    pub fn describe(self) -> &'static str {
        match (self.checks, self.request) {
            (true, true) => "failed health checks and a failed request",
            (true, false) => "failed health checks",
            (false, _) => "a failed request",
        }
    }
}

/// Counts one check's result, Apache's way (mod_proxy_hcheck): a member that is in fails
/// `fails` checks in a row to go out. A member that is out, because it failed its checks or
/// because a request failed on it, passes `passes` in a row to come back, and both are
/// cleared: a member whose checks pass is not left waiting for `retryAfterError`.
pub fn record(
    check: &HealthCheckConfig,
    stats: &MemberStats,
    outcome: Result<(), &str>,
    now_ms: u64,
) -> Option<Change> {
    stats.hc_checks.fetch_add(1, Relaxed);
    let failed = stats.hc_failed.load(Relaxed);
    let in_error = stats.error_until_ms.load(Relaxed) > now_ms;
    let cause = match outcome {
        Err(cause) => cause,
        Ok(()) => return passed(check, stats, failed, in_error, now_ms),
    };
    stats.hc_failures.fetch_add(1, Relaxed);
    stats.hc_passes.store(0, Relaxed);
    if failed {
        return None;
    }
    let fails = stats.hc_fails.fetch_add(1, Relaxed) + 1;
    if fails < check.fails {
        return None;
    }
    stats.hc_fails.store(0, Relaxed);
    // The reason first, so whoever sees the member out also sees why.
    stats.set_last_error(format!(
        "health check: {cause} ({})",
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
    ));
    stats.hc_failed.store(true, Relaxed);
    stats.state_since_ms.store(now_ms, Relaxed);
    Some(Change::Out)
}

/// A passed check: brings the member back once it has passed `passes` in a row.
fn passed(
    check: &HealthCheckConfig,
    stats: &MemberStats,
    failed: bool,
    in_error: bool,
    now_ms: u64,
) -> Option<Change> {
    stats.hc_fails.store(0, Relaxed);
    if !failed && !in_error {
        stats.hc_passes.store(0, Relaxed);
        return None;
    }
    let passes = stats.hc_passes.fetch_add(1, Relaxed) + 1;
    if passes < check.passes {
        return None;
    }
    stats.hc_passes.store(0, Relaxed);
    stats.clear_error();
    stats.ramp_from_ms.store(now_ms.max(1), Relaxed);
    stats.hc_failed.store(false, Relaxed);
    stats.state_since_ms.store(now_ms, Relaxed);
    Some(Change::Back(OutFrom {
        checks: failed,
        request: in_error,
    }))
}

/// One check of the member at `authority`: `Ok` when it passes, or why it did not. `tls` is
/// `Some` for an `https://` member: its cluster's client configuration, or `None` when that
/// could not be loaded (then the check fails: the member is never asked in plain HTTP).
pub async fn probe(
    authority: &str,
    tls: Option<Option<&tls::Upstream>>,
    check: &HealthCheckConfig,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_inner(authority, tls, check)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
    }
}

async fn probe_inner(
    authority: &str,
    tls: Option<Option<&tls::Upstream>>,
    check: &HealthCheckConfig,
) -> Result<(), String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if check.method == HealthCheckMethod::Tcp {
        return Ok(());
    }
    let _ = stream.set_nodelay(true);
    let grpc = check.method == HealthCheckMethod::Grpc;
    let Some(tls) = tls else {
        return if grpc {
            probe_grpc(stream, authority, false, &check.grpc_service).await
        } else {
            probe_http(stream, authority, check).await
        };
    };
    let upstream = tls.ok_or("the cluster's upstreamTLS could not be loaded")?;
    let stream = upstream
        .connect(stream, authority, grpc)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if grpc {
        probe_grpc(stream, authority, true, &check.grpc_service).await
    } else {
        probe_http(stream, authority, check).await
    }
}

/// A HEAD, GET or OPTIONS request on `stream`, in HTTP/1.1.
async fn probe_http<IO>(
    stream: IO,
    authority: &str,
    check: &HealthCheckConfig,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::builder()
        .method(check.method.as_str())
        .uri(check.path.as_str())
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "kube-balancer-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let what = format!("{} {}", check.method.as_str(), check.path);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = response.status().as_u16();
        if !check.expects(status) {
            return Err(format!("{what} answered {status}"));
        }
        let Some(needle) = check.body_contains.as_deref() else {
            return Ok(());
        };
        let mut body = response.into_body();
        let mut seen: Vec<u8> = Vec::new();
        while seen.len() < BODY_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(format!("{what}: body: {e}")),
                None => break,
            }
        }
        seen.truncate(BODY_LIMIT);
        if contains(&seen, needle.as_bytes()) {
            Ok(())
        } else {
            Err(format!(
                "{what} answered {status} without {} in its body",
                quote(needle)
            ))
        }
    }
    .await;
    driver.abort();
    result
}

/// `grpc.health.v1.Health/Check` for `service` (empty: the server as a whole), over h2c on
/// `stream` (h2 when `tls`): passes when the answer is SERVING with status OK.
async fn probe_grpc<IO>(stream: IO, authority: &str, tls: bool, service: &str) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let scheme = if tls { "https" } else { "http" };
    let what = match service {
        "" => "grpc.health.v1.Health/Check".to_owned(),
        service => format!("grpc.health.v1.Health/Check {service:?}"),
    };
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::builder()
        .method("POST")
        .uri(format!(
            "{scheme}://{authority}/grpc.health.v1.Health/Check"
        ))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "kube-balancer-health-check")
        .body(http_body_util::Full::new(Bytes::from(grpc_health_request(
            service,
        ))))
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("{what} answered HTTP {}", response.status()));
        }
        let head_status = grpc_status(response.headers());
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = head_status.or_else(|| collected.trailers().and_then(grpc_status));
        match status {
            Some((0, _)) => {}
            Some((code, message)) => {
                return Err(format!("{what} answered gRPC status {code} {message}"));
            }
            None => return Err(format!("{what} answered without a gRPC status")),
        }
        match serving_status(&collected.to_bytes()) {
            Some(1) => Ok(()),
            Some(other) => Err(format!(
                "{what} answered {}",
                match other {
                    2 => "NOT_SERVING".to_owned(),
                    3 => "SERVICE_UNKNOWN".to_owned(),
                    n => format!("status {n}"),
                }
            )),
            None => Err(format!(
                "{what} answered a message that is no HealthCheckResponse"
            )),
        }
    }
    .await;
    driver.abort();
    result
}

/// A `HealthCheckRequest { service }` as a gRPC message: the uncompressed flag, the length,
/// and the protobuf encoding (field 1, a string; nothing for an empty one).
fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        message.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            message.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&message);
    framed
}

/// The `status` of a `HealthCheckResponse` in one uncompressed gRPC message (0, UNKNOWN,
/// when the field is absent, as protobuf leaves defaults out).
fn serving_status(body: &[u8]) -> Option<u64> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let mut message = rest.get(4..4 + len)?;
    let mut status = 0;
    while let Some((&tag, rest)) = message.split_first() {
        let (value, rest) = varint(rest)?;
        match tag {
            0x08 => status = value,
            // Another varint field: skipped. Anything else is not expected here.
            t if t & 0x07 == 0 => {}
            _ => return None,
        }
        message = rest;
    }
    Some(status)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// `grpc-status` (and `grpc-message`) of a head or trailers.
fn grpc_status(fields: &http::HeaderMap) -> Option<(u32, String)> {
    let code = fields.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = fields
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((code, message))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(passes: u32, fails: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            method: HealthCheckMethod::Get,
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            passes,
            fails,
            expect_status: vec![(200, 399)],
            body_contains: None,
            grpc_service: String::new(),
        }
    }

    const BACK_FROM_CHECKS: Option<Change> = Some(Change::Back(OutFrom {
        checks: true,
        request: false,
    }));

    #[test]
    fn a_member_goes_out_after_fails_in_a_row_and_back_after_passes_in_a_row() {
        let c = check(2, 3);
        let s = MemberStats::default();
        assert_eq!(record(&c, &s, Err("down"), 1), None);
        assert_eq!(record(&c, &s, Err("down"), 2), None);
        assert_eq!(record(&c, &s, Ok(()), 3), None, "a pass resets the count");
        assert_eq!(record(&c, &s, Err("down"), 4), None);
        assert_eq!(record(&c, &s, Err("down"), 5), None);
        assert_eq!(s.last_error(), None, "no reason before it goes out");
        assert_eq!(record(&c, &s, Err("down"), 6), Some(Change::Out));
        assert!(!s.healthy(6));
        let reason = s.last_error().unwrap_or_default();
        assert!(reason.starts_with("health check: down ("), "{reason}");
        assert_eq!(record(&c, &s, Err("down"), 7), None);
        assert_eq!(record(&c, &s, Ok(()), 8), None);
        assert_eq!(
            record(&c, &s, Err("down"), 9),
            None,
            "a failure resets the count"
        );
        assert_eq!(record(&c, &s, Ok(()), 10), None);
        assert_eq!(record(&c, &s, Ok(()), 11), BACK_FROM_CHECKS);
        assert!(s.healthy(11));
        assert_eq!(
            s.ramp_from_ms.load(Relaxed),
            11,
            "slow start from its return"
        );
        assert_eq!(s.hc_checks.load(Relaxed), 11);
    }

    #[test]
    fn passing_checks_end_a_request_failure_error_too() {
        let c = check(2, 1);
        let s = MemberStats::default();
        // In error from a failed request until 60 000, its checks passing.
        s.error_until_ms.store(60_000, Relaxed);
        assert_eq!(s.health(1), Health::Error);
        assert_eq!(record(&c, &s, Ok(()), 1), None);
        assert_eq!(
            record(&c, &s, Ok(()), 2),
            Some(Change::Back(OutFrom {
                checks: false,
                request: true,
            }))
        );
        assert_eq!(s.health(2), Health::Ok);
        assert_eq!(s.ramp_from_ms.load(Relaxed), 2);

        // Failed checks and a failed request: both end with the passes.
        assert_eq!(record(&c, &s, Err("down"), 3), Some(Change::Out));
        s.error_until_ms.store(60_000, Relaxed);
        assert_eq!(record(&c, &s, Ok(()), 4), None);
        assert_eq!(
            record(&c, &s, Ok(()), 5),
            Some(Change::Back(OutFrom {
                checks: true,
                request: true,
            }))
        );
        assert_eq!(s.health(5), Health::Ok);

        // A member that is in is not counted towards coming back.
        assert_eq!(record(&c, &s, Ok(()), 6), None);
        s.error_until_ms.store(60_000, Relaxed);
        assert_eq!(record(&c, &s, Ok(()), 7), None, "one pass of two");
        // An error that ran out by itself needs no check.
        assert_eq!(record(&c, &s, Ok(()), 60_001), None);
        assert_eq!(s.hc_passes.load(Relaxed), 0);
    }

    #[test]
    fn what_a_member_came_back_from_reads_as_prose() {
        let from = |checks, request| OutFrom { checks, request }.describe();
        assert_eq!(from(true, false), "failed health checks");
        assert_eq!(from(false, true), "a failed request");
        assert_eq!(
            from(true, true),
            "failed health checks and a failed request"
        );
    }

    #[test]
    fn checks_are_spread_over_the_interval() {
        let offsets: HashSet<u64> = (0..50)
            .map(|i| spread("shop/web", &format!("http://10.0.0.{i}:8080"), 30_000))
            .collect();
        assert!(offsets.iter().all(|&o| o < 30_000));
        assert!(offsets.len() > 45, "{offsets:?}");
        assert_eq!(
            spread("shop/web", "http://a:1", 1000),
            spread("shop/web", "http://a:1", 1000)
        );
    }

    #[test]
    fn grpc_health_messages_are_written_and_read_as_protobuf_does() {
        assert_eq!(grpc_health_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_health_request("a.B"),
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let long = "s".repeat(200);
        assert_eq!(&grpc_health_request(&long)[5..8], [0x0a, 0xc8, 0x01]);
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(serving_status(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08]), None, "cut short");
    }

    #[test]
    fn body_search() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: down", b"ok"));
        assert!(contains(b"", b""));
    }
}
