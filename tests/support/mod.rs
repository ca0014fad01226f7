//! The harness of the integration tests, shared by both tiers (docs/testenv.md). Real parts, no
//! mocks: real sockets on ephemeral ports, real HTTP clients, the real binary, the real control
//! plane.
//!
//! Any test:
//! - `backend`: HTTP backends with knobs (delay, status, health), a custom handler, WebSocket;
//! - `client`: a real HTTP client and the answer as tests look at it;
//! - `proxy`: the data plane in the test process (`options`: the one place its options are
//!   built), and the YAML of a cluster;
//! - `process`: the `kube-balancer` binary as a process, and what it logs;
//! - `raw`: HTTP/1 bytes on a socket, scripted members and a raw client;
//! - `load`: keep-alive load at a fixed rate with exact counts, and the fault tests' table rows;
//! - `wait`: waiting on a condition, a future or a watch, with a timeout;
//! - `metrics`, `chromium`: reading /metrics, and loading a page in headless Chromium;
//! - `telemetry`: a backend that shows what it got, a data plane with given telemetry;
//! - `tls`: certificates made with rcgen, and an HTTPS member that says what it got.
//!
//! The Kubernetes tier (the run's network namespace and control plane, which scripts/testenv.sh
//! provides):
//! - `controlplane`: etcd, kube-apiserver and kube-controller-manager, shared by a test binary;
//! - `pods`: Nodes and Pods without a kubelet, whose status the tests write themselves;
//! - `netns`: the network namespace of the run, where pod IPs (10.244.0.0/24) are local;
//! - `fixtures`: our CRD, a Service over pods with backends, a BalancerCluster, the controller.
//!
//! Each tier uses only part of it.
#![allow(dead_code)]

pub mod backend;
pub mod chromium;
pub mod client;
pub mod controlplane;
pub mod fixtures;
pub mod load;
pub mod metrics;
pub mod netns;
pub mod podrunner;
pub mod pods;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod telemetry;
pub mod tls;
pub mod wait;
