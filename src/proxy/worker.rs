//! What one worker's connections share: the data plane, the pool of member connections, the
//! spare buffers and requests, and the settings. A worker is one thread: nothing here is locked.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use http::{Method, Request, Uri};

use super::client::ClientRequest;
use super::http1::parse::Line;
use super::http1::{Buffers, LeanHead, Limits};
use super::options::Http1Mode;
use super::tunnel::Tunnels;
use super::upstream::body::RequestBody;
use super::upstream::pool::Pool;
use crate::plane::DataPlane;

/// The most spare requests a worker keeps.
const SPARE_REQUESTS: usize = 64;
/// A request whose header map has room for more fields than this is let go rather than kept.
const SPARE_FIELDS_LIMIT: usize = 64;

/// What a worker shares between its connections.
pub struct Worker {
    pub plane: Arc<DataPlane>,
    pub pool: Rc<Pool>,
    /// Spare buffers of the lean HTTP/1 server's connections.
    pub buffers: Buffers,
    /// Finished requests, boxes and header maps kept for the next ones to be parsed into.
    #[expect(
        clippy::vec_box,
        reason = "the boxes themselves are what is kept spare"
    )]
    requests: RefCell<Vec<Box<ClientRequest>>>,
    /// The limits of a request head, as hyper's servers are configured with them.
    pub limits: Limits,
    pub http1: Http1Mode,
    /// The HTTPS port clients know, for redirects to HTTPS.
    pub https_port: u16,
    /// What requests record: metrics, the access log, traces.
    pub telemetry: Rc<crate::telemetry::Telemetry>,
    /// The state of the worker's random numbers (xorshift), for sampling mirrored requests.
    random: std::cell::Cell<u64>,
    /// The upgraded connections (WebSockets) open, which a stop lets finish.
    pub tunnels: Rc<Tunnels>,
}

impl Worker {
    pub fn new(plane: Arc<DataPlane>, limits: Limits, http1: Http1Mode) -> Self {
        Worker {
            plane,
            pool: Rc::default(),
            buffers: Buffers::default(),
            requests: RefCell::default(),
            limits,
            http1,
            https_port: 443,
            telemetry: Rc::default(),
            random: std::cell::Cell::new(crate::clock::now_ms() | 1),
            tunnels: Rc::default(),
        }
    }

    /// A head the lean server parsed, placed into a spare request (its box and header map's
    /// room), or a new one: a busy worker allocates neither per request.
    pub fn request(&self, line: Line, lean: LeanHead) -> Box<ClientRequest> {
        let mut request = self.requests.borrow_mut().pop().unwrap_or_else(|| {
            Box::new(ClientRequest {
                req: Request::new(RequestBody::empty()),
                lean: None,
                upgrade: None,
                observed: None,
                grpc: false,
                answer: None,
            })
        });
        let req = &mut request.req;
        *req.method_mut() = line.method;
        *req.uri_mut() = line.uri;
        *req.version_mut() = line.version;
        request.lean = Some(lean);
        request
    }

    /// Keeps a finished request's box and its header map's room for the next request to be
    /// parsed into, emptied: nothing in it holds on to the head it was parsed from (so that the
    /// read buffer can be reclaimed) or to a member's counters.
    pub fn put_request(&self, mut request: Box<ClientRequest>) {
        // The answer first, before the spares are borrowed: its end gives its member
        // connection back.
        request.answer = None;
        if request.req.headers().capacity() > SPARE_FIELDS_LIMIT {
            return;
        }
        let mut spare = self.requests.borrow_mut();
        if spare.len() < SPARE_REQUESTS {
            let req = &mut request.req;
            req.headers_mut().clear();
            req.extensions_mut().clear();
            *req.method_mut() = Method::GET;
            *req.uri_mut() = Uri::default();
            *req.body_mut() = RequestBody::empty();
            request.lean = None;
            request.upgrade = None;
            request.observed = None;
            request.grpc = false;
            spare.push(request);
        }
    }

    /// True for `numerator` of every `denominator` calls, at random.
    pub fn sample(&self, numerator: u32, denominator: u32) -> bool {
        if numerator >= denominator {
            return true;
        }
        let mut x = self.random.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.set(x);
        x % u64::from(denominator.max(1)) < u64::from(numerator)
    }

    /// How many requests are spare.
    #[cfg(test)]
    fn spare_requests(&self) -> usize {
        self.requests.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use http::Version;

    use super::*;
    use crate::proxy::http1::buffers::READ_SIZE;
    use crate::proxy::http1::parse::{Parsed, parse};

    const LIMITS: Limits = Limits {
        max_headers: 100,
        max_head_bytes: 64 * 1024,
    };

    fn parsed(worker: &Worker, buf: &mut BytesMut) -> Box<ClientRequest> {
        match parse(buf, LIMITS, |line, lean| worker.request(line, lean)) {
            Parsed::Request(request) => request,
            _ => panic!("a head without a body is ours"),
        }
    }

    #[test]
    fn a_finished_request_is_parsed_into_again_holding_nothing_of_its_head() {
        let worker = Worker::new(DataPlane::new(), LIMITS, Http1Mode::Fast);
        let buffers = &worker.buffers;
        let mut buf = buffers.take_read();
        buf.reserve(READ_SIZE);
        buf.extend_from_slice(b"PURGE /old HTTP/1.1\r\nHost: web\r\nX-A: 1\r\nX-B: 2\r\n\r\n");
        let mut first = parsed(&worker, &mut buf);
        first.req.extensions_mut().insert(7u8);
        // As routing does for a cluster that reads fields: the map is filled.
        if let Some(head) = first.lean.take() {
            head.fields.fill(first.req.headers_mut());
        }
        assert_eq!(first.req.headers().len(), 3);
        let at = std::ptr::from_ref::<ClientRequest>(&first);
        worker.put_request(first);
        assert_eq!(worker.spare_requests(), 1);
        // Nothing of the first head is held any more: its read buffer is kept spare.
        buffers.put_read(buf);
        assert_eq!(buffers.spare(), (1, 0));

        let mut buf = buffers.take_read();
        buf.extend_from_slice(b"GET /new HTTP/1.0\r\nHost: app\r\n\r\n");
        let second = parsed(&worker, &mut buf);
        assert_eq!(
            std::ptr::from_ref::<ClientRequest>(&second),
            at,
            "the same box"
        );
        assert_eq!(worker.spare_requests(), 0);
        let req = &second.req;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/new");
        assert_eq!(req.version(), Version::HTTP_10);
        assert!(req.headers().is_empty(), "the old fields are gone");
        assert!(req.headers().capacity() >= 3, "the map's room is kept");
        assert!(req.extensions().get::<u8>().is_none());
        let mut map = http::HeaderMap::new();
        second
            .lean
            .as_ref()
            .expect("the head")
            .fields
            .fill(&mut map);
        assert_eq!(map.len(), 1);
        assert_eq!(map["host"], "app");

        // A request whose map grew large is let go; never more than SPARE_REQUESTS are kept.
        worker.put_request(second);
        let mut large = parsed(&worker, &mut BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]));
        large.req.headers_mut().reserve(SPARE_FIELDS_LIMIT + 1);
        worker.put_request(large);
        assert_eq!(worker.spare_requests(), 0);
        for _ in 0..SPARE_REQUESTS + 3 {
            worker.put_request(Box::new(ClientRequest {
                req: Request::new(RequestBody::empty()),
                lean: None,
                upgrade: None,
                observed: None,
                grpc: false,
                answer: None,
            }));
        }
        assert_eq!(worker.spare_requests(), SPARE_REQUESTS);
    }
}
