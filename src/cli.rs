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
    /// The admin server (/healthz, /readyz, /metrics, /balancer-manager).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Data-plane workers, each a thread with its own listener (default: the number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log one line per request (target `access`).
    #[arg(long)]
    access_log: bool,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// A client must send a whole request head within this time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
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
        options.access_log = self.access_log;
        options.header_read_timeout = self.header_read_timeout;
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
            match kube.options(common.admin.port(), &common.gateway_addresses) {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kb-control")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Watch SIGTERM before anything listens, so a stop right after start still drains.
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let plane = DataPlane::new();
        source(plane.clone()).await?;
        let options = common.proxy_options(default_listen);
        let workers = options.workers;
        let server = Server::start(plane.clone(), options)?;
        tracing::info!(address = %server.local_addr(), workers, "data plane listening");
        if let Some(tls) = server.tls_addr() {
            tracing::info!(address = %tls, "HTTPS listening");
        }
        // Active health checks run next to the workers and stop with them.
        let checker = crate::health::Checker::start(plane.clone())?;
        let admin = crate::admin::start(common.admin, plane.clone()).await?;
        tracing::info!(address = %admin, "admin server listening");

        wait_for_stop(term).await;
        plane.start_draining();
        tracing::info!(grace = ?common.shutdown_grace, "stopping: no new connections, finishing requests in flight");
        let grace = common.shutdown_grace;
        tokio::task::spawn_blocking(move || {
            server.shutdown(grace);
            checker.stop();
        })
        .await?;
        tracing::info!("stopped");
        Ok(())
    })
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
