//! Traces: a server span per request and a client span per try on a member, exported over
//! OTLP (HTTP, protobuf) when `--otlp-endpoint` is set, and W3C trace context passed on.
//!
//! A request that comes with a `traceparent` continues that trace: its server span's parent is
//! the caller's span, and the sampling decision the caller made is kept (parent-based); a
//! request without one starts a trace, sampled at `--trace-sampling`. Each try's client span is
//! a child of the server span, and the member gets a `traceparent` naming that client span (an
//! unsampled trace is still passed on, flagged as such). `tracestate` goes to the member as the
//! client sent it.
//!
//! Spans are batched and exported by the SDK's own thread; a full queue drops spans rather than
//! growing. The exporter's HTTP requests run on the control runtime, not on the workers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

/// Spans waiting for export, at most; more are dropped.
const QUEUE: usize = 8192;
/// How often a batch is sent.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--otlp-endpoint must be an http:// URL (host and port), got {0:?}")]
    Endpoint(String),
    #[error("--trace-sampling must be between 0 and 1, got {0}")]
    Sampling(f64),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// The tracer requests make their spans with. Cloned into every worker.
#[derive(Clone, Debug)]
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracer {
    /// Exports to the OTLP/HTTP `endpoint` (`http://host:4318`; `/v1/traces` is added when it
    /// names no path), sampling `ratio` of the traces that start here. The exporter's requests
    /// run on `runtime`.
    pub fn start(
        endpoint: &str,
        ratio: f64,
        runtime: tokio::runtime::Handle,
    ) -> Result<Tracer, TraceError> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(TraceError::Sampling(ratio));
        }
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| TraceError::Endpoint(endpoint.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(TraceError::Endpoint(endpoint.to_owned()));
        }
        let url = match uri.path() {
            "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            _ => endpoint.to_owned(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(Client { runtime })
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("kube-balancer")
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("kube-balancer");
        Ok(Tracer { provider, tracer })
    }

    /// Sends the spans still queued, and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "could not export the last spans");
        }
        let _ = self.provider.shutdown();
    }

    /// The server span of a request that came with `traceparent` and `tracestate` (or without).
    pub fn request(
        &self,
        traceparent: Option<&[u8]>,
        tracestate: Option<&[u8]>,
        method: &str,
        target: &str,
    ) -> RequestSpan {
        let parent = traceparent
            .and_then(parse_traceparent)
            .map(|(trace, span, flags)| {
                let state = tracestate
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default();
                SpanContext::new(trace, span, flags, true, state)
            });
        let parent_cx = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let path = target.split('?').next().unwrap_or(target);
        let span = self
            .tracer
            .span_builder(format!("{method} {path}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.path", path.to_owned()),
            ])
            .start_with_context(&self.tracer, &parent_cx);
        RequestSpan {
            cx: Context::new().with_span(span),
            tracer: self.tracer.clone(),
            attempt: None,
        }
    }
}

/// A request's server span, and the client span of the try under way.
#[derive(Debug)]
pub struct RequestSpan {
    cx: Context,
    tracer: SdkTracer,
    attempt: Option<opentelemetry_sdk::trace::Span>,
}

impl RequestSpan {
    pub fn trace_id(&self) -> TraceId {
        self.cx.span().span_context().trace_id()
    }

    /// Names the cluster that serves the request.
    pub fn routed(&self, cluster: &str) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("kube_balancer.cluster", cluster.to_owned()));
    }

    /// A try on `member` begins: its client span starts, and the `traceparent` the member gets
    /// names it.
    pub fn try_on(&mut self, member: &str, method: &str, attempt: u32) -> HeaderValue {
        let span = self
            .tracer
            .span_builder(method.to_owned())
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.full", member.to_owned()),
                KeyValue::new("kube_balancer.member", member.to_owned()),
                KeyValue::new("http.request.resend_count", i64::from(attempt)),
            ])
            .start_with_context(&self.tracer, &self.cx);
        let header = traceparent(span.span_context());
        if let Some(mut previous) = self.attempt.replace(span) {
            previous.end();
        }
        header
    }

    /// The try under way ended: with the member's status, or with a failure.
    pub fn tried(&mut self, outcome: Result<u16, &str>) {
        let Some(mut span) = self.attempt.take() else {
            return;
        };
        match outcome {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_status(Status::error(""));
                }
            }
            Err(cause) => span.set_status(Status::error(cause.to_owned())),
        }
        span.end();
    }

    /// The answer went to the client with `status`.
    pub fn end(mut self, status: u16) {
        self.tried(Err("the request ended during this try"));
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// `traceparent` for a span (W3C Trace Context, version 00).
pub fn traceparent(sc: &SpanContext) -> HeaderValue {
    let text = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `traceparent` value: trace id, parent span id and flags. Version 00's shape; a later
/// version's first four fields are read the same way, as the specification asks.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, span, TraceFlags::new(flags & 1)))
}

/// The exporter's HTTP client: each export is one request over a new connection, made on the
/// control runtime (the SDK's export thread only waits for it).
#[derive(Debug)]
struct Client {
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.runtime.spawn(post(request)).await?
    }
}

async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .cloned()
        .ok_or("the OTLP endpoint has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((authority.host(), port)),
    )
    .await??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    parts.headers.insert(
        http::header::HOST,
        HeaderValue::from_str(authority.as_str())?,
    );
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_w3c_trace_context_says() {
        let (trace, span, flags) =
            parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .expect("valid");
        assert_eq!(trace.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span.to_string(), "b7ad6b7169203331");
        assert!(flags.is_sampled());
        for bad in [
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"[..],
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may add fields.
        assert!(
            parse_traceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-x")
                .is_some()
        );
    }
}
