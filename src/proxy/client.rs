//! The client at the other end of one connection, and a request as it sent it.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use http::{HeaderValue, Request, Response};

use super::deadline::Deadline;
use super::http1::LeanHead;
use super::http1::respond::itoa;
use super::response::ResponseBody;
use super::upstream::body::RequestBody;

/// Whose routes serve a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// The BalancerClusters' routes: `--listen` and `--listen-tls`.
    Own,
    /// A front's: a Gateway's listeners on this port, at this address (`None`: the front has no
    /// address of its own).
    At(Option<IpAddr>, u16),
}

/// Where a connection came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub front: Front,
    /// TLS was terminated: the request came over HTTPS.
    pub tls: bool,
    /// The port the connection came to.
    pub port: u16,
}

/// The client at the other end of one connection.
pub struct Client {
    pub addr: SocketAddr,
    /// Its address as the last X-Forwarded-For entry, formatted once per connection.
    pub forwarded_for: HeaderValue,
    /// An HTTP/1 connection's one timer (header read and response); none for HTTP/2.
    pub deadline: Option<Rc<Deadline>>,
    pub entry: Entry,
    /// HTTPS: the server name its handshake asked for (SNI), which chose the listener whose
    /// certificate it got; a request for a host of another listener is misdirected (421).
    pub server_name: Option<Box<str>>,
}

impl Client {
    pub fn new(addr: SocketAddr, deadline: Option<Rc<Deadline>>, entry: Entry) -> Self {
        Client {
            addr,
            forwarded_for: forwarded_for(addr.ip()),
            deadline,
            entry,
            server_name: None,
        }
    }
}

/// The client's address as an X-Forwarded-For entry, made once per connection.
pub fn forwarded_for(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        // By hand: `to_string` goes through the formatting machinery, which a new connection
        // for every request would pay every time (docs/benchmarks.md, "New connections").
        IpAddr::V4(v4) => {
            let mut text = Vec::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                text.extend_from_slice(itoa(u64::from(octet), &mut [0; 20]));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string().into_bytes(),
    };
    // An IP address in text is digits, dots, colons and hex letters: always a valid value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A request as its client sent it: hyper's parts and body, and for a request the lean HTTP/1
/// server parsed, its head as the client wrote it. The head's field lines go to the member as
/// the client wrote them (less the hop-by-hop ones), unless the cluster reads fields to choose a
/// member or to replay (sticky sessions, hashing, `failOnStatus`) or the proxy rewrites them (the
/// client's own X-Forwarded-* lines, an absolute-form target): the map is filled then, and the
/// request goes on as one hyper parsed would.
pub struct ClientRequest {
    pub req: Request<RequestBody>,
    pub lean: Option<LeanHead>,
    /// The client's side of an HTTP/1.1 upgrade it asked for, once routed.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The request's record, with the access log or tracing on (kept in the request's box, so
    /// that a request's future does not grow by it).
    pub observed: Option<Box<crate::telemetry::Observed>>,
    /// A gRPC call (its content type says so), answered in gRPC's terms: read once, by
    /// `request::answer`.
    pub grpc: bool,
    /// The answer, once the request core has one: written here once, in the request's box,
    /// and written out to the client from here (the lean server borrows it). Returned by value
    /// instead, it was copied in every frame on its way, about ten copies of 200 to 300 bytes
    /// per request (docs/benchmarks.md, "Before and after the proxy/ reshape").
    pub answer: Option<Response<ResponseBody>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_client_address_is_written_as_the_standard_library_writes_it(
            octets in any::<[u8; 4]>(),
            segments in any::<[u16; 8]>(),
        ) {
            let v4 = std::net::Ipv4Addr::from(octets);
            prop_assert_eq!(forwarded_for(v4.into()), v4.to_string());
            let v6 = std::net::Ipv6Addr::from(segments);
            prop_assert_eq!(forwarded_for(v6.into()), v6.to_string());
        }
    }

    #[test]
    fn client_addresses_at_the_edges_of_each_octet() {
        for (ip, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.255"),
            ("10.0.100.9", "10.0.100.9"),
            ("1.20.199.200", "1.20.199.200"),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(forwarded_for(ip).as_bytes(), text.as_bytes());
        }
    }
}
