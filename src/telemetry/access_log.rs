//! The access log: one line per request, written by a thread of its own.
//!
//! A worker hands each finished request's record to a bounded queue and goes on: it never
//! formats, writes or waits. The writer thread drains the queue, formats the lines (`text`,
//! Apache's combined format with more fields after it, or `json`) and writes them in batches.
//! When the queue is full (the output cannot keep up) a line is dropped and counted
//! (`kube_balancer_access_log_dropped_total`), so memory stays bounded whatever happens to the
//! output. The writer polls the queue rather than being woken, so that handing a record over
//! is never a system call.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Duration;

use serde::Serialize;

use super::Record;
use crate::plane::DataPlane;

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 16 * 1024;
/// How long the writer sleeps when the queue is empty.
const POLL: Duration = Duration::from_millis(10);

/// How lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Apache's combined log format, then `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where workers hand their records. Cloned into every worker.
#[derive(Clone, Debug)]
pub struct AccessLog {
    queue: SyncSender<Box<Record>>,
    plane: Arc<DataPlane>,
}

impl AccessLog {
    /// Starts the writer thread, writing to `out`.
    pub fn start(
        format: Format,
        out: Box<dyn Write + Send>,
        plane: Arc<DataPlane>,
    ) -> std::io::Result<AccessLog> {
        let (queue, records) = sync_channel(QUEUE);
        let counters = plane.clone();
        std::thread::Builder::new()
            .name("kb-access-log".into())
            .spawn(move || write_lines(records, format, out, &counters))?;
        Ok(AccessLog { queue, plane })
    }

    /// Hands a record over; drops it, counted, when the queue is full.
    pub fn submit(&self, record: Box<Record>) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.plane.metrics.access_log_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

fn write_lines(
    records: Receiver<Box<Record>>,
    format: Format,
    out: Box<dyn Write + Send>,
    plane: &DataPlane,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    loop {
        match records.try_recv() {
            Ok(record) => {
                line.clear();
                match format {
                    Format::Text => text_line(&record, &mut line),
                    Format::Json => json_line(&record, &mut line),
                }
                line.push('\n');
                if out.write_all(line.as_bytes()).is_err() {
                    plane.metrics.access_log_dropped.fetch_add(1, Relaxed);
                } else {
                    plane.metrics.access_log_lines.fetch_add(1, Relaxed);
                }
            }
            Err(TryRecvError::Empty) => {
                let _ = out.flush();
                std::thread::sleep(POLL);
            }
            Err(TryRecvError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

/// A duration in milliseconds with microseconds, as the lines show them.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Apache's combined format (`%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"`), then
/// the rest as `key=value` (values that may hold spaces quoted). Bytes outside printable ASCII,
/// quotes and backslashes are escaped as Apache does (`\xHH`, `\"`).
pub fn text_line(r: &Record, out: &mut String) {
    use std::fmt::Write as _;
    let time = super::format_unix_us(r.unix_us, "%d/%b/%Y:%H:%M:%S +0000");
    let _ = write!(out, "{} - - [{time}] \"{} ", r.client, r.method);
    escape_into(r.target(), out);
    let _ = write!(out, " {:?}\" {} ", r.version, r.status);
    match r.bytes_out {
        0 => out.push('-'),
        n => {
            let _ = write!(out, "{n}");
        }
    }
    out.push_str(" \"");
    escape_or_dash(r.referer(), out);
    out.push_str("\" \"");
    escape_or_dash(r.user_agent(), out);
    out.push_str("\" host=\"");
    escape_or_dash(r.host(), out);
    out.push('"');
    match r.bytes_in {
        Some(n) => {
            let _ = write!(out, " in={n}");
        }
        None => out.push_str(" in=-"),
    }
    let _ = write!(out, " duration_ms={:.3}", millis(r.duration));
    push_ms(out, " connect_ms=", r.connect);
    push_ms(out, " upstream_ms=", r.upstream);
    out.push_str(" member=\"");
    escape_or_dash(r.member(), out);
    out.push_str("\" cluster=\"");
    escape_or_dash(r.cluster(), out);
    out.push_str("\" route=\"");
    escape_or_dash(r.route(), out);
    let _ = write!(out, "\" attempts={} request_id=\"", r.attempts);
    escape_or_dash(r.request_id(), out);
    out.push('"');
    if let Some(trace) = r.trace_id() {
        let _ = write!(out, " trace_id={trace}");
    }
}

fn push_ms(out: &mut String, key: &str, value: Option<Duration>) {
    use std::fmt::Write as _;
    out.push_str(key);
    match value {
        Some(d) => {
            let _ = write!(out, "{:.3}", millis(d));
        }
        None => out.push('-'),
    }
}

fn escape_or_dash(value: &str, out: &mut String) {
    if value.is_empty() {
        out.push('-');
    } else {
        escape_into(value, out);
    }
}

fn escape_into(value: &str, out: &mut String) {
    use std::fmt::Write as _;
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
    }
}

/// One JSON object; absent values are `null`.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    protocol: String,
    status: u16,
    bytes_in: Option<u64>,
    bytes_out: u64,
    duration_ms: f64,
    upstream_connect_ms: Option<f64>,
    upstream_response_ms: Option<f64>,
    member: Option<&'a str>,
    cluster: Option<&'a str>,
    route: Option<&'a str>,
    attempts: u32,
    request_id: Option<&'a str>,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
    trace_id: Option<String>,
}

fn some(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

pub fn json_line(r: &Record, out: &mut String) {
    let target = r.target();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let line = JsonLine {
        time: super::format_unix_us(r.unix_us, "%Y-%m-%dT%H:%M:%S%.6fZ"),
        client: r.client.to_string(),
        method: r.method.as_str(),
        host: some(r.host()),
        path,
        query,
        protocol: format!("{:?}", r.version),
        status: r.status,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_ms: millis(r.duration),
        upstream_connect_ms: r.connect.map(millis),
        upstream_response_ms: r.upstream.map(millis),
        member: some(r.member()),
        cluster: some(r.cluster()),
        route: some(r.route()),
        attempts: r.attempts,
        request_id: some(r.request_id()),
        user_agent: some(r.user_agent()),
        referer: some(r.referer()),
        trace_id: r.trace_id(),
    };
    if let Ok(text) = serde_json::to_string(&line) {
        out.push_str(&text);
    }
}
