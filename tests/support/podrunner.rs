//! A small pod runner, standing in for the kubelet (and the scheduler) for the Pods that Deployments
//! create, so that the Gateway API conformance suite's backends really run here (docs/testenv.md).
//!
//! `PodRunner::shared()` starts, once per test binary:
//!
//! - a second kube-controller-manager running the Deployment, ReplicaSet, garbage collector and
//!   namespace controllers (the control plane's own runs only the EndpointSlice controller);
//! - a bridge, `kbpods0` with 10.244.1.1/24, in the run's network namespace, and a Node,
//!   `kb-podrunner-node`, whose address is the bridge's;
//! - a loop on a thread of its own that watches every Pod. It binds a Pod that no one has scheduled
//!   (`spec.nodeName` empty) to that Node, gives it an address from 10.244.1.2 to 10.244.1.254, and
//!   runs it:
//!   - an `echo-basic` image runs the real echo-basic (built by scripts/testenv.sh from the pinned
//!     Gateway API module) in a network namespace of its own, joined to the bridge by a veth pair,
//!     as a minimal CNI does; its environment is the container's (values, field references,
//!     Secret and ConfigMap keys), and its Secret and ConfigMap volumes are files in the pod's
//!     directory. The Pod is reported Ready with its IP once its ports accept connections from
//!     the run's namespace, and the real EndpointSlice controller publishes it;
//!   - a placeholder image (CoreDNS, which the suite's base manifests deploy for its UDPRoute
//!     tests) is reported Ready with an IP, and nothing runs behind it; its Ready condition says so;
//!   - anything else is left unready, with the reason in its Ready condition.
//!
//! A Pod being deleted has its process stopped (SIGKILL, by PID), its veth removed (its network
//! namespace has nothing else holding it and goes with the process), and is then deleted for good,
//! as a kubelet does. Pods bound to another Node (the `pods` module's fake pods) are left alone.
//!
//! Everything it starts dies with the test process: the processes get `PR_SET_PDEATHSIG` from the
//! runner's thread, which lives as long as the process, an exit hook kills them on a normal exit,
//! and the bridge goes with the run's network namespace. Its logs (one per pod, and the controller
//! manager's) are under `podrunner/` in the control plane's directory (`KB_TESTENV_KEEP=1` keeps
//! them).

pub mod conformance;
mod kubelet;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::controlplane::{ControlPlane, die_with_parent};
use super::netns;

/// The pinned Gateway API release; scripts/testenv.sh builds its suite and echo-basic (a test checks
/// that the two agree).
pub const GATEWAY_API_VERSION: &str = "v1.6.3";

/// The paths that scripts/testenv.sh exports (`env`, and `run` sets them).
pub const ECHO_BASIC_ENV: &str = "KB_TESTENV_ECHO_BASIC";
pub const CONFORMANCE_ENV: &str = "KB_TESTENV_GATEWAY_CONFORMANCE";
pub const EXPERIMENTAL_CRDS_ENV: &str = "KB_TESTENV_GATEWAY_EXPERIMENTAL_CRDS";
pub const BASE_MANIFESTS_ENV: &str = "KB_TESTENV_GATEWAY_BASE_MANIFESTS";

/// The Node that the runner binds Pods to and runs them on.
pub const NODE_NAME: &str = "kb-podrunner-node";
/// The bridge in the run's network namespace that every pod's veth joins.
pub const BRIDGE: &str = "kbpods0";
/// The bridge's address, the pods' gateway and the Node's address.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const POD_PREFIX_LEN: u8 = 24;
const FIRST_POD_HOST: u8 = 2;
const LAST_POD_HOST: u8 = 254;

/// Images run with the echo-basic binary: the suite's manifests name echo-basic at several tags.
const ECHO_BASIC_IMAGE: &str = "gateway-api/echo-basic";
/// Images reported Ready with nothing running; see the module documentation and docs/testenv.md.
const PLACEHOLDER_IMAGES: [&str; 1] = ["registry.k8s.io/coredns/coredns"];

/// How long a started process has to accept connections on its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the loop looks again without an event: processes that exited, pods waiting on a Secret.
const RESYNC: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Each echo-basic's output, its lines stamped with their time (see `kubelet`).
const ECHO_BASIC_LOG: &str = "echo-basic.log";

