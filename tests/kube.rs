//! The Kubernetes tier: the controller, the kubectl plugin and the install against the real
//! control plane that scripts/testenv.sh builds, inside the run's network namespace
//! (docs/testenv.md). Elsewhere these tests fail, saying so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking: the harness may unwrap and expect too"
)]

mod support;

mod kube {
    mod config;
    mod controller;
    mod controller_balancing;
    mod controller_outage;
    mod controlplane;
    mod crd;
    mod faults;
    mod grpc;
    mod install;
    mod plugin;
    mod routes;
    mod telemetry;
    mod tls_controller;
    mod upstream_tls;
}
