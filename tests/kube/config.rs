//! Configuration hardening (issue 21): what a standalone file may hold and how a bad one is
//! refused. The real `kube-balancer` binary on files a test writes, and the real data plane
//! with members on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::backend::Backend;
use crate::support::client::{client, order};
use crate::support::controlplane::ControlPlane;
use crate::support::fixtures::install_crd;
use crate::support::pods;
use crate::support::process::Process;
use crate::support::proxy::{Proxy, cluster, rows, states};
use crate::support::wait;
use kube_balancer::api::BalancerCluster;

const MIB: usize = 1024 * 1024;

/// The real binary in standalone mode on `file`, one worker, ephemeral ports.
fn standalone(file: &Path) -> Process {
    Process::start(
        "kube-balancer",
        &[
            "standalone",
            "-f",
            file.to_str().expect("a UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        &[],
    )
}

/// Replaces `file` with `bytes` at once (a new file renamed over it), as editors and tools do.
fn replace(file: &Path, bytes: &[u8]) {
    let next: PathBuf = file.with_extension("next");
    std::fs::write(&next, bytes).expect("write the new file");
    std::fs::rename(&next, file).expect("rename it over the old one");
}

/// A valid cluster whose one member has `state` (a member state, or anything else).
fn member_with_state(state: &str) -> Vec<u8> {
    format!(
        "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: web}}\n\
         spec:\n  members:\n    - url: http://127.0.0.1:9\n      state: {state}\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_huge_file_or_value_is_refused_in_a_short_line_without_taking_memory() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("balancer.yaml");
    std::fs::write(&file, member_with_state("Enabled")).expect("write the file");
    let path = file.to_str().expect("a UTF-8 path").to_owned();
    let mut balancer = standalone(&file);
    balancer.next_line_with("configuration loaded").await;
    let before = balancer.peak_rss();

    // One value of 3.5 MiB, in a file under the 4 MiB limit: refused, the value cut short.
    let huge = "A".repeat(7 * MIB / 2);
    replace(&file, &member_with_state(&huge));
    let line = balancer.next_line_with("configuration refused").await;
    assert!(
        line.contains(&format!(
            "error={path}: document 1 (BalancerCluster default/web): spec.members[0].state: must be one of \"Enabled\", \"Disabled\", \"Stopped\", \"Drain\", \"HotStandby\", \"HotSpare\"; found \"{}…\" (3670016 characters)",
            "A".repeat(100)
        )),
        "{line}"
    );
    assert!(line.len() < 600, "a {} byte line", line.len());

    // A 64 MiB file (one 64 MiB value, as in the issue): refused by its size, unread.
    let huge = "A".repeat(64 * MIB);
    replace(&file, &member_with_state(&huge));
    drop(huge);
    let size = std::fs::metadata(&file).expect("metadata").len();
    let line = balancer.next_line_with("configuration refused").await;
    assert!(
        line.contains(&format!(
            "error={path}: the file has {size} bytes (64.0 MiB), and a configuration file may have at most 4194304 bytes (4 MiB)"
        )),
        "{line}"
    );
    assert!(line.len() < 600, "a {} byte line", line.len());

    // Reading, parsing and refusing both took far less memory than the large file holds
    // (reading it whole and copying its value into a log line took ten times its size: 700
    // MiB). The 3.5 MiB value is parsed, a few copies of it at once (24 to 33 MiB measured,
    // with the allocator's retained pages, and up to 40 MiB when the watcher's events for one
    // rename overlap); the old code took 48 MiB for it alone. The bound stays under the 64 MiB
    // file's own size: a file read whole cannot pass it.
    let grown = balancer.peak_rss().saturating_sub(before);
    assert!(
        grown < 56 * MIB,
        "peak resident memory grew by {} MiB",
        grown / MIB
    );

    // And the process still serves the configuration it had.
    replace(&file, &member_with_state("Drain"));
    balancer.next_line_with("configuration loaded").await;
}

#[tokio::test]
async fn a_file_over_the_limit_is_refused_at_start_naming_its_size_and_the_limit() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("balancer.yaml");
    std::fs::write(&file, member_with_state(&"A".repeat(5 * MIB))).expect("write the file");
    let path = file.to_str().expect("a UTF-8 path");
    let size = std::fs::metadata(&file).expect("metadata").len();

    let mut balancer = standalone(&file);
    let status = balancer.exit_status().await;
    assert_eq!(status.code(), Some(1), "{status}");
    let stderr = balancer.all_stderr();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors,
        [format!(
            "error: {path}: the file has {size} bytes (5.0 MiB), and a configuration file may have at most 4194304 bytes (4 MiB)"
        )],
        "stderr:\n{stderr}"
    );
    assert!(stderr.len() < 2000, "{} bytes of stderr", stderr.len());
}

/// The API server's answer to creating a BalancerCluster `name` with `spec` in `ns`: `Ok`, or
/// the refusal's code and message. Untyped, so that what our types would not parse reaches it.
async fn create(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<(), (u16, String)> {
    let resource = kube::api::ApiResource::erase::<BalancerCluster>(&());
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
    let bc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("well-formed");
    match api.create(&PostParams::default(), &bc).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err((e.code, e.message)),
        Err(e) => panic!("create {name}: {e}"),
    }
}

/// What standalone mode says of a file holding one BalancerCluster `web` with `spec`.
fn standalone_refusal(spec: &serde_json::Value) -> String {
    let document = json!({
        "apiVersion": "kubebalancer.io/v1alpha1", "kind": "BalancerCluster",
        "metadata": {"name": "web"}, "spec": spec,
    });
    let yaml = serde_norway::to_string(&document).expect("YAML");
    kube_balancer::standalone::parse("web.yaml", &yaml)
        .expect_err("refused")
        .to_string()
}

/// `n` distinct member URLs of the longest length the schema allows (300 characters): the
/// uniqueness rule's worst case.
fn longest_urls(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let url = format!("http://{}{i:05}:8080", "a".repeat(283));
            assert_eq!(url.len(), 300);
            json!({ "url": url })
        })
        .collect()
}

