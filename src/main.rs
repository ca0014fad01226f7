//! The `kube-balancer` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    kube_balancer::cli::main()
}
