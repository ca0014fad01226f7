//! The part of a kubelet's API that the API server calls for `kubectl logs` (`GET
//! /containerLogs/NAMESPACE/POD/CONTAINER`): the Gateway API suite reads the echo-basic pods' logs
//! through `pods/log` to see that a mirrored request reached its mirror.
//!
//! Each echo-basic's output is read line by line as it comes and written to the pod's log with the
//! time it came, as a container runtime does (`TIMESTAMP LINE`), so that `sinceTime`, `tailLines`,
//! `limitBytes` and `timestamps` answer as a kubelet's would. The server is HTTPS on the bridge's
//! address and an ephemeral port, which the Node's `status.daemonEndpoints` names; its certificate
//! is self-signed (the test API server has no `--kubelet-certificate-authority`, so it does not
//! check it, as by default).

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;

/// The runner's state, where each running pod's directory is.
type Logs = Arc<Mutex<super::State>>;

/// Copies what a process writes to `from` into `to`, each line stamped with the time it was read,
/// on a thread of its own that ends when the process closes its end.
pub fn stamp_lines(from: std::io::PipeReader, to: std::fs::File) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("podrunner-log".into())
        .spawn(move || {
            let mut to = std::io::LineWriter::new(to);
            for line in BufReader::new(from).split(b'\n') {
                let Ok(line) = line else { break };
                let stamp = Timestamp::now().to_string();
                let mut out = Vec::with_capacity(stamp.len() + line.len() + 2);
                out.extend_from_slice(stamp.as_bytes());
                out.push(b' ');
                out.extend_from_slice(&line);
                out.push(b'\n');
                if to.write_all(&out).is_err() {
                    break;
                }
            }
        })
        .map(|_| ())
}

/// What a log request asks for (`corev1.PodLogOptions` as query parameters).
#[derive(Debug, Default, PartialEq)]
struct Options {
    since: Option<Timestamp>,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
    timestamps: bool,
}

impl Options {
    fn parse(query: Option<&str>) -> Result<Options, String> {
        let mut options = Options::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match name {
                "sinceTime" => {
                    options.since = Some(
                        value
                            .parse()
                            .map_err(|e| format!("sinceTime {value:?}: {e}"))?,
                    )
                }
                "sinceSeconds" => {
                    let seconds: i64 = value
                        .parse()
                        .map_err(|e| format!("sinceSeconds {value:?}: {e}"))?;
                    options.since = Timestamp::now()
                        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
                        .ok();
                }
                "tailLines" => {
                    options.tail_lines = Some(value.parse().map_err(|e| format!("tailLines: {e}"))?)
                }
                "limitBytes" => {
                    options.limit_bytes =
                        Some(value.parse().map_err(|e| format!("limitBytes: {e}"))?)
                }
                "timestamps" => options.timestamps = value == "true" || value == "1",
                // follow, previous, insecureSkipTLSVerifyBackend...: what there is, is answered.
                _ => {}
            }
        }
        Ok(options)
    }

    /// The lines of a stamped log this asks for.
    fn select(&self, log: &str) -> String {
        let lines: Vec<&str> = log
            .lines()
            .filter(|line| {
                let stamp = line.split_once(' ').map_or(*line, |(s, _)| s);
                match (self.since, stamp.parse::<Timestamp>()) {
                    (Some(since), Ok(at)) => at >= since,
                    _ => true,
                }
            })
            .collect();
        let lines = match self.tail_lines {
            Some(n) => &lines[lines.len().saturating_sub(n)..],
            None => &lines[..],
        };
        let mut out = String::new();
        for line in lines {
            let text = match self.timestamps {
                true => line,
                false => line.split_once(' ').map_or("", |(_, rest)| rest),
            };
            out.push_str(text);
            out.push('\n');
        }
        if let Some(limit) = self.limit_bytes
            && out.len() > limit
        {
            let mut end = limit;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
        }
        out
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts the server on `address` and an ephemeral port; returns the port.
pub(super) async fn serve(address: Ipv4Addr, logs: Logs) -> Result<u16, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("a key: {e}"))?;
    let cert = rcgen::CertificateParams::new(vec![address.to_string()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| format!("a certificate: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(|e| format!("the kubelet's certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((address, 0)))
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("the kubelet's address: {e}"))?
        .port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, logs) = (acceptor.clone(), logs.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let logs = logs.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &logs)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

fn answer(req: &Request<Incoming>, logs: &Logs) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    let parts: Vec<&str> = req.uri().path().split('/').collect();
    let ["", "containerLogs", namespace, pod, _container] = parts.as_slice() else {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "the pod runner serves only /containerLogs/NAMESPACE/POD/CONTAINER, not {}",
                req.uri().path()
            ),
        );
    };
    let options = match Options::parse(req.uri().query()) {
        Ok(options) => options,
        Err(why) => return plain(StatusCode::BAD_REQUEST, why),
    };
    let path = super::lock(logs)
        .running
        .values()
        .find(|p| p.namespace == *namespace && p.name == *pod)
        .and_then(|p| p.dir.as_ref().map(|d| d.join(super::ECHO_BASIC_LOG)));
    let Some(path) = path else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} does not run on the pod runner"),
        );
    };
    match read(&path) {
        Ok(log) => plain(StatusCode::OK, options.select(&log)),
        Err(why) => plain(StatusCode::INTERNAL_SERVER_ERROR, why),
    }
}

fn read(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_are_selected_as_a_kubelet_does() {
        let log =
            "2026-01-01T00:00:01Z one\n2026-01-01T00:00:02.5Z two\n2026-01-01T00:00:03Z three\n";
        let all = super::Options::parse(None).unwrap();
        assert_eq!(all.select(log), "one\ntwo\nthree\n");
        let since =
            super::Options::parse(Some("sinceTime=2026-01-01T00%3A00%3A02Z&container=x")).unwrap();
        assert_eq!(since.select(log), "two\nthree\n");
        let tail = super::Options::parse(Some("tailLines=1&timestamps=true")).unwrap();
        assert_eq!(tail.select(log), "2026-01-01T00:00:03Z three\n");
        let limit = super::Options::parse(Some("limitBytes=5")).unwrap();
        assert_eq!(limit.select(log), "one\nt");
        assert!(super::Options::parse(Some("sinceTime=yesterday")).is_err());
    }
}
