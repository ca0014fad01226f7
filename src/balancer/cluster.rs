//! One cluster's live balancer: its members, the current candidate set with its method, and
//! the counters.
//!
//! The request path loads the current schedule (candidate set plus the method built for it)
//! through `ArcSwap` and asks the method: no lock. The schedule is rebuilt (under a mutex that
//! only rebuilders take) when a member's health changes, when a failed or ejected member's time
//! is up, or when the health checker says a member passed or failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use arc_swap::ArcSwap;

use super::{Affinity, MemberView, Method, PickContext, build_method, candidates};
use super::{outlier, slow_start, sticky};
use crate::api::{LbMethod, MemberState};
use crate::discovery::{ClusterConfig, OutlierConfig};

/// Live figures of one member. Shared by every snapshot that holds the same member, so a
/// configuration change does not reset them, nor its health.
#[derive(Debug, Default)]
pub struct MemberStats {
    /// Requests sent to the member (Apache's "Elected").
    pub elected: AtomicU64,
    /// Requests in flight now.
    pub busy: AtomicI64,
    /// Request bytes sent to the member ("To").
    pub sent_bytes: AtomicU64,
    /// Response bytes received from the member ("From").
    pub received_bytes: AtomicU64,
    /// Failures: connection errors, timeouts, `failOnStatus` answers.
    pub errors: AtomicU64,
    /// Requests refused under the member's connection limit (`memberLimits`): its queue was
    /// full, or they waited for the whole queue timeout.
    pub queue_full: AtomicU64,
    pub queue_timeouts: AtomicU64,
    /// Answers by status, answer and connect times, failovers: for `/metrics` (sharded per
    /// worker).
    pub traffic: super::traffic::Traffic,
    /// Times passive health checking ejected the member, all told.
    pub ejections_total: AtomicU64,
    /// Active health checks the member failed, all told.
    pub hc_failures: AtomicU64,
    /// When the member's state last changed (joined, failed, ejected, a health check verdict,
    /// a new configured state), on the process clock; the end of an error or an ejection is
    /// read from their own times.
    pub state_since_ms: AtomicU64,
    /// The member is in error until this time (milliseconds on the process clock); 0 if never.
    pub error_until_ms: AtomicU64,
    /// The last failure, with its wall-clock time, for the balancer-manager.
    pub last_error: Mutex<Option<String>>,

    /// Active health check: the member failed it and takes no requests until it passes.
    pub hc_failed: AtomicBool,
    /// Checks in a row that passed (while failed) or failed (while not), towards the threshold.
    pub hc_passes: AtomicU32,
    pub hc_fails: AtomicU32,
    /// Checks run.
    pub hc_checks: AtomicU64,

    /// Passive health: failures in a row, the current failure-rate window, ejections.
    pub consecutive_failures: AtomicU32,
    pub window_start_ms: AtomicU64,
    pub window_requests: AtomicU32,
    pub window_failures: AtomicU32,
    /// Ejections in a row, and the end of the current (or last) one.
    pub ejections: AtomicU32,
    pub ejected_until_ms: AtomicU64,

    /// Slow start: when the member joined or came back (0: it was there from the start), and
    /// the credit that decides which requests it keeps while it ramps.
    pub ramp_from_ms: AtomicU64,
    pub ramp_credit: AtomicU64,

    /// Peak-EWMA of response-head latency, as `f64` bits in nanoseconds, and when it was
    /// last updated (0: never).
    pub latency_ns: AtomicU64,
    pub latency_at_ms: AtomicU64,

    /// gRPC calls the member served or failed, by the status code their client got (0 to 16).
    pub grpc_status: [AtomicU64; 17],
}

/// gRPC's status codes by number, as its documents and tools name them.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Why a member does or does not take requests, as far as its health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Failed a request (refused, broken, `failOnStatus`): left alone until `retryAfterError`.
    Error,
    /// Failed its active health checks.
    HealthCheckFailed,
    /// Ejected by passive health checking.
    Ejected,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "Ok",
            Health::Error => "Error",
            Health::HealthCheckFailed => "HealthCheckFailed",
            Health::Ejected => "Ejected",
        }
    }
}

