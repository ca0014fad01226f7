//! A real Kubernetes control plane for the tests: etcd, kube-apiserver, and kube-controller-manager
//! running only the EndpointSlice controller, on free loopback ports, with certificates made for
//! the run. It starts once per test binary, on first use, and is shared by every test in it
//! (`shared`); a test that breaks its control plane (an outage) starts one of its own (`own`).
//!
//! The binaries come from scripts/testenv.sh, which `KB_TESTENV_BIN` points to. The servers die with
//! the test process, however it ends (`PR_SET_PDEATHSIG`, plus an exit hook for a normal exit), and
//! the run's directory (certificates, etcd data, logs) is removed after it (the exit hook, or a
//! watchdog process that outlives a killed test process). Set `KB_TESTENV_KEEP=1` to keep the
//! directory and its logs; its path is printed at start-up.
//!
//! Each `#[tokio::test]` has its own runtime, and a `kube::Client` belongs to the runtime it was
//! made in, so the control plane hands out a new client per call (`client`) rather than one shared.

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use super::netns;

/// The pinned versions; scripts/testenv.sh builds exactly these (a test checks that they agree).
pub const KUBERNETES_VERSION: &str = "v1.35.4";
pub const ETCD_VERSION: &str = "v3.6.16";
pub const HELM_VERSION: &str = "v3.20.2";
/// The OpenTelemetry Collector and Prometheus (module v0.316.0 is Prometheus v3.16.0) that the
/// telemetry tests run against.
pub const OTELCOL_VERSION: &str = "v0.161.0";
pub const PROMETHEUS_VERSION: &str = "v0.316.0";

/// Points to the directory of binaries that scripts/testenv.sh built.
pub const BIN_ENV: &str = "KB_TESTENV_BIN";
/// Set (to anything) to keep the run's directory, logs included, after the tests.
pub const KEEP_ENV: &str = "KB_TESTENV_KEEP";

const BINARIES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "helm",
];
const START_TIMEOUT: Duration = Duration::from_secs(120);
const SERVICE_ACCOUNT_ISSUER: &str = "https://kube-balancer.test";

