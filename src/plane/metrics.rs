//! Figures of the process that belong to no member: client connections, TLS handshakes,
//! configuration loads, the controller's work, the access log's queue. Counted here (atomics),
//! read by `/metrics`; the members' own figures live in their [`MemberStats`].
//!
//! [`MemberStats`]: crate::balancer::MemberStats

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::balancer::traffic::{Histogram, HistogramRead, TrafficRead};

/// What the data plane counts besides its members.
#[derive(Debug, Default)]
pub struct PlaneMetrics {
    /// Client connections open now, and accepted all told.
    pub connections_open: AtomicI64,
    pub connections: AtomicU64,
    /// Client connections answered 503 and closed because `--max-connections` were open.
    pub connections_refused: AtomicU64,
    /// Requests being answered now (routed or not).
    pub requests_active: AtomicI64,
    /// TLS handshakes with clients that succeeded and that failed.
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Configurations published, and loads refused; the Unix time (ms) of the last of each.
    pub reloads: AtomicU64,
    pub reloads_refused: AtomicU64,
    pub last_reload_ms: AtomicU64,
    pub last_refused_ms: AtomicU64,
    /// How long building and publishing a snapshot took.
    pub publish_time: Histogram,
    /// Access log lines written, and dropped because the queue to the writer was full.
    pub access_log_lines: AtomicU64,
    pub access_log_dropped: AtomicU64,
    /// Spans handed to the OTLP exporter, and dropped (its queue was full).
    pub spans: AtomicU64,
    /// Traffic figures of members that left a cluster, by cluster key: a cluster's totals stay
    /// whole (Prometheus counters never go down) when its members come and go.
    pub departed: Mutex<HashMap<String, TrafficRead>>,
    /// Members of a cluster above which they get no detailed series of their own.
    member_detail_limit: OnceLock<usize>,
}

/// Members of a cluster above which `/metrics` leaves out their own histograms and status-code
/// series: 5,000 members would make hundreds of thousands of series.
pub const MEMBER_DETAIL_LIMIT: usize = 100;

/// The Unix time now, in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl PlaneMetrics {
    pub fn set_member_detail_limit(&self, limit: usize) {
        let _ = self.member_detail_limit.set(limit);
    }

    pub fn member_detail_limit(&self) -> usize {
        self.member_detail_limit
            .get()
            .copied()
            .unwrap_or(MEMBER_DETAIL_LIMIT)
    }

    /// A configuration was published.
    pub fn reloaded(&self, took: Duration) {
        self.reloads.fetch_add(1, Relaxed);
        self.last_reload_ms.store(unix_ms(), Relaxed);
        self.publish_time.record(took);
    }

    /// A configuration load was refused (an invalid file or resource).
    pub fn refused(&self) {
        self.reloads_refused.fetch_add(1, Relaxed);
        self.last_refused_ms.store(unix_ms(), Relaxed);
    }

    /// Keeps the figures of a member that left `cluster`.
    pub fn departed(&self, cluster: &str, read: &TrafficRead) {
        let mut departed = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        departed.entry(cluster.to_owned()).or_default().merge(read);
    }

    pub fn departed_of(&self, cluster: &str) -> TrafficRead {
        let departed = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        departed.get(cluster).cloned().unwrap_or_default()
    }
}

/// The controller's work, for the whole process (one controller runs per process).
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    /// Watch events received, by kind of object.
    pub watch_events: Mutex<BTreeMap<&'static str, u64>>,
    /// Watch errors (each retried with backoff).
    pub watch_errors: AtomicU64,
    /// Recomputing the member lists from the watched objects, and publishing when they changed.
    pub reconcile_time: Histogram,
    pub reconciles: AtomicU64,
}

impl ControllerMetrics {
    pub fn watch_event(&self, kind: &'static str) {
        let mut events = self.watch_events.lock().unwrap_or_else(|e| e.into_inner());
        *events.entry(kind).or_default() += 1;
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconciles.fetch_add(1, Relaxed);
        self.reconcile_time.record(took);
    }

    pub fn events(&self) -> Vec<(&'static str, u64)> {
        let events = self.watch_events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn reconcile_read(&self) -> HistogramRead {
        self.reconcile_time.read()
    }
}

/// The controller's figures.
pub static CONTROLLER: std::sync::LazyLock<ControllerMetrics> =
    std::sync::LazyLock::new(ControllerMetrics::default);
