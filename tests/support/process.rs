//! The `kube-balancer` binary as a process, run as a user or a Deployment runs it: its stderr
//! read line by line as it comes (text or JSON logs), the addresses it logs, its exit. Killed and
//! reaped when dropped, also when a test fails (then its log is shown).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use super::wait;

/// How long the process may take to exit once it should.
pub const EXIT_LIMIT: Duration = Duration::from_secs(20);

pub struct Process {
    name: String,
    child: Child,
    /// Every stderr line so far, colour sequences dropped.
    lines: Arc<Mutex<Vec<String>>>,
    /// Reads stderr for the child's whole life (so it never blocks on a full pipe); ends at the
    /// end of the stream, which comes with the exit.
    reader: Option<JoinHandle<()>>,
    /// How many lines `next_line_with` has passed.
    passed: usize,
}

impl Process {
    /// Runs `kube-balancer` with `args` and the environment variables `envs`; `RUST_LOG` only
    /// when `envs` sets it. `name` names it in failure messages.
    pub fn start<S: AsRef<OsStr>>(name: &str, args: &[S], envs: &[(&str, &str)]) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kube-balancer"));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start kube-balancer");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lock(&sink).push(strip_ansi(&line));
            }
        });
        Process {
            name: name.to_owned(),
            child,
            lines,
            reader: Some(reader),
            passed: 0,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t")
    }

    /// Sends it `signal` (`libc::SIGTERM`, `libc::SIGKILL`, ...).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        #[allow(
            unsafe_code,
            reason = "a signal to a process of ours: libc has no safe wrapper"
        )]
        let sent = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(sent, 0, "kill({signal}) of {} failed", self.name);
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        lock(&self.lines).join("\n")
    }

    /// The first stderr line containing `needle`, waiting up to `wait::TIMEOUT` for it; fails at
    /// once when stderr ends without it.
    pub async fn line_with(&self, needle: &str) -> String {
        self.line_from(0, needle).await.1
    }

    /// The next stderr line containing `needle` after the one this last returned (a second
    /// "configuration loaded", say); waits as `line_with` does.
    pub async fn next_line_with(&mut self, needle: &str) -> String {
        let (at, line) = self.line_from(self.passed, needle).await;
        self.passed = at + 1;
        line
    }

    /// The first line from the `from`th on that contains `needle`, and its index.
    async fn line_from(&self, from: usize, needle: &str) -> (usize, String) {
        let deadline = Instant::now() + wait::TIMEOUT;
        loop {
            let ended = self.reader.as_ref().is_none_or(|r| r.is_finished());
            if let Some((at, line)) = lock(&self.lines)
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle))
            {
                return (at, line.clone());
            }
            assert!(
                !ended,
                "{} closed stderr without a line with {needle:?}:\n{}",
                self.name,
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "no stderr line of {} with {needle:?} in {:?}; so far:\n{}",
                self.name,
                wait::TIMEOUT,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The address of the first stderr line containing `needle`: its `address` field, in a JSON
    /// log line (`fields.address`) or a text one (`address=`).
    pub async fn address_in(&self, needle: &str) -> SocketAddr {
        let line = self.line_with(needle).await;
        let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        json.as_ref()
            .and_then(|v| v["fields"]["address"].as_str())
            .or_else(|| field(&line, "address"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Waits up to `EXIT_LIMIT` for the process to exit.
    pub async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> usize {
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

    /// All of stderr, once the process has exited.
    pub fn all_stderr(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the stderr reader");
        }
        self.log()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

fn lock(lines: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    lines.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The value of `name=value` in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()
}

/// Drops terminal colour sequences (ESC [ ... letter): the text logs carry them even when
/// stderr is not a terminal.
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
