//! `kubectl balancer`: the balancer-manager from the command line. `members` shows a
//! BalancerCluster's member table (from its status); `drain`, `disable`, `stop`, `enable` and
//! `set-factor` edit `spec.memberOverrides`, so an edit is declarative: every replica applies it,
//! and it survives restarts. It talks to the API server only, never to a replica.
//!
//! It finds the cluster like kubectl does: `--kubeconfig` (else `$KUBECONFIG`, else
//! `~/.kube/config`, else in-cluster), `--context`, and `-n/--namespace` (else the context's
//! namespace). kubectl runs it as `kubectl balancer ...` when `kubectl-balancer` is on the PATH.

pub mod edit;
pub mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::Value;

use crate::api::{BalancerCluster, BalancerClusterStatus, MemberState, MemberStatus};
use edit::{Change, Edit, Target};

/// The field manager of the plugin's writes, as `kubectl get --show-managed-fields` shows it.
pub const FIELD_MANAGER: &str = "kubectl-balancer";
/// A concurrent writer makes a write fail (it carries the resourceVersion it read); the edit is
/// then recomputed from the new object, this many times at most.
const ATTEMPTS: usize = 5;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl balancer",
    bin_name = "kubectl balancer",
    version,
    about = "The balancer-manager for kube-balancer's BalancerClusters",
    after_help = "Edits are kept in the BalancerCluster's spec.memberOverrides."
)]
struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace of the BalancerCluster (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the members: URL, pod, route, factor, set, status, elected, busy, to, from.
    Members {
        #[arg(value_name = "CLUSTER")]
        cluster: String,
    },
    /// Drain a member: it takes only requests already sticky to it.
    Drain(MemberArgs),
    /// Disable a member: it takes no requests.
    Disable(MemberArgs),
    /// Stop a member: it takes no requests and is never retried until enabled.
    Stop(MemberArgs),
    /// Enable a member again (removes the state override).
    Enable(MemberArgs),
    /// Set a member's load factor, 1..100 (Apache's loadfactor).
    SetFactor {
        #[command(flatten)]
        member: MemberArgs,
        /// The new load factor, a whole number from 1 to 100.
        #[arg(value_name = "N", value_parser = edit::parse_load_factor)]
        factor: u32,
    },
}

#[derive(clap::Args, Debug)]
struct MemberArgs {
    /// The BalancerCluster.
    #[arg(value_name = "CLUSTER")]
    cluster: String,
    /// The member: its pod's name, or its HOST:PORT.
    #[arg(value_name = "POD")]
    member: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("cannot find a cluster to talk to: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(kube::Error),
    #[error("balancercluster {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    /// The API server refused: its own message (CEL rules say what is wrong).
    #[error("the API server refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Api(kube::Error),
    #[error("{namespace}/{name} kept changing under the edit; try again")]
    Contended { namespace: String, name: String },
    #[error("cannot read {namespace}/{name}: {message}")]
    Unreadable {
        namespace: String,
        name: String,
        message: String,
    },
}

/// The plugin's `main`: parses the command line, runs the command, prints, and returns the exit
/// code (1 for a failure, 2 for a usage error, as clap does).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<String, Error> {
    let (client, default_namespace) = connect(&cli).await?;
    let namespace = cli.namespace.clone().unwrap_or(default_namespace);
    let clusters = Clusters::new(client, &namespace);
    let (member, edit) = match cli.command {
        Command::Members { cluster } => return clusters.members(&cluster).await,
        Command::Drain(m) => (m, Edit::State(MemberState::Drain)),
        Command::Disable(m) => (m, Edit::State(MemberState::Disabled)),
        Command::Stop(m) => (m, Edit::State(MemberState::Stopped)),
        Command::Enable(m) => (m, Edit::Enable),
        Command::SetFactor { member, factor } => (member, Edit::LoadFactor(factor)),
    };
    clusters
        .edit(&member.cluster, &Target::parse(&member.member), edit)
        .await
}

/// A client and the default namespace, the way kubectl picks them.
async fn connect(cli: &Cli) -> Result<(Client, String), Error> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
        (None, None) => kube::Config::infer().await?,
    };
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config).map_err(Error::Client)?, namespace))
}

/// BalancerClusters of one namespace, read and written untyped: the plugin keeps whatever a newer
/// CRD adds, and reads only the fields it shows or edits.
struct Clusters {
    api: Api<DynamicObject>,
    namespace: String,
}

impl Clusters {
    fn new(client: Client, namespace: &str) -> Clusters {
        let resource = ApiResource::erase::<BalancerCluster>(&());
        Clusters {
            api: Api::namespaced_with(client, namespace, &resource),
            namespace: namespace.to_owned(),
        }
    }

    async fn get(&self, name: &str) -> Result<DynamicObject, Error> {
        match self.api.get(name).await {
            Ok(object) => Ok(object),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(Error::NotFound {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
            }),
            Err(e) => Err(Error::Api(e)),
        }
    }

    fn status(
        &self,
        name: &str,
        object: &DynamicObject,
    ) -> Result<Option<BalancerClusterStatus>, Error> {
        match object.data.get("status") {
            None | Some(Value::Null) => Ok(None),
            Some(status) => serde_json::from_value(status.clone())
                .map(Some)
                .map_err(|e| Error::Unreadable {
                    namespace: self.namespace.clone(),
                    name: name.to_owned(),
                    message: format!("status: {e}"),
                }),
        }
    }

    async fn members(&self, name: &str) -> Result<String, Error> {
        let object = self.get(name).await?;
        let status = self.status(name, &object)?;
        let class = object
            .data
            .pointer("/spec/className")
            .and_then(Value::as_str)
            .unwrap_or("default");
        Ok(table::render(&table::View {
            namespace: &self.namespace,
            name,
            generation: object.metadata.generation,
            class,
            status: status.as_ref(),
        }))
    }

    /// Reads the cluster, edits its overrides, and writes them back with the resourceVersion it
    /// read (a JSON merge patch of the one list): other overrides are kept, and a concurrent
    /// writer makes the write fail and the edit start again from the new object.
    async fn edit(&self, name: &str, target: &Target, edit: Edit) -> Result<String, Error> {
        for _ in 0..ATTEMPTS {
            let object = self.get(name).await?;
            let rows: Vec<MemberStatus> = self
                .status(name, &object)?
                .map(|s| s.members)
                .unwrap_or_default();
            let overrides: Vec<Value> = object
                .data
                .pointer("/spec/memberOverrides")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let change: Change = edit::apply(&overrides, target, edit, target.row(&rows));
            let line = format!(
                "{}/{name}: {} {}",
                self.namespace,
                target.as_str(),
                change.summary
            );
            if !change.changed {
                return Ok(format!("{line} (unchanged)\n"));
            }
            let list = if change.overrides.is_empty() {
                Value::Null
            } else {
                Value::Array(change.overrides)
            };
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": object.metadata.resource_version},
                "spec": {"memberOverrides": list},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            match self.api.patch(name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(format!("{line}\n")),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    return Err(Error::NotFound {
                        namespace: self.namespace.clone(),
                        name: name.to_owned(),
                    });
                }
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                    return Err(Error::Refused(e.message));
                }
                Err(e) => return Err(Error::Api(e)),
            }
        }
        Err(Error::Contended {
            namespace: self.namespace.clone(),
            name: name.to_owned(),
        })
    }
}
