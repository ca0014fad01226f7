//! The `kubectl-balancer` binary: `kubectl balancer ...` once it is on the PATH. See
//! `kube_balancer::plugin`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    kube_balancer::plugin::main()
}