impl MemberStats {
    pub fn healthy(&self, now_ms: u64) -> bool {
        self.health(now_ms) == Health::Ok
    }

    pub fn health(&self, now_ms: u64) -> Health {
        if self.hc_failed.load(Relaxed) {
            Health::HealthCheckFailed
        } else if self.error_until_ms.load(Relaxed) > now_ms {
            Health::Error
        } else if self.ejected_until_ms.load(Relaxed) > now_ms {
            Health::Ejected
        } else {
            Health::Ok
        }
    }

    /// When the member's state last changed, as far as it is known at `now_ms`: the latest of
    /// the recorded change and the end of an error or ejection that is over.
    pub fn state_changed_ms(&self, now_ms: u64) -> u64 {
        let ended = |until: u64| if until <= now_ms { until } else { 0 };
        self.state_since_ms
            .load(Relaxed)
            .max(ended(self.error_until_ms.load(Relaxed)))
            .max(ended(self.ejected_until_ms.load(Relaxed)))
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Drops what active health checks found: they no longer run for this member.
    pub fn forget_health_check(&self) {
        self.hc_failed.store(false, Relaxed);
        self.hc_passes.store(0, Relaxed);
        self.hc_fails.store(0, Relaxed);
    }

    /// Counts a gRPC call that ended with `code` (a code gRPC does not define counts as
    /// UNKNOWN, 2).
    pub fn count_grpc_status(&self, code: u8) {
        let slot = self
            .grpc_status
            .get(usize::from(code))
            .unwrap_or(&self.grpc_status[2]);
        slot.fetch_add(1, Relaxed);
    }

    /// Ends a request failure's error state before `retryAfterError` runs out: the member's
    /// health checks say it is fine.
    pub fn clear_error(&self) {
        self.error_until_ms.store(0, Relaxed);
    }

    pub fn set_last_error(&self, cause: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(cause);
        }
    }
}

/// One member as the balancer sees it: configured shape plus shared live figures.
#[derive(Debug, Clone)]
pub struct BalancedMember {
    /// The member's identity; `lbMethod: hash` derives its slots from it.
    pub url: String,
    /// Sticky-session route.
    pub route: Option<String>,
    pub lbset: u32,
    pub load_factor: u32,
    pub state: MemberState,
    pub stats: Arc<MemberStats>,
}

/// What a cluster's balancer does beyond picking by its method.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub method: LbMethod,
    /// `lbMethod: hash`'s bounded load, in percent.
    pub bounded_load: Option<u32>,
    /// A request whose sticky route names no usable member gets no other (503).
    pub no_failover: bool,
    pub outlier: Option<OutlierConfig>,
    /// Zero: no slow start.
    pub slow_start_ms: u64,
    /// When no member is usable for health reasons alone, use them anyway (Apache's
    /// forcerecovery).
    pub force_recovery: bool,
}

impl Settings {
    pub fn from_config(config: &ClusterConfig) -> Self {
        let policy = &config.policy;
        Settings {
            method: config.lb_method,
            bounded_load: policy.hash.bounded_load,
            no_failover: config.no_failover,
            outlier: policy.outlier.clone(),
            slow_start_ms: u64::try_from(policy.slow_start.as_millis()).unwrap_or(u64::MAX),
            force_recovery: policy.force_recovery,
        }
    }
}

#[derive(Debug)]
struct Schedule {
    /// Members taking part, in visiting order.
    candidates: Vec<u32>,
    /// Load factors in effect, by member (slow start changes them while members ramp).
    factors: Vec<u32>,
    method: Box<dyn Method>,
    /// Health generation the schedule was built from.
    generation: u64,
    /// When a member now in error or ejected becomes eligible again, or a ramping member's
    /// factor changes: stale from then on.
    stale_at_ms: u64,
    /// Built by forced recovery: every candidate is down, and is tried anyway.
    forced: bool,
}

