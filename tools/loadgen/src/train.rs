//! The training workload of the profile-guided release build (scripts/build-release.sh).
//!
//! `serve` is a member: plain HTTP/1.1 on threads, keep-alive, answering by path. `train`
//! sends a fixed mix of requests through the balancer in front of two such members, so that
//! the build's profile counts every common path in about the proportions a busy balancer sees
//! them: mostly small keep-alive GETs, then larger and chunked answers, request bodies (with a
//! length and chunked), HEAD, new connections, fields that make the proxy rewrite the head, and
//! the clusters that read fields to choose a member (sticky sessions, hashing). HTTP/2 clients
//! come from h2load, run by the script.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::{Conn, num, read_fields, skip_chunked};

/// `serve ADDR`: answers until killed.
///
/// - `/bytes/N`: N bytes, with a Content-Length;
/// - `/chunked/N`: N bytes in chunks of at most 16 KiB;
/// - `/status/N`: status N, a short body;
/// - anything else: "hello world\n".
///
/// A request body (with a length or chunked) is read and counted, never kept.
pub fn serve(args: &[String]) -> Result<(), String> {
    let listener = TcpListener::bind(&args[0]).map_err(|e| format!("listen {}: {e}", args[0]))?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let _ = member_connection(stream);
        });
    }
    Ok(())
}

fn member_connection(stream: TcpStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    let filler = vec![b'x'; 16 * 1024];
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("/").to_owned(),
        );
        let fields = read_fields(&mut reader, &mut line)?;
        let close = fields.close;
        if fields.chunked {
            skip_chunked(&mut reader, &mut line)?;
        } else {
            let length = fields.length.unwrap_or(0);
            std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
        }
        let number = |prefix: &str| {
            path.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
        };
        let connection = if close { "close" } else { "keep-alive" };
        let head = |status: u16, framing: String| {
            format!(
                "HTTP/1.1 {status} {}\r\nServer: kb-train\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\n{framing}Connection: {connection}\r\n\r\n",
                if status == 200 { "OK" } else { "Other" }
            )
        };
        let head_only = method == "HEAD";
        if let Some(n) = number("/chunked/") {
            out.write_all(head(200, "Transfer-Encoding: chunked\r\n".into()).as_bytes())?;
            if !head_only {
                let mut left = n;
                while left > 0 {
                    let take = left.min(filler.len());
                    out.write_all(format!("{take:x}\r\n").as_bytes())?;
                    out.write_all(&filler[..take])?;
                    out.write_all(b"\r\n")?;
                    left -= take;
                }
                out.write_all(b"0\r\n\r\n")?;
            }
        } else {
            let (status, size) = match (number("/bytes/"), number("/status/")) {
                (Some(n), _) => (200, n),
                (_, Some(s)) => (u16::try_from(s).unwrap_or(500), 6),
                _ => (200, 12),
            };
            let mut answer = head(status, format!("Content-Length: {size}\r\n")).into_bytes();
            if !head_only {
                if size == 12 {
                    answer.extend_from_slice(b"hello world\n");
                } else {
                    answer.extend(std::iter::repeat_n(b'x', size));
                }
            }
            out.write_all(&answer)?;
        }
        if close {
            return Ok(());
        }
    }
}

/// One kind of request in the mix, and how many of every hundred requests are of it (the shares
/// add up to 100).
struct Kind {
    share: u32,
    head: &'static str,
    body: Body,
}

enum Body {
    None,
    Length(usize),
    Chunked(usize),
}

const KINDS: &[Kind] = &[
    Kind {
        share: 58,
        head: "GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kb-train\r\nAccept: */*\r\n",
        body: Body::None,
    },
    Kind {
        share: 6,
        head: "GET /api/items?page=2 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nCookie: session=abc123; theme=dark\r\nReferer: http://localhost/\r\n",
        body: Body::None,
    },
    Kind {
        share: 4,
        head: "GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n",
        body: Body::None,
    },
    Kind {
        share: 6,
        head: "GET /bytes/1024 HTTP/1.1\r\nHost: localhost\r\n",
        body: Body::None,
    },
    Kind {
        share: 3,
        head: "GET /bytes/65536 HTTP/1.1\r\nHost: localhost\r\n",
        body: Body::None,
    },
    Kind {
        share: 2,
        head: "GET /chunked/40000 HTTP/1.1\r\nHost: localhost\r\n",
        body: Body::None,
    },
    Kind {
        share: 3,
        head: "HEAD / HTTP/1.1\r\nHost: localhost\r\n",
        body: Body::None,
    },
    Kind {
        share: 2,
        head: "GET /status/404 HTTP/1.1\r\nHost: localhost\r\n",
        body: Body::None,
    },
    Kind {
        share: 4,
        head: "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n",
        body: Body::Length(1024),
    },
    Kind {
        share: 1,
        head: "PUT /upload HTTP/1.1\r\nHost: localhost\r\n",
        body: Body::Length(65536),
    },
    Kind {
        share: 1,
        head: "POST /upload HTTP/1.1\r\nHost: localhost\r\n",
        body: Body::Chunked(20000),
    },
    Kind {
        share: 4,
        head: "GET / HTTP/1.1\r\nHost: sticky.train\r\nCookie: KBROUTE=none\r\n",
        body: Body::None,
    },
    Kind {
        share: 3,
        head: "GET /users?user=42 HTTP/1.1\r\nHost: hash.train\r\n",
        body: Body::None,
    },
    Kind {
        share: 3,
        head: "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n",
        body: Body::None,
    },
];

