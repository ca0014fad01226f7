//! The `kubectl-balancer` binary: `kubectl balancer ...` once it is on the PATH. See
//! `kube_balancer::plugin`.

fn main() -> std::process::ExitCode {
    kube_balancer::plugin::main()
}
