//! Command line: the modes of the binary (see DESIGN.md, "Modes of the binary").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::plane::DataPlane;
use crate::proxy::{ProxyOptions, Server};
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "kube-balancer",
    version,
    about = "Apache's mod_proxy_balancer, Kubernetes-native"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the BalancerClusters of a YAML file, reloading it when it changes.
    Standalone {
        /// The YAML file (several documents allowed). Default: the embedded seed setup.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Start two demo backends and a balancer in front of them (the seed's experiment).
    Demo {
        /// Addresses of the two demo backends.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.1:8080,127.0.0.1:8081"
        )]
        backends: Vec<SocketAddr>,
        #[command(flatten)]
        common: Common,
    },
    /// Run in a cluster: controller and data plane (in-cluster config or --kubeconfig).
    Run {
        #[command(flatten)]
        kube: KubeArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Print the BalancerCluster CRD as YAML.
    Crd,
}

#[derive(Args, Debug, Clone)]
struct KubeArgs {
    /// Kubeconfig file (default: in-cluster configuration, or $KUBECONFIG, or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (repeat or separate with commas; default: all).
    #[arg(long = "namespace", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Serve only BalancerClusters of this className (a missing className means "default").
    #[arg(long, default_value = "default")]
    class: String,
    /// Sidecar mode: serve one cluster (--cluster) on localhost, write no status.
    #[arg(long, requires = "cluster")]
    sidecar: bool,
    /// The cluster a sidecar serves: NAME (in --namespace or $POD_NAMESPACE) or NAMESPACE/NAME.
    #[arg(long)]
    cluster: Option<String>,
    /// How often the leader may write each cluster's status.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// This replica's name, for the leader Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader Lease (default: kube-balancer-CLASS).
    #[arg(long)]
    lease_name: Option<String>,
    /// The controller's own Service, NAMESPACE/NAME: the leader sums its replicas' figures.
    #[arg(long)]
    peers_service: Option<String>,
    /// Serve the Gateway API too: GatewayClasses whose controllerName is
    /// kubebalancer.io/gateway-controller, their Gateways and HTTPRoutes.
    #[arg(long)]
    gateway: bool,
    /// The Service in front of the data plane's Gateway ports, NAMESPACE/NAME: its
    /// load-balancer addresses (else its cluster IP) are the Gateways' addresses.
    #[arg(long)]
    gateway_service: Option<String>,
}

