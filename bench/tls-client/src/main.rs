//! Full TLS handshakes for bench/tls.sh: CONNS connections at a time, each a new TCP connection
//! with a full TLS 1.3 handshake, one `GET PATH` with `Connection: close`, and the answer read to
//! its end, again and again for SECONDS.
//!
//! Session resumption is off (`Resumption::disabled()`: no ticket is kept, none offered), so no
//! handshake can be an abbreviated one; the client counts what each handshake was, and the
//! balancers' own counters are checked against it. wrk cannot do this: it keeps its session
//! across reconnections (SSL_clear) and resumes. OpenSSL's clients (`openssl s_time -new`,
//! h2load) can, but spend about 0.7 ms of CPU per handshake, on the CPU the members share:
//! this one spends a fraction of that, so the balancers are loaded harder.
//!
//! One cipher suite (TLS_AES_128_GCM_SHA256) and one key exchange group (X25519) are offered,
//! so all balancers negotiate the same. Certificates are not verified (the handshake's signature
//! is), as wrk and h2load do not verify them either.
//!
//! Usage: kb-tls-client ADDR SERVER_NAME PATH CONNS SECONDS
//!
//! Prints `key=value` lines: `requests` (answered 200), `errors`, `full` and `resumed`
//! handshakes, `seconds`, `rate` (requests per second), `negotiated` and `first_error`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Takes any certificate, but checks the handshake's signature with the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    full: u64,
    resumed: u64,
    negotiated: Option<String>,
    first_error: Option<String>,
}

struct Target {
    addr: SocketAddr,
    name: ServerName<'static>,
    connector: TlsConnector,
    request: Vec<u8>,
}

/// One connection: connect, handshake, one request, the answer to its end.
async fn exchange(target: &Target, tally: &RefCell<Tally>) -> Result<(), String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut tls = target
        .connector
        .connect(target.name.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    {
        let conn = tls.get_ref().1;
        let mut tally = tally.borrow_mut();
        match conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => tally.resumed += 1,
            _ => tally.full += 1,
        }
        if tally.negotiated.is_none() {
            let version = conn.protocol_version().map(|v| format!("{v:?}"));
            let suite = conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()));
            let group = conn
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()));
            tally.negotiated = Some(
                [version, suite, group]
                    .map(|x| x.unwrap_or_else(|| "?".into()))
                    .join(" "),
            );
        }
    }
    tls.write_all(&target.request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(1024);
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        // A server that closes without close_notify: the answer is still whole.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    if answer.starts_with(b"HTTP/1.1 200 ") || answer.starts_with(b"HTTP/1.0 200 ") {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned();
        Err(format!("answer: {head:?}"))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, name, path, conns, seconds] = args.as_slice() else {
        eprintln!("usage: kb-tls-client ADDR SERVER_NAME PATH CONNS SECONDS");
        std::process::exit(2);
    };
    let (Ok(addr), Ok(name), Ok(conns), Ok(seconds)) = (
        addr.parse::<SocketAddr>(),
        ServerName::try_from(name.clone()),
        conns.parse::<usize>(),
        seconds.parse::<f64>(),
    ) else {
        eprintln!("kb-tls-client: bad arguments");
        std::process::exit(2);
    };

    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![ring::kx_group::X25519],
        ..ring::default_provider()
    });
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with this provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    let target = Rc::new(Target {
        addr,
        name,
        connector: TlsConnector::from(Arc::new(config)),
        request: format!(
            "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n",
            name = args[2]
        )
        .into_bytes(),
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    local.block_on(&runtime, async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (target, tally) = (target.clone(), tally.clone());
            tasks.push(tokio::task::spawn_local(async move {
                while Instant::now() < deadline {
                    let one =
                        tokio::time::timeout(Duration::from_secs(5), exchange(&target, &tally));
                    let result = one.await.unwrap_or_else(|_| Err("timed out".into()));
                    let mut tally = tally.borrow_mut();
                    match result {
                        Ok(()) => tally.requests += 1,
                        Err(e) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert(e);
                        }
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let tally = tally.borrow();
    println!("requests={}", tally.requests);
    println!("errors={}", tally.errors);
    println!("full={}", tally.full);
    println!("resumed={}", tally.resumed);
    println!("seconds={elapsed:.3}");
    println!("rate={:.1}", tally.requests as f64 / elapsed);
    println!(
        "negotiated={}",
        tally.negotiated.as_deref().unwrap_or("none")
    );
    println!(
        "first_error={}",
        tally.first_error.as_deref().unwrap_or("none")
    );
}
