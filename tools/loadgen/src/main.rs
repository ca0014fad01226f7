//! The training mix of the profile-guided release build (scripts/build-release.sh), and the load
//! generators bench/run.sh needs and Debian does not ship.
//!
//! `rate`: open-loop HTTP/1.1 at a fixed rate. Request `i` is due at `start + i / rate`; each of
//! the keep-alive connections (one thread each) takes every `conns`-th request, sleeps until it
//! is due, sends it and reads the whole response. Latency is measured from the time the request
//! was due, not from when it was sent, so a stall delays every request scheduled behind it and
//! counts against the balancer (the coordinated-omission correction wrk2 makes).
//!
//! `serve` and `train`: the profile-guided release build's member and training mix (train.rs).
//!
//! `idle`: opens N keep-alive connections, sends one request on each and reads the answer, then
//! holds them open, idle, for a fixed time, so that the balancer's memory can be read.
//!
//! Standard library only, so that it builds without fetching anything.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod train;

const USAGE: &str = "usage:
  kb-loadgen rate ADDR PATH RATE SECONDS CONNS
  kb-loadgen idle ADDR PATH COUNT HOLD_SECONDS
  kb-loadgen serve ADDR
  kb-loadgen train ADDR SECONDS THREADS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("rate") if args.len() == 6 => rate(&args[1..]),
        Some("idle") if args.len() == 5 => idle(&args[1..]),
        Some("serve") if args.len() == 2 => train::serve(&args[1..]),
        Some("train") if args.len() == 4 => train::train(&args[1..]),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kb-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{what}: not a number: {s}"))
}

struct Conn {
    reader: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl Conn {
    fn open(addr: &str, path: &str, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kb-loadgen\r\n\r\n");
        Ok(Conn {
            reader: BufReader::with_capacity(128 * 1024, stream),
            request: request.into_bytes(),
        })
    }

    /// Sends the request and reads the response to its end; returns the status code. The
    /// answer to a HEAD request (`head`) has no body, whatever its fields say.
    fn exchange(&mut self, head: bool) -> std::io::Result<u16> {
        self.reader.get_mut().write_all(&self.request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line: {line:?}")))?;
        let fields = read_fields(&mut self.reader, &mut line)?;
        if head {
            return Ok(status);
        }
        if fields.chunked {
            skip_chunked(&mut self.reader, &mut line)?;
        } else {
            self.skip(
                fields
                    .length
                    .ok_or_else(|| bad("no content-length".into()))?,
            )?;
        }
        Ok(status)
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())?;
        if copied == n {
            Ok(())
        } else {
            Err(bad("closed in the body".into()))
        }
    }
}

/// What a head's fields say about its body and its connection.
struct Fields {
    length: Option<u64>,
    chunked: bool,
    close: bool,
}

/// Reads a head's field lines, up to and including the empty line that ends it.
fn read_fields(reader: &mut impl BufRead, line: &mut String) -> std::io::Result<Fields> {
    let mut fields = Fields {
        length: None,
        chunked: false,
        close: false,
    };
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            return Err(bad("closed in a head".into()));
        }
        let field = line.trim_end();
        if field.is_empty() {
            return Ok(fields);
        }
        if let Some((name, value)) = field.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                fields.length = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                fields.chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                fields.close = value.eq_ignore_ascii_case("close");
            }
        }
    }
}

/// Reads a chunked body to its end, keeping nothing.
fn skip_chunked(reader: &mut impl BufRead, line: &mut String) -> std::io::Result<()> {
    loop {
        line.clear();
        reader.read_line(line)?;
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad(format!("bad chunk size: {line:?}")))?;
        let copied = std::io::copy(&mut reader.take(size), &mut std::io::sink())?;
        if copied != size {
            return Err(bad("closed in a chunk".into()));
        }
        line.clear();
        reader.read_line(line)?; // CRLF after the chunk (or the last one)
        if size == 0 {
            return Ok(());
        }
    }
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

struct Outcome {
    /// Microseconds from due time to the end of the response, for each answered request.
    latencies_us: Vec<u64>,
    errors: u64,
    non_2xx: u64,
    /// How late requests left, at most (the generator's own lag).
    max_send_lag_us: u64,
}

