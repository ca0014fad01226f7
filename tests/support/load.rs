//! Load for the fault tests: keep-alive HTTP/1.1 connections sending GETs at a fixed rate, with
//! exact counts. Each connection sends its requests one after another; request `i` of the run is
//! due at `start + i / rate` (open loop: one that is late goes at once). Nothing is retried: every
//! request sent ends as an answer, counted by status, or as a failure (refused, reset, closed
//! before the answer's end, no answer within `ANSWER_LIMIT`), after which the connection is opened
//! again. A connection that the proxy closed while it was idle is opened again before the next
//! request, which is then sent: no request is lost that way. Bounded: at most `requests`
//! requests, and none after `time`.
//!
//! `report` prints a row of `docs/reliability.md`'s table ("Faults under load"), which
//! `scripts/faults.sh` collects; `long()` tells a test to run at the sizes of that script.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::wait;

/// The longest a request may wait for its whole answer before it counts as failed.
pub const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// How many failures are kept word for word (the rest are only counted).
const KEPT_FAILURES: usize = 20;

/// What load to send.
#[derive(Clone, Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub path: String,
    /// Requests per second, over all connections.
    pub rate: u32,
    pub connections: usize,
    /// At most this many requests.
    pub requests: u64,
    /// None sent after this long.
    pub time: Duration,
}

impl Plan {
    /// `rate` requests a second to `addr` over `connections` connections, for at most `time` (and
    /// at most `rate × time` requests).
    pub fn new(addr: SocketAddr, rate: u32, connections: usize, time: Duration) -> Plan {
        Plan {
            addr,
            path: "/".to_owned(),
            rate,
            connections,
            requests: (f64::from(rate) * time.as_secs_f64()).ceil() as u64,
            time,
        }
    }
}

#[derive(Default)]
struct Counts {
    stop: AtomicBool,
    /// The next request's number in the schedule.
    next: AtomicU64,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Connections opened (the first ones included).
    connects: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    failures: Mutex<Vec<String>>,
    /// Each answer's time from the request's due time (so a late send counts), in microseconds.
    latencies: Mutex<Vec<u32>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, SeqCst);
        let mut kept = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_FAILURES {
            kept.push(what);
        }
    }
}

/// A load running on the test's runtime; `stop` ends it and gives the counts.
pub struct Load {
    counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    plan: Plan,
}

/// What a load did.
#[derive(Debug)]
pub struct Tally {
    /// Requests sent (written, or being written, on a connection).
    pub sent: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no whole answer.
    pub failed: u64,
    /// The first failures, word for word.
    pub failures: Vec<String>,
    /// Connections opened, the first ones included.
    pub connects: u64,
    /// Answer times (from each request's due time), sorted, in microseconds.
    pub latencies: Vec<u32>,
    pub elapsed: Duration,
    /// What was asked for.
    pub plan: Plan,
}

impl Tally {
    /// Answers per second, over the run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Fails the test unless every request sent got a 2xx answer.
    pub fn assert_all_ok(&self, what: &str) {
        assert!(self.sent > 0, "{what}: no request was sent");
        assert_eq!(
            (self.ok, self.failed),
            (self.sent, 0),
            "{what}: of {} requests sent, {} got a 2xx answer and {} none; answers by status: \
             {:?}; first failures: {:#?}",
            self.sent,
            self.ok,
            self.failed,
            self.statuses,
            self.failures
        );
    }

    /// The answer time below which a share `q` of the answers came.
    pub fn quantile(&self, q: f64) -> Duration {
        let Some(last) = self.latencies.len().checked_sub(1) else {
            return Duration::ZERO;
        };
        let at = ((last as f64) * q).round() as usize;
        Duration::from_micros(u64::from(self.latencies[at.min(last)]))
    }

    /// The load as the table shows it: `2,000 req/s × 20 conns (achieved 1,990; answer time
    /// p50 1.2 ms, p99 4.0 ms, max 9.1 ms)`.
    pub fn shown(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{} req/s × {} conns (achieved {}; answer time p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
            thousands(u64::from(self.plan.rate)),
            self.plan.connections,
            thousands(self.rate().round() as u64),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
        )
    }
}

impl Load {
    pub fn start(plan: Plan) -> Load {
        assert!(plan.rate > 0 && plan.connections > 0, "{plan:?}");
        let counts = Arc::new(Counts::default());
        let started = Instant::now() + Duration::from_millis(20);
        let tasks = (0..plan.connections)
            .map(|_| tokio::spawn(connection(plan.clone(), counts.clone(), started)))
            .collect();
        Load {
            counts,
            tasks,
            started,
            plan,
        }
    }

    /// Requests ended so far (answered or failed).
    pub fn done(&self) -> u64 {
        self.counts.ok.load(SeqCst)
            + self.counts.failed.load(SeqCst)
            + self.counts.statuses_not_ok()
    }

    /// Requests that failed so far (no whole answer), and answers that were not 2xx.
    pub fn bad(&self) -> u64 {
        self.counts.failed.load(SeqCst) + self.counts.statuses_not_ok()
    }