/// The path that `env` names, or a panic saying what to run.
pub fn testenv_file(env: &str) -> PathBuf {
    let how = "It comes from scripts/testenv.sh (`env`, or `run`, which sets it): run scripts/test.sh, \
               or see docs/testenv.md to run one test by hand.";
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{env} is not set. {how}"));
    assert!(
        path.is_file(),
        "{} is missing ({env}). {how}",
        path.display()
    );
    path
}

/// A pod as the runner last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    /// The echo-basic process; `None` for a placeholder.
    pub pid: Option<u32>,
    /// The host side of the pod's veth pair, in the run's namespace.
    pub veth: Option<String>,
    /// Reported Ready (its ports answered).
    pub ready: bool,
}

/// The runner of this test binary; see the module documentation.
pub struct PodRunner {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
}

impl PodRunner {
    /// The runner of this test binary, started on first use, after the control plane. Panics,
    /// saying why, when it cannot start.
    pub fn shared() -> &'static PodRunner {
        static SHARED: OnceLock<Result<PodRunner, String>> = OnceLock::new();
        match SHARED.get_or_init(start_on_runner_thread) {
            Ok(runner) => runner,
            Err(why) => panic!("the pod runner is not available: {why}"),
        }
    }

    /// The pods it runs now (placeholders included), in no particular order.
    pub fn pods(&self) -> Vec<RunPod> {
        lock(&self.state)
            .running
            .values()
            .map(|p| p.info())
            .collect()
    }

    /// The pod it runs under that name, if any.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<RunPod> {
        self.pods()
            .into_iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The runner's directory: a log per pod and the controller manager's log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What the loop keeps; the test threads read it through `PodRunner::pods`.
#[derive(Default)]
struct State {
    /// By pod UID.
    running: HashMap<String, Running>,
    /// The last Ready condition written for a pod that does not run (yet), by UID, so that it is
    /// written once and not on every pass.
    reported: HashMap<String, String>,
    /// The controller manager, stopped by the exit hook.
    controllers: Option<Child>,
}

struct Running {
    namespace: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    child: Option<Child>,
    veth: Option<String>,
    dir: Option<PathBuf>,
    ready: bool,
    /// Set once the process's exit has been reported.
    exited: bool,
}

impl Running {
    fn info(&self) -> RunPod {
        RunPod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ip: self.ip,
            pid: self.child.as_ref().map(Child::id),
            veth: self.veth.clone(),
            ready: self.ready,
        }
    }

    /// Kills the process and waits for it, removes the veth and the pod's files.
    fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(veth) = &self.veth {
            // Gone already when the namespace went with the process; this makes sure.
            let _ = Command::new("ip")
                .args(["link", "delete", veth])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir.join("volumes"));
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The runner's state, for the exit hook.
static STATE: OnceLock<Arc<Mutex<State>>> = OnceLock::new();

/// The processes must die with the thread that started them (`PR_SET_PDEATHSIG`), so one thread
/// starts them all and runs the loop for as long as the process lives.
fn start_on_runner_thread() -> Result<PodRunner, String> {
    let control_plane = ControlPlane::shared();
    netns::require_checked()?;
    let echo_basic = std::env::var_os(ECHO_BASIC_ENV)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{ECHO_BASIC_ENV} does not name the echo-basic binary. It comes from \
                 scripts/testenv.sh: run scripts/test.sh, or see docs/testenv.md."
            )
        })?;
    let bin = std::env::var_os(super::controlplane::BIN_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{} is not set", super::controlplane::BIN_ENV))?;
    let dir = control_plane
        .kubeconfig()
        .parent()
        .ok_or("the kubeconfig has no directory")?
        .join("podrunner");
    fs::create_dir_all(dir.join("pods"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let state = STATE.get_or_init(Default::default).clone();
    // SAFETY: registers a plain `extern "C"` function, once (this runs once per process).
    #[allow(
        unsafe_code,
        reason = "process control of the test run's children: no safe API exists"
    )]
    if unsafe { libc::atexit(stop_all) } != 0 {
        return Err("cannot register the pod runner's exit hook".into());
    }
    let runner = Runner {
        state: state.clone(),
        dir: dir.clone(),
        echo_basic,
        bin,
        kubeconfig: control_plane.kubeconfig().to_owned(),
    };
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("podrunner".into())
        .spawn(move || {
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))
                .map(|runtime| {
                    runtime.block_on(async move {
                        match runner.start().await {
                            Ok(client) => {
                                let _ = sender.send(Ok(()));
                                runner.run(client).await;
                            }
                            Err(e) => {
                                let _ = sender.send(Err(e));
                            }
                        }
                    })
                });
            if let Err(e) = started {
                let _ = writeln!(io::stderr(), "podrunner: {e}");
            }
            // The loop does not end; if it did, this thread must still outlive its processes.
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("cannot start the runner's thread: {e}"))?;
    receiver
        .recv()
        .map_err(|_| "the runner's thread died while starting".to_string())??;
    Ok(PodRunner { state, dir })
}

