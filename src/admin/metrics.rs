//! `/metrics`: Prometheus (OpenMetrics text) figures read from the live snapshot at scrape time.
//!
//! Members come and go with every snapshot, so nothing is registered per member: one
//! [`Collector`] walks the balancer-manager view on each scrape and writes what is there now.
//!
//! Bounded cardinality: the detailed per-member series (answer and connect time histograms,
//! answers by status code) are written only for clusters of at most
//! `--metrics-member-limit` members (100 by default); every cluster has the same figures
//! summed as its own series, and a series is written only once it counts something. A cluster
//! of 5,000 members thus adds about ten series per member (its basic counters and gauges), not
//! forty-odd. The process's own figures (`process_*`) come without the prefix, as Prometheus'
//! clients write them.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::manager::{self, ClusterView, ManagerView, MemberView};
use crate::balancer::traffic::{BUCKETS_US, HistogramRead, SLOTS, TrafficRead, slot_labels};
use crate::clock;
use crate::plane::DataPlane;
use crate::plane::metrics::CONTROLLER;

/// The content type of the OpenMetrics text format that prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
pub const PREFIX: &str = "kube_balancer";

/// A registry holding the data plane's collector.
pub fn registry(plane: Arc<DataPlane>) -> Registry {
    let mut registry = Registry::default();
    registry
        .sub_registry_with_prefix(PREFIX)
        .register_collector(Box::new(PlaneCollector { plane }));
    registry.register_collector(Box::new(super::process::ProcessCollector));
    registry
}

/// The registry's metrics in OpenMetrics text.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(4 * 1024);
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// Reads the plane's snapshot and counters on each scrape.
#[derive(Debug)]
struct PlaneCollector {
    plane: Arc<DataPlane>,
}

impl Collector for PlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let view = manager::view(&self.plane, clock::now_ms());
        encode_view(&view, &mut encoder)?;
        encode_traffic(&self.plane, &mut encoder)?;
        encode_rejections(&self.plane, &mut encoder)?;
        encode_process_wide(&self.plane, &mut encoder)
    }
}

/// A histogram of times read from the counters, in seconds.
struct Seconds<'a>(&'a HistogramRead);

