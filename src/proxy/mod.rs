//! The data plane's request path: accept, route, pick, forward with failover, answer.
//!
//! One current-thread runtime per worker, each with its own `SO_REUSEPORT` listener and its
//! own pool of member connections, so the request path shares nothing but the snapshot (loaded
//! through `ArcSwap`) and the members' atomic counters.
//!
//! The layout, from the outside in (docs/architecture.md draws it):
//! - [`server`] binds and runs the workers and stops them, [`listeners`] accepts on each
//!   worker's listeners (and opens the fronts' ports); [`downstream`] serves one client
//!   connection (the lean HTTP/1 server, hyper's HTTP/1 and HTTP/2 servers, TLS);
//! - the request core: [`request`] routes a request and answers it, [`forward`] tries the
//!   members with failover, [`headers`] readies the request's fields, [`filters`] applies a
//!   route's filters, [`error`] is the one place where a failure (or an answer of the proxy's
//!   own) becomes an answer, [`response`] streams the answer back;
//! - [`upstream`] carries a request to a member over one of two clients (the lean HTTP/1
//!   client, hyper's), pooled per worker;
//! - [`http1`] is the fast HTTP/1 path's wire code, for both sides; it knows nothing above it.
//!
//! Imports go one way, down that list; no two files import each other.

mod client;
mod deadline;
mod downstream;
mod error;
mod filters;
mod forward;
mod grpc;
mod headers;
mod http1;
mod listeners;
mod options;
mod request;
mod response;
mod server;
mod tunnel;
mod upstream;
mod worker;

/// The differential checks of the fast HTTP/1 path against hyper's, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub use http1::differential;
pub use options::{Http1Mode, ProxyOptions};
pub use server::Server;
