//! What a request's record and trace take from it as it comes (who sent it, what for, the
//! client's trace context), and what a routed request adds (its id, the try's `traceparent`).
//! Only with the access log or tracing on.

use http::header::{self, HeaderName};

use crate::proxy::client::{Client, ClientRequest};
use crate::proxy::forward::Routed;
use crate::proxy::headers::{TRACEPARENT, TRACESTATE, X_REQUEST_ID};
use crate::proxy::worker::Worker;
use crate::telemetry::trace::RequestSpan;
use crate::telemetry::{self, Field, Observed, Record};

/// The record of a request, as it came: who sent it, what for, and its trace's server span.
pub fn observe(worker: &Worker, client: &Client, incoming: &ClientRequest) -> Box<Observed> {
    let req = &incoming.req;
    let lean = incoming.lean.as_ref();
    let mut record = Record::new(client.addr.ip(), req.method().clone(), req.version());
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    record.set(Field::Target, target.as_bytes());
    let field = |record: &mut Record, name: &HeaderName, into: Field| {
        let mut found = false;
        let mut keep = |value: &[u8]| {
            record.set(into, value);
            found = true;
            true
        };
        match lean {
            Some(head) => {
                head.fields.any_value(name.as_str().as_bytes(), &mut keep);
            }
            None => {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| keep(v.as_bytes()));
            }
        }
        found
    };
    match (req.uri().authority(), lean.and_then(|l| l.host.as_ref())) {
        (Some(authority), _) => record.set(Field::Host, authority.as_str().as_bytes()),
        (None, Some(host)) => record.set(Field::Host, host),
        (None, None) => {
            field(&mut record, &header::HOST, Field::Host);
        }
    }
    field(&mut record, &header::USER_AGENT, Field::UserAgent);
    field(&mut record, &header::REFERER, Field::Referer);
    field(&mut record, &X_REQUEST_ID, Field::RequestId);
    record.bytes_in = bytes_in(incoming);
    let span = span_of(worker, incoming, target);
    record.trace_id = span.as_ref().map(|s| s.trace_id());
    Box::new(Observed {
        record: Box::new(record),
        span,
        telemetry: worker.telemetry.clone(),
    })
}

/// The body's length as the request declares it (`Content-Length`), or none when it has none.
fn bytes_in(incoming: &ClientRequest) -> Option<u64> {
    let req = &incoming.req;
    let lean = incoming.lean.as_ref();
    let declared = match lean {
        Some(head) => {
            let mut length = None;
            head.fields.any_value(b"content-length", &mut |v| {
                length = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
                true
            });
            length
        }
        None => req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
    };
    match declared {
        Some(n) => Some(n),
        None if http_body::Body::is_end_stream(req.body()) => Some(0),
        None => None,
    }
}

/// The request's server span, under the client's trace context when it sent one.
fn span_of(worker: &Worker, incoming: &ClientRequest, target: &str) -> Option<RequestSpan> {
    let req = &incoming.req;
    let lean = incoming.lean.as_ref();
    worker.telemetry.tracer.as_ref().map(|tracer| {
        let mut parent = None;
        let mut state = None;
        let take = |name: &HeaderName, into: &mut Option<Vec<u8>>| match lean {
            Some(head) => {
                head.fields.any_value(name.as_str().as_bytes(), &mut |v| {
                    *into = Some(v.to_vec());
                    true
                });
            }
            None => *into = req.headers().get(name).map(|v| v.as_bytes().to_vec()),
        };
        take(&TRACEPARENT, &mut parent);
        take(&TRACESTATE, &mut state);
        tracer.request(
            parent.as_deref(),
            state.as_deref(),
            req.method().as_str(),
            target,
        )
    })
}

/// What a routed request adds to its record, and what its members get for it: the request id
/// (the client's, or one made here), and with tracing, the try's `traceparent` in place of the
/// client's.
pub fn observe_routed(observed: Option<Box<Observed>>, routed: &mut Routed) {
    let Some(mut observed) = observed else {
        return;
    };
    let (incoming, forwarding) = (&mut *routed.req, &mut routed.forwarding);
    if observed.record.request_id().is_empty() {
        let id = telemetry::new_request_id();
        observed.record.set(Field::RequestId, id.as_bytes());
        forwarding.extra_mut().set(&X_REQUEST_ID, id);
    }
    if observed.span.is_some() {
        let ClientRequest { req, lean, .. } = incoming;
        if let Some(head) = lean.as_ref()
            && head
                .fields
                .any_value(TRACEPARENT.as_str().as_bytes(), &mut |_| true)
            && let Some(head) = lean.take()
        {
            // The client's traceparent gives way to the try's: the head goes as a map.
            head.fields.fill(req.headers_mut());
        }
        req.headers_mut().remove(&TRACEPARENT);
    }
    routed.req.observed = Some(observed);
}