/// Set by the exit hook: the loop goes quiet while the control plane goes away under it.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// The exit hook: kills the pods' processes and the controller manager.
extern "C" fn stop_all() {
    STOPPING.store(true, Ordering::Relaxed);
    let Some(state) = STATE.get() else {
        return;
    };
    // Never block an exiting process; PR_SET_PDEATHSIG covers a missed hook.
    let Ok(mut state) = state.try_lock() else {
        return;
    };
    for pod in state.running.values_mut() {
        pod.stop();
    }
    if let Some(child) = state.controllers.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

struct Runner {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
    echo_basic: PathBuf,
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Runner {
    /// Starts the controllers, makes the bridge and the Node; returns this thread's client.
    async fn start(&self) -> Result<Client, String> {
        let began = Instant::now();
        let parsed = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| format!("cannot read the kubeconfig: {e}"))?;
        let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
            .await
            .map_err(|e| format!("cannot load the kubeconfig: {e}"))?;
        let client = Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
        self.start_controllers().await?;
        make_bridge()?;
        let kubelet_port = kubelet::serve(BRIDGE_IP, self.state.clone()).await?;
        create_node(&client, kubelet_port).await?;
        let _ = writeln!(
            io::stderr(),
            "testenv: pod runner up in {:.1} s (node {NODE_NAME}, bridge {BRIDGE} {BRIDGE_IP}/{POD_PREFIX_LEN}, directory {})",
            began.elapsed().as_secs_f64(),
            self.dir.display()
        );
        Ok(client)
    }

    /// A second kube-controller-manager with the controllers that Deployments need (the control
    /// plane's runs the EndpointSlice controller only), and those that delete a namespace's or an
    /// owner's objects, as the suite's cleanup expects.
    async fn start_controllers(&self) -> Result<(), String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
        let log_path = self.dir.join("kube-controller-manager.log");
        let log = fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_too = log
            .try_clone()
            .map_err(|e| format!("cannot share the log: {e}"))?;
        let mut command = Command::new(self.bin.join("kube-controller-manager"));
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(
                "--controllers=deployment-controller,replicaset-controller,\
                 garbage-collector-controller,namespace-controller",
            )
            .arg("--leader-elect=false")
            .arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("kcm-certs").display()
            ))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start kube-controller-manager: {e}"))?;
        lock(&self.state).controllers = Some(child);

        // Its serving certificate is self-signed, made at start; /healthz needs no credentials.
        let mut config = kube::Config::new(
            format!("https://127.0.0.1:{port}")
                .parse()
                .map_err(|e| format!("a URL: {e}"))?,
        );
        config.accept_invalid_certs = true;
        let health = Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            if let Some(status) = lock(&self.state)
                .controllers
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "the pod runner's kube-controller-manager exited ({status}):\n{}",
                    tail(&log_path)
                ));
            }
            let request = http::Request::get("/healthz")
                .body(Vec::new())
                .map_err(|e| format!("a request: {e}"))?;
            let answer = health.request_text(request).await;
            match answer {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "the pod runner's kube-controller-manager is not healthy after \
                         {START_TIMEOUT:?} ({e}):\n{}",
                        tail(&log_path)
                    ));
                }
                Err(_) => {}
            }
        }
    }

    /// Watches Pods (and Secrets and ConfigMaps, which a pod may wait for) and reconciles every
    /// pod on each change, and every `RESYNC` for processes that exited.
    async fn run(&self, client: Client) {
        let (store, writer) = reflector::store();
        let pods = reflector(
            writer,
            watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|_| ());
        let secrets = watcher(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|_| ());
        let config_maps = watcher(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|_| ());
        let mut events = pin!(futures_util::stream::select(
            pods,
            futures_util::stream::select(secrets, config_maps)
        ));
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                _ = events.next() => {}
                _ = resync.tick() => {}
            }
            if STOPPING.load(Ordering::Relaxed) {
                continue;
            }
            // Until the first list is in, a pod missing from the store is not a deleted pod.
            if store.wait_until_ready().now_or_never().is_some() {
                self.reconcile(&client, &store).await;
            }
        }
    }

    async fn reconcile(&self, client: &Client, store: &Store<Pod>) {
        let pods = store.state();
        let seen: BTreeSet<String> = pods.iter().map(|p| p.uid().unwrap_or_default()).collect();
        // Pods gone from the API: stop what runs for them.
        {
            let mut state = lock(&self.state);
            let gone: Vec<String> = state
                .running
                .keys()
                .filter(|uid| !seen.contains(*uid))
                .cloned()
                .collect();
            for uid in gone {
                if let Some(mut pod) = state.running.remove(&uid) {
                    pod.stop();
                }
            }
            state.reported.retain(|uid, _| seen.contains(uid));
        }
        for pod in pods {
            let uid = pod.uid().unwrap_or_default();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                if node.as_deref() == Some(NODE_NAME) {
                    self.finish_deletion(client, &pod, &uid).await;
                }
                continue;
            }
            match node.as_deref() {
                None | Some("") => bind(client, &pod).await,
                Some(NODE_NAME) => {
                    if !lock(&self.state).running.contains_key(&uid) {
                        self.start_pod(client, &pod, &uid).await;
                    }
                }
                Some(_) => {}
            }
        }
        self.report_exits(client).await;
    }

    /// What a kubelet does with a pod being deleted: stop its containers, then delete it for good.
    async fn finish_deletion(&self, client: &Client, pod: &Pod, uid: &str) {
        if let Some(mut running) = lock(&self.state).running.remove(uid) {
            running.stop();
        }
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => log(&format!("delete pod {}: {e}", key(pod))),
        }
    }

    async fn start_pod(&self, client: &Client, pod: &Pod, uid: &str) {
        let Some(host) = self.free_host() else {
            self.report_not_ready(
                client,
                pod,
                uid,
                "NoAddress",
                "the pod runner has no free address in 10.244.1.0/24",
            )
            .await;
            return;
        };
        let ip = Ipv4Addr::new(
            BRIDGE_IP.octets()[0],
            BRIDGE_IP.octets()[1],
            BRIDGE_IP.octets()[2],
            host,
        );
        let plan = match plan(client, pod, ip).await {
            Ok(plan) => plan,
            Err(NotRun::Waiting(why)) => {
                return self
                    .report_not_ready(client, pod, uid, "ContainerCreating", &why)
                    .await;
            }
            Err(NotRun::Unsupported(why)) => {
                return self
                    .report_not_ready(client, pod, uid, "PodRunnerUnsupported", &why)
                    .await;
            }
        };
        let mut running = Running {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: uid.to_owned(),
            ip,
            child: None,
            veth: None,
            dir: None,
            ready: false,
            exited: false,
        };
        match plan {
            Plan::Placeholder { image } => {
                running.ready = true;
                lock(&self.state).running.insert(uid.to_owned(), running);
                let message = format!(
                    "placeholder: the pod runner does not run {image}; the address answers nothing"
                );
                write_ready(
                    client,
                    pod,
                    ip,
                    None,
                    Some(("PodRunnerPlaceholder", &message)),
                )
                .await;
            }
            Plan::EchoBasic { env, files, ports } => {
                let dir = self.dir.join("pods").join(format!(
                    "{}_{}_{}",
                    running.namespace,
                    running.name,
                    &uid[..uid.len().min(8)]
                ));
                running.dir = Some(dir.clone());
                let started = self.spawn_echo_basic(&dir, env, files, host, ip, &mut running);
                let pid = running.child.as_ref().map(Child::id);
                lock(&self.state).running.insert(uid.to_owned(), running);
                if let Err(why) = started {
                    if let Some(mut running) = lock(&self.state).running.remove(uid) {
                        running.stop();
                    }
                    return self
                        .report_not_ready(client, pod, uid, "PodRunnerStartFailed", &why)
                        .await;
                }
                // Readiness is probed off the loop; the process is already in the state.
                let (client, pod, uid, state) = (
                    client.clone(),
                    pod.clone(),
                    uid.to_owned(),
                    self.state.clone(),
                );
                let log_path = dir.join(ECHO_BASIC_LOG);
                tokio::spawn(async move {
                    match probe(&state, &uid, ip, &ports).await {
                        Ok(()) => {
                            write_ready(&client, &pod, ip, pid, None).await;
                            if let Some(running) = lock(&state).running.get_mut(&uid) {
                                running.ready = true;
                            }
                        }
                        Err(why) => {
                            let message = format!("{why}\n{}", tail(&log_path));
                            write_not_ready(&client, &pod, "PodRunnerNotListening", &message).await;
                        }
                    }
                });
            }
        }
    }

    /// Starts echo-basic in a network namespace of its own and plugs that into the bridge.
    fn spawn_echo_basic(
        &self,
        dir: &Path,
        env: Vec<(String, String)>,
        files: Vec<(PathBuf, Vec<u8>)>,
        host: u8,
        ip: Ipv4Addr,
        running: &mut Running,
    ) -> Result<(), String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (path, contents) in files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            fs::write(&path, contents)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        let log_path = dir.join(ECHO_BASIC_LOG);
        let log = fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let (output, log_input) = io::pipe().map_err(|e| format!("a pipe: {e}"))?;
        let log_input_too = log_input
            .try_clone()
            .map_err(|e| format!("cannot share the pipe: {e}"))?;
        kubelet::stamp_lines(output, log).map_err(|e| format!("the log's thread: {e}"))?;
        let mut command = Command::new(&self.echo_basic);
        command
            .env_clear()
            .envs(env.into_iter().map(|(k, v)| (k, rebase(&v, dir))))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_input)
            .stderr(log_input_too);
        die_with_parent(&mut command);
        // SAFETY: unshare is a plain system call, async-signal-safe, and the closure allocates
        // nothing before it returns.
        #[allow(
            unsafe_code,
            reason = "process control of the test run's children: no safe API exists"
        )]
        unsafe {
            command.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start echo-basic: {e}"))?;
        let pid = child.id();
        running.child = Some(child);
        running.veth = Some(plug(pid, host, ip)?);
        Ok(())
    }

    fn free_host(&self) -> Option<u8> {
        let state = lock(&self.state);
        let used: BTreeSet<Ipv4Addr> = state.running.values().map(|p| p.ip).collect();
        (FIRST_POD_HOST..=LAST_POD_HOST).find(|host| {
            let o = BRIDGE_IP.octets();
            !used.contains(&Ipv4Addr::new(o[0], o[1], o[2], *host))
        })
    }

    /// Writes a pod's Ready=False condition once per distinct reason and message.
    async fn report_not_ready(
        &self,
        client: &Client,
        pod: &Pod,
        uid: &str,
        reason: &str,
        why: &str,
    ) {
        let said = format!("{reason}: {why}");
        {
            let mut state = lock(&self.state);
            if state.reported.get(uid) == Some(&said) {
                return;
            }
            state.reported.insert(uid.to_owned(), said);
        }
        write_not_ready(client, pod, reason, why).await;
    }

    /// Reports a process that exited: the pod is no longer Ready (the runner does not restart it).
    async fn report_exits(&self, client: &Client) {
        let exited: Vec<(String, String, String)> = {
            let mut state = lock(&self.state);
            state
                .running
                .values_mut()
                .filter(|p| !p.exited)
                .filter_map(|p| {
                    let status = p.child.as_mut()?.try_wait().ok().flatten()?;
                    p.exited = true;
                    p.ready = false;
                    let log = p.dir.as_ref().map(|d| tail(&d.join(ECHO_BASIC_LOG)));
                    Some((
                        p.namespace.clone(),
                        p.name.clone(),
                        format!("echo-basic exited ({status})\n{}", log.unwrap_or_default()),
                    ))
                })
                .collect()
        };
        for (namespace, name, message) in exited {
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            if let Ok(pod) = api.get(&name).await {
                write_not_ready(client, &pod, "ContainerExited", &message).await;
            }
        }
    }
}