/// The balancer of one cluster, for one snapshot of its members.
#[derive(Debug)]
pub struct Balancer {
    members: Vec<BalancedMember>,
    settings: Settings,
    /// Sticky routes to member indices.
    routes: HashMap<Box<str>, usize>,
    schedule: ArcSwap<Schedule>,
    generation: AtomicU64,
    rebuild: Mutex<()>,
}

impl Balancer {
    /// A byrequests balancer with none of the extras (no sticky sessions, ejection, slow start
    /// or forced recovery).
    pub fn new(members: Vec<BalancedMember>, now_ms: u64) -> Self {
        Balancer::with_settings(members, Settings::default(), now_ms)
    }

    pub fn with_settings(members: Vec<BalancedMember>, settings: Settings, now_ms: u64) -> Self {
        let mut routes = HashMap::new();
        for (i, m) in members.iter().enumerate() {
            if let Some(route) = m.route.as_deref().filter(|r| !r.is_empty()) {
                // Two members with one route: the first keeps it.
                routes.entry(Box::from(route)).or_insert(i);
            }
        }
        let schedule = build_schedule(&members, &settings, 0, now_ms);
        Balancer {
            members,
            settings,
            routes,
            schedule: ArcSwap::from_pointee(schedule),
            generation: AtomicU64::new(0),
            rebuild: Mutex::new(()),
        }
    }

