//! The fast HTTP/1 path's wire code: parsing and writing heads, framing bodies, towards clients
//! (the lean server) and towards members (the lean client). It knows nothing of routing or
//! balancing: the proxy's request core drives it (`downstream::lean`, `upstream::lean`).
//!
//! Most requests a balancer sees are a head and nothing else. For those, this code reads and
//! writes HTTP/1.1 without hyper's per-connection machinery; whatever it does not handle (a
//! body, an upgrade, an odd head) goes to hyper, which is also the whole HTTP/1 stack with
//! `--http1 hyper`. Both take the same tests, and the differential tests in `tests` below feed
//! the same bytes to this parser and to hyper's and require the same verdict.
//!
//! Inside, imports go one way: `field` and `io` import nothing of ours; `raw` and `framing`
//! build on `field`; `conn` (a member connection) on `io`; `answer` (an answer's body) on
//! `conn` and `framing`; `client` (one exchange) on all of those. `parse` and `respond` are the
//! server's two halves, on `field`, `raw`, `io` and `buffers`.

pub mod answer;
pub mod buffers;
pub mod client;
pub mod conn;
#[cfg(any(test, feature = "fuzzing"))]
pub mod differential;
pub mod field;
pub mod framing;
pub mod io;
pub mod parse;
pub mod raw;
pub mod respond;

pub use buffers::Buffers;
pub use parse::{LeanHead, Limits};
pub use raw::RawHead;