fn rate(args: &[String]) -> Result<(), String> {
    let addr = args[0].clone();
    let path = args[1].clone();
    let rate: f64 = num(&args[2], "RATE")?;
    let seconds: f64 = num(&args[3], "SECONDS")?;
    let conns: usize = num(&args[4], "CONNS")?;
    if rate <= 0.0 || seconds <= 0.0 || conns == 0 {
        return Err("RATE, SECONDS and CONNS must be positive".into());
    }
    let total = (rate * seconds) as u64;
    let interval_ns = 1e9 / rate;
    // Open every connection before the clock starts.
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(
            Conn::open(&addr, &path, Duration::from_secs(10))
                .map_err(|e| format!("connect {addr}: {e}"))?,
        );
    }
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(k, mut conn)| {
            let (addr, path) = (addr.clone(), path.clone());
            std::thread::spawn(move || {
                let mut out = Outcome {
                    latencies_us: Vec::with_capacity((total / conns as u64 + 1) as usize),
                    errors: 0,
                    non_2xx: 0,
                    max_send_lag_us: 0,
                };
                let mut i = k as u64;
                while i < total {
                    let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else {
                        let lag = (now - due).as_micros() as u64;
                        out.max_send_lag_us = out.max_send_lag_us.max(lag);
                    }
                    match conn.exchange(false) {
                        Ok(status) => {
                            if !(200..300).contains(&status) {
                                out.non_2xx += 1;
                            }
                            out.latencies_us.push(due.elapsed().as_micros() as u64);
                        }
                        Err(_) => {
                            out.errors += 1;
                            // Bounded: the schedule moves on whatever happens.
                            match Conn::open(&addr, &path, Duration::from_secs(10)) {
                                Ok(c) => conn = c,
                                Err(_) => std::thread::sleep(Duration::from_millis(10)),
                            }
                        }
                    }
                    i += conns as u64;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total as usize);
    let (mut errors, mut non_2xx, mut lag) = (0, 0, 0);
    for t in threads {
        let out = t
            .join()
            .map_err(|_| "a connection thread panicked".to_owned())?;
        all.extend(out.latencies_us);
        errors += out.errors;
        non_2xx += out.non_2xx;
        lag = lag.max(out.max_send_lag_us);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * all.len() as f64).ceil() as usize;
        all[rank.clamp(1, all.len()) - 1]
    };
    println!("requests={}", all.len());
    println!("errors={errors}");
    println!("non_2xx={non_2xx}");
    println!("offered_rate={rate}");
    println!("achieved_rate={:.0}", all.len() as f64 / elapsed);
    println!("p50_us={}", pct(50.0));
    println!("p90_us={}", pct(90.0));
    println!("p99_us={}", pct(99.0));
    println!("p999_us={}", pct(99.9));
    println!("max_us={}", all.last().copied().unwrap_or(0));
    println!("max_send_lag_us={lag}");
    Ok(())
}

fn idle(args: &[String]) -> Result<(), String> {
    let addr = &args[0];
    let path = &args[1];
    let count: usize = num(&args[2], "COUNT")?;
    let hold: f64 = num(&args[3], "HOLD_SECONDS")?;
    let mut conns = Vec::with_capacity(count);
    let mut failed = 0usize;
    for _ in 0..count {
        // A balancer out of connection slots may accept and never answer: give up quickly.
        match Conn::open(addr, path, Duration::from_secs(2))
            .and_then(|mut c| c.exchange(false).map(|_| c))
        {
            Ok(c) => conns.push(c),
            Err(_) => failed += 1,
        }
    }
    println!("open={} failed={failed}", conns.len());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs_f64(hold));
    // Still open? A balancer may close idle connections early; say how many survived.
    let mut alive = 0usize;
    for c in &conns {
        let s = c.reader.get_ref();
        let _ = s.set_nonblocking(true);
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => alive += 1,
            _ => {}
        }
    }
    println!("alive_after_hold={alive}");
    Ok(())
}