#[tokio::test]
async fn a_member_listed_twice_is_refused_by_the_api_server_as_by_standalone() {
    let client = ControlPlane::shared().client();
    // The API server takes the CRD: the uniqueness rule fits its cost budget.
    install_crd(&client).await;
    let ns = pods::namespace(&client, "duplicates").await;

    let spec = json!({"members": [
        {"url": "http://10.0.0.1:80"},
        {"url": "http://10.0.0.2:80"},
        {"url": "http://10.0.0.1:80", "loadFactor": 3},
    ]});
    let message = "member http://10.0.0.1:80 is listed more than once: list each member once, and give it a loadFactor for a larger share";
    let (code, refusal) = create(&client, &ns, "twice", spec.clone())
        .await
        .expect_err("refused");
    assert_eq!(code, 422, "{refusal}");
    assert!(
        refusal.contains("spec.members: Invalid value: ") && refusal.contains(message),
        "{refusal}"
    );
    assert_eq!(
        standalone_refusal(&spec),
        format!("web.yaml: document 1 (BalancerCluster default/web): spec.members: {message}")
    );

    // As many members as a cluster may list, each with the longest URL: within the rule's
    // cost at run time too, and a duplicate among them is still named.
    let mut members = longest_urls(128);
    create(&client, &ns, "most", json!({ "members": members }))
        .await
        .expect("128 members of 300 characters are accepted");
    members[127] = members[0].clone();
    let (_, refusal) = create(&client, &ns, "most-twice", json!({ "members": members }))
        .await
        .expect_err("refused");
    assert!(
        refusal.contains(&format!(
            "member {} is listed more than once",
            members[0]["url"].as_str().expect("a URL")
        )),
        "{refusal}"
    );
    let (code, refusal) = create(
        &client,
        &ns,
        "too-many",
        json!({ "members": longest_urls(129) }),
    )
    .await
    .expect_err("refused");
    assert_eq!(code, 422, "{refusal}");
    assert!(
        refusal.contains("spec.members: Too many: 129: must have at most 128 items"),
        "{refusal}"
    );
}