impl KubeArgs {
    fn options(
        &self,
        admin_port: u16,
        gateway_addresses: &[std::net::IpAddr],
    ) -> anyhow::Result<crate::controller::Options> {
        let pod_namespace = self
            .lease_namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let only = match (&self.cluster, self.sidecar) {
            (Some(c), true) => Some(match c.split_once('/') {
                Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                None => (
                    self.namespaces
                        .first()
                        .cloned()
                        .unwrap_or_else(|| pod_namespace.clone()),
                    c.clone(),
                ),
            }),
            (Some(_), false) => anyhow::bail!("--cluster is only for --sidecar"),
            _ => None,
        };
        let identity = match &self.identity {
            Some(i) => i.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| format!("kube-balancer-{}", std::process::id())),
        };
        let peers_service = match &self.peers_service {
            Some(s) => Some(
                s.split_once('/')
                    .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--peers-service must be NAMESPACE/NAME, got {s:?}")
                    })?,
            ),
            None => None,
        };
        let gateway_service = match &self.gateway_service {
            Some(s) => Some(
                s.split_once('/')
                    .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--gateway-service must be NAMESPACE/NAME, got {s:?}")
                    })?,
            ),
            None => None,
        };
        let gateway = (self.gateway || !gateway_addresses.is_empty() || gateway_service.is_some())
            .then(|| crate::gateway::Options {
                addresses: gateway_addresses.to_vec(),
                service: gateway_service,
            });
        if gateway.is_some() && self.sidecar {
            anyhow::bail!("--sidecar serves one BalancerCluster; it cannot serve Gateways");
        }
        Ok(crate::controller::Options {
            kubeconfig: self.kubeconfig.clone(),
            namespaces: match &only {
                Some((ns, _)) => vec![ns.clone()],
                None => self.namespaces.clone(),
            },
            scope: crate::controller::index::Scope {
                class: self.class.clone(),
                only,
            },
            status_interval: self.status_interval,
            write_status: !self.sidecar,
            identity,
            lease_namespace: pod_namespace,
            lease_name: self
                .lease_name
                .clone()
                .unwrap_or_else(|| format!("kube-balancer-{}", self.class)),
            peers_service,
            admin_port,
            admin_token: None,
            lease_duration: Duration::from_secs(15),
            gateway,
        })
    }
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Where traffic is served (default 0.0.0.0:8000; 127.0.0.1:8000 for the demo).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The admin server (/healthz, /readyz, /metrics, /balancer-manager). On an address other
    /// than loopback it needs --admin-token-file.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// A file holding the admin server's bearer token: every endpoint but /healthz and /readyz
    /// then needs `Authorization: Bearer TOKEN` (at least 16 characters).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Client connections open at once, over every listener and worker; beyond them a new
    /// connection is answered 503 (with Retry-After) and closed. Default: half the open-files
    /// limit, each client connection may need a member connection too. 0: no limit.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Data-plane workers, each a thread with its own listener (default: the number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Write the access log: one line per request, to stdout (or --access-log-file).
    #[arg(long)]
    access_log: bool,
    /// The access log's format: `text` (Apache's combined format, then key=value fields) or
    /// `json` (one object per line).
    #[arg(long, value_enum, default_value = "text")]
    access_log_format: crate::telemetry::access_log::Format,
    /// Write the access log to this file (appended to) instead of stdout.
    #[arg(long)]
    access_log_file: Option<PathBuf>,
    /// Count each member's answers by status, answer and connect times, failovers (/metrics).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    request_metrics: bool,
    /// Members of a cluster above which its members get no latency histograms or status-code
    /// series of their own in /metrics (the cluster's totals stay).
    #[arg(long, default_value_t = crate::plane::metrics::MEMBER_DETAIL_LIMIT)]
    metrics_member_limit: usize,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// The share of traces started here that are sampled (0 to 1); a request that comes with
    /// a traceparent keeps its caller's decision.
    #[arg(long, default_value_t = 0.1)]
    trace_sampling: f64,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// A client must send a whole request head within this time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// A client sending a request body must send some of it within this time of its last bytes
    /// (else 408 and the connection closes).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    body_read_timeout: Duration,
    /// The HTTP/1 implementation: `fast` (our lean server and client for requests without a
    /// body, hyper's for the rest) or `hyper` (hyper's for every request).
    #[arg(long, value_enum, default_value = "fast")]
    http1: crate::proxy::Http1Mode,
    /// Serve HTTPS here too (the BalancerClusters' `spec.tls` certificates, by SNI).
    #[arg(long)]
    listen_tls: Option<SocketAddr>,
    /// The HTTPS port clients know, for redirects to HTTPS (default: the `--listen-tls` port).
    #[arg(long)]
    https_port: Option<u16>,
    /// Addresses to serve Gateways at (repeat or separate with commas; `run` only, implies
    /// --gateway): each Gateway gets one of its own while there are enough, written to its
    /// status, and its listeners are served there. Without it, with --gateway, Gateways are served
    /// on every address, behind --gateway-service.
    #[arg(long = "gateway-address", value_delimiter = ',')]
    gateway_addresses: Vec<std::net::IpAddr>,
}

impl Common {
    /// The admin token, which an admin server on an address other than loopback must have.
    fn admin_token(&self) -> anyhow::Result<Option<crate::admin::auth::Token>> {
        let token = match &self.admin_token_file {
            Some(path) => Some(crate::admin::auth::Token::read(path)?),
            None => None,
        };
        if token.is_none() && !self.admin.ip().is_loopback() {
            anyhow::bail!(
                "--admin {} is not a loopback address: the admin server shows every balancer, member and figure, so elsewhere it needs --admin-token-file FILE (a bearer token asked for on everything but /healthz and /readyz)",
                self.admin
            );
        }
        Ok(token)
    }

