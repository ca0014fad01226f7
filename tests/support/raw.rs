//! Bytes on a socket, for the tests that script members and clients byte by byte (to send what
//! a well-behaved client library never would, and to see exactly what comes back): request and
//! answer heads, fixed-length, chunked and close-delimited bodies.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::wait::WAIT;

/// A parsed head: the start line and the header fields, names in lower case, in order; and
/// the head's text as it came (names in their case).
#[derive(Debug)]
pub struct Head {
    pub start: String,
    pub fields: Vec<(String, String)>,
    pub text: String,
}

impl Head {
    pub fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let start = lines
            .next()
            .ok_or_else(|| invalid("an empty head"))?
            .to_owned();
        let mut fields = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(&format!("a header line without a colon: {line:?}")))?;
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Ok(Head {
            start,
            fields,
            text: text.into_owned(),
        })
    }

    /// Every value of the header `name` (lower case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `name`; fails the test when it appears more than once.
    pub fn get(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    pub fn content_length(&self) -> io::Result<Option<usize>> {
        self.get("content-length")
            .map(|v| v.parse().map_err(|_| invalid("a bad content-length")))
            .transpose()
    }

    pub fn chunked(&self) -> bool {
        self.all("transfer-encoding")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
    }

    /// The method of a request head.
    pub fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or("")
    }

    /// The path of a request head.
    pub fn path(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// The status of a response head.
    pub fn status(&self) -> io::Result<u16> {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(&format!("a bad status line: {:?}", self.start)))
    }
}

pub fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A socket with a read buffer.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next head, or `None` when the stream ends cleanly before its first byte.
    pub async fn read_head(&mut self) -> io::Result<Option<Head>> {
        let mut searched = 0;
        loop {
            if let Some(at) = find(&self.buf[searched..], b"\r\n\r\n") {
                let end = searched + at + 4;
                let raw: Vec<u8> = self.buf.drain(..end).collect();
                return Head::parse(&raw).map(Some);
            }
            searched = self.buf.len().saturating_sub(3);
            if self.buf.len() > 4 * 1024 * 1024 {
                return Err(invalid("a head larger than 4 MiB"));
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One line without its CRLF.
    pub async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// A chunked body, then the trailer section.
    pub async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(&format!("a bad chunk size line: {line:?}")))?;
            if size == 0 {
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact(size).await?);
            if self.read_exact(2).await? != b"\r\n" {
                return Err(invalid("a chunk not followed by CRLF"));
            }
        }
    }

    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? != 0 {}
        Ok(std::mem::take(&mut self.buf))
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted members.

/// What a member does once its answer is written.
#[derive(Clone, Copy, Debug)]
pub enum After {
    /// Waits for the next request on the same connection.
    KeepOpen,
    /// Closes the connection at once.
    Close,
    /// Keeps the connection idle this long, then closes it.
    IdleThenClose(Duration),
}

pub struct Reply {
    pub bytes: Vec<u8>,
    pub after: After,
}

pub fn reply(bytes: impl Into<Vec<u8>>, after: After) -> Reply {
    Reply {
        bytes: bytes.into(),
        after,
    }
}

/// A request as a member read it, with its number (1 for the member's first).
pub struct Asked {
    pub head: Head,
    pub body: Vec<u8>,
    pub number: usize,
}

pub type Script = Arc<dyn Fn(&Asked) -> Reply + Send + Sync>;