/// How a pod will run, once everything it needs exists.
enum Plan {
    EchoBasic {
        env: Vec<(String, String)>,
        /// Files of its Secret and ConfigMap volumes, relative to the pod's directory.
        files: Vec<(PathBuf, Vec<u8>)>,
        /// Readiness: these ports accept connections.
        ports: Vec<u16>,
    },
    Placeholder {
        image: String,
    },
}

enum NotRun {
    /// Something it needs does not exist yet (a Secret, a ConfigMap); tried again on changes.
    Waiting(String),
    /// The runner cannot run it as written; it says so in the pod's Ready condition.
    Unsupported(String),
}

async fn plan(client: &Client, pod: &Pod, ip: Ipv4Addr) -> Result<Plan, NotRun> {
    let unsupported = |why: String| Err(NotRun::Unsupported(why));
    let Some(spec) = pod.spec.as_ref() else {
        return unsupported("the pod has no spec".into());
    };
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return unsupported("init containers are not supported by the pod runner".into());
    }
    let [container] = spec.containers.as_slice() else {
        return unsupported(format!(
            "the pod runner runs pods of one container; this one has {}",
            spec.containers.len()
        ));
    };
    let image = container.image.clone().unwrap_or_default();
    if PLACEHOLDER_IMAGES
        .iter()
        .any(|p| image.split(':').next() == Some(*p))
    {
        return Ok(Plan::Placeholder { image });
    }
    if !image.contains(ECHO_BASIC_IMAGE) {
        return unsupported(format!(
            "the pod runner runs echo-basic images only (and placeholders for {PLACEHOLDER_IMAGES:?}); \
             this is {image}"
        ));
    }
    if container.command.is_some() || container.args.is_some() {
        return unsupported("command and args are not supported for echo-basic".into());
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return unsupported("envFrom is not supported by the pod runner".into());
    }
    let namespace = pod.namespace().unwrap_or_default();
    let mut env = vec![("HOSTNAME".to_owned(), pod.name_any())];
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path, ip).ok_or_else(|| {
                        NotRun::Unsupported(format!(
                            "env {}: fieldRef {} is not supported",
                            var.name, field.field_path
                        ))
                    })?
                } else if let Some(key) = &from.secret_key_ref {
                    let secret = get::<Secret>(client, &namespace, &key.name).await?;
                    let bytes = secret
                        .data
                        .and_then(|d| d.get(&key.key).map(|b| b.0.clone()))
                        .ok_or_else(|| {
                            NotRun::Waiting(format!("secret {} has no key {}", key.name, key.key))
                        })?;
                    String::from_utf8_lossy(&bytes).into_owned()
                } else if let Some(key) = &from.config_map_key_ref {
                    let map = get::<ConfigMap>(client, &namespace, &key.name).await?;
                    map.data
                        .and_then(|d| d.get(&key.key).cloned())
                        .ok_or_else(|| {
                            NotRun::Waiting(format!(
                                "configmap {} has no key {}",
                                key.name, key.key
                            ))
                        })?
                } else {
                    return unsupported(format!(
                        "env {}: this valueFrom is not supported",
                        var.name
                    ));
                }
            }
            (Some(value), None) => value.clone(),
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    let mut files = Vec::new();
    let mut mounts = Vec::new();
    let volumes = spec.volumes.clone().unwrap_or_default();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
            return unsupported(format!("volume mount {}: no such volume", mount.name));
        };
        let root = PathBuf::from("volumes").join(&volume.name);
        let contents: BTreeMap<String, Vec<u8>> = if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let secret = get::<Secret>(client, &namespace, &name).await?;
            let mut all: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                all.insert(k, v.into_bytes());
            }
            select_items(all, source.items.as_deref(), &name)?
        } else if let Some(source) = &volume.config_map {
            let name = source.name.clone();
            let map = get::<ConfigMap>(client, &namespace, &name).await?;
            let mut all: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in map.binary_data.unwrap_or_default() {
                all.insert(k, v.0);
            }
            select_items(all, source.items.as_deref(), &name)?
        } else if volume.empty_dir.is_some() {
            BTreeMap::new()
        } else {
            return unsupported(format!(
                "volume {}: only secret, configMap and emptyDir volumes are supported",
                volume.name
            ));
        };
        for (path, bytes) in contents {
            files.push((root.join(path), bytes));
        }
        let mut at = root;
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            at = at.join(sub);
        }
        mounts.push((mount.mount_path.clone(), at));
    }
    // A container sees its volumes at their mount paths; these processes share the machine's file
    // system, so a value naming a file under a mount path names the pod's copy instead.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    for (_, value) in env.iter_mut() {
        for (mount_path, at) in &mounts {
            let mount_path = mount_path.trim_end_matches('/');
            if let Some(rest) = value.strip_prefix(mount_path)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                *value = format!("{MOUNT_MARK}{}{rest}", at.display());
                break;
            }
        }
    }
    let ports = readiness_ports(container, &env)?;
    Ok(Plan::EchoBasic { env, files, ports })
}

