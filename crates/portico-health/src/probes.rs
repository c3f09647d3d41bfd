//! The probes every tier uses: a TCP connect and an HTTP `GET`, over TLS when asked.
//!
//! TLS checks do not verify the endpoint's certificate, as neither ALB's nor Global
//! Accelerator's HTTPS health checks do: a check asks "does it answer", not "is it who it
//! says".

use crate::{Failure, Probe};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;

/// The `User-Agent` of ALB's health checks.
pub const USER_AGENT: &str = "ELB-HealthChecker/2.0";

/// Healthy while a TCP connection opens.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    /// The address to connect to.
    pub address: SocketAddr,
}

impl Probe for TcpProbe {
    async fn check(&self) -> Result<(), Failure> {
        TcpStream::connect(self.address)
            .await
            .map(drop)
            .map_err(|e| Failure::Failed(format!("connect: {e}")))
    }

    fn describe(&self) -> String {
        format!("tcp://{}", self.address)
    }
}

/// Healthy while `GET path` answers with a status `accepts` takes. One connection per
/// check, closed afterwards, as ALB does.
#[derive(Debug, Clone)]
pub struct HttpProbe<F> {
    /// The address to connect to.
    pub address: SocketAddr,
    /// The request path.
    pub path: String,
    /// Which statuses count as healthy.
    pub accepts: F,
    /// Speak TLS (HTTPS checks).
    pub tls: bool,
    /// Bytes sent first on each connection, before TLS or HTTP: a PROXY protocol `LOCAL`
    /// header toward endpoints that require one. Usually empty.
    pub preface: Vec<u8>,
}

impl<F: Fn(u16) -> bool + Send + Sync + 'static> HttpProbe<F> {
    async fn get<S>(&self, stream: S) -> Result<u16, Failure>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Failed(format!("handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let request = Request::get(self.path.as_str())
            .header(header::HOST, self.address.to_string())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::Failed(format!("request: {e}")))?;
        let response = sender.send_request(request).await;
        conn.abort();
        Ok(response
            .map_err(|e| Failure::Failed(format!("request: {e}")))?
            .status()
            .as_u16())
    }
}

impl<F: Fn(u16) -> bool + Send + Sync + 'static> Probe for HttpProbe<F> {
    async fn check(&self) -> Result<(), Failure> {
        let mut stream = TcpStream::connect(self.address)
            .await
            .map_err(|e| Failure::Failed(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        if !self.preface.is_empty() {
            tokio::io::AsyncWriteExt::write_all(&mut stream, &self.preface)
                .await
                .map_err(|e| Failure::Failed(format!("preface: {e}")))?;
        }
        let status = if self.tls {
            let name = rustls::pki_types::ServerName::IpAddress(self.address.ip().into());
            let stream = tokio_rustls::TlsConnector::from(unverified_client())
                .connect(name, stream)
                .await
                .map_err(|e| Failure::Failed(format!("tls: {e}")))?;
            self.get(stream).await?
        } else {
            self.get(stream).await?
        };
        if (self.accepts)(status) {
            Ok(())
        } else {
            Err(Failure::Status(status))
        }
    }

    fn describe(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.address, self.path)
    }
}

/// The TLS client of HTTPS checks: TLS 1.2 and 1.3, any certificate accepted.
fn unverified_client() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(AnyCertificate(provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth()
                });
            match config {
                Ok(config) => Arc::new(config),
                // ring supports the default versions; this arm is never taken.
                Err(_) => Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                ),
            }
        })
        .clone()
}

/// Accepts any certificate, but still checks the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