    pub fn members(&self) -> &[BalancedMember] {
        &self.members
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Picks a member for a new request, skipping `exclude` (members this request already
    /// failed on). Returns `None` when no member is usable.
    pub fn pick(&self, now_ms: u64, exclude: &[usize]) -> Option<usize> {
        self.pick_for(now_ms, exclude, &Affinity::default())
    }

    /// Picks a member for a request with a sticky route and/or a hash key.
    pub fn pick_for(&self, now_ms: u64, exclude: &[usize], affinity: &Affinity) -> Option<usize> {
        // Each round either returns or rebuilds the schedule; a few rounds cover races with
        // other rebuilders.
        for _ in 0..(4 + exclude.len() * 2) {
            let schedule = self.schedule.load();
            let fresh = schedule.generation == self.generation.load(Relaxed)
                && now_ms < schedule.stale_at_ms;
            if !fresh {
                self.rebuild(now_ms);
                continue;
            }
            if let Some(value) = affinity.sticky.as_deref() {
                match self.sticky_member(value, now_ms, exclude, schedule.forced) {
                    Some(index) => return Some(index),
                    // Apache's nofailover: the session breaks rather than move.
                    None if self.settings.no_failover => return None,
                    None => {}
                }
            }
            let index = self.method_pick(&schedule, exclude, affinity.key, now_ms)?;
            if !schedule.forced && !self.members[index].stats.healthy(now_ms) {
                // Marked in error by a peer since the schedule was built.
                self.rebuild(now_ms);
                continue;
            }
            return Some(self.slow_start(&schedule, index, exclude, affinity.key, now_ms));
        }
        None
    }

    fn method_pick(
        &self,
        schedule: &Schedule,
        exclude: &[usize],
        key: Option<u64>,
        now_ms: u64,
    ) -> Option<usize> {
        let random = match self.settings.method {
            LbMethod::Ewma | LbMethod::Hash => random(),
            // The other methods are deterministic: no need to draw.
            LbMethod::ByRequests | LbMethod::ByTraffic | LbMethod::ByBusyness => 0,
        };
        schedule.method.pick(&PickContext {
            members: &self.members,
            candidates: &schedule.candidates,
            factors: &schedule.factors,
            exclude,
            key,
            random,
            now_ms,
        })
    }

    /// Under bytraffic and bybusyness, which ignore load factors, a ramping member keeps the
    /// request only in proportion to its ramp; otherwise the request is picked once more
    /// without it (and stays with it if nobody else is there).
    fn slow_start(
        &self,
        schedule: &Schedule,
        index: usize,
        exclude: &[usize],
        key: Option<u64>,
        now_ms: u64,
    ) -> usize {
        if !matches!(
            self.settings.method,
            LbMethod::ByTraffic | LbMethod::ByBusyness
        ) {
            return index;
        }
        let stats = &self.members[index].stats;
        let Some(permille) = slow_start::ramp(stats, self.settings.slow_start_ms, now_ms) else {
            return index;
        };
        if slow_start::admit(stats, permille) {
            return index;
        }
        let mut without: Vec<usize> = Vec::with_capacity(exclude.len() + 1);
        without.extend_from_slice(exclude);
        without.push(index);
        self.method_pick(schedule, &without, key, now_ms)
            .filter(|&i| schedule.forced || self.members[i].stats.healthy(now_ms))
            .unwrap_or(index)
    }

    /// The member a sticky value names, if it may take the request: enabled or draining (a
    /// draining member takes exactly these requests), healthy, and not already failed on.
    fn sticky_member(
        &self,
        value: &str,
        now_ms: u64,
        exclude: &[usize],
        forced: bool,
    ) -> Option<usize> {
        let index = sticky::resolve(&self.routes, value)?;
        let member = &self.members[index];
        let takes = matches!(
            member.state,
            MemberState::Enabled
                | MemberState::Drain
                | MemberState::HotStandby
                | MemberState::HotSpare
        );
        (takes && (forced || member.stats.healthy(now_ms)) && !exclude.contains(&index))
            .then_some(index)
    }

    /// The member a sticky value names, whatever its state.
    pub fn route_target(&self, value: &str) -> Option<usize> {
        sticky::resolve(&self.routes, value)
    }

    /// Each member's `lbstatus` now, as Apache's balancer-manager shows it in its Load column.
    /// Zero for members not taking part and for methods without such a figure.
    pub fn lbstatus(&self) -> Vec<i64> {
        let mut load = vec![0i64; self.members.len()];
        self.schedule.load().method.load(&self.members, &mut load);
        load
    }

    /// Puts a member in error until `retry_ms` from now, as Apache does on a failed connection.
    pub fn mark_error(&self, index: usize, now_ms: u64, retry_ms: u64, cause: String) {
        let Some(member) = self.members.get(index) else {
            return;
        };
        let until = now_ms.saturating_add(retry_ms.max(1));
        member.stats.errors.fetch_add(1, Relaxed);
        member.stats.state_since_ms.store(now_ms, Relaxed);
        member.stats.error_until_ms.store(until, Relaxed);
        member.stats.ramp_from_ms.store(until, Relaxed);
        member.stats.set_last_error(cause);
        self.invalidate();
    }

    /// Whether [`report`](Self::report) can do anything: outlier detection is configured.
    pub fn detects_outliers(&self) -> bool {
        self.settings.outlier.is_some()
    }

    /// Counts the outcome of a request for passive health checking, and ejects the member when
    /// its failures call for it and the cap on ejected members allows. A no-op without
    /// `outlierDetection`.
    pub fn report(&self, index: usize, ok: bool, now_ms: u64) {
        let (Some(config), Some(member)) = (&self.settings.outlier, self.members.get(index)) else {
            return;
        };
        let Some(reason) = outlier::record(config, &member.stats, ok, now_ms) else {
            return;
        };
        // Ejections are rare: the rebuild lock keeps two of them from both passing the cap.
        let _guard = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let out = self
            .members
            .iter()
            .filter(|m| m.stats.ejected_until_ms.load(Relaxed) > now_ms)
            .count();
        if out >= outlier::allowed(self.members.len(), config.max_ejection_percent) {
            tracing::debug!(member = %member.url, %reason, "not ejected: too many members are out already");
            return;
        }
        let millis = outlier::eject(config, &member.stats, now_ms);
        member
            .stats
            .set_last_error(format!("ejected for {millis} ms: {reason}"));
        tracing::warn!(member = %member.url, %reason, ejected_ms = millis, "member ejected");
        drop(_guard);
        self.invalidate();
    }

    /// Makes the next pick rebuild the schedule: a member's health changed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    /// Whether any member takes requests now.
    pub fn has_usable(&self, now_ms: u64) -> bool {
        !candidates(&self.views(now_ms)).is_empty()
    }

    /// Members that would take part in the next pick.
    pub fn usable_count(&self, now_ms: u64) -> usize {
        candidates(&self.views(now_ms)).len()
    }

    fn views(&self, now_ms: u64) -> Vec<MemberView> {
        views(&self.members, now_ms)
    }

    fn rebuild(&self, now_ms: u64) {
        // A poisoned lock only means another rebuilder panicked; rebuilding again is safe.
        let _guard = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.schedule.load();
        let generation = self.generation.load(Relaxed);
        let all_healthy_as_built = current.forced
            || current
                .candidates
                .iter()
                .all(|&i| self.members[i as usize].stats.healthy(now_ms));
        if current.generation == generation && now_ms < current.stale_at_ms && all_healthy_as_built
        {
            return; // another thread rebuilt it meanwhile
        }
        let schedule = build_schedule(&self.members, &self.settings, generation, now_ms);
        self.schedule.store(Arc::new(schedule));
    }
}

fn views(members: &[BalancedMember], now_ms: u64) -> Vec<MemberView> {
    members
        .iter()
        .map(|m| MemberView {
            lbset: m.lbset,
            load_factor: m.load_factor,
            state: m.state,
            healthy: m.stats.healthy(now_ms),
        })
        .collect()
}

fn build_schedule(
    members: &[BalancedMember],
    settings: &Settings,
    generation: u64,
    now_ms: u64,
) -> Schedule {
    let mut views = views(members, now_ms);
    let mut chosen = candidates(&views);
    let mut forced = false;
    if chosen.is_empty() && settings.force_recovery {
        // Apache's forcerecovery: every member is down for health reasons alone, so try them
        // rather than refuse everything.
        for v in &mut views {
            v.healthy = true;
        }
        chosen = candidates(&views);
        forced = !chosen.is_empty();
    }
    let chosen: Vec<u32> = chosen.into_iter().map(|i| i as u32).collect();
    let mut stale_at_ms = u64::MAX;
    let mut factors = Vec::with_capacity(members.len());
    // bytraffic and bybusyness ramp by admission instead (see `Balancer::slow_start`).
    let ramp_ms = match settings.method {
        LbMethod::ByRequests | LbMethod::Ewma | LbMethod::Hash => settings.slow_start_ms,
        LbMethod::ByTraffic | LbMethod::ByBusyness => 0,
    };
    for m in members {
        let (factor, changes_at) = slow_start::factor(&m.stats, m.load_factor, ramp_ms, now_ms);
        factors.push(factor);
        for t in [
            m.stats.error_until_ms.load(Relaxed),
            m.stats.ejected_until_ms.load(Relaxed),
            changes_at,
        ] {
            if t > now_ms {
                stale_at_ms = stale_at_ms.min(t);
            }
        }
    }
    Schedule {
        method: build_method(
            settings.method,
            members,
            &factors,
            &chosen,
            settings.bounded_load,
        ),
        factors,
        candidates: chosen,
        generation,
        stale_at_ms,
        forced,
    }
}

/// A random number from a per-thread xorshift generator, seeded once per thread from the
/// standard library's random hasher keys: cheap, lock-free, and good enough to draw members.
fn random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::hash;
    use proptest::prelude::*;

    fn member(lbset: u32, load_factor: u32, state: MemberState) -> BalancedMember {
        BalancedMember {
            url: format!("http://10.0.0.1:{}", 8000 + load_factor),
            route: None,
            lbset,
            load_factor,
            state,
            stats: Arc::default(),
        }
    }

    fn picks(b: &Balancer, n: usize, now: u64) -> Vec<usize> {
        (0..n)
            .map(|_| b.pick(now, &[]).expect("a usable member"))
            .collect()
    }

    #[test]
    fn disabled_member_is_left_out_of_the_rotation() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Disabled),
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        // a c d a c d
        assert_eq!(picks(&b, 6, 0), vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn member_in_error_is_skipped_until_its_retry_time() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        assert_eq!(b.pick(0, &[]), Some(0));
        b.mark_error(1, 10, 60_000, "connect: refused".into());
        assert_eq!(picks(&b, 4, 20), vec![0, 0, 0, 0]);
        assert_eq!(b.members()[1].stats.errors.load(Relaxed), 1);
        // After the retry time the member is back in the rotation.
        let after = picks(&b, 4, 60_010);
        assert_eq!(after.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn no_usable_member_gives_none() {
        let b = Balancer::new(vec![member(0, 1, MemberState::Enabled)], 0);
        b.mark_error(0, 0, 1_000, "refused".into());
        assert_eq!(b.pick(5, &[]), None);
        assert!(!b.has_usable(5));
        assert_eq!(b.pick(1_000, &[]), Some(0));
    }

    #[test]
    fn excluded_members_are_not_picked_again() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        for _ in 0..5 {
            assert_eq!(b.pick(0, &[0]), Some(1));
        }
        assert_eq!(b.pick(0, &[0, 1]), None);
    }

    #[test]
    fn hot_standby_takes_over_when_the_set_fails() {
        let b = Balancer::new(
            vec![
                member(0, 1, MemberState::HotStandby),
                member(0, 1, MemberState::Enabled),
            ],
            0,
        );
        assert_eq!(picks(&b, 3, 0), vec![1, 1, 1]);
        b.mark_error(1, 0, 1_000, "refused".into());
        assert_eq!(picks(&b, 3, 1), vec![0, 0, 0]);
    }

    #[test]
    fn lbstatus_replays_apache_counters() {
        let b = Balancer::new(
            vec![
                member(0, 70, MemberState::Enabled),
                member(0, 30, MemberState::Enabled),
            ],
            0,
        );
        assert_eq!(b.lbstatus(), vec![0, 0]);
        b.pick(0, &[]);
        // After one pick of 7:3: a = 7 - 10 = -3, b = 3.
        assert_eq!(b.lbstatus(), vec![-3, 3]);
    }

    #[test]
    fn weights_hold_across_many_picks() {
        let b = Balancer::new(
            vec![
                member(0, 70, MemberState::Enabled),
                member(0, 30, MemberState::Enabled),
            ],
            0,
        );
        let p = picks(&b, 1000, 0);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 700);
    }

