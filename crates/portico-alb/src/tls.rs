//! HTTPS listeners: certificates loaded from PEM files, one chosen per handshake by the
//! client's SNI host name as ALB chooses, and what each handshake negotiated (for access logs
//! and the `https`/`h2` protocol decision).
//!
//! [`Certificates::accept`] reads the ClientHello first, chooses the certificate from it
//! once, and completes the handshake with that certificate's server configuration (built
//! at load), so the certificate logged is always the one served.
//!
//! Selection, as ALB documents it for a listener's certificate list: the certificates valid
//! for the SNI name (exact or wildcard SAN, checked by webpki) that the client can use; among
//! several, ECDSA or Ed25519 keys before RSA, then the order of the list. No SNI, or no
//! certificate for it, gets the default certificate (the first).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::Acceptor;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ServerConfig, SignatureAlgorithm, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

/// Largest PEM file read; real chains are a few kilobytes.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// ALPN protocol ids.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Where one certificate comes from.
#[derive(Debug, Clone)]
pub struct CertificateSource {
    /// The ARN access logs name it by (`chosen_cert_arn`).
    pub arn: String,
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub private_key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than any PEM file should be.
    #[error("{path}: {size} bytes is over the {MAX_PEM_BYTES}-byte limit for a PEM file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not the PEM it should be.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key cannot be used, or is not the certificate's.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No certificate at all.
    #[error("an HTTPS listener needs at least one certificate")]
    Empty,
}

/// One loaded certificate.
#[derive(Debug)]
struct Entry {
    arn: Arc<str>,
    key: Arc<CertifiedKey>,
    /// ECDSA and Ed25519 keys are preferred over RSA.
    preferred: bool,
    /// The server configuration that presents this certificate.
    config: Arc<ServerConfig>,
}

/// A listener's certificates; the first is the default.
#[derive(Debug)]
pub struct Certificates {
    entries: Vec<Entry>,
}

impl Certificates {
    /// Loads every source, checking that each key is its certificate's; ALPN offers `h2`
    /// when `http2` is on.
    pub fn load(sources: &[CertificateSource], http2: bool) -> Result<Self, TlsError> {
        let provider = provider();
        let entries = sources
            .iter()
            .map(|source| {
                let chain = read_chain(&source.certificate)?;
                let key = read_key(&source.private_key)?;
                let key_error = |reason: String| TlsError::Key {
                    path: source.private_key.clone(),
                    reason,
                };
                let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
                    key_error(format!(
                        "not usable with {}: {e}",
                        source.certificate.display()
                    ))
                })?;
                let preferred = matches!(
                    key.key.algorithm(),
                    SignatureAlgorithm::ECDSA | SignatureAlgorithm::ED25519
                );
                let key = Arc::new(key);
                Ok(Entry {
                    arn: source.arn.as_str().into(),
                    config: server_config(&provider, &key, http2),
                    key,
                    preferred,
                })
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        if entries.is_empty() {
            return Err(TlsError::Empty);
        }
        Ok(Self { entries })
    }

    /// Completes a TLS handshake on `io`: the ClientHello picks the certificate, and the
    /// result says what was settled.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<(TlsStream<IO>, Negotiated)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        let hello = start.client_hello();
        let chosen = &self.entries[self.select(hello.server_name(), hello.signature_schemes())];
        let stream = start.into_stream(chosen.config.clone()).await?;
        let conn = stream.get_ref().1;
        let negotiated = Negotiated {
            protocol: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "-",
            },
            cipher: conn
                .negotiated_cipher_suite()
                .map_or("-", |s| openssl_name(s.suite())),
            server_name: conn.server_name().map(Into::into),
            certificate_arn: chosen.arn.clone(),
            h2: conn.alpn_protocol() == Some(ALPN_H2),
        };
        Ok((stream, negotiated))
    }

    /// The index of the certificate for `server_name`, among those whose key can sign with
    /// one of the client's `schemes`.
    fn select(&self, server_name: Option<&str>, schemes: &[SignatureScheme]) -> usize {
        let Some(name) = server_name.and_then(|n| ServerName::try_from(n).ok()) else {
            return 0;
        };
        let usable = |entry: &Entry| {
            let valid = entry.key.end_entity_cert().is_ok_and(|der| {
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            });
            valid && entry.key.key.choose_scheme(schemes).is_some()
        };
        let mut best: Option<usize> = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if best.is_some_and(|b| self.entries[b].preferred || !entry.preferred) {
                continue;
            }
            if usable(entry) {
                best = Some(i);
            }
        }
        best.unwrap_or(0)
    }
}

/// What one TLS handshake settled.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// `TLSv1.2` or `TLSv1.3`.
    pub protocol: &'static str,
    /// The cipher suite by its OpenSSL name, as ALB logs it.
    pub cipher: &'static str,
    /// The SNI host name the client sent.
    pub server_name: Option<Arc<str>>,
    /// The ARN of the certificate presented.
    pub certificate_arn: Arc<str>,
    /// ALPN chose HTTP/2.
    pub h2: bool,
}

/// The server configuration that presents `key`: TLS 1.2 and 1.3 with rustls's default
/// suites (the ciphers of ALB's `ELBSecurityPolicy-TLS13-1-2-2021-06`), and ALPN offering
/// `h2` when HTTP/2 is on.
fn server_config(
    provider: &CryptoProvider,
    key: &Arc<CertifiedKey>,
    http2: bool,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    // The ring provider supports both versions, so this cannot fail; if it ever did, the
    // default versions are the same two.
    let builder = match builder {
        Ok(builder) => builder,
        Err(_) => ServerConfig::builder(),
    };
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())));
    config.alpn_protocols = if http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
    } else {
        vec![ALPN_HTTP1.to_vec()]
    };
    Arc::new(config)
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    std::fs::read(path).map_err(read)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("malformed PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no CERTIFICATE block in it".into(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block (PKCS#8, RSA or EC) in it".into()
            }
            e => format!("malformed PEM: {e}"),
        },
    })
}

/// The OpenSSL name of a cipher suite, which ALB's access logs use.
fn openssl_name(suite: rustls::CipherSuite) -> &'static str {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        S::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        S::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "-",
    }
}
