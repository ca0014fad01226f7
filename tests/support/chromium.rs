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

/// Headless Chromium driven over its DevTools protocol: one page, loaded at a given window size,
/// in which expressions are evaluated (to measure how the page lays out) and which ends with the
/// value. Dropping it ends the browser.
pub struct Browser {
    _child: Running,
    page: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Opens `url` in a window of `width` by `height` pixels and waits until it has loaded.
    pub async fn open(url: &str, width: u32, height: u32) -> Browser {
        use crate::support::wait::until_some;
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromium: {e}; install it with `{CHROMIUM_INSTALL}`")
            });
        let child = Running(child);
        // Chromium writes the port it chose into the profile directory.
        let port_file = profile.path().join("DevToolsActivePort");
        let port = until_some(
            "Chromium's DevToolsActivePort",
            Duration::from_secs(60),
            || {
                let read = std::fs::read_to_string(&port_file);
                async move { read.ok()?.lines().next()?.trim().parse::<u16>().ok() }
            },
        )
        .await;
        let list_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let debugger = until_some(
            "the page's DevTools target",
            Duration::from_secs(60),
            || async {
                let answer = crate::support::client::get_at(list_addr, "/json/list").await;
                let targets: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
                targets.as_array()?.iter().find_map(|t| {
                    (t["type"] == "page" && t["url"].as_str()?.starts_with(url))
                        .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))?
                })
            },
        )
        .await;
        let (page, _) = tokio_tungstenite::connect_async(debugger.as_str())
            .await
            .expect("connect to the page's DevTools socket");
        let mut browser = Browser {
            _child: child,
            page,
            next_id: 1,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // The window may still show about:blank, complete, while the page is on its way.
        let loaded = format!(
            "document.readyState === 'complete' && document.URL.startsWith({})",
            serde_json::Value::from(url)
        );
        while browser.eval(&loaded).await != true {
            assert!(Instant::now() < deadline, "{url} did not finish loading");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        browser
    }

    /// The value of `expression` evaluated in the page (as JSON).
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        let id = self.next_id;
        self.next_id += 1;
        let call = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true, "awaitPromise": true},
        });
        self.page
            .send(Message::text(call.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .unwrap_or_else(|_| panic!("no answer from DevTools to {expression}"))
                .expect("DevTools socket open")
                .expect("DevTools message");
            let Message::Text(text) = message else {
                continue;
            };
            let answer: serde_json::Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] != id {
                continue;
            }
            assert!(
                answer["result"]["exceptionDetails"].is_null() && answer["error"].is_null(),
                "{expression} failed in the page: {answer}"
            );
            return answer["result"]["result"]["value"].clone();
        }
    }
}

/// The browser process, ended when dropped (also when a test fails while it starts).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Saves a PNG of `url` as a window of `width` by `height` pixels shows it, for the docs.
pub fn screenshot(url: &str, width: u32, height: u32, to: &std::path::Path) {
    let profile = tempfile::tempdir().expect("profile dir");
    let status = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", to.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run chromium");
    assert!(status.success() && to.is_file(), "no screenshot of {url}");
}