    /// Waits until `n` more requests have ended than now (traffic went on meanwhile). Fails
    /// the test when they take longer than `wait::TIMEOUT`, or the load ended first.
    pub async fn more(&self, n: u64) {
        let target = self.done() + n;
        let deadline = Instant::now() + wait::TIMEOUT;
        while self.done() < target {
            assert!(
                self.tasks.iter().any(|t| !t.is_finished()),
                "the load ended before {n} more requests: raise its bounds ({:?})",
                self.plan
            );
            assert!(
                Instant::now() < deadline,
                "{n} more requests did not end within {:?}",
                wait::TIMEOUT
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops sending, lets the requests in flight end, and counts.
    pub async fn stop(self) -> Tally {
        self.counts.stop.store(true, SeqCst);
        for task in self.tasks {
            wait::within("the load's connections to end", ANSWER_LIMIT * 2, task)
                .await
                .expect("a load connection");
        }
        let counts = &self.counts;
        Tally {
            sent: counts.sent.load(SeqCst),
            ok: counts.ok.load(SeqCst),
            statuses: counts
                .statuses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            failed: counts.failed.load(SeqCst),
            failures: counts
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            connects: counts.connects.load(SeqCst),
            latencies: {
                let mut all = counts
                    .latencies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                all.sort_unstable();
                all
            },
            elapsed: self.started.elapsed(),
            plan: self.plan,
        }
    }
}

impl Counts {
    fn statuses_not_ok(&self) -> u64 {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One keep-alive connection's share of the schedule.
async fn connection(plan: Plan, counts: Arc<Counts>, start: Instant) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(plan.rate));
    let end = start + plan.time;
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        if counts.stop.load(SeqCst) {
            return;
        }
        let i = counts.next.fetch_add(1, SeqCst);
        if i >= plan.requests {
            return;
        }
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            return;
        }
        tokio::time::sleep_until(due).await;
        if counts.stop.load(SeqCst) {
            return;
        }
        // A connection the proxy closed while idle is opened again; nothing was sent on it.
        if let Some(s) = sender.as_mut()
            && s.ready().await.is_err()
        {
            sender = None;
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(plan.addr).await {
                Ok(s) => {
                    counts.connects.fetch_add(1, SeqCst);
                    sender.insert(s)
                }
                Err(e) => {
                    // The request could not go: it counts as sent and failed.
                    counts.sent.fetch_add(1, SeqCst);
                    counts.fail(format!("request {i}: connect: {e}"));
                    // Bounded: at most one attempt per scheduled request.
                    continue;
                }
            },
        };
        let request = http::Request::get(&plan.path)
            .header(http::header::HOST, plan.addr.to_string())
            .body(Empty::new())
            .expect("a valid request");
        counts.sent.fetch_add(1, SeqCst);
        let exchange = async {
            let response = s.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{status} answer, then: {e}"))?;
            Ok::<u16, String>(status)
        };
        match tokio::time::timeout(ANSWER_LIMIT, exchange).await {
            Ok(Ok(status)) => {
                let took = u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX);
                counts
                    .latencies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(took);
                if (200..300).contains(&status) {
                    counts.ok.fetch_add(1, SeqCst);
                }
                *counts
                    .statuses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(status)
                    .or_default() += 1;
            }
            Ok(Err(e)) => {
                counts.fail(format!("request {i}: {e}"));
                sender = None;
            }
            Err(_) => {
                counts.fail(format!(
                    "request {i}: no whole answer within {ANSWER_LIMIT:?}"
                ));
                sender = None;
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Its end shows as the next request's error.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Whether to run at the sizes of `scripts/faults.sh` (`KB_FAULTS=long`) rather than CI's.
pub fn long() -> bool {
    match std::env::var("KB_FAULTS").as_deref() {
        Ok("long") => true,
        Ok("short") | Err(_) => false,
        Ok(other) => panic!("KB_FAULTS must be short or long, not {other:?}"),
    }
}

/// `short` in CI, `long` under `scripts/faults.sh`.
pub fn sized<T>(short: T, long_size: T) -> T {
    if long() { long_size } else { short }
}

/// A size that `scripts/faults.sh` may set (`KB_FAULTS_<NAME>`, e.g. `KB_FAULTS_KILLS=5`), or else
/// `sized(short, long)`.
pub fn knob<T>(name: &str, short: T, long_size: T) -> T
where
    T: std::str::FromStr,
    T::Err: std::fmt::Debug,
{
    let var = format!("KB_FAULTS_{name}");
    match std::env::var(&var) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|e| panic!("{var}={text:?} is not a size: {e:?}")),
        Err(_) => sized(short, long_size),
    }
}

/// Prints one row of the "Faults under load" table for `scripts/faults.sh` to collect: the fault,
/// its size, the load, requests sent, 2xx answers, failures, WebSockets, and what else was
/// checked.
pub fn report(fault: &str, size: &str, tally: Option<&Tally>, websockets: &str, checked: &str) {
    let (load, sent, ok, failed) = match tally {
        Some(t) => (
            t.shown(),
            thousands(t.sent),
            thousands(t.ok),
            thousands(t.sent - t.ok),
        ),
        None => ("none".into(), "-".into(), "-".into(), "-".into()),
    };
    println!(
        "faults-row | {fault} | {size} | {load} | {sent} | {ok} | {failed} | {websockets} | {checked} |"
    );
}

/// `12345` as `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
