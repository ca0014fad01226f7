//! The Gateway API tier: the test environment of the Gateway API conformance suite, on the real
//! control plane with the pod runner, which runs the Pods that Deployments create and so changes
//! what the control plane does for every test beside it (docs/testenv.md); the Gateway API
//! controller against it, and the conformance suite itself. A binary of its own,
//! with a control plane of its own, for that reason. It needs scripts/testenv.sh run, like `kube`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking: the harness may unwrap and expect too"
)]

mod support;

mod gateway {
    mod conformance;
    mod controller;
    mod env;
}
