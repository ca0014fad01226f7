//! Configuration hardening (issue 21): what a standalone file may hold and how a bad one is
//! refused. The real `kube-balancer` binary on files a test writes, and the real data plane
//! with members on 127.0.0.1.

mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, PostParams};
use serde_json::json;
use tokio::time::Instant;

use kube_balancer::api::BalancerCluster;
use support::controlplane::ControlPlane;
use support::fixtures::install_crd;
use support::pods;

const LIMIT: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

/// A running `kube-balancer`, killed and reaped when dropped (also when a test fails).
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far, and how many of them `next_line_with` has passed.
    seen: Vec<String>,
    passed: usize,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-balancer"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kube-balancer");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        // Drains stderr for the child's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            passed: 0,
        }
    }

    fn standalone(file: &Path) -> Running {
        Running::start(&[
            "standalone",
            "-f",
            file.to_str().expect("a UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
    }

    /// The next stderr line containing `needle`, after the one this last returned.
    async fn next_line_with(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(i) = self.seen[self.passed..]
                .iter()
                .position(|l| l.contains(needle))
            {
                self.passed += i + 1;
                return self.seen[self.passed - 1].clone();
            }
            self.passed = self.seen.len();
            match self.lines.try_recv() {
                Ok(line) => self.seen.push(line),
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(
                        Instant::now() < deadline,
                        "no stderr line with {needle:?} in {LIMIT:?}; so far:\n{}",
                        self.seen.join("\n")
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => panic!(
                    "kube-balancer closed stderr without a line with {needle:?}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(Instant::now() < deadline, "kube-balancer did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// All of stderr, once the process has exited.
    fn all_stderr(&mut self) -> String {
        // The reader thread ends at end of file, which comes with the exit.
        while let Ok(line) = self.lines.recv_timeout(LIMIT) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// The process's peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("a VmHWM line");
        let kib: usize = line
            .trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmHWM in kB");
        kib * 1024
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Drops terminal colour sequences (ESC [ ... letter).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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
    let mut balancer = Running::standalone(&file);
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
    // (reading it whole and copying its value into a log line took ten times its size).
    let grown = balancer.peak_rss().saturating_sub(before);
    assert!(
        grown < 32 * MIB,
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

    let mut balancer = Running::standalone(&file);
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
