//! A certificate chain and its private key, read from PEM and checked before anything serves
//! them: the key must be the leaf's, and the leaf must be valid now. Also what a person is shown
//! of a certificate (its names, issuer, serial and validity). Pure: the caller hands in the bytes
//! and the time.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::provider;

/// Why a certificate was refused. The messages never quote key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in the PEM (expected a -----BEGIN CERTIFICATE----- block)")]
    NoCertificate,
    #[error("the certificate PEM is damaged: {0}")]
    BadCertificatePem(&'static str),
    #[error(
        "no private key in the PEM (expected a PKCS#1 RSA, PKCS#8 or SEC1 EC PRIVATE KEY block)"
    )]
    NoKey,
    #[error("the private key PEM is damaged: {0}")]
    BadKeyPem(&'static str),
    #[error("the private key cannot be used: {0}")]
    UnusableKey(String),
    #[error(
        "the private key does not belong to the certificate (the first certificate of the chain must be the server's own)"
    )]
    KeyMismatch,
    #[error("the certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("the certificate expired on {not_after}")]
    Expired { not_after: String },
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid { not_before: String },
}

/// What a person is shown of a certificate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// The DNS names and IP addresses of its subjectAltName, in its order.
    pub hosts: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// Lower-case hex, as `openssl x509 -serial` prints it (without the colons).
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// Whole days from `now` (Unix seconds) until it expires; negative once it has.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }

    /// Seconds from `now` until it expires; negative once it has.
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.not_after - now
    }

    /// Whether the certificate names `host` (exactly, or through one of its wildcard names,
    /// which cover one label: `*.example.com` covers `a.example.com`, not `example.com`).
    /// `host` may itself be a wildcard: then the certificate must name the same wildcard.
    pub fn covers(&self, host: &str) -> bool {
        self.hosts.iter().any(|name| {
            name.eq_ignore_ascii_case(host)
                || (name.starts_with("*.")
                    && !host.starts_with("*.")
                    && host
                        .split_once('.')
                        .is_some_and(|(_, parent)| name[2..].eq_ignore_ascii_case(parent)))
        })
    }
}

/// A checked chain and key, ready to serve, and what is shown of it.
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl std::fmt::Debug for Certificate {
    // Never the key; the chain is public but long.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Reads a chain (leaf first, then intermediates, as cert-manager writes `tls.crt`) and its key
/// (PKCS#1, PKCS#8 or SEC1), and checks that the key is the leaf's and that the leaf is valid at
/// `now` (Unix seconds).
pub fn load(chain_pem: &[u8], key_pem: &[u8], now: i64) -> Result<Certificate, CertError> {
    let chain = read_chain(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::NoKey,
        other => CertError::BadKeyPem(pem_problem(&other)),
    })?;
    let info = describe(&chain[0])?;
    if now < info.not_before {
        return Err(CertError::NotYetValid {
            not_before: timestamp(info.not_before),
        });
    }
    if now > info.not_after {
        return Err(CertError::Expired {
            not_after: timestamp(info.not_after),
        });
    }
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::UnusableKey(e.to_string()))?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::KeyMismatch);
        }
        // ring knows every key type it loads; anything else is a certificate it cannot parse.
        Err(e) => return Err(CertError::BadCertificate(e.to_string())),
    }
    Ok(Certificate {
        key: Arc::new(key),
        info,
    })
}

/// Every certificate of a PEM text, in order; at least one.
pub fn read_chain(chain_pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificatePem(pem_problem(&e)))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(chain)
}

