//! Headless Chromium, to load a page of the admin server as a browser renders it.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How to install the browser the page tests need, for failure messages and scripts/test.sh.
pub const CHROMIUM_INSTALL: &str = "apt-get update && apt-get install -y chromium";

/// The Chromium binary: `$CHROMIUM`, else `chromium` or `chromium-browser` on PATH. Panics with
/// the install line when there is none: the browser test must never pass without a browser.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "headless Chromium is required by this test and was not found on PATH. \
         Install it with `{CHROMIUM_INSTALL}` (Debian's package), or set CHROMIUM to its path."
    );
}

/// Loads `url` in headless Chromium and returns the DOM after the page loaded, as Chromium
/// serializes it. Blocking: run it with `spawn_blocking`. Fails after `timeout`.
pub fn dump_dom(url: &str, timeout: Duration) -> String {
    let browser = chromium();
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; install Chromium with `{CHROMIUM_INSTALL}`",
                browser.display()
            )
        });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish loading {url} within {timeout:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = out.join().expect("stdout reader");
    let log = err.join().unwrap_or_default();
    assert!(
        status.success() && !dom.is_empty(),
        "chromium failed on {url} ({status}); stderr:\n{log}"
    );
    dom
}
