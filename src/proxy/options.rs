//! How the data plane listens, which HTTP/1 implementation it runs, and the limits it puts on
//! clients.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Which HTTP/1 implementation serves clients and reaches members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Mode {
    /// Our lean HTTP/1 server and client for requests that are only a head (most of them),
    /// hyper's for everything else.
    #[default]
    Fast,
    /// hyper's server and client for every request.
    Hyper,
}

#[derive(Clone, Debug)]
pub struct ProxyOptions {
    pub listen: SocketAddr,
    pub workers: usize,
    /// A client must send a whole request head within this time.
    pub header_read_timeout: Duration,
    /// A client sending a request body must send some of it within this time of its last
    /// bytes (nginx's `client_body_timeout`).
    pub body_read_timeout: Duration,
    /// Client connections open at once, over every listener and worker; a connection beyond
    /// them is answered 503 and closed. `None`: no limit.
    pub max_connections: Option<usize>,
    /// At most this many request headers.
    pub max_headers: usize,
    /// At most this many bytes of request head.
    pub max_header_bytes: usize,
    /// Which HTTP/1 implementation to run.
    pub http1: Http1Mode,
    /// Where HTTPS is served for the BalancerClusters' routes, if anywhere.
    pub listen_tls: Option<SocketAddr>,
    /// The HTTPS port clients know (left out of redirect URLs when 443); the bound one when
    /// `None`.
    pub https_port: Option<u16>,
    /// The address fronts (a Gateway's listeners) are served on, each on its own port; no fronts
    /// are served without it.
    pub gateway_address: Option<IpAddr>,
    /// What requests record: metrics, the access log, traces.
    pub telemetry: crate::telemetry::Telemetry,
}

impl ProxyOptions {
    pub fn new(listen: SocketAddr) -> Self {
        ProxyOptions {
            listen,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_connections: None,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            http1: Http1Mode::default(),
            listen_tls: None,
            https_port: None,
            gateway_address: None,
            telemetry: crate::telemetry::Telemetry::default(),
        }
    }
}
