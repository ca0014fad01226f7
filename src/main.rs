//! The `kube-balancer` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

/// mimalloc: the proxy allocates and frees small buffers on every request (hyper's heads and
/// channels), where it is cheaper than the system allocator (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kube_balancer::cli::main()
}
