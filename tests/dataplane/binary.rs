//! The `kube-balancer` binary run as a user runs it: its flags, what it logs, how it answers,
//! how it stops on SIGTERM, and how it refuses a bad file.

use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;

use crate::support::backend::Backend;
use crate::support::client::{Answer, get};
use crate::support::process::Process;
use crate::support::proxy::cluster_yaml;
use crate::support::wait;

const LIMIT: Duration = Duration::from_secs(20);

/// `kube-balancer demo` with `backends` backends and `workers` workers, every port ephemeral.
fn demo(backends: usize, workers: usize) -> Process {
    let backends = vec!["127.0.0.1:0"; backends].join(",");
    let workers = workers.to_string();
    Process::start(
        "kube-balancer",
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backends",
            &backends,
            "--workers",
            &workers,
        ],
        &[],
    )
}

#[tokio::test]
async fn demo_answers_alternately_from_its_two_backends() {
    let demo = demo(2, 2);
    let proxy = demo.address_in("data plane listening").await;
    let backend_1 = demo.address_in("backend=1").await;
    let backend_2 = demo.address_in("backend=2").await;

    let mut answers = Vec::new();
    for _ in 0..6 {
        // `get` uses a new client, so every request comes on a new connection.
        let Answer {
            status,
            backend,
            body,
            ..
        } = get(&format!("http://{proxy}/")).await;
        assert_eq!(status, StatusCode::OK);
        let expected = match backend.as_str() {
            "1" => format!("Hello from backend 1 ({backend_1}), you asked for /\n"),
            "2" => format!("Hello from backend 2 ({backend_2}), you asked for /\n"),
            other => panic!("x-backend {other:?}"),
        };
        assert_eq!(body, expected);
        answers.push(backend);
    }
    assert_eq!(answers, ["1", "2", "1", "2", "1", "2"]);
}

#[tokio::test]
async fn standalone_finishes_requests_in_flight_on_sigterm_and_exits_0() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("balancer.yaml");
    std::fs::write(&file, cluster_yaml(&[a.url(), b.url()], "")).expect("write the file");

    let mut balancer = Process::start(
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
            "2",
            "--shutdown-grace",
            "30s",
        ],
        &[],
    );
    let proxy = balancer.address_in("data plane listening").await;

    let slow = format!("http://{proxy}/slow/1500");
    let in_flight = tokio::spawn(async move { get(&slow).await });
    wait::until("the slow request to reach a member", LIMIT, || {
        a.hits() + b.hits() == 1
    })
    .await;

    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    #[allow(
        unsafe_code,
        reason = "a signal to, or a figure of, a process of ours: libc has no safe wrapper"
    )]
    let sent = unsafe { libc::kill(balancer.pid(), libc::SIGTERM) };
    assert_eq!(sent, 0, "kill(SIGTERM) failed");

    // New connections are refused while the slow request is still being served.
    let deadline = Instant::now() + LIMIT;
    loop {
        match tokio::net::TcpStream::connect(proxy).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // A connection that lands in a listener's queue as it closes is reset: not served
            // either, but the other worker's listener may still be open, so try again.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                assert!(
                    Instant::now() < deadline,
                    "still not refusing after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(_) => {
                assert!(Instant::now() < deadline, "still accepting after SIGTERM");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the listener closed, so this proves nothing"
    );

    let Answer {
        status,
        backend,
        body,
        ..
    } = tokio::time::timeout(LIMIT, in_flight)
        .await
        .expect("the request in flight completes")
        .expect("join");
    assert_eq!(status, StatusCode::OK);
    assert!(backend == "a" || backend == "b", "x-backend {backend:?}");
    assert_eq!(body, backend);

    let status = balancer.exit_status().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(a.hits() + b.hits(), 1);
}

#[tokio::test]
async fn standalone_refuses_an_invalid_file_naming_file_document_and_field() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("balancer.yaml");
    let good = cluster_yaml(&["http://127.0.0.1:9".to_owned()], "");
    let bad = "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\n\
               metadata: {name: api, namespace: shop}\n\
               spec:\n  members:\n    - url: http://127.0.0.1:9\n      loadFactor: 0\n";
    std::fs::write(&file, format!("{good}---\n{bad}")).expect("write the file");
    let path = file.to_str().expect("a UTF-8 path");

    let mut balancer = Process::start(
        "kube-balancer",
        &[
            "standalone",
            "-f",
            path,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    );
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
            "error: {path}: document 2 (BalancerCluster shop/api): spec.members[0].loadFactor: loadFactor must be between 1 and 100"
        )],
        "stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("data plane listening"),
        "it must not serve a refused file:\n{stderr}"
    );
}

#[tokio::test]
async fn standalone_refuses_a_missing_file_naming_it() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let file = folder.path().join("absent.yaml");
    let path = file.to_str().expect("a UTF-8 path");

    let mut balancer = Process::start(
        "kube-balancer",
        &[
            "standalone",
            "-f",
            path,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    );
    let status = balancer.exit_status().await;
    assert_eq!(status.code(), Some(1), "{status}");
    let stderr = balancer.all_stderr();
    assert!(
        stderr.contains(&format!(
            "error: {path}: cannot read: No such file or directory"
        )),
        "stderr:\n{stderr}"
    );
}

/// mimalloc asks for transparent huge pages on its arenas; with them an idle worker held about
/// 12 MiB more (docs/benchmarks.md, "Memory: huge pages, pooled buffers, the allocator"). The
/// binary turns them off for its process at start, and says nothing about it when that took.
#[tokio::test]
async fn the_binary_runs_without_transparent_huge_pages() {
    let demo = demo(1, 1);
    let proxy = demo.address_in("data plane listening").await;
    assert_eq!(
        get(&format!("http://{proxy}/")).await.status,
        StatusCode::OK
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", demo.pid()))
        .expect("the process's status");
    let thp: Vec<&str> = status
        .lines()
        .filter(|line| line.starts_with("THP_enabled:"))
        .collect();
    assert_eq!(thp, ["THP_enabled:\t0"], "{status}");
    let log = demo.log();
    assert!(!log.contains("huge pages"), "{log}");
}