/// A running control plane; see the module documentation.
pub struct ControlPlane {
    bin: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    config: kube::Config,
    server: String,
    /// Started by `own` for one test, which may break it; stopped when dropped.
    own: bool,
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use. Panics, saying why, when it
    /// cannot start: missing binaries, not inside the test network namespace, a server that fails.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        match SHARED.get_or_init(start_on_keeper_thread) {
            Ok(control_plane) => control_plane,
            Err(why) => panic!("the test control plane is not available: {why}"),
        }
    }

    /// A control plane of the calling test's own, for a test that breaks it (`stop_apiserver`);
    /// the shared one and the other tests are left alone. Its servers stop when it is dropped.
    pub fn own() -> ControlPlane {
        match start_on_keeper_thread() {
            Ok(mut control_plane) => {
                control_plane.own = true;
                control_plane
            }
            Err(why) => panic!("a test control plane of its own did not start: {why}"),
        }
    }

    /// A new client for the API server, as the cluster administrator (group system:masters).
    /// Call it inside the test's runtime, and do not keep it past that test.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone()).expect("a client from the test kubeconfig")
    }

    /// A kubeconfig file for the same administrator, for kubectl, helm or the binary under test.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Kills the kube-apiserver for good: an outage test, on a control plane of its own (`own`),
    /// since every other test of the binary shares the other one.
    pub fn stop_apiserver(&self) {
        assert!(
            self.own,
            "stop_apiserver on the shared control plane would break the binary's other tests; \
             start one with ControlPlane::own()"
        );
        let mut processes = lock();
        if let Some((_, child)) = processes
            .iter_mut()
            .find(|p| p.dir == self.dir)
            .and_then(|p| p.children.iter_mut().find(|(n, _)| *n == "kube-apiserver"))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills one of this control plane's servers (`kube-apiserver`, `kube-controller-manager`)
    /// with SIGKILL, for an outage test on a control plane of its own (`own`).
    pub fn stop_server(&self, name: &str) {
        assert!(
            self.own,
            "stopping {name} of the shared control plane would break the binary's other tests; \
             start one with ControlPlane::own()"
        );
        let mut processes = lock();
        let Some(servers) = processes.iter_mut().find(|p| p.dir == self.dir) else {
            return;
        };
        if let Some(at) = servers.children.iter().position(|(n, _)| *n == name) {
            let (_, mut child) = servers.children.remove(at);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a server that `stop_server` stopped again, exactly as it was first started (its
    /// flags, ports, certificates and data), and waits until it is ready (`/readyz` of the API
    /// server, `/healthz` of the controller manager).
    pub async fn restart_server(&self, name: &'static str) {
        let recipe = lock()
            .iter()
            .find(|p| p.dir == self.dir)
            .and_then(|p| p.recipes.iter().find(|(n, _, _)| *n == name).cloned());
        let (_, program, args) = recipe.unwrap_or_else(|| panic!("{name} was never started"));
        let mut command = Command::new(program);
        command.args(&args);
        // As at start: the server dies with a thread that lives as long as the process.
        let (sender, receiver) = std::sync::mpsc::channel();
        let dir = self.dir.clone();
        std::thread::Builder::new()
            .name(format!("{name}-keeper"))
            .spawn(move || {
                let _ = sender.send(Processes::spawn(&dir, name, command));
                loop {
                    std::thread::park();
                }
            })
            .expect("a keeper thread");
        receiver
            .recv()
            .expect("the keeper thread answers")
            .unwrap_or_else(|e| panic!("restart {name}: {e}"));
        match name {
            "kube-apiserver" => {
                let client = self.client();
                let readyz = || async {
                    let request = http::Request::get("/readyz")
                        .body(Vec::new())
                        .expect("a valid request");
                    client
                        .request_text(request)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                wait_ready(&self.dir, "kube-apiserver /readyz", &[name], readyz)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            "kube-controller-manager" => {
                let port = args
                    .iter()
                    .filter_map(|a| a.to_str())
                    .find_map(|a| a.strip_prefix("--secure-port="))
                    .expect("its --secure-port")
                    .to_owned();
                let mut config = kube::Config::new(
                    format!("https://127.0.0.1:{port}")
                        .parse()
                        .expect("a valid URL"),
                );
                config.accept_invalid_certs = true;
                let client = kube::Client::try_from(config).expect("a client");
                let healthz = || async {
                    let request = http::Request::get("/healthz")
                        .body(Vec::new())
                        .expect("a valid request");
                    client
                        .request_text(request)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                wait_ready(
                    &self.dir,
                    "kube-controller-manager /healthz",
                    &[name],
                    healthz,
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            }
            _ => {}
        }
    }

    /// Runs one of the built tools (`kubectl`, `helm`, ...) against this control plane, with its
    /// caches inside the run's directory, and returns its standard output. Panics, showing its
    /// standard error, when it fails.
    pub async fn run(&self, tool: &str, args: &[&str]) -> String {
        let mut command = Command::new(self.bin.join(tool));
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .stdin(Stdio::null());
        die_with_parent(&mut command);
        let shown = format!("{tool} {}", args.join(" "));
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the thread running the tool")
            .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
        assert!(
            output.status.success(),
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("the tool's output is UTF-8")
    }
}

impl Drop for ControlPlane {
    /// Only a control plane of a test's own is ever dropped (the shared one lives in a static):
    /// its servers stop and its directory goes, as at exit.
    fn drop(&mut self) {
        let mut processes = lock();
        if let Some(at) = processes.iter().position(|p| p.dir == self.dir) {
            processes.remove(at).stop();
        }
    }
}

/// A server process must die with the thread that started it (`PR_SET_PDEATHSIG`), so one thread
/// starts them all and then lives as long as the process; test threads come and go.
fn start_on_keeper_thread() -> Result<ControlPlane, String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("controlplane-keeper".into())
        .spawn(move || {
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))
                .and_then(|runtime| runtime.block_on(start()));
            // The receiver waits for this answer; if it is gone, so is the test that asked.
            let _ = sender.send(started);
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("cannot start the keeper thread: {e}"))?;
    receiver
        .recv()
        .map_err(|_| "the keeper thread died while starting the control plane".to_string())?
}

async fn start() -> Result<ControlPlane, String> {
    let began = Instant::now();
    let bin = binaries()?;
    netns::require_checked()?;

    let dir = tempfile::Builder::new()
        .prefix("kube-balancer-controlplane-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?
        .keep();
    Processes::register(&dir)?;
    let pki =
        Pki::write(&dir.join("pki")).map_err(|e| format!("cannot write certificates: {e}"))?;
    let [etcd_port, etcd_peer_port, apiserver_port, kcm_port] = free_ports()?;

    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let mut etcd = Command::new(bin.join("etcd"));
    etcd.arg("--name=kb-test")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=kb-test={peer_url}"))
        // The data is thrown away after the run; syncing it to disk only costs time.
        .arg("--unsafe-no-fsync=true")
        .arg("--log-level=warn");
    Processes::spawn(&dir, "etcd", etcd)?;

    let server = format!("https://127.0.0.1:{apiserver_port}");
    let mut apiserver = Command::new(bin.join("kube-apiserver"));
    apiserver
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--cert-dir={}", dir.join("apiserver").display()))
        .arg(format!("--tls-cert-file={}", pki.apiserver_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.apiserver_key.display()
        ))
        .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
        .arg(format!("--secure-port={apiserver_port}"))
        .arg("--bind-address=127.0.0.1")
        // Else it looks for a default route, and the test namespace has none.
        .arg("--advertise-address=127.0.0.1")
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--authorization-mode=RBAC")
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg("--allow-privileged=true")
        .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
        .arg(format!(
            "--service-account-key-file={}",
            pki.service_account_public.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.service_account_key.display()
        ))
        // The endpoints of the `kubernetes` Service would be 127.0.0.1, which EndpointSlice
        // validation refuses; nothing here needs them.
        .arg("--endpoint-reconciler-type=none");
    Processes::spawn(&dir, "kube-apiserver", apiserver)?;

    let kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &server,
        &pki.ca_cert,
        &pki.admin_cert,
        &pki.admin_key,
    )?;
    let controller_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
    write_kubeconfig(
        &controller_kubeconfig,
        &server,
        &pki.ca_cert,
        &pki.controller_cert,
        &pki.controller_key,
    )?;
    let config = client_config(&kubeconfig).await?;
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| format!("cannot build a client: {e}"))?;
    let readyz = || async {
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a valid request");
        client
            .request_text(request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    wait_ready(
        &dir,
        "kube-apiserver /readyz",
        &["etcd", "kube-apiserver"],
        readyz,
    )
    .await?;

    let mut controller_manager = Command::new(bin.join("kube-controller-manager"));
    controller_manager
        .arg(format!("--kubeconfig={}", controller_kubeconfig.display()))
        .arg("--controllers=endpointslice-controller")
        .arg("--leader-elect=false")
        .arg(format!("--secure-port={kcm_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!(
            "--cert-dir={}",
            dir.join("kube-controller-manager").display()
        ));
    Processes::spawn(&dir, "kube-controller-manager", controller_manager)?;
    // Its serving certificate is self-signed, made at start; /healthz needs no credentials.
    let mut health_config = kube::Config::new(
        format!("https://127.0.0.1:{kcm_port}")
            .parse()
            .expect("a valid URL"),
    );
    health_config.accept_invalid_certs = true;
    let health_client =
        kube::Client::try_from(health_config).map_err(|e| format!("cannot build a client: {e}"))?;
    let healthz = || async {
        let request = http::Request::get("/healthz")
            .body(Vec::new())
            .expect("a valid request");
        health_client
            .request_text(request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let all = ["etcd", "kube-apiserver", "kube-controller-manager"];
    wait_ready(&dir, "kube-controller-manager /healthz", &all, healthz).await?;

    // Straight to stderr: the test harness would capture eprintln! into the first test's output.
    let _ = writeln!(
        io::stderr(),
        "testenv: control plane {KUBERNETES_VERSION} up in {:.1} s at {server} (directory {})",
        began.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(ControlPlane {
        bin,
        dir,
        kubeconfig,
        config,
        server,
        own: false,
    })
}

fn binaries() -> Result<PathBuf, String> {
    let how = "The Kubernetes tests need the control plane that scripts/testenv.sh builds: run \
               scripts/test.sh, or see docs/testenv.md to run one test by hand.";
    let bin = std::env::var_os(BIN_ENV).ok_or_else(|| format!("{BIN_ENV} is not set. {how}"))?;
    let bin = PathBuf::from(bin);
    for name in BINARIES {
        let path = bin.join(name);
        if !path.is_file() {
            return Err(format!(
                "{} is missing ({BIN_ENV}={}). {how}",
                path.display(),
                bin.display()
            ));
        }
    }
    Ok(bin)
}

/// Asks for ports that are free now; the servers bind them a moment later.
fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<_>>()
        .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<_>>()
        .map_err(|e| format!("cannot read a listener's port: {e}"))?;
    Ok(ports.try_into().expect("N ports"))
}

/// Probes until `probe` succeeds; fails at once when one of `processes` exits, or after the time
/// limit, with the end of the relevant log.
async fn wait_ready<F, Fut>(
    dir: &Path,
    what: &str,
    processes: &[&str],
    mut probe: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let mut last;
    loop {
        every.tick().await;
        for name in processes {
            if let Some(status) = Processes::exited(dir, name) {
                return Err(format!(
                    "{name} exited ({status}) while waiting for {what}:\n{}",
                    log_tail(dir, name)
                ));
            }
        }
        match probe().await {
            Ok(()) => return Ok(()),
            Err(error) => last = error,
        }
        if Instant::now() > deadline {
            let newest = processes.last().expect("a process to wait on");
            return Err(format!(
                "{what} not ready after {START_TIMEOUT:?}; last answer: {last}\n{}",
                log_tail(dir, newest)
            ));
        }
    }
}

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

fn log_tail(dir: &Path, name: &str) -> String {
    let log = fs::read_to_string(log_path(dir, name)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("--- the end of {name}'s log ---\n{tail}")
}

async fn client_config(kubeconfig: &Path) -> Result<kube::Config, String> {
    let parsed = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("cannot read the kubeconfig: {e}"))?;
    kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("cannot load the kubeconfig: {e}"))
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(), String> {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kb-test", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "kb-test", "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": "kb-test", "context": {"cluster": "kb-test", "user": "kb-test", "namespace": "default"}}],
        "current-context": "kb-test",
    });
    // JSON is YAML, so every Kubernetes tool reads this.
    fs::write(path, kubeconfig.to_string())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The run's certificates: a CA; the API server's serving certificate; client certificates for the
/// administrator (group system:masters) and the controller manager; the service-account key.
struct Pki {
    ca_cert: PathBuf,
    apiserver_cert: PathBuf,
    apiserver_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    controller_cert: PathBuf,
    controller_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Result<Pki, Box<dyn std::error::Error>> {
        fs::create_dir_all(dir)?;
        let file = |name: &str, contents: &str| -> io::Result<PathBuf> {
            let path = dir.join(name);
            fs::write(&path, contents)?;
            Ok(path)
        };

        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "kube-balancer test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = file("ca.crt", &ca.self_signed(&ca_key)?.pem())?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |name: &str,
                    sans: Vec<String>,
                    common_name: &str,
                    organization: Option<&str>,
                    usage| {
            let mut params = CertificateParams::new(sans)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            if let Some(organization) = organization {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, organization);
            }
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = file(
                &format!("{name}.crt"),
                &params.signed_by(&key, &issuer)?.pem(),
            )?;
            let key = file(&format!("{name}.key"), &key.serialize_pem())?;
            Ok::<_, Box<dyn std::error::Error>>((cert, key))
        };
        let serving_names = [
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
        ];
        let (apiserver_cert, apiserver_key) = leaf(
            "apiserver",
            serving_names.map(String::from).to_vec(),
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (admin_cert, admin_key) = leaf(
            "admin",
            vec![],
            "kb-test-admin",
            Some("system:masters"),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        // Its own identity, but in system:masters too: the bootstrap RBAC role of
        // system:kube-controller-manager does not cover the controllers' own work.
        let (controller_cert, controller_key) = leaf(
            "kube-controller-manager",
            vec![],
            "system:kube-controller-manager",
            Some("system:masters"),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let service_account = KeyPair::generate()?;
        let service_account_key = file("service-account.key", &service_account.serialize_pem())?;
        let service_account_public =
            file("service-account.pub", &service_account.public_key_pem())?;
        Ok(Pki {
            ca_cert,
            apiserver_cert,
            apiserver_key,
            admin_cert,
            admin_key,
            controller_cert,
            controller_key,
            service_account_key,
            service_account_public,
        })
    }
}

/// The servers of one control plane, for the exit hook.
struct Processes {
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
    /// How each server was started (program and arguments), to start it again.
    recipes: Vec<(&'static str, std::ffi::OsString, Vec<std::ffi::OsString>)>,
    /// Held open, never written: the watchdog reads end-of-file when this process is gone.
    _watchdog: ChildStdin,
}

/// Every control plane of this test binary that is still running.
static PROCESSES: Mutex<Vec<Processes>> = Mutex::new(Vec::new());

impl Processes {
    /// Records the run's directory for removal at exit, by the exit hook or, if this process is
    /// killed, by a watchdog.
    fn register(dir: &Path) -> Result<(), String> {
        fs::create_dir_all(dir.join("logs"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // It waits for end-of-file on its standard input, which comes when this process ends, however
        // it ends; the servers are gone by then (PR_SET_PDEATHSIG). A second `rm` catches a file that
        // a dying server wrote during the first. It runs in its own session, so that a terminal's
        // Ctrl-C does not stop it first.
        let script =
            r#"cat >/dev/null; [ -e "$0/keep" ] && exit 0; rm -rf "$0" 2>/dev/null || rm -rf "$0""#;
        let mut watchdog = Command::new("sh");
        watchdog
            .arg("-c")
            .arg(script)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe, and that is all the closure calls between fork and exec.
        #[allow(
            unsafe_code,
            reason = "process control of the test run's children: no safe API exists"
        )]
        unsafe {
            watchdog.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut watchdog = watchdog
            .spawn()
            .map_err(|e| format!("cannot start the cleanup watchdog (sh): {e}"))?;
        let stdin = watchdog
            .stdin
            .take()
            .expect("the watchdog's piped standard input");
        if std::env::var_os(KEEP_ENV).is_some() {
            fs::write(dir.join("keep"), "")
                .map_err(|e| format!("cannot mark {} to keep: {e}", dir.display()))?;
        }
        lock().push(Processes {
            dir: dir.to_owned(),
            children: Vec::new(),
            recipes: Vec::new(),
            _watchdog: stdin,
        });
        static HOOK: Once = Once::new();
        let mut registered = true;
        // SAFETY: registers a plain `extern "C"` function, once per process.
        #[allow(
            unsafe_code,
            reason = "process control of the test run's children: no safe API exists"
        )]
        HOOK.call_once(|| registered = unsafe { libc::atexit(stop_all) } == 0);
        if !registered {
            return Err("cannot register the control plane's exit hook".into());
        }
        Ok(())
    }

    fn spawn(dir: &Path, name: &'static str, mut command: Command) -> Result<(), String> {
        // Appended to: a server started again (`restart_server`) keeps its first log.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(dir, name))
            .map_err(|e| format!("cannot create {name}'s log: {e}"))?;
        let log_too = log
            .try_clone()
            .map_err(|e| format!("cannot share {name}'s log: {e}"))?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_too);
        die_with_parent(&mut command);
        let recipe = (
            name,
            command.get_program().to_owned(),
            command.get_args().map(ToOwned::to_owned).collect(),
        );
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut processes = lock();
        let servers = processes
            .iter_mut()
            .find(|p| p.dir == dir)
            .expect("registered");
        servers.children.push((name, child));
        if !servers.recipes.iter().any(|(n, _, _)| *n == name) {
            servers.recipes.push(recipe);
        }
        Ok(())
    }

    fn exited(dir: &Path, name: &str) -> Option<ExitStatus> {
        let mut processes = lock();
        let (_, child) = processes
            .iter_mut()
            .find(|p| p.dir == dir)?
            .children
            .iter_mut()
            .find(|(n, _)| *n == name)?;
        child.try_wait().ok().flatten()
    }

    /// Stops the servers, newest first, and removes the directory unless it is to be kept.
    fn stop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.dir.join("keep").exists() {
            let _ = writeln!(io::stderr(), "testenv: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Processes>> {
    PROCESSES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The exit hook: stops the servers, newest first, and removes the run's directory.
extern "C" fn stop_all() {
    // Never block an exiting process; the watchdog and PR_SET_PDEATHSIG cover a missed hook.
    let Ok(mut processes) = PROCESSES.try_lock() else {
        return;
    };
    for control_plane in processes.iter_mut() {
        control_plane.stop();
    }
}

/// Makes the child get SIGKILL when the thread that started it ends, so that no server outlives a
/// test process that panicked, was killed, or exited without running the exit hook.
pub fn die_with_parent(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only calls prctl and getppid, both
    // async-signal-safe, and builds io::Errors that do not allocate.
    #[allow(
        unsafe_code,
        reason = "process control of the test run's children: no safe API exists"
    )]
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
