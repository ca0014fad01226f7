//! The Gateway API tier: the test environment of the Gateway API conformance suite, on the real
//! control plane with the pod runner, which runs the Pods that Deployments create and so changes
//! what the control plane does for every test beside it (docs/testenv.md). A binary of its own,
//! with a control plane of its own, for that reason. It needs scripts/testenv.sh run, like `kube`.

mod support;

mod gateway {
    mod env;
}