    fn proxy_options(&self, default_listen: &str) -> ProxyOptions {
        let listen = self.listen.unwrap_or_else(|| {
            default_listen
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8000)))
        });
        let mut options = ProxyOptions::new(listen);
        if let Some(n) = self.workers {
            options.workers = n.max(1);
        }
        options.header_read_timeout = self.header_read_timeout;
        options.body_read_timeout = self.body_read_timeout;
        options.max_connections = match self.max_connections {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(default_max_connections(open_files_limit())),
        };
        options.http1 = self.http1;
        options.listen_tls = self.listen_tls;
        options.https_port = self.https_port;
        // The proxy serves fronts at one address; a front's own address, when the controller gives
        // one, is the first of these while the proxy binds no other.
        options.gateway_address = self.gateway_addresses.first().copied();
        options
    }
}

pub fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Crd => crate::api::crd_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Command::Standalone { file, common } => serve(common, "0.0.0.0:8000", move |plane| {
            Box::pin(async move {
                crate::standalone::run(file, plane).await?;
                Ok(())
            })
        }),
        Command::Run { kube, mut common } => {
            let default_listen = if kube.sidecar {
                "127.0.0.1:8000"
            } else {
                "0.0.0.0:8000"
            };
            let options = kube
                .options(common.admin.port(), &common.gateway_addresses)
                .and_then(|mut options| {
                    // The leader reads its peers' figures with the same token.
                    options.admin_token = common
                        .admin_token()?
                        .map(|token| std::sync::Arc::from(token.value()));
                    Ok(options)
                });
            match options {
                Ok(options) => {
                    if options.gateway.is_some() && common.gateway_addresses.is_empty() {
                        // Gateways on every address, behind the Service of --gateway-service.
                        common
                            .gateway_addresses
                            .push(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                    }
                    serve(common, default_listen, move |plane| {
                        Box::pin(async move {
                            let client =
                                crate::controller::client(options.kubeconfig.as_deref()).await?;
                            tracing::info!(scope = ?options.scope, namespaces = ?options.namespaces, "watching the Kubernetes API");
                            // The controller's tasks live as long as the runtime.
                            let _controller =
                                crate::controller::start(client, options, plane).await?;
                            Ok(())
                        })
                    })
                }
                Err(e) => Err(e),
            }
        }
        Command::Demo { backends, common } => serve(common, "127.0.0.1:8000", move |plane| {
            Box::pin(async move {
                let mut bound = Vec::new();
                for (i, addr) in backends.iter().enumerate() {
                    let local = crate::demo::start_backend(i + 1, *addr).await?;
                    tracing::info!(backend = i + 1, address = %local, "demo backend listening");
                    bound.push(local);
                }
                plane.publish(vec![crate::demo::seed_cluster(&bound)?]);
                Ok(())
            })
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

type Source = Box<
    dyn FnOnce(
        Arc<DataPlane>,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
>;

/// Runs a data plane fed by `source` until SIGTERM or Ctrl-C, then drains and exits.
fn serve<F>(common: Common, default_listen: &str, source: F) -> anyhow::Result<()>
where
    F: FnOnce(
            Arc<DataPlane>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + 'static,
{
    let source: Source = Box::new(source);
    telemetry::init(common.log_format);
    check_huge_pages_off();
    let admin_token = common.admin_token()?;
    let open_files = raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kb-control")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Watch SIGTERM before anything listens, so a stop right after start still drains.
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let plane = DataPlane::new();
        plane
            .metrics
            .set_member_detail_limit(common.metrics_member_limit);
        source(plane.clone()).await?;
        let mut options = common.proxy_options(default_listen);
        options.telemetry = telemetry_of(&common, &plane)?;
        tracing::info!(
            open_files,
            max_connections = options.max_connections.unwrap_or(0),
            "client connection limit (0: none)"
        );
        let tracer = options.telemetry.tracer.clone();
        let workers = options.workers;
        let server = Server::start(plane.clone(), options)?;
        tracing::info!(address = %server.local_addr(), workers, "data plane listening");
        if let Some(tls) = server.tls_addr() {
            tracing::info!(address = %tls, "HTTPS listening");
        }
        // Active health checks run next to the workers and stop with them.
        let checker = crate::health::Checker::start(plane.clone())?;
        let admin = crate::admin::start_with(common.admin, plane.clone(), admin_token).await?;
        tracing::info!(address = %admin, "admin server listening");

        wait_for_stop(term).await;
        plane.start_draining();
        tracing::info!(grace = ?common.shutdown_grace, "stopping: no new connections, finishing requests in flight");
        let grace = common.shutdown_grace;
        tokio::task::spawn_blocking(move || {
            server.shutdown(grace);
            checker.stop();
            if let Some(tracer) = tracer {
                tracer.shutdown();
            }
        })
        .await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The access log, traces and request metrics as the command line asks for them.
fn telemetry_of(
    common: &Common,
    plane: &Arc<DataPlane>,
) -> anyhow::Result<crate::telemetry::Telemetry> {
    let access_log = match (common.access_log, &common.access_log_file) {
        (false, None) => None,
        (_, Some(path)) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    anyhow::anyhow!("cannot open the access log {}: {e}", path.display())
                })?;
            Some(crate::telemetry::AccessLog::start(
                common.access_log_format,
                Box::new(file),
                plane.clone(),
            )?)
        }
        (true, None) => Some(crate::telemetry::AccessLog::start(
            common.access_log_format,
            Box::new(std::io::stdout()),
            plane.clone(),
        )?),
    };
    let tracer = match &common.otlp_endpoint {
        Some(endpoint) => {
            let tracer = crate::telemetry::Tracer::start(
                endpoint,
                common.trace_sampling,
                tokio::runtime::Handle::current(),
            )?;
            tracing::info!(%endpoint, sampling = common.trace_sampling, "exporting traces over OTLP");
            Some(tracer)
        }
        None => None,
    };
    Ok(crate::telemetry::Telemetry {
        request_metrics: common.request_metrics,
        access_log,
        tracer,
    })
}

/// Turns transparent huge pages off for this process. mimalloc asks the kernel for them on its
/// arenas (`MADV_HUGEPAGE`), and then every 2 MiB region the allocator touches is resident whole:
/// an idle worker held about 12 MiB that way, its own use being under 4 (docs/benchmarks.md,
/// "Memory: huge pages, pooled buffers, the allocator"). nginx and HAProxy allocate from the
/// system's allocator and get none either. Done first thing in `main`, before the runtime's
/// threads exist; `serve` says so if it did not take.
fn no_transparent_huge_pages() {
    // A kernel without the setting leaves the process as it was: `serve` warns.
    rustix::thread::disable_transparent_huge_pages(true).ok();
}

/// Warns when transparent huge pages are still on for this process.
fn check_huge_pages_off() {
    match rustix::thread::transparent_huge_pages_are_disabled() {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "transparent huge pages are on for this process: idle memory is several MiB higher"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot turn transparent huge pages off"),
    }
}

/// Raises the soft limit on open files to the hard one, as nginx's `worker_rlimit_nofile` and
/// Go's runtime do: each client connection and each member connection is a file. Gives the
/// limit in force.
fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(hard)) = (limit.current, limit.maximum)
        && current < hard
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return hard,
            Err(e) => {
                tracing::warn!(error = %e, current, hard, "cannot raise the open-files limit")
            }
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// The open-files limit in force.
fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// `--max-connections` when not given: half the open files, since each client connection may
/// need a member connection too (HAProxy derives its `maxconn` from the same limit).
fn default_max_connections(open_files: u64) -> usize {
    usize::try_from(open_files / 2).unwrap_or(usize::MAX).max(1)
}

async fn wait_for_stop(term: std::io::Result<tokio::signal::unix::Signal>) {
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn common(args: &[&str]) -> Common {
        let mut argv = vec!["kube-balancer", "standalone"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Standalone { common, .. } => common,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_admin_server_is_on_localhost_unless_told_and_needs_a_token_elsewhere() {
        let default = common(&[]);
        assert!(default.admin.ip().is_loopback(), "{}", default.admin);
        assert!(default.admin_token().expect("no token needed").is_none());
        let e = common(&["--admin", "0.0.0.0:9901"])
            .admin_token()
            .expect_err("a token is needed");
        assert!(e.to_string().contains("--admin-token-file"), "{e}");
    }

    #[test]
    fn max_connections_defaults_to_half_the_open_files() {
        assert_eq!(default_max_connections(20_000), 10_000);
        assert_eq!(default_max_connections(1), 1);
        assert_eq!(
            common(&["--max-connections", "0"])
                .proxy_options("127.0.0.1:0")
                .max_connections,
            None
        );
        assert_eq!(
            common(&["--max-connections", "7"])
                .proxy_options("127.0.0.1:0")
                .max_connections,
            Some(7)
        );
    }
}
