//! HTTPS through the real data plane in standalone mode: certificates from files (made with
//! rcgen), chosen by SNI, served to real clients (curl, openssl s_client, a rustls client with
//! keep-alive), renewed under load, and plain HTTP redirected. Loopback only.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use kube_balancer::plane::DataPlane;
use kube_balancer::proxy::Server;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};

use crate::support::backend::Backend;
use crate::support::{proxy, wait};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `names` with `serial`, valid now: its chain (leaf, then CA) and key, in PEM.
fn leaf(ca: &Ca, names: &[&str], serial: u8) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.serial_number = Some(SerialNumber::from(vec![serial]));
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    (format!("{}{}", cert.pem(), ca.pem), key.serialize_pem())
}

/// Writes a file at once (a new file renamed over the old one), as tools renewing certificates do.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

struct Site {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca: Ca,
    plane: Arc<DataPlane>,
    server: Option<Server>,
    http: SocketAddr,
    https: SocketAddr,
}

impl Site {
    /// Two clusters: `shop.example.com` with its own certificate and `*.api.example.com` with a
    /// wildcard one; `extra` spec lines go to the shop cluster.
    async fn start(shop: &Backend, api: &Backend, extra: &str) -> Site {
        let folder = tempfile::tempdir().expect("a folder");
        let dir = folder.path().to_path_buf();
        let ca = ca();
        let (chain, key) = leaf(&ca, &["shop.example.com"], 1);
        std::fs::write(dir.join("shop.crt"), chain).expect("write");
        std::fs::write(dir.join("shop.key"), key).expect("write");
        let (chain, key) = leaf(&ca, &["*.api.example.com"], 2);
        std::fs::write(dir.join("api.crt"), chain).expect("write");
        std::fs::write(dir.join("api.key"), key).expect("write");
        std::fs::write(dir.join("ca.pem"), &ca.pem).expect("write");
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: shop}}\n\
             spec:\n  routes: [{{host: shop.example.com}}]\n  members: [{{url: {}}}]\n  \
             tls: [{{hosts: [shop.example.com], certFile: shop.crt, keyFile: shop.key}}]\n{extra}\n---\n\
             apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: api}}\n\
             spec:\n  routes: [{{host: '*.api.example.com'}}]\n  members: [{{url: {}}}]\n  \
             tls: [{{certFile: api.crt, keyFile: api.key}}]\n",
            shop.url(),
            api.url()
        );
        let file = dir.join("balancer.yaml");
        std::fs::write(&file, yaml).expect("write");
        let plane = DataPlane::new();
        kube_balancer::standalone::run(Some(file), plane.clone())
            .await
            .expect("the file loads");
        let mut options = proxy::options();
        options.listen_tls = Some("127.0.0.1:0".parse().expect("address"));
        let server = Server::start(plane.clone(), options).expect("the data plane starts");
        Site {
            http: server.local_addr(),
            https: server.tls_addr().expect("HTTPS is served"),
            _dir: folder,
            dir,
            ca,
            plane,
            server: Some(server),
        }
    }

    /// curl to `https://HOST:PORT/PATH` with `--resolve` (so SNI is HOST), trusting our CA:
    /// exit code, and what `-w` printed after the body.
    fn curl(&self, host: &str, path: &str, args: &[&str]) -> (i32, String) {
        let port = self.https.port();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.dir.join("ca.pem"))
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .args(args)
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .expect("curl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_millis(200));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_served_by_sni_over_http2_and_http11() {
    let shop = Backend::start("shop").await;
    let api = Backend::start("api").await;
    let site = Site::start(&shop, &api, "").await;

    // ALPN: HTTP/2 when the client offers it, HTTP/1.1 when it asks for it.
    let (code, out) = site.curl("shop.example.com", "/", &["-w", " %{http_version}"]);
    assert_eq!((code, out.as_str()), (0, "shop 2"));
    let (code, out) = site.curl(
        "shop.example.com",
        "/",
        &["--http1.1", "-w", " %{http_version}"],
    );
    assert_eq!((code, out.as_str()), (0, "shop 1.1"));
    // The wildcard certificate covers one label, and routes to its own cluster.
    let (code, out) = site.curl("v1.api.example.com", "/", &[]);
    assert_eq!((code, out.as_str()), (0, "api"));
    // Members learn the request came over HTTPS.
    let (code, out) = site.curl("shop.example.com", "/headers", &[]);
    assert_eq!(code, 0);
    assert!(out.contains("x-forwarded-proto: https\n"), "{out}");
    // A name no certificate claims, and no default: the handshake fails (curl's exit code 35,
    // an SSL connect error), and nothing reaches a member.
    let hits = (shop.hits(), api.hits());
    let (code, _) = site.curl("other.example.com", "/", &[]);
    assert_eq!(code, 35);
    assert_eq!((shop.hits(), api.hits()), hits);

    // openssl s_client sees the certificate of the name it asked for.
    let port = site.https.port().to_string();
    let subject = |name: &str| {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                name,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(subject("shop.example.com").contains("CN = shop.example.com"));
    assert!(subject("x.api.example.com").contains("CN = *.api.example.com"));

    // Plain HTTP is still served, with X-Forwarded-Proto: http.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H", "Host: shop.example.com"])
        .arg(format!("http://{}/headers", site.http))
        .output()
        .expect("curl runs");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("x-forwarded-proto: http\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_and_https_answers_carry_hsts() {
    let shop = Backend::start("shop").await;
    let api = Backend::start("api").await;
    let site = Site::start(
        &shop,
        &api,
        "  httpsRedirect: true\n  hsts: {maxAgeSeconds: 600, includeSubDomains: true}",
    )
    .await;
    let port = site.https.port();
    let head = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let plain = format!("http://{}/cart?id=7", site.http);
    let get = head(&["-H", "Host: shop.example.com", &plain]);
    assert!(get.starts_with("http/1.1 301"), "{get}");
    assert!(
        get.contains(&format!(
            "location: https://shop.example.com:{port}/cart?id=7\r\n"
        )),
        "{get}"
    );
    assert!(
        !get.contains("strict-transport-security"),
        "never over plain HTTP: {get}"
    );
    let post = head(&[
        "-X",
        "POST",
        "-d",
        "x",
        "-H",
        "Host: shop.example.com",
        &plain,
    ]);
    assert!(post.starts_with("http/1.1 308"), "{post}");
    assert_eq!(shop.hits(), 0, "nothing is forwarded over plain HTTP");
    // Over HTTPS: served, with HSTS.
    let (code, out) = site.curl("shop.example.com", "/", &["-D", "-", "-o", "/dev/null"]);
    assert_eq!(code, 0);
    assert!(
        out.to_lowercase()
            .contains("strict-transport-security: max-age=600; includesubdomains"),
        "{out}"
    );
    assert_eq!(shop.hits(), 1);
}

/// A renewed certificate reaches new handshakes within 2 s while keep-alive connections carry
/// at least 1,000 requests: none fails, no connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_failed_request() {
    let shop = Backend::start("shop").await;
    let api = Backend::start("api").await;
    let site = Site::start(&shop, &api, "").await;
    let connector = connector(&site.ca.pem);
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (connector, stop, served, failed) = (
            connector.clone(),
            stop.clone(),
            served.clone(),
            failed.clone(),
        );
        let addr = site.https;
        load.push(tokio::spawn(async move {
            // One connection each, kept alive throughout: a closed one fails the request.
            let mut sender = h1_over_tls(&connector, addr, "shop.example.com").await;
            for _ in 0..20_000 {
                if stop.load(SeqCst) && served.load(SeqCst) >= 1_000 {
                    break;
                }
                let req = http::Request::get("/")
                    .header("host", "shop.example.com")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .expect("request");
                match sender.send_request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        served.fetch_add(1, SeqCst);
                    }
                    _ => {
                        failed.fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }
    wait::until("requests to flow", Duration::from_secs(10), || {
        served.load(SeqCst) > 200
    })
    .await;
    assert_eq!(
        serial(&connector, site.https, "shop.example.com").await,
        "01"
    );
    let (chain, key) = leaf(&site.ca, &["shop.example.com"], 9);
    replace(&site.dir.join("shop.key"), &key);
    replace(&site.dir.join("shop.crt"), &chain);
    let renewed = std::time::Instant::now();
    loop {
        if serial(&connector, site.https, "shop.example.com").await == "09" {
            break;
        }
        assert!(
            renewed.elapsed() < Duration::from_secs(2),
            "the renewed certificate is served within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, SeqCst);
    for task in load {
        task.await.expect("a load task");
    }
    assert!(
        served.load(SeqCst) >= 1_000,
        "{} requests",
        served.load(SeqCst)
    );
    assert_eq!(failed.load(SeqCst), 0);
    assert_eq!(site.plane.snapshot().tls.certificates.served().len(), 2);
}

fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("a name");
    connector.connect(name, tcp).await.expect("a handshake")
}

/// The serial of the leaf a new handshake for `name` is given.
async fn serial(connector: &tokio_rustls::TlsConnector, addr: SocketAddr, name: &str) -> String {
    let stream = handshake(connector, addr, name).await;
    let (_, conn) = stream.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate");
    let info = kube_balancer::tls::cert::describe(leaf).expect("a readable certificate");
    info.serial
}

async fn h1_over_tls(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let stream = handshake(connector, addr, name).await;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("an HTTP/1.1 connection");
    tokio::spawn(conn);
    sender
}