impl EncodeMetric for Seconds<'_> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let bounds = BUCKETS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.buckets).collect();
        encoder.encode_histogram::<NoLabelSet>(
            self.0.sum_us as f64 / 1e6,
            self.0.count(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One cluster's traffic: its members' figures, each member's own when the cluster is small
/// enough, and their sum with those of members that left.
struct ClusterTraffic {
    key: String,
    members: Vec<(String, TrafficRead)>,
    total: TrafficRead,
    detailed: bool,
}

fn traffic(plane: &DataPlane) -> Vec<ClusterTraffic> {
    let limit = plane.metrics.member_detail_limit();
    plane
        .snapshot_full()
        .clusters
        .iter()
        .map(|cluster| {
            let members: Vec<(String, TrafficRead)> = cluster
                .balancer
                .members()
                .iter()
                .map(|m| (m.url.clone(), m.stats.traffic.read()))
                .collect();
            let mut total = plane.metrics.departed_of(&cluster.key);
            for (_, read) in &members {
                total.merge(read);
            }
            ClusterTraffic {
                key: cluster.key.clone(),
                detailed: members.len() <= limit,
                members,
                total,
            }
        })
        .collect()
}

fn encode_traffic(
    plane: &DataPlane,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let clusters = traffic(plane);
    let detailed = || {
        clusters
            .iter()
            .filter(|c| c.detailed)
            .flat_map(|c| c.members.iter().map(move |(url, read)| (c, url, read)))
    };
    {
        let mut family = encoder.encode_descriptor(
            "member_responses",
            "Answers to clients by the member, by status code (code is \"other\" for codes \
             not counted one by one) and class; a 502 or 504 of the proxy's own after the \
             member failed counts for the member.",
            None,
            MetricType::Counter,
        )?;
        for (c, url, read) in detailed() {
            for slot in (0..SLOTS).filter(|&s| read.responses[s] > 0) {
                let (code, class) = slot_labels(slot);
                let labels = [
                    ("cluster", c.key.as_str()),
                    ("member", url.as_str()),
                    ("code", code.as_str()),
                    ("class", class),
                ];
                ConstCounter::new(read.responses[slot]).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    for (name, help, pick) in HISTOGRAMS {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (c, url, read) in detailed() {
            let h = pick(read);
            if h.count() > 0 {
                let labels = [("cluster", c.key.as_str()), ("member", url.as_str())];
                Seconds(h).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "member_failovers",
            "Tries that failed on the member (no answer, or a failOnStatus answer) and went on \
             to another member.",
            None,
            MetricType::Counter,
        )?;
        for (c, url, read) in detailed() {
            let labels = [("cluster", c.key.as_str()), ("member", url.as_str())];
            ConstCounter::new(read.failovers).encode(family.encode_family(&labels)?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "cluster_responses",
            "Answers to clients from the balancer's members, by status code and class (members \
             that left included).",
            None,
            MetricType::Counter,
        )?;
        for c in &clusters {
            for slot in (0..SLOTS).filter(|&s| c.total.responses[s] > 0) {
                let (code, class) = slot_labels(slot);
                let labels = [
                    ("cluster", c.key.as_str()),
                    ("code", code.as_str()),
                    ("class", class),
                ];
                ConstCounter::new(c.total.responses[slot])
                    .encode(family.encode_family(&labels)?)?;
            }
        }
    }
    for (name, help, pick) in CLUSTER_HISTOGRAMS {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for c in &clusters {
            let labels = [("cluster", c.key.as_str())];
            Seconds(pick(&c.total)).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "cluster_failovers",
        "Tries that failed on one of the balancer's members and went on to another.",
        None,
        MetricType::Counter,
    )?;
    for c in &clusters {
        let labels = [("cluster", c.key.as_str())];
        ConstCounter::new(c.total.failovers).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Requests refused under the members' connection limits (`memberLimits`), by reason; a
/// series only for a member that refused some.
fn encode_rejections(
    plane: &DataPlane,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut family = encoder.encode_descriptor(
        "member_requests_rejected",
        "Requests answered 503 (or sent to another member) because the member was at its \
         connection limit: its queue was full (queue_full) or the request waited the whole \
         queue timeout (queue_timeout).",
        None,
        MetricType::Counter,
    )?;
    for cluster in &plane.snapshot_full().clusters {
        for m in cluster.balancer.members() {
            for (reason, n) in [
                ("queue_full", m.stats.queue_full.load(Relaxed)),
                ("queue_timeout", m.stats.queue_timeouts.load(Relaxed)),
            ] {
                if n > 0 {
                    let labels = [
                        ("cluster", cluster.key.as_str()),
                        ("member", m.url.as_str()),
                        ("reason", reason),
                    ];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

type Pick = fn(&TrafficRead) -> &HistogramRead;

const HISTOGRAMS: [(&str, &str, Pick); 2] = [
    (
        "member_response_seconds",
        "From a try's start to the member's answer head (connecting included).",
        |t| &t.response_time,
    ),
    (
        "member_connect_seconds",
        "Time to open a new connection to the member.",
        |t| &t.connect_time,
    ),
];

const CLUSTER_HISTOGRAMS: [(&str, &str, Pick); 2] = [
    (
        "cluster_response_seconds",
        "From a try's start to a member's answer head, over the balancer's members.",
        |t| &t.response_time,
    ),
    (
        "cluster_connect_seconds",
        "Time to open a new connection to one of the balancer's members.",
        |t| &t.connect_time,
    ),
];

/// Figures of the whole process: connections, TLS, configuration loads, the controller, the
/// access log, the build.
fn encode_process_wide(
    plane: &DataPlane,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &plane.metrics;
    gauge_i64(m.connections_open.load(Relaxed)).encode(encoder.encode_descriptor(
        "connections_open",
        "Client connections open now.",
        None,
        MetricType::Gauge,
    )?)?;
    ConstCounter::new(m.connections.load(Relaxed)).encode(encoder.encode_descriptor(
        "connections",
        "Client connections accepted.",
        None,
        MetricType::Counter,
    )?)?;
    ConstCounter::new(m.connections_refused.load(Relaxed)).encode(encoder.encode_descriptor(
        "connections_refused",
        "Client connections answered 503 and closed because --max-connections were open.",
        None,
        MetricType::Counter,
    )?)?;
    let requests_active: i64 = plane
        .snapshot_full()
        .clusters
        .iter()
        .flat_map(|c| c.balancer.members())
        .map(|m| m.stats.busy.load(Relaxed))
        .sum();
    gauge_i64(requests_active).encode(encoder.encode_descriptor(
        "requests_active",
        "Requests in flight to members now.",
        None,
        MetricType::Gauge,
    )?)?;
    {
        let mut family = encoder.encode_descriptor(
            "tls_handshakes",
            "TLS handshakes with clients, by result (ok, failed).",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("ok", m.tls_handshakes.load(Relaxed)),
            ("failed", m.tls_handshake_failures.load(Relaxed)),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "config_reloads",
            "Configurations published (ok) and loads refused (refused).",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("ok", m.reloads.load(Relaxed)),
            ("refused", plane.rejected_configs.load(Relaxed)),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last configuration published (ok) and refused (refused); 0: never.",
            None,
            MetricType::Gauge,
        )?;
        for (result, ms) in [
            ("ok", m.last_reload_ms.load(Relaxed)),
            ("refused", m.last_refused_ms.load(Relaxed)),
        ] {
            ConstGauge::new(ms as f64 / 1000.0)
                .encode(family.encode_family(&[("result", result)])?)?;
        }
    }
    Seconds(&m.publish_time.read()).encode(encoder.encode_descriptor(
        "snapshot_publish_seconds",
        "Time to build and publish a snapshot.",
        None,
        MetricType::Histogram,
    )?)?;
    {
        let mut family = encoder.encode_descriptor(
            "controller_watch_events",
            "Watch events the controller received, by kind of object.",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in CONTROLLER.events() {
            ConstCounter::new(n).encode(family.encode_family(&[("kind", kind)])?)?;
        }
    }
    ConstCounter::new(CONTROLLER.watch_errors.load(Relaxed)).encode(encoder.encode_descriptor(
        "controller_watch_errors",
        "Watch errors (each watch is retried with backoff).",
        None,
        MetricType::Counter,
    )?)?;
    Seconds(&CONTROLLER.reconcile_read()).encode(encoder.encode_descriptor(
        "controller_reconcile_seconds",
        "Time to recompute the member lists from the watched objects and publish them.",
        None,
        MetricType::Histogram,
    )?)?;
    ConstCounter::new(m.access_log_lines.load(Relaxed)).encode(encoder.encode_descriptor(
        "access_log_lines",
        "Access log lines written.",
        None,
        MetricType::Counter,
    )?)?;
    ConstCounter::new(m.access_log_dropped.load(Relaxed)).encode(encoder.encode_descriptor(
        "access_log_dropped",
        "Access log lines dropped: the queue to the writer was full, or the write failed.",
        None,
        MetricType::Counter,
    )?)?;
    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("arch", std::env::consts::ARCH),
        ("os", std::env::consts::OS),
    ];
    gauge(1).encode(
        encoder
            .encode_descriptor(
                "build_info",
                "Always 1; the labels say which build runs.",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&build)?,
    )?;
    Ok(())
}

fn gauge_i64(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

type MemberFigure = fn(&MemberView) -> u64;

const MEMBER_COUNTERS: [(&str, &str, MemberFigure); 6] = [
    (
        "member_requests",
        "Requests sent to the member (the balancer-manager's Elected).",
        |m| m.status.elected,
    ),
    (
        "member_sent_bytes",
        "Request body bytes sent to the member (the balancer-manager's To).",
        |m| m.status.sent_bytes,
    ),
    (
        "member_received_bytes",
        "Response body bytes received from the member (the balancer-manager's From).",
        |m| m.status.received_bytes,
    ),
    (
        "member_errors",
        "Failures of the member: refused or broken connections and failOnStatus answers.",
        |m| m.errors,
    ),
    (
        "member_ejections",
        "Times passive health checking (outlierDetection) ejected the member.",
        |m| m.ejections,
    ),
    (
        "member_health_check_failures",
        "Active health checks the member failed.",
        |m| m.health_check_failures,
    ),
];

const MEMBER_GAUGES: [(&str, &str, MemberFigure); 2] = [
    (
        "member_in_flight",
        "Requests in flight to the member now (the balancer-manager's Busy).",
        |m| m.status.busy,
    ),
    ("member_load_factor", "The member's load factor.", |m| {
        u64::from(m.status.load_factor)
    }),
];

type ClusterFigure = fn(&ClusterView) -> u64;

const CLUSTER_GAUGES: [(&str, &str, ClusterFigure); 3] = [
    ("cluster_members", "Members of the balancer.", |c| {
        c.total_members as u64
    }),
    (
        "cluster_ready_members",
        "Members of the balancer that take new requests now.",
        |c| c.ready_members as u64,
    ),
    (
        "cluster_route_conflicts",
        "Routes the balancer claims but does not get, because another balancer holds them.",
        |c| c.route_conflicts.len() as u64,
    ),
];

fn members(view: &ManagerView) -> impl Iterator<Item = (&ClusterView, &MemberView)> {
    view.clusters
        .iter()
        .flat_map(|c| c.members.iter().map(move |m| (c, m)))
}

fn encode_view(
    view: &ManagerView,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    for (name, help, figure) in MEMBER_COUNTERS {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (c, m) in members(view) {
            let labels = [
                ("cluster", c.name.as_str()),
                ("member", m.status.url.as_str()),
            ];
            ConstCounter::new(figure(m)).encode(family.encode_family(&labels)?)?;
        }
    }
    for (name, help, figure) in MEMBER_GAUGES {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (c, m) in members(view) {
            let labels = [
                ("cluster", c.name.as_str()),
                ("member", m.status.url.as_str()),
            ];
            gauge(figure(m)).encode(family.encode_family(&labels)?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "member_up",
            "1 when the member takes new requests, 0 when it does not; state is the \
             balancer-manager's Status (Ok, Error, Disabled, Stopped, Drain, HotStandby, HotSpare).",
            None,
            MetricType::Gauge,
        )?;
        for (c, m) in members(view) {
            let labels = [
                ("cluster", c.name.as_str()),
                ("member", m.status.url.as_str()),
                ("state", m.status.state.as_str()),
            ];
            gauge(u64::from(m.usable())).encode(family.encode_family(&labels)?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "member_grpc_responses",
            "gRPC calls the member served or failed, by the status code their client got \
             (OK, UNAVAILABLE, ...: gRPC's names); only codes seen.",
            None,
            MetricType::Counter,
        )?;
        for (c, m) in members(view) {
            for (code, count) in &m.grpc_status {
                let labels = [
                    ("cluster", c.name.as_str()),
                    ("member", m.status.url.as_str()),
                    ("code", code.as_str()),
                ];
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    for (name, help, figure) in CLUSTER_GAUGES {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for c in &view.clusters {
            let labels = [("cluster", c.name.as_str())];
            gauge(figure(c)).encode(family.encode_family(&labels)?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "certificate_expiry_seconds",
            "Seconds until the certificate expires (negative once it has), per certificate a \
             balancer uses: role is server (served to clients), client (presented to members) \
             or ca; source is where it is read from.",
            None,
            MetricType::Gauge,
        )?;
        for c in &view.clusters {
            for cert in &c.certificates {
                let labels = [
                    ("cluster", c.name.as_str()),
                    ("role", cert.role.as_str()),
                    ("source", cert.source.as_str()),
                    ("serial", cert.serial.as_str()),
                ];
                ConstGauge::new(cert.expires_in_seconds).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    ConstCounter::new(view.rejected_configs).encode(encoder.encode_descriptor(
        "config_rejected",
        "Configuration loads refused (invalid files or resources).",
        None,
        MetricType::Counter,
    )?)?;
    gauge(view.generation).encode(encoder.encode_descriptor(
        "snapshot_generation",
        "Generation of the snapshot served now: counts configuration publications.",
        None,
        MetricType::Gauge,
    )?)?;
    gauge(u64::from(view.ready)).encode(encoder.encode_descriptor(
        "ready",
        "1 once a first configuration has been published.",
        None,
        MetricType::Gauge,
    )?)?;
    Ok(())
}

/// Gauges are signed in OpenMetrics; figures here never reach `i64::MAX`.
fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LbMethod, MemberState};
    use crate::discovery::{ClusterConfig, MemberConfig};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    fn member(port: u16, state: MemberState) -> MemberConfig {
        MemberConfig {
            url: format!("http://127.0.0.1:{port}"),
            authority: format!("127.0.0.1:{port}"),
            pod: None,
            load_factor: 2,
            lbset: 0,
            route: None,
            state,
            protocol: Default::default(),
        }
    }

    fn cluster(members: Vec<MemberConfig>) -> ClusterConfig {
        ClusterConfig {
            namespace: "shop".into(),
            name: "web".into(),
            routes: crate::api::default_routes(),
            route_configs: vec![crate::discovery::routes::RouteConfig::everything()],
            route_problems: Vec::new(),
            lb_method: LbMethod::ByRequests,
            max_attempts: 1,
            no_failover: false,
            fail_on_status: vec![],
            retry_after_error: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            members,
            policy: Default::default(),
            tls: Default::default(),
        }
    }

    #[test]
    fn scrape_reads_the_snapshot_served_now() {
        let plane = DataPlane::new();
        let registry = registry(plane.clone());
        let empty = encode(&registry).expect("encodes");
        assert!(empty.contains("kube_balancer_ready 0\n"), "{empty}");
        assert!(empty.ends_with("# EOF\n"));

        plane.publish(vec![cluster(vec![
            member(1, MemberState::Enabled),
            member(2, MemberState::Stopped),
        ])]);
        let snapshot = plane.snapshot_full();
        let stats = &snapshot.clusters[0].balancer.members()[0].stats;
        stats.elected.store(5, Relaxed);
        stats.received_bytes.store(640, Relaxed);
        plane.rejected_configs.store(3, Relaxed);

        let text = encode(&registry).expect("encodes");
        let member1 = r#"cluster="shop/web",member="http://127.0.0.1:1""#;
        let member2 = r#"cluster="shop/web",member="http://127.0.0.1:2""#;
        for line in [
            format!("kube_balancer_member_requests_total{{{member1}}} 5"),
            format!("kube_balancer_member_received_bytes_total{{{member1}}} 640"),
            format!("kube_balancer_member_sent_bytes_total{{{member1}}} 0"),
            format!("kube_balancer_member_errors_total{{{member1}}} 0"),
            format!("kube_balancer_member_in_flight{{{member1}}} 0"),
            format!("kube_balancer_member_load_factor{{{member1}}} 2"),
            format!("kube_balancer_member_up{{{member1},state=\"Ok\"}} 1"),
            format!("kube_balancer_member_up{{{member2},state=\"Stopped\"}} 0"),
            r#"kube_balancer_cluster_members{cluster="shop/web"} 2"#.to_owned(),
            r#"kube_balancer_cluster_ready_members{cluster="shop/web"} 1"#.to_owned(),
            "kube_balancer_config_rejected_total 3".to_owned(),
            "kube_balancer_snapshot_generation 1".to_owned(),
            "kube_balancer_ready 1".to_owned(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("# TYPE kube_balancer_member_requests counter\n"));

        // A member that leaves the configuration leaves the scrape.
        plane.publish(vec![cluster(vec![member(1, MemberState::Enabled)])]);
        let text = encode(&registry).expect("encodes");
        assert!(!text.contains("127.0.0.1:2"), "{text}");
        assert!(text.contains("kube_balancer_snapshot_generation 2\n"));
    }

    #[test]
    fn each_certificate_has_its_seconds_until_expiry_and_a_row_on_the_page() {
        use crate::tls::cert::testing::{ca, leaf_with};
        use crate::tls::material::Loader;
        let now = crate::tls::unix_now();
        let ca = ca("Test CA");
        let leaf = leaf_with(
            &ca,
            &["shop.example.com"],
            now - 86_400,
            now + 10 * 86_400 + 3_600,
            0x2a,
            rcgen::KeyPair::generate().expect("key"),
        );
        let source = crate::discovery::TlsSource::Files {
            cert: "/tls/shop.crt".into(),
            key: Some("/tls/shop.key".into()),
        };
        let mut loader = Loader::default();
        loader.offer_keypair(
            &source,
            Ok((leaf.chain.as_bytes(), leaf.key.as_bytes())),
            now,
        );
        let mut config = cluster(vec![member(1, MemberState::Enabled)]);
        config.tls.certificates = vec![crate::discovery::CertificateRef {
            hosts: vec!["shop.example.com".into()],
            source,
            default: false,
        }];
        let plane = DataPlane::new();
        plane.publish_with(vec![config], &loader.material());

        let text = encode(&registry(plane.clone())).expect("encodes");
        let prefix = r#"kube_balancer_certificate_expiry_seconds{cluster="shop/web",role="server",source="file /tls/shop.crt",serial="2a"} "#;
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no expiry gauge in:\n{text}"));
        let seconds: i64 = line[prefix.len()..].parse().expect("a number");
        // Ten days and an hour, less the moments the test took.
        assert!(
            (10 * 86_400 + 3_590..=10 * 86_400 + 3_600).contains(&seconds),
            "{seconds}"
        );

        let view = manager::view(&plane, clock::now_ms());
        let row = &view.clusters[0].certificates[0];
        assert_eq!(
            (
                row.role.as_str(),
                row.serial.as_str(),
                row.days_left,
                row.issuer.as_str()
            ),
            ("server", "2a", 10, "CN=Test CA")
        );
        assert_eq!(row.hosts, ["shop.example.com"]);
        let page = super::super::html::render(&view, None);
        assert!(
            page.contains("<td>file /tls/shop.crt</td><td>server</td><td>shop.example.com</td><td>CN=Test CA</td><td><code>2a</code></td>"),
            "{page}"
        );
        assert!(
            page.contains("<td class=\"num warn\">10</td>"),
            "fewer than 14 days left is flagged"
        );
    }
}
