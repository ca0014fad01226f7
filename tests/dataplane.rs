//! The data-plane tier: the proxy, its admin server and the binary in standalone mode, against real
//! backends and clients on 127.0.0.1 ephemeral ports. No control plane; runs anywhere.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking: the harness may unwrap and expect too"
)]

mod support;

mod dataplane {
    mod abuse;
    mod admin;
    mod architecture;
    mod binary;
    mod client_http1;
    mod faults;
    mod grpc;
    mod health;
    mod layout;
    mod methods;
    mod observability;
    mod overload;
    mod proxy;
    mod proxy_protocol;
    mod retries;
    mod routes;
    mod security;
    mod sticky;
    mod tls_proxy;
    mod upstream;
    mod upstream_tls;
}