/// One kind's request, written once: its bytes, and what its head says of the exchange.
struct Prepared {
    bytes: Vec<u8>,
    /// HEAD: the answer has no body.
    head_only: bool,
    /// "Connection: close": it goes on a connection of its own.
    close: bool,
}

impl Prepared {
    fn of(kind: &Kind) -> Self {
        let mut bytes = kind.head.as_bytes().to_vec();
        match kind.body {
            Body::None => bytes.extend_from_slice(b"\r\n"),
            Body::Length(n) => {
                bytes.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
                bytes.extend(std::iter::repeat_n(b'b', n));
            }
            Body::Chunked(n) => {
                bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for part in [n / 2, n - n / 2] {
                    bytes.extend_from_slice(format!("{part:x}\r\n").as_bytes());
                    bytes.extend(std::iter::repeat_n(b'b', part));
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            }
        }
        Prepared {
            bytes,
            head_only: kind.head.starts_with("HEAD "),
            close: kind.head.contains("Connection: close"),
        }
    }
}

/// `train ADDR SECONDS THREADS`: the mix, from THREADS keep-alive clients, for SECONDS.
/// Prints how many requests of each kind were answered, and fails if any got no answer.
pub fn train(args: &[String]) -> Result<(), String> {
    let addr = args[0].clone();
    let seconds: f64 = num(&args[1], "SECONDS")?;
    let threads: usize = num(&args[2], "THREADS")?;
    let prepared: std::sync::Arc<Vec<Prepared>> =
        std::sync::Arc::new(KINDS.iter().map(Prepared::of).collect());
    // The kinds in turn, each as many times as its share: every pass holds each its share.
    let turns: std::sync::Arc<Vec<usize>> = std::sync::Arc::new(
        KINDS
            .iter()
            .enumerate()
            .flat_map(|(k, kind)| std::iter::repeat_n(k, kind.share as usize))
            .collect(),
    );
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, prepared, turns) = (addr.clone(), prepared.clone(), turns.clone());
            std::thread::spawn(move || -> Result<(Vec<u64>, u64), String> {
                let mut answered = vec![0u64; KINDS.len()];
                let mut failed = 0u64;
                let open = || Conn::open(&addr, "/", Duration::from_secs(10));
                let mut conn = open().map_err(|e| format!("connect {addr}: {e}"))?;
                // Each thread walks the turns from its own place.
                let mut i = t * 7;
                while Instant::now() < until {
                    let k = turns[i % turns.len()];
                    i = i.wrapping_add(1);
                    let request = &prepared[k];
                    let result = if request.close {
                        open().and_then(|mut c| {
                            c.request.clone_from(&request.bytes);
                            c.exchange(request.head_only)
                        })
                    } else {
                        conn.request.clone_from(&request.bytes);
                        conn.exchange(request.head_only)
                    };
                    match result {
                        Ok(_) => answered[k] += 1,
                        Err(_) => {
                            failed += 1;
                            conn = open().map_err(|e| format!("connect {addr}: {e}"))?;
                        }
                    }
                }
                Ok((answered, failed))
            })
        })
        .collect();
    let mut answered = vec![0u64; KINDS.len()];
    let mut failed = 0;
    for w in workers {
        let (a, f) = w
            .join()
            .map_err(|_| "a training thread panicked".to_owned())??;
        answered.iter_mut().zip(a).for_each(|(s, n)| *s += n);
        failed += f;
    }
    for (kind, n) in KINDS.iter().zip(&answered) {
        let first = kind.head.split("\r\n").next().unwrap_or("");
        let host = kind
            .head
            .split("Host: ")
            .nth(1)
            .and_then(|h| h.split("\r\n").next());
        println!("answered={n} request={first:?} host={host:?}");
    }
    println!("failed={failed}");
    if failed > 0 || answered.contains(&0) {
        return Err(format!(
            "{failed} requests got no answer, or a kind got none"
        ));
    }
    Ok(())
}