    fn routed(members: Vec<BalancedMember>) -> Vec<BalancedMember> {
        members
            .into_iter()
            .enumerate()
            .map(|(i, mut m)| {
                m.url = format!("http://10.0.0.{}:8080", i + 1);
                m.route = Some(format!("web{i}"));
                m
            })
            .collect()
    }

    fn sticky(value: &str) -> Affinity {
        Affinity {
            sticky: Some(value.to_owned()),
            key: None,
        }
    }

    #[test]
    fn sticky_requests_go_to_their_member_and_fail_over_only_when_it_cannot_take_them() {
        let b = Balancer::with_settings(
            routed(vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Drain),
                member(0, 1, MemberState::Disabled),
            ]),
            Settings::default(),
            0,
        );
        for _ in 0..3 {
            assert_eq!(b.pick_for(0, &[], &sticky("abc.web1")), Some(1));
        }
        // A draining member takes the requests sticky to it, and only those.
        assert_eq!(b.pick_for(0, &[], &sticky("web2")), Some(2));
        assert_eq!(picks(&b, 4, 0), vec![0, 1, 0, 1]);
        // A disabled member's sessions, unknown routes and a failed member's sessions move on.
        assert!(matches!(b.pick_for(0, &[], &sticky("x.web3")), Some(0 | 1)));
        assert!(matches!(b.pick_for(0, &[], &sticky("x.web9")), Some(0 | 1)));
        assert_eq!(b.pick_for(0, &[1], &sticky("abc.web1")), Some(0));
        b.mark_error(1, 0, 1_000, "refused".into());
        assert_eq!(b.pick_for(1, &[], &sticky("abc.web1")), Some(0));
        // Back after its retry time: the session returns to it.
        assert_eq!(b.pick_for(1_000, &[], &sticky("abc.web1")), Some(1));
    }

    #[test]
    fn no_failover_breaks_a_session_whose_member_cannot_take_it() {
        let settings = Settings {
            no_failover: true,
            ..Settings::default()
        };
        let b = Balancer::with_settings(
            routed(vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Disabled),
            ]),
            settings,
            0,
        );
        assert_eq!(b.pick_for(0, &[], &sticky("s.web0")), Some(0));
        assert_eq!(b.pick_for(0, &[], &sticky("s.web1")), None);
        assert_eq!(b.pick_for(0, &[], &sticky("s.nowhere")), None);
        assert_eq!(b.pick_for(0, &[], &Affinity::default()), Some(0));
    }

    #[test]
    fn forced_recovery_tries_members_down_for_health_reasons_only() {
        let settings = Settings {
            force_recovery: true,
            ..Settings::default()
        };
        let b = Balancer::with_settings(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Stopped),
            ],
            settings,
            0,
        );
        b.mark_error(0, 0, 60_000, "refused".into());
        assert_eq!(picks(&b, 2, 1), vec![1, 1]);
        b.members()[1].stats.hc_failed.store(true, Relaxed);
        b.invalidate();
        // Everything usable is down: both are tried (never the stopped one), in turn.
        assert_eq!(picks(&b, 4, 2), vec![0, 1, 0, 1]);
        assert_eq!(b.pick(2, &[0, 1]), None);
        // One comes back: only it is used again.
        b.members()[1].stats.hc_failed.store(false, Relaxed);
        b.invalidate();
        assert_eq!(picks(&b, 3, 3), vec![1, 1, 1]);
    }

    #[test]
    fn passive_ejection_takes_a_member_out_within_the_cap() {
        let outlier = OutlierConfig {
            consecutive_failures: 2,
            failure_percent: None,
            min_requests: 1,
            interval: std::time::Duration::from_secs(10),
            base_ejection: std::time::Duration::from_secs(30),
            max_ejection: std::time::Duration::from_secs(300),
            max_ejection_percent: 10,
        };
        let b = Balancer::with_settings(
            vec![
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
                member(0, 1, MemberState::Enabled),
            ],
            Settings {
                outlier: Some(outlier),
                ..Settings::default()
            },
            0,
        );
        b.report(0, false, 10);
        assert_eq!(picks(&b, 3, 10), vec![0, 1, 2]);
        b.report(0, false, 11);
        assert_eq!(b.members()[0].stats.health(11), Health::Ejected);
        assert_eq!(picks(&b, 4, 12), vec![1, 2, 1, 2]);
        // 10% of three members: one may be out, so the next does not go.
        b.report(1, false, 13);
        b.report(1, false, 14);
        assert_eq!(b.members()[1].stats.health(14), Health::Ok);
        // After the ejection time the member is back.
        assert_eq!(picks(&b, 3, 30_011), vec![0, 1, 2]);
    }

    #[test]
    fn slow_start_ramps_a_joining_member_from_a_tenth_of_its_factor_to_all_of_it() {
        let members = vec![
            member(0, 1, MemberState::Enabled),
            member(0, 1, MemberState::Enabled),
        ];
        members[1].stats.ramp_from_ms.store(1_000, Relaxed);
        let b = Balancer::with_settings(
            members,
            Settings {
                slow_start_ms: 10_000,
                ..Settings::default()
            },
            1_000,
        );
        let share = |now: u64| {
            let p = picks(&b, 1_000, now);
            p.iter().filter(|&&i| i == 1).count()
        };
        // Its factor in effect is 1 against 10 at first (1 in 11 requests), 5 against 10
        // half-way (1 in 3), then equal.
        assert_eq!(share(1_000), 91);
        assert_eq!(share(6_000), 333);
        assert_eq!(share(11_000), 500);
    }

    #[test]
    fn slow_start_under_bybusyness_keeps_the_ramp_share_of_what_comes_to_it() {
        let members = vec![
            member(0, 1, MemberState::Enabled),
            member(0, 1, MemberState::Enabled),
        ];
        members[1].stats.ramp_from_ms.store(1_000, Relaxed);
        let b = Balancer::with_settings(
            members,
            Settings {
                method: LbMethod::ByBusyness,
                slow_start_ms: 10_000,
                ..Settings::default()
            },
            1_000,
        );
        // Nothing in flight, so bybusyness alone would alternate; at a 10% ramp the member
        // keeps one in ten of the requests that come to it.
        let p = picks(&b, 1_000, 1_000);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 50);
    }

    #[test]
    fn methods_are_chosen_by_the_settings_and_keep_to_the_candidates() {
        for method in [
            LbMethod::ByTraffic,
            LbMethod::ByBusyness,
            LbMethod::Ewma,
            LbMethod::Hash,
        ] {
            let b = Balancer::with_settings(
                routed(vec![
                    member(1, 1, MemberState::Enabled),
                    member(0, 1, MemberState::Enabled),
                    member(0, 1, MemberState::HotStandby),
                    member(0, 1, MemberState::Drain),
                ]),
                Settings {
                    method,
                    ..Settings::default()
                },
                0,
            );
            for key in 0..50 {
                let affinity = Affinity {
                    sticky: None,
                    key: Some(hash::mix(key)),
                };
                assert_eq!(b.pick_for(0, &[], &affinity), Some(1), "{method:?}");
            }
            b.mark_error(1, 0, 1_000, "refused".into());
            assert_eq!(b.pick(1, &[]), Some(2), "{method:?}: the hot standby");
        }
    }

    fn state() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            Just(MemberState::Enabled),
            Just(MemberState::Disabled),
            Just(MemberState::Stopped),
            Just(MemberState::Drain),
            Just(MemberState::HotStandby),
            Just(MemberState::HotSpare),
        ]
    }

    proptest! {
        #[test]
        fn never_picks_an_unusable_member(
            spec in prop::collection::vec((0u32..3, 1u32..=100, state(), any::<bool>()), 1..10),
        ) {
            let members: Vec<BalancedMember> = spec.iter().map(|&(s, f, st, _)| member(s, f, st)).collect();
            let b = Balancer::new(members, 0);
            for (i, &(_, _, _, failed)) in spec.iter().enumerate() {
                if failed { b.mark_error(i, 0, 1_000, "down".into()); }
            }
            let views = b.views(1);
            let allowed = candidates(&views);
            for _ in 0..50 {
                match b.pick(1, &[]) {
                    Some(i) => {
                        let v = views[i];
                        prop_assert!(v.healthy);
                        prop_assert!(!matches!(v.state, MemberState::Disabled | MemberState::Stopped | MemberState::Drain));
                        prop_assert!(allowed.contains(&i));
                        // lbset order: no usable ordinary member or standby in a lower set (a
                        // spare only ever replaces a member of its own set).
                        prop_assert!(!views.iter().any(|o| o.lbset < v.lbset && o.usable() && o.state != MemberState::HotSpare));
                        // Hot standby only when no ordinary member of its set is usable.
                        if v.state == MemberState::HotStandby {
                            prop_assert!(!views.iter().any(|o| o.lbset == v.lbset && o.usable() && o.state == MemberState::Enabled));
                        }
                    }
                    None => prop_assert!(allowed.is_empty()),
                }
            }
        }
    }
}