/// Marks a value rebased onto the pod's directory, which is known only when it starts.
const MOUNT_MARK: &str = "\u{0}pod-dir/";

fn rebase(value: &str, dir: &Path) -> String {
    match value.strip_prefix(MOUNT_MARK) {
        Some(rest) => dir.join(rest).display().to_string(),
        None => value.to_owned(),
    }
}

fn select_items(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    source: &str,
) -> Result<BTreeMap<String, Vec<u8>>, NotRun> {
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(all);
    };
    items
        .iter()
        .map(|item| {
            all.get(&item.key)
                .map(|bytes| (item.path.clone(), bytes.clone()))
                .ok_or_else(|| NotRun::Waiting(format!("{source} has no key {}", item.key)))
        })
        .collect()
}

async fn get<K>(client: &Client, namespace: &str, name: &str) -> Result<K, NotRun>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_lowercase();
    Api::<K>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| NotRun::Waiting(format!("waiting for {kind} {namespace}/{name}: {e}")))
}

/// The downward API's fields that a container's env may name.
fn field_value(pod: &Pod, path: &str, ip: Ipv4Addr) -> Option<String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(NODE_NAME.to_owned()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .map(|s| s.service_account_name.clone().unwrap_or_default()),
        "status.podIP" | "status.podIPs" => Some(ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(BRIDGE_IP.to_string()),
        _ => keyed("metadata.labels['", &meta.labels)
            .or_else(|| keyed("metadata.annotations['", &meta.annotations)),
    }
}