/// A member on a raw socket that answers every request with its script's bytes.
pub struct Member {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    pub async fn start(script: impl Fn(&Asked) -> Reply + Send + Sync + 'static) -> Member {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a member");
        let addr = listener.local_addr().expect("member address");
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let (accepted, asked) = (accepts.clone(), requests.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: stopping the member closes them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                while connections.try_join_next().is_some() {}
                connections.spawn(serve(stream, script.clone(), asked.clone()));
            }
        });
        Member {
            addr,
            accepts,
            requests,
            task,
        }
    }

    /// A member whose every answer keeps the connection open.
    pub async fn start_keep_open(
        script: impl Fn(&Asked) -> Vec<u8> + Send + Sync + 'static,
    ) -> Member {
        Member::start(move |asked: &Asked| reply(script(asked), After::KeepOpen)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, script: Script, requests: Arc<AtomicUsize>) {
    let mut conn = Conn::new(stream);
    loop {
        let Ok(Some(head)) = conn.read_head().await else {
            return;
        };
        let body = if head.chunked() {
            conn.read_chunked().await
        } else {
            match head.content_length() {
                Ok(Some(n)) => conn.read_exact(n).await,
                Ok(None) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        };
        let Ok(body) = body else {
            return;
        };
        let number = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = script(&Asked { head, body, number });
        // A proxy that gives up on a malformed answer may close before it is all written.
        if conn.stream.write_all(&answer.bytes).await.is_err() {
            return;
        }
        match answer.after {
            After::KeepOpen => {}
            After::Close => {
                let _ = conn.stream.shutdown().await;
                return;
            }
            After::IdleThenClose(idle) => {
                tokio::time::sleep(idle).await;
                return;
            }
        }
    }
}

/// A complete answer with a Content-Length body, connection kept open.
pub fn ok(body: &[u8]) -> Reply {
    let mut bytes =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    reply(bytes, After::KeepOpen)
}

// ---------------------------------------------------------------------------------------------
// A raw client of the proxy.

/// What the client read: the final answer, and the statuses of informational ones before it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
    pub interim: Vec<u16>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1 client of the proxy; every wait is bounded by [`WAIT`].
pub struct Client {
    pub conn: Conn,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect to the proxy in time")
            .expect("connect to the proxy");
        // Every write goes out as it is: a trickled head arrives byte by byte.
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client {
            conn: Conn::new(stream),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.conn.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write to the proxy");
    }

    /// Reads one answer (the body framed as its head says), within `WAIT`.
    pub async fn answer(&mut self, head_request: bool) -> Answer {
        tokio::time::timeout(WAIT, self.read_answer(head_request))
            .await
            .expect("an answer in time")
            .expect("an answer from the proxy")
    }

    /// Writes `request` and reads one answer, within `limit`.
    pub async fn try_send(
        &mut self,
        request: &[u8],
        head_request: bool,
        limit: Duration,
    ) -> io::Result<Answer> {
        tokio::time::timeout(limit, async {
            self.conn.stream.write_all(request).await?;
            self.read_answer(head_request).await
        })
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    pub async fn send(&mut self, request: &[u8], head_request: bool) -> Answer {
        self.write(request).await;
        self.answer(head_request).await
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        let request = format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n");
        self.send(request.as_bytes(), false).await
    }

    pub async fn post(&mut self, path: &str, body: &str) -> Answer {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: web\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(request.as_bytes(), false).await
    }

    pub async fn read_answer(&mut self, head_request: bool) -> io::Result<Answer> {
        let mut interim = Vec::new();
        loop {
            let head = self
                .conn
                .read_head()
                .await?
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            let status = head.status()?;
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            let body = if head_request || status == 204 || status == 304 {
                Vec::new()
            } else if head.chunked() {
                self.conn.read_chunked().await?
            } else if let Some(n) = head.content_length()? {
                self.conn.read_exact(n).await?
            } else {
                self.conn.read_to_end().await?
            };
            return Ok(Answer {
                status,
                head,
                body,
                interim,
            });
        }
    }

    /// Waits, up to `limit`, for the proxy to close the connection cleanly; what came before the
    /// end of the stream (nothing, when all answers were read).
    pub async fn closed(&mut self, limit: Duration) -> Vec<u8> {
        tokio::time::timeout(limit, self.conn.read_to_end())
            .await
            .unwrap_or_else(|_| panic!("the proxy did not close the connection within {limit:?}"))
            .expect("a clean close (FIN), not an error")
    }

    /// Fails the test if any byte arrives within `quiet`.
    pub async fn nothing_more(&mut self, quiet: Duration) {
        assert!(
            self.conn.buf.is_empty(),
            "stray bytes after the answer: {:?}",
            String::from_utf8_lossy(&self.conn.buf)
        );
        if let Ok(read) = tokio::time::timeout(quiet, self.conn.fill()).await {
            let n = read.expect("the connection stays usable");
            assert_eq!(n, 0, "no bytes after the answer was complete");
            panic!("the proxy closed a kept-alive connection");
        }
    }
}
