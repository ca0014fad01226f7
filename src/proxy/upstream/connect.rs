//! Opening a connection to a member: TCP (with TCP_NODELAY), then for an `https://` member the
//! TLS handshake with its cluster's client configuration ([`crate::tls::Upstream`]); why one
//! could not be opened.

use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::pool::Member;

/// A new connection to a member: plain TCP, or TLS for an `https://` member.
pub enum Opened {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens a connection to `member`: TCP, then for an `https://` member the TLS handshake,
/// offering ALPN `h2` when `h2`, else `http/1.1`. Both within `timeout` (as nginx's
/// `proxy_connect_timeout` covers its handshake). A failed handshake is the member's (or its
/// configuration's) failure, like a refused connection.
/// Owns what it needs, so that it can run as a task of its own (an HTTP/2 connection's).
pub fn open_for(
    member: &Member,
    timeout: Duration,
    h2: bool,
) -> impl Future<Output = Result<Opened, ConnectError>> + 'static {
    let authority: Rc<str> = Rc::from(member.authority());
    let tls = member.tls().cloned();
    async move {
        let Some(tls) = tls else {
            return Ok(Opened::Plain(open(&authority, timeout).await?));
        };
        let upstream = tls.upgrade().ok_or(ConnectError::NoTlsConfig)?;
        let started = Instant::now();
        let tcp = open(&authority, timeout).await?;
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, upstream.connect(tcp, &authority, h2)).await {
            Ok(Ok(stream)) => Ok(Opened::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(ConnectError::Tls(e)),
            Err(_) => Err(ConnectError::TlsTimeout(timeout)),
        }
    }
}

/// Opens a TCP connection to a member, with TCP_NODELAY.
pub async fn open(authority: &str, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Why a new connection to a member could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect: timed out after {0:?}")]
    Timeout(Duration),
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("TLS handshake: timed out after {0:?}")]
    TlsTimeout(Duration),
    #[error(
        "the cluster's upstreamTLS could not be loaded (its TLSReady condition says why): an https member is never reached in plain HTTP"
    )]
    NoTlsConfig,
}
