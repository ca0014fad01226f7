//! Bytes on a socket, for the tests that script members and clients byte by byte: request and
//! answer heads, fixed-length, chunked and close-delimited bodies.
#![allow(dead_code)]

use std::io;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A parsed head: the start line and the header fields, names in lower case, in order.
#[derive(Debug)]
pub struct Head {
    pub start: String,
    pub fields: Vec<(String, String)>,
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
        Ok(Head { start, fields })
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