/// The ports echo-basic opens in its mode (its defaults, or the env's), and any the container
/// declares: the pod is Ready when all of them accept connections.
fn readiness_ports(container: &Container, env: &[(String, String)]) -> Result<Vec<u16>, NotRun> {
    let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
    let port = |name: &str, default: u16| -> Result<u16, NotRun> {
        match var(name).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| NotRun::Unsupported(format!("{name}={v} is not a port"))),
        }
    };
    let mut ports = if set("UDP_ECHO_SERVER") {
        return Err(NotRun::Unsupported(
            "echo-basic's UDP mode is not supported by the pod runner (no TCP port to probe)"
                .into(),
        ));
    } else if set("GRPC_ECHO_SERVER") {
        let mut ports = vec![port("HTTP_PORT", 3000)?];
        if set("TLS_SERVER_CERT") && set("TLS_SERVER_PRIV_KEY") {
            ports.push(port("HTTPS_PORT", 8443)?);
        }
        ports
    } else if set("TCP_ECHO_SERVER") {
        let mut ports = vec![port("TCP_PORT", 3000)?];
        if set("TLS_SERVER_CERT") && set("TLS_SERVER_PRIV_KEY") {
            ports.push(port("TLS_PORT", 8443)?);
        }
        ports
    } else {
        let mut ports = vec![port("HTTP_PORT", 3000)?, port("H2C_PORT", 3001)?];
        // Its HTTP mode names the key TLS_SERVER_PRIVKEY; the other modes, TLS_SERVER_PRIV_KEY.
        if set("TLS_SERVER_CERT") && set("TLS_SERVER_PRIVKEY") {
            ports.push(port("HTTPS_PORT", 8443)?);
        }
        ports
    };
    for declared in container.ports.iter().flatten() {
        if declared.protocol.as_deref().unwrap_or("TCP") == "TCP" {
            ports.push(u16::try_from(declared.container_port).map_err(|_| {
                NotRun::Unsupported(format!("containerPort {}", declared.container_port))
            })?);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Waits until each port accepts a connection at `ip` from this namespace, or the process exits.
async fn probe(state: &Mutex<State>, uid: &str, ip: Ipv4Addr, ports: &[u16]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for &port in ports {
        let addr = SocketAddr::from((ip, port));
        loop {
            let exited = lock(state)
                .running
                .get_mut(uid)
                .map(|p| p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()));
            match exited {
                None => return Err("the pod was stopped while starting".into()),
                Some(Some(status)) => return Err(format!("echo-basic exited ({status})")),
                Some(None) => {}
            }
            let attempt =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await;
            if let Ok(Ok(_)) = attempt {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "echo-basic does not accept connections at {addr} after {READY_TIMEOUT:?}: {attempt:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// What a scheduler does: bind the pod to the Node.
async fn bind(client: &Client, pod: &Pod) {
    let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref());
    if !matches!(scheduler, None | Some("default-scheduler")) {
        return;
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.name_any(), "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
    });
    let bound: Result<serde_json::Value, _> = api
        .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
        .await;
    match bound {
        Ok(_) => {}
        // Bound already (an earlier pass), or gone.
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
        Err(e) => log(&format!("bind pod {}: {e}", key(pod))),
    }
}

async fn write_ready(
    client: &Client,
    pod: &Pod,
    ip: Ipv4Addr,
    pid: Option<u32>,
    note: Option<(&str, &str)>,
) {
    let now = now();
    let mut ready = condition("Ready", true);
    if let Some((reason, message)) = note {
        ready["reason"] = json!(reason);
        ready["message"] = json!(message);
    }
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .cloned()
        .unwrap_or_default();
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": BRIDGE_IP.to_string(),
        "hostIPs": [{"ip": BRIDGE_IP.to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": now,
        "conditions": [
            condition("PodScheduled", true),
            condition("Initialized", true),
            condition("ContainersReady", true),
            ready,
        ],
        "containerStatuses": [{
            "name": container.name,
            "image": container.image.unwrap_or_default(),
            "imageID": "",
            "containerID": pid.map(|pid| format!("podrunner://{pid}")),
            "ready": true,
            "started": true,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }],
    }});
    patch_status(client, pod, &status).await;
}

async fn write_not_ready(client: &Client, pod: &Pod, reason: &str, message: &str) {
    let mut ready = condition("Ready", false);
    ready["reason"] = json!(reason);
    ready["message"] = json!(message);
    let mut containers_ready = condition("ContainersReady", false);
    containers_ready["reason"] = json!(reason);
    let status = json!({"status": {"conditions": [containers_ready, ready]}});
    patch_status(client, pod, &status).await;
}

// A strategic merge patch, so that conditions merge by type rather than replace the list.
async fn patch_status(client: &Client, pod: &Pod, status: &serde_json::Value) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    if let Err(e) = api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(status),
        )
        .await
    {
        log(&format!("write the status of pod {}: {e}", key(pod)));
    }
}