/// What is shown of one DER certificate.
pub fn describe(der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => hosts.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_text(bytes) {
                        hosts.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(CertInfo {
        hosts,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// RFC 3339, for messages: `2026-01-31T00:00:00Z`.
pub fn timestamp(secs: i64) -> String {
    match k8s_openapi::jiff::Timestamp::from_second(secs) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{secs} seconds after 1970"),
    }
}

/// A PEM parser's complaint, in words that never quote the input (which may be a key).
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a block has no -----END line",
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a block is not valid base64",
        pem::Error::NoItemsFound => "no block of the expected kind",
        pem::Error::SectionTooLarge => "a block is too large",
        _ => "unreadable PEM",
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Certificates made with rcgen for the module's tests: a CA, leaves it signs (valid,
    //! expired, not yet valid, wildcard), in the key encodings cert-manager writes.

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SerialNumber,
    };

    pub const NOW: i64 = 1_800_000_000; // 2027-01-15
    pub const DAY: i64 = 86_400;

    pub struct Ca {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    pub fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = time(NOW - 3650 * DAY);
        params.not_after = time(NOW + 3650 * DAY);
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub struct Leaf {
        /// The leaf, then the CA: a chain as cert-manager writes it.
        pub chain: String,
        /// PKCS#8.
        pub key: String,
    }

    pub fn time(secs: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(secs).expect("time")
    }

    /// A leaf for `names` (a name with `://` is a URI), valid from `from` to `until` (Unix
    /// seconds), with serial `serial`.
    pub fn leaf_with(
        ca: &Ca,
        names: &[&str],
        from: i64,
        until: i64,
        serial: u64,
        key_pair: KeyPair,
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        for san in &mut params.subject_alt_names {
            if let rcgen::SanType::DnsName(name) = san
                && name.as_str().contains("://")
            {
                *san = rcgen::SanType::URI(name.clone());
            }
        }
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.not_before = time(from);
        params.not_after = time(until);
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        let cert = params.signed_by(&key_pair, &ca.issuer).expect("signed");
        Leaf {
            chain: format!("{}{}", cert.pem(), ca.pem),
            key: key_pair.serialize_pem(),
        }
    }

    /// A leaf valid around the real time, for handshakes with real clients (which check the
    /// validity against the clock).
    pub fn leaf_now(ca: &Ca, names: &[&str], serial: u64) -> Leaf {
        let now = crate::tls::unix_now();
        leaf_with(
            ca,
            names,
            now - DAY,
            now + 90 * DAY,
            serial,
            KeyPair::generate().expect("key"),
        )
    }

    pub fn leaf(ca: &Ca, names: &[&str], serial: u64) -> Leaf {
        leaf_with(
            ca,
            names,
            NOW - DAY,
            NOW + 90 * DAY,
            serial,
            KeyPair::generate().expect("key"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_chain_and_its_key_load_with_what_is_shown() {
        let ca = ca("Test CA");
        let leaf = leaf(&ca, &["shop.example.com", "*.shop.example.com"], 0x1234);
        let cert = load(leaf.chain.as_bytes(), leaf.key.as_bytes(), NOW).expect("loads");
        assert_eq!(cert.key.cert.len(), 2, "leaf and CA both served");
        let info = &cert.info;
        assert_eq!(info.hosts, ["shop.example.com", "*.shop.example.com"]);
        assert_eq!(info.issuer, "CN=Test CA");
        assert_eq!(info.subject, "CN=shop.example.com");
        assert_eq!(info.serial, "1234");
        assert_eq!(info.not_after, NOW + 90 * DAY);
        assert_eq!(info.days_left(NOW), 90);
        assert_eq!(info.days_left(NOW + 90 * DAY + 1), -1);
        assert!(info.covers("shop.example.com"));
        assert!(info.covers("a.shop.example.com"));
        assert!(info.covers("*.shop.example.com"));
        assert!(!info.covers("a.b.shop.example.com"));
        assert!(!info.covers("example.com"));
    }

    // Keys made with openssl for these tests only (genrsa -traditional, ecparam -genkey, and
    // pkcs8 -topk8 of each): the same key in the encodings cert-manager writes.
    const RSA_PKCS1: &str = include_str!("testdata/rsa-pkcs1.pem");
    const RSA_PKCS8: &str = include_str!("testdata/rsa-pkcs8.pem");
    const EC_SEC1: &str = include_str!("testdata/ec-sec1.pem");
    const EC_PKCS8: &str = include_str!("testdata/ec-pkcs8.pem");

    #[test]
    fn pkcs1_pkcs8_and_sec1_keys_all_load() {
        use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
        let ca = ca("Test CA");
        let ec = KeyPair::from_pem_and_sign_algo(EC_PKCS8, &PKCS_ECDSA_P256_SHA256).expect("ec");
        let leaf = leaf_with(&ca, &["ec.example.com"], NOW - DAY, NOW + DAY, 1, ec);
        load(leaf.chain.as_bytes(), EC_SEC1.as_bytes(), NOW).expect("SEC1 loads");
        load(leaf.chain.as_bytes(), EC_PKCS8.as_bytes(), NOW).expect("PKCS#8 EC loads");
        let rsa = KeyPair::from_pem_and_sign_algo(RSA_PKCS8, &PKCS_RSA_SHA256).expect("rsa");
        let leaf = leaf_with(&ca, &["rsa.example.com"], NOW - DAY, NOW + DAY, 2, rsa);
        load(leaf.chain.as_bytes(), RSA_PKCS1.as_bytes(), NOW).expect("PKCS#1 loads");
        load(leaf.chain.as_bytes(), RSA_PKCS8.as_bytes(), NOW).expect("PKCS#8 RSA loads");
        // And a key of one kind never passes for the other's certificate.
        assert_eq!(
            load(leaf.chain.as_bytes(), EC_SEC1.as_bytes(), NOW).expect_err("refused"),
            CertError::KeyMismatch
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let ca = ca("Test CA");
        let one = leaf(&ca, &["a.example.com"], 1);
        let other = leaf(&ca, &["a.example.com"], 2);
        let e = load(one.chain.as_bytes(), other.key.as_bytes(), NOW).expect_err("refused");
        assert_eq!(e, CertError::KeyMismatch);
        // The CA first and the leaf second: the key is not the first certificate's.
        let reversed = format!("{}{}", ca.pem, one.chain);
        let e = load(reversed.as_bytes(), one.key.as_bytes(), NOW).expect_err("refused");
        assert_eq!(e, CertError::KeyMismatch);
    }

    #[test]
    fn expired_and_not_yet_valid_say_which_and_when() {
        let ca = ca("Test CA");
        let old = leaf_with(
            &ca,
            &["old.example.com"],
            NOW - 100 * DAY,
            NOW - 10 * DAY,
            1,
            rcgen::KeyPair::generate().expect("key"),
        );
        let e = load(old.chain.as_bytes(), old.key.as_bytes(), NOW).expect_err("expired");
        assert_eq!(
            e.to_string(),
            format!("the certificate expired on {}", timestamp(NOW - 10 * DAY))
        );
        assert_eq!(timestamp(NOW - 10 * DAY), "2027-01-05T08:00:00Z");
        let early = leaf_with(
            &ca,
            &["new.example.com"],
            NOW + DAY,
            NOW + 10 * DAY,
            2,
            rcgen::KeyPair::generate().expect("key"),
        );
        let e = load(early.chain.as_bytes(), early.key.as_bytes(), NOW).expect_err("early");
        assert_eq!(
            e,
            CertError::NotYetValid {
                not_before: "2027-01-16T08:00:00Z".into()
            }
        );
    }

    #[test]
    fn broken_pem_is_named_without_quoting_it() {
        let ca = ca("Test CA");
        let leaf = leaf(&ca, &["a.example.com"], 1);
        assert_eq!(
            load(b"not a certificate", leaf.key.as_bytes(), NOW).expect_err("refused"),
            CertError::NoCertificate
        );
        assert_eq!(
            load(leaf.chain.as_bytes(), b"", NOW).expect_err("refused"),
            CertError::NoKey
        );
        // A key block cut short: the error must not carry any of its bytes.
        let cut = &leaf.key[..leaf.key.len() - 40];
        let e = load(leaf.chain.as_bytes(), cut.as_bytes(), NOW).expect_err("refused");
        assert!(matches!(e, CertError::BadKeyPem(_)), "{e:?}");
        let body_line = leaf.key.lines().nth(1).expect("a base64 line");
        assert!(!e.to_string().contains(body_line), "{e}");
        let mangled = leaf.chain.replacen("MII", "M!I", 1);
        let e = load(mangled.as_bytes(), leaf.key.as_bytes(), NOW).expect_err("refused");
        assert!(
            matches!(
                e,
                CertError::BadCertificatePem(_) | CertError::BadCertificate(_)
            ),
            "{e:?}"
        );
    }
}
