//! What the process tells its operators besides `/metrics`: its own log (`tracing` with an
//! `EnvFilter` from `RUST_LOG`, default `info`, as text or JSON), the access log
//! ([`access_log`]), and traces exported over OTLP ([`trace`]).
//!
//! The request path asks [`Telemetry`] what is on. With the access log and tracing off (the
//! default) a request carries nothing of this module; with either on, it carries an
//! [`Observed`] record that its answer's body hands over when it ends.

pub mod access_log;
pub mod trace;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Version};
use tracing_subscriber::EnvFilter;

use crate::plane::Cluster;
pub use access_log::AccessLog;
pub use trace::Tracer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Logs go to stderr.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// What the request path records, as the command line set it.
#[derive(Clone, Debug)]
pub struct Telemetry {
    /// Per-member answers by status, answer and connect times, failovers (`/metrics`).
    pub request_metrics: bool,
    pub access_log: Option<AccessLog>,
    pub tracer: Option<Tracer>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            request_metrics: true,
            access_log: None,
            tracer: None,
        }
    }
}

impl Telemetry {
    /// Whether requests carry a record: the access log or tracing is on.
    pub fn observes(&self) -> bool {
        self.access_log.is_some() || self.tracer.is_some()
    }
}

/// The request's fields a record keeps, in one buffer.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub enum Field {
    Host,
    /// Path and query, as the client sent them.
    Target,
    UserAgent,
    Referer,
    RequestId,
    /// The route's rule: a BalancerCluster's key, or an HTTPRoute's rule.
    Route,
}

const FIELDS: usize = 6;

/// One request as the access log writes it.
#[derive(Debug)]
pub struct Record {
    /// When the request began: Unix time in microseconds, and the monotonic clock.
    pub unix_us: u64,
    pub started: Instant,
    pub client: IpAddr,
    pub method: Method,
    pub version: Version,
    text: String,
    ranges: [(u32, u32); FIELDS],
    pub status: u16,
    /// The request body's declared length (Content-Length); `None` for a chunked one.
    pub bytes_in: Option<u64>,
    /// Body bytes sent to the client.
    pub bytes_out: u64,
    /// From the request's start to its answer's last byte.
    pub duration: Duration,
    /// The time to connect to the member, when the last try opened a connection.
    pub connect: Option<Duration>,
    /// From the last try's start to the member's answer head.
    pub upstream: Option<Duration>,
    /// The cluster and member that answered (or last failed).
    pub cluster: Option<Arc<Cluster>>,
    pub member: usize,
    /// Members tried.
    pub attempts: u32,
    pub trace_id: Option<opentelemetry::trace::TraceId>,
}

impl Record {
    pub fn new(client: IpAddr, method: Method, version: Version) -> Self {
        Record {
            unix_us: unix_us(),
            started: Instant::now(),
            client,
            method,
            version,
            text: String::with_capacity(160),
            ranges: [(0, 0); FIELDS],
            status: 0,
            bytes_in: Some(0),
            bytes_out: 0,
            duration: Duration::ZERO,
            connect: None,
            upstream: None,
            cluster: None,
            member: 0,
            attempts: 0,
            trace_id: None,
        }
    }

    /// Keeps a field's value (bytes that are not UTF-8 are replaced).
    pub fn set(&mut self, field: Field, value: &[u8]) {
        let start = self.text.len();
        self.text.push_str(&String::from_utf8_lossy(value));
        let end = self.text.len();
        self.ranges[field as usize] = (
            u32::try_from(start).unwrap_or(0),
            u32::try_from(end).unwrap_or(0),
        );
    }

    pub fn get(&self, field: Field) -> &str {
        let (start, end) = self.ranges[field as usize];
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    pub fn host(&self) -> &str {
        self.get(Field::Host)
    }

    pub fn target(&self) -> &str {
        self.get(Field::Target)
    }

    pub fn user_agent(&self) -> &str {
        self.get(Field::UserAgent)
    }

    pub fn referer(&self) -> &str {
        self.get(Field::Referer)
    }

    pub fn request_id(&self) -> &str {
        self.get(Field::RequestId)
    }

    pub fn route(&self) -> &str {
        self.get(Field::Route)
    }

    pub fn cluster(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| c.key.as_str())
    }

    pub fn member(&self) -> &str {
        self.cluster
            .as_ref()
            .and_then(|c| c.config.members.get(self.member))
            .map_or("", |m| m.url.as_str())
    }

    pub fn trace_id(&self) -> Option<String> {
        self.trace_id.map(|t| t.to_string())
    }
}

/// What a request carries when the access log or tracing is on: its record, and its span.
#[derive(Debug)]
pub struct Observed {
    pub record: Box<Record>,
    pub span: Option<trace::RequestSpan>,
    /// The worker's settings: where the record goes.
    pub telemetry: Rc<Telemetry>,
}

impl Observed {
    /// The request's answer has been sent whole (or the client went away): the span ends and
    /// the record goes to the access log.
    pub fn finish(mut self) {
        self.record.duration = self.record.started.elapsed();
        if let Some(span) = self.span.take() {
            span.end(self.record.status);
        }
        if let Some(log) = &self.telemetry.access_log {
            log.submit(self.record);
        }
    }
}

/// A request id for a request that came without one: 128 random bits as a UUID (version 4).
pub fn new_request_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    fn seed() -> u64 {
        // Distinct per thread and per start: the time, and where this thread's state lives.
        let marker = 0u8;
        (unix_us() ^ (std::ptr::from_ref(&marker) as u64).rotate_left(32)) | 1
    }
    let next = || {
        STATE.with(|s| {
            // splitmix64: every state gives a well-mixed output.
            let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(x);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let bits = (u128::from(next()) << 64) | u128::from(next());
    // The version (4, random) in the 13th digit, the variant (RFC 9562) in the 17th.
    let bits = (bits & !(0xFu128 << 76)) | (0x4u128 << 76);
    let bits = (bits & !(0x3u128 << 62)) | (0x2u128 << 62);
    let hex = format!("{bits:032x}");
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The Unix time now, in microseconds.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A Unix time in microseconds, formatted (UTC) with `strftime`'s `format`.
pub fn format_unix_us(us: u64, format: &str) -> String {
    let micros = i64::try_from(us).unwrap_or(i64::MAX);
    match k8s_openapi::jiff::Timestamp::from_microsecond(micros) {
        Ok(t) => t.strftime(format).to_string(),
        Err(_) => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let text = a.to_str().expect("ASCII");
        let parts: Vec<&str> = text.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{text}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{text}");
    }

    #[test]
    fn a_record_keeps_its_fields_in_any_order() {
        let mut r = Record::new([127, 0, 0, 1].into(), Method::GET, Version::HTTP_11);
        r.set(Field::UserAgent, b"curl/8");
        r.set(Field::Target, b"/a?b=c");
        r.set(Field::Host, b"shop.example");
        assert_eq!(r.user_agent(), "curl/8");
        assert_eq!(r.target(), "/a?b=c");
        assert_eq!(r.host(), "shop.example");
        assert_eq!(r.referer(), "");
        assert_eq!(
            format_unix_us(1_700_000_000_123_456, "%d/%b/%Y:%H:%M:%S"),
            "14/Nov/2023:22:13:20"
        );
    }
}
