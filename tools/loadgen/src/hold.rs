//! `hold`: a member that keeps requests waiting until enough wait at once, so that a balancer
//! in front of it opens that many member connections; once answered they are idle in the
//! balancer's pool, and its memory per idle pooled connection can be read (bench/run.sh's
//! `pooled` figure).
//!
//! A request for `/hold/N` waits until N such requests are waiting (or TIMEOUT_SECONDS have
//! passed since it came), then all are answered together: 200 with `hello world\n`, keep-alive.
//! Any other path is answered at once. It listens on every address given, one thread per
//! connection, and keeps each connection until the balancer closes it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{num, read_fields};

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: kb-hold\r\nContent-Length: 12\r\n\r\nhello world\n";

/// The requests waiting now, and how many times a full set of them was let go.
#[derive(Default)]
struct Waiting {
    count: usize,
    released: u64,
}

#[derive(Default)]
struct Gate {
    waiting: Mutex<Waiting>,
    go: Condvar,
}

impl Gate {
    /// Waits until `wanted` requests wait at once, or until `timeout`.
    fn wait(&self, wanted: usize, timeout: Duration) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        waiting.count += 1;
        if waiting.count >= wanted {
            waiting.count = 0;
            waiting.released += 1;
            self.go.notify_all();
            return;
        }
        let mine = waiting.released;
        let until = Instant::now() + timeout;
        while waiting.released == mine {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                waiting.count -= 1;
                return;
            }
            waiting = match self.go.wait_timeout(waiting, left) {
                Ok((w, _)) => w,
                Err(_) => return,
            };
        }
    }
}

pub fn hold(args: &[String]) -> Result<(), String> {
    let timeout = Duration::from_secs_f64(num(&args[1], "TIMEOUT_SECONDS")?);
    let gate = Arc::new(Gate::default());
    let mut accepting = Vec::new();
    for addr in args[0].split(',') {
        let listener = TcpListener::bind(addr).map_err(|e| format!("listen {addr}: {e}"))?;
        let gate = gate.clone();
        accepting.push(std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let gate = gate.clone();
                // Thousands of these at once: small stacks.
                let _ = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let _ = stream.set_nodelay(true);
                        let _ = connection(stream, &gate, timeout);
                    });
            }
        }));
    }
    for t in accepting {
        let _ = t.join();
    }
    Ok(())
}

fn connection(stream: TcpStream, gate: &Gate, timeout: Duration) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(4096, stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let wanted = line
            .split_whitespace()
            .nth(1)
            .and_then(|path| path.strip_prefix("/hold/"))
            .and_then(|n| n.parse::<usize>().ok());
        let fields = read_fields(&mut reader, &mut line)?;
        let length = fields.length.unwrap_or(0);
        std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
        if let Some(wanted) = wanted {
            gate.wait(wanted, timeout);
        }
        out.write_all(ANSWER)?;
        if fields.close {
            return Ok(());
        }
    }
}