/// The YAML blocks of a Markdown file that hold a BalancerCluster.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => current = Some(String::new()),
            Some(block) if line.trim_start().starts_with("```") => {
                // A document of that kind (not a route naming one as its backend).
                if block
                    .lines()
                    .any(|l| l.trim_end() == "kind: BalancerCluster")
                {
                    blocks.push(block.clone());
                }
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// README.md and docs/*.md, by name.
fn documents() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("an entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("md") {
            files.push(path);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read a document");
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            (name, text)
        })
        .collect()
}

#[test]
fn every_balancer_cluster_in_the_readme_and_docs_loads() {
    let mut loaded = 0;
    for (name, text) in documents() {
        for (i, block) in yaml_blocks(&text).iter().enumerate() {
            let file = format!("{name} (YAML block {})", i + 1);
            kube_balancer::standalone::parse(&file, block).unwrap_or_else(|e| panic!("{e}"));
            loaded += 1;
        }
    }
    // The README's resource reference and the install guide's first balancer at least.
    assert!(loaded >= 2, "only {loaded} BalancerCluster blocks found");
}

/// Runs the real kubectl against the test control plane: whether it succeeded, and what it
/// wrote to standard output and standard error.
async fn kubectl(args: &[&str]) -> (bool, String, String) {
    let control_plane = ControlPlane::shared();
    let bin = std::env::var(crate::support::controlplane::BIN_ENV).expect("the testenv binaries");
    let mut command = Command::new(Path::new(&bin).join("kubectl"));
    command
        .args(args)
        .env("KUBECONFIG", control_plane.kubeconfig())
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the thread running kubectl")
        .expect("run kubectl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Apache's spellings, as a person moving from httpd writes them.
const APACHE_SPELLINGS: &str = "apiVersion: kubebalancer.io/v1alpha1
kind: BalancerCluster
metadata: {name: apache, namespace: NS}
spec:
  lbmethod: bytraffic
  members:
    - url: http://10.0.0.1:80
      loadfactor: 3
";

#[tokio::test]
async fn unknown_fields_are_refused_with_strict_field_validation_and_kubectl() {
    let client = ControlPlane::shared().client();
    install_crd(&client).await;
    let ns = pods::namespace(&client, "unknown").await;
    let yaml = APACHE_SPELLINGS.replace("NS", &ns);
    let document: serde_json::Value = serde_norway::from_str(&yaml).expect("YAML");
    let resource = kube::api::ApiResource::erase::<BalancerCluster>(&());
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource);
    let object: DynamicObject = serde_json::from_value(document.clone()).expect("an object");

    // Strict field validation: refused, every unknown field named.
    let url = format!(
        "/apis/kubebalancer.io/v1alpha1/namespaces/{ns}/balancerclusters?fieldValidation=Strict"
    );
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&document).expect("JSON"))
        .expect("a request");
    let refusal = match client.request::<DynamicObject>(request).await {
        Err(kube::Error::Api(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refusal.code, 400, "{}", refusal.message);
    assert!(
        refusal.message.contains(
            "strict decoding error: unknown field \"spec.lbmethod\", unknown field \"spec.members[0].loadfactor\""
        ),
        "{}",
        refusal.message
    );

    // Server-side apply refuses unknown fields whatever the validation asked for (with a 500).
    for params in [
        PatchParams::apply("kube-balancer-tests"),
        PatchParams::apply("kube-balancer-tests").validation_ignore(),
    ] {
        let refusal = match api.patch("apache", &params, &Patch::Apply(&object)).await {
            Err(kube::Error::Api(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(
            refusal
                .message
                .contains(".spec.lbmethod: field not declared in schema"),
            "{}",
            refusal.message
        );
    }

    // kubectl validates strictly by default: `kubectl apply` refuses the file.
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("apache.yaml");
    std::fs::write(&file, &yaml).expect("write the file");
    let path = file.to_str().expect("a UTF-8 path");
    let (applied, _, stderr) = kubectl(&["apply", "-f", path]).await;
    assert!(!applied, "kubectl apply took unknown fields");
    assert!(
        stderr.contains("strict decoding error")
            && stderr.contains("unknown field \"spec.lbmethod\"")
            && stderr.contains("unknown field \"spec.members[0].loadfactor\""),
        "{stderr}"
    );
    let (applied, _, stderr) = kubectl(&["apply", "--server-side", "-f", path]).await;
    assert!(!applied, "kubectl apply --server-side took unknown fields");
    assert!(stderr.contains("field not declared in schema"), "{stderr}");
    // A field given twice is another matter: kubectl's YAML reader keeps the last one and says
    // nothing (standalone mode refuses it, below).
    let twice = yaml
        .replace("name: apache", "name: twice")
        .replace(
            "  lbmethod: bytraffic\n",
            "  lbMethod: bytraffic\n  lbMethod: ewma\n",
        )
        .replace("loadfactor", "loadFactor");
    std::fs::write(&file, &twice).expect("write the file");
    let (applied, _, stderr) = kubectl(&["apply", "-f", path]).await;
    assert!(applied, "{stderr}");
    let stored = api.get("twice").await.expect("stored");
    assert_eq!(stored.data["spec"]["lbMethod"], "ewma");
    assert!(
        kube_balancer::standalone::parse("twice.yaml", &twice)
            .expect_err("refused")
            .to_string()
            .ends_with("spec: the field \"lbMethod\" is given twice at line 5 column 3")
    );

    // A client that asks for no validation (the API's default is to warn): the unknown fields
    // are dropped, the resource is stored without them, and the balancer uses the defaults.
    api.create(&PostParams::default(), &object)
        .await
        .expect("stored without the unknown fields");
    let stored = api.get("apache").await.expect("read back");
    assert_eq!(
        stored.data["spec"],
        json!({"members": [{"url": "http://10.0.0.1:80", "loadFactor": 1, "lbset": 0, "state": "Enabled"}],
               "lbMethod": "byrequests", "routes": [{"pathPrefix": "/"}],
               "failover": {"forceRecovery": true, "maxAttempts": 1, "noFailover": false, "retryAfterError": "60s"},
               "timeouts": {"connect": "5s", "idle": "90s", "response": "60s"}}),
    );

    // Standalone mode refuses the file, naming the first unknown field and the one meant.
    let e = kube_balancer::standalone::parse("apache.yaml", &yaml)
        .expect_err("refused")
        .to_string();
    assert_eq!(
        e,
        format!(
            "apache.yaml: document 1 (BalancerCluster {ns}/apache): spec.lbmethod: unknown field; did you mean `lbMethod`?"
        )
    );
}

/// Log lines of this test binary's own data planes (the health checker runs on a thread of its
/// own, so it logs through the global subscriber, set once here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
}

impl Logs {
    /// The lines that mention `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

const HEALTH_LIMIT: Duration = Duration::from_secs(10);

/// b's answers fail (503, a `failOnStatus` code, which puts it in error for an hour) while
/// its checks keep passing: the next passing check brings it back, as Apache's hcheck does.
#[tokio::test]
async fn a_passing_health_check_brings_back_a_member_in_error_from_a_request() {
    let logs = logs();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&cluster(
        &[format!("url: {}", a.url()), format!("url: {}", b.url())],
        "healthCheck: {path: /health, interval: 100ms}\nfailover: {failOnStatus: [503], retryAfterError: 1h}",
    ));
    let c = client();
    assert_eq!(order(&c, &proxy.url("/"), 2).await, "ab");

    b.answer_with(503);
    // b's 503 puts it in error; the request goes on to a.
    let hits = b.hits();
    assert_eq!(order(&c, &proxy.url("/"), 2).await, "aa");
    assert_eq!(b.hits(), hits + 1);
    let row = &rows(&proxy.plane)[1];
    assert!(row.last_error.is_some(), "{row:?}");
    b.answer_with(0);

    // An hour early: its checks pass, so it is back (the log says which brought it back).
    wait::until("b back from its error", HEALTH_LIMIT, || {
        states(&proxy.plane) == ["Ok", "Ok"]
    })
    .await;
    assert_eq!(order(&c, &proxy.url("/"), 4).await, "abab");
    let back = logs.lines_with(&b.addr.to_string());
    assert!(
        back.iter()
            .any(|l| l.contains("health check passed: member back")
                && l.contains("from=\"a failed request\"")),
        "{back:#?}"
    );
}

/// b goes down for requests and checks alike (in error and failing its checks), then comes
/// back: the checks that pass again bring it back whole, and only then does the log say so.
#[tokio::test]
async fn a_member_down_for_requests_and_checks_is_back_when_its_checks_pass() {
    let logs = logs();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&cluster(
        &[format!("url: {}", a.url()), format!("url: {}", b.url())],
        "healthCheck: {path: /health, interval: 100ms, passes: 2, fails: 3}\nfailover: {failOnStatus: [503], retryAfterError: 1h}",
    ));
    let c = client();
    assert_eq!(order(&c, &proxy.url("/"), 2).await, "ab");

    // Down: its checks fail (three in a row take it out, a few hundred milliseconds), and a
    // request that reaches it before that fails and puts it in error.
    b.answer_with(503);
    b.set_health(503);
    let hits = b.hits();
    assert_eq!(order(&c, &proxy.url("/"), 2).await, "aa");
    assert_eq!(b.hits(), hits + 1, "the request reached b");
    wait::until("b failing its checks", HEALTH_LIMIT, || {
        states(&proxy.plane) == ["Ok", "HealthCheckFailed"]
    })
    .await;

    b.answer_with(0);
    b.set_health(0);
    wait::until("b back", HEALTH_LIMIT, || {
        states(&proxy.plane) == ["Ok", "Ok"]
    })
    .await;
    assert_eq!(order(&c, &proxy.url("/"), 4).await, "abab");
    let back: Vec<String> = logs
        .lines_with(&b.addr.to_string())
        .into_iter()
        .filter(|l| l.contains("health check passed"))
        .collect();
    assert_eq!(back.len(), 1, "{back:#?}");
    assert!(
        back[0].contains("health check passed: member back")
            && back[0].contains("from=\"failed health checks and a failed request\""),
        "{back:#?}"
    );
}

#[tokio::test]
async fn messages_and_log_lines_read_as_prose() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("balancer.yaml");
    let path = file.to_str().expect("a UTF-8 path").to_owned();
    std::fs::write(&file, member_with_state("Enabled")).expect("write the file");
    let mut balancer = standalone(&file);
    let loaded = balancer.next_line_with("configuration loaded").await;
    assert!(
        loaded.contains("clusters=default/web generation=1"),
        "{loaded}"
    );

    let bad = String::from_utf8(member_with_state("Enabled"))
        .expect("UTF-8")
        .replace("v1alpha1", "v2");
    replace(&file, bad.as_bytes());
    let refused = balancer.next_line_with("configuration refused").await;
    assert!(
        refused.ends_with(&format!(
            "error={path}: document 1 (BalancerCluster default/web): apiVersion: must be kubebalancer.io/v1alpha1, found \"kubebalancer.io/v2\""
        )),
        "{refused}"
    );
    let bad = String::from_utf8(member_with_state("Enabled"))
        .expect("UTF-8")
        .replace("kind: BalancerCluster\n", "");
    replace(&file, bad.as_bytes());
    let refused = balancer.next_line_with("configuration refused").await;
    assert!(
        refused.ends_with("kind: is missing; it must be BalancerCluster"),
        "{refused}"
    );
    for line in balancer.log().lines() {
        assert!(
            !line.contains("Some(") && !line.contains("None") && !line.contains("[\""),
            "Rust debug text in: {line}"
        );
    }
}
