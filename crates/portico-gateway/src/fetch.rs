//! One bounded HTTP GET, for JWKS URLs: `http://` or `https://` (certificates verified
//! against the Mozilla roots of `webpki-roots`), a deadline on the whole exchange, status
//! 200 only, and a cap on the body.

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL cannot be fetched.
    #[error("bad URL: {0}")]
    Url(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
    /// The server answered with another status than 200.
    #[error("status {0}")]
    Status(u16),
    /// The body is larger than allowed.
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// The deadline passed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// GETs `url` and returns its body, at most `limit` bytes.
pub async fn get(url: &str, limit: usize) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, exchange(url, limit))
        .await
        .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
}

async fn exchange(url: &str, limit: usize) -> Result<Bytes, FetchError> {
    let uri: Uri = url.parse().map_err(|e| FetchError::Url(format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::Url("scheme must be http or https".into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| FetchError::Url("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| FetchError::Transport(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let request = Request::get(uri.path_and_query().map_or("/", |pq| pq.as_str()))
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "portico")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Url(e.to_string()))?;
    if tls {
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| FetchError::Url(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(verified_client())
            .connect(name, stream)
            .await
            .map_err(|e| FetchError::Transport(format!("tls: {e}")))?;
        send(stream, request, limit).await
    } else {
        send(stream, request, limit).await
    }
}

async fn send<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
    limit: usize,
) -> Result<Bytes, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let transport = |e: hyper::Error| FetchError::Transport(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(transport)?;
    let conn = tokio::spawn(conn);
    let result = async {
        let response = sender.send_request(request).await.map_err(transport)?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    FetchError::TooLarge(limit)
                } else {
                    FetchError::Transport(e.to_string())
                }
            })
    }
    .await;
    conn.abort();
    result
}

/// TLS 1.2 and 1.3 with the Mozilla root certificates.
fn verified_client() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(roots.clone())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth()
                });
            Arc::new(config)
        })
        .clone()
}
