//! Harnesses shared by the integration tests (docs/testenv.md).
//!
//! - `controlplane`: a real etcd, kube-apiserver and kube-controller-manager, started once per test
//!   binary from the binaries that scripts/testenv.sh builds.
//! - `pods`: Nodes and Pods without a kubelet, whose status the tests write themselves, so that the
//!   real EndpointSlice controller publishes them.
//! - `netns`: the network namespace of the run, where pod IPs (10.244.0.0/24) are local addresses.
//! - `backend`: a tiny HTTP server on a pod IP and a plain HTTP client.
//! - `fixtures`: our CRD, a Service over pods with backends, a BalancerCluster, controller options.
//! - `wait`: waiting on a condition seen through a watch, with a timeout.
//!
//! Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod backend;
pub mod controlplane;
pub mod fixtures;
pub mod netns;
pub mod podrunner;
pub mod pods;
pub mod wait;