fn condition(kind: &str, ok: bool) -> serde_json::Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now()})
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The runner's own complaints go to standard error: they are the harness's, not a test's.
fn log(message: &str) {
    if STOPPING.load(Ordering::Relaxed) {
        return;
    }
    let _ = writeln!(io::stderr(), "podrunner: {message}");
}

fn tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("--- the end of {} ---\n{tail}", path.display())
}

async fn create_node(client: &Client, kubelet_port: u16) -> Result<(), String> {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
    }))
    .map_err(|e| format!("a Node: {e}"))?;
    let nodes = Api::<Node>::all(client.clone());
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(format!("create node {NODE_NAME}: {e}")),
    }
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": BRIDGE_IP.to_string()}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| format!("mark node {NODE_NAME} ready: {e}"))?;
    Ok(())
}

/// The bridge that every pod's veth joins, in the run's namespace (made afresh: an earlier test
/// binary of the same run may have left one, with nothing plugged in).
fn make_bridge() -> Result<(), String> {
    let _ = Command::new("ip")
        .args(["link", "delete", BRIDGE])
        .stderr(Stdio::null())
        .status();
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&[
        "addr",
        "add",
        &format!("{BRIDGE_IP}/{POD_PREFIX_LEN}"),
        "dev",
        BRIDGE,
    ])?;
    ip(&["link", "set", BRIDGE, "up"])
}

