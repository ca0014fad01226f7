//! The data plane: accept, route, pick, forward, retry.
//!
//! One current-thread runtime per worker, each with its own `SO_REUSEPORT` listener and its own
//! pool of upstream connections, so the request path shares nothing but the snapshot (loaded
//! through `ArcSwap`) and the members' atomic counters. Errors become HTTP responses in exactly
//! one place: [`error`].

mod body;
mod deadline;
mod error;
mod forward;
mod head;
mod lean;
mod pool;
mod server;
mod upstream;

pub use server::{ProxyOptions, Server};
