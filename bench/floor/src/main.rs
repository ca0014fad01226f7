//! The floor: the least a proxy on one tokio current-thread runtime can do per request, for
//! `BALANCERS="... floor" bench/run.sh` (docs/benchmarks.md). It is not a balancer anyone should
//! run: it forwards only body-less requests, passes the request head through unchanged (no
//! forwarding headers, no hop-by-hop handling), understands only Content-Length responses, keeps
//! no member state and no counters. What it does do is what no proxy can skip: read the client,
//! write a pooled member connection, read the answer, write the client, take turns between
//! members. Whatever kube-balancer spends above this figure is its own work (and hyper's).
//!
//! Usage: kb-floor LISTEN MEMBER... (addresses, e.g. 127.0.0.1:8000 127.0.0.1:8081)

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Idle member connections, one stack per member, and whose turn it is.
struct Pool {
    members: Vec<SocketAddr>,
    idle: Vec<Vec<TcpStream>>,
    turn: usize,
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())?
        })
        .next()
        .unwrap_or(0)
}

/// Reads into `buf` until it holds a whole head and `body(head)` more bytes; returns that length,
/// or None at end of stream.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    body: fn(&[u8]) -> usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    loop {
        if let Some(end) = head_end(buf) {
            let total = end + body(&buf[..end]);
            if buf.len() >= total {
                return Ok(Some(total));
            }
        }
        // Straight into the buffer's spare room: nothing is zeroed or copied first.
        buf.reserve(16384);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn serve(mut client: TcpStream, pool: Rc<RefCell<Pool>>) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(4096);
    let mut response = Vec::with_capacity(4096);
    while let Some(len) = read_message(&mut client, &mut request, |_| 0).await? {
        let (member, addr, idle) = {
            let mut p = pool.borrow_mut();
            let member = p.turn % p.members.len();
            p.turn += 1;
            (member, p.members[member], p.idle[member].pop())
        };
        let mut upstream = match idle {
            Some(c) => c,
            None => {
                let c = TcpStream::connect(addr).await?;
                c.set_nodelay(true)?;
                c
            }
        };
        upstream.write_all(&request[..len]).await?;
        let Some(len) = read_message(&mut upstream, &mut response, content_length).await? else {
            return Ok(());
        };
        client.write_all(&response[..len]).await?;
        pool.borrow_mut().idle[member].push(upstream);
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Result<Vec<SocketAddr>, _> = args.iter().map(|a| a.parse()).collect();
    let addrs = match parsed {
        Ok(a) if a.len() >= 2 => a,
        _ => {
            eprintln!("usage: kb-floor LISTEN MEMBER... (socket addresses)");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap_or_else(|e| panic!("a runtime: {e}"));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(addrs[0])
            .await
            .unwrap_or_else(|e| panic!("listen on {}: {e}", addrs[0]));
        let pool = Rc::new(RefCell::new(Pool {
            idle: addrs[1..].iter().map(|_| Vec::new()).collect(),
            members: addrs[1..].to_vec(),
            turn: 0,
        }));
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            tokio::task::spawn_local(serve(client, pool.clone()));
        }
    });
}