/// A veth pair from the bridge into the process's network namespace, as a minimal CNI plugin
/// does: `eth0` with the pod's address there, a default route through the bridge. Returns the
/// host side's name.
fn plug(pid: u32, host: u8, ip_addr: Ipv4Addr) -> Result<String, String> {
    let veth = format!("kbv{host}");
    let _ = Command::new("ip")
        .args(["link", "delete", &veth])
        .stderr(Stdio::null())
        .status();
    let pid = pid.to_string();
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid,
    ])?;
    ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
    // The address may have been a deleted pod's a moment ago: the bridge's neighbour entry for
    // it still names that pod's MAC and, while "reachable" (up to 45 s), is used unchecked, so
    // every packet to the new pod would go to a MAC that no longer exists.
    let addr = ip_addr.to_string();
    ip(&["neigh", "flush", "to", &addr, "dev", BRIDGE])?;
    let inside = format!(
        "link set lo up\naddr add {ip_addr}/{POD_PREFIX_LEN} dev eth0\nlink set eth0 up\n\
         route add default via {BRIDGE_IP}\n"
    );
    run(
        Command::new("nsenter").args(["--target", &pid, "--net", "ip", "-batch", "-"]),
        Some(&inside),
    )?;
    Ok(veth)
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args), None)
}

fn run(command: &mut Command, input: Option<&str>) -> Result<(), String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("cannot write to {shown}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
