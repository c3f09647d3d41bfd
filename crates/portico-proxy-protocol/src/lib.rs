//! PROXY protocol v2: the edge writes a header in front of each forwarded connection, the
//! load balancer reads it to learn the client's real address.
//!
//! The header is read exactly (16 fixed bytes, then the length they announce), so no byte of
//! the HTTP stream that follows is consumed. Parsing is `ppp`'s; this module bounds the read
//! in size and time and reduces the result to the client's address.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a v2 header: 12-byte signature, version/command, family, length.
const FIXED_LEN: usize = 16;
/// The v2 signature.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest address-and-TLV part accepted. Addresses take at most 216 bytes (AF_UNIX); the
/// rest leaves room for the TLVs that load balancers send, and no more.
pub const MAX_PAYLOAD_LEN: usize = 2048;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection closed or failed before a whole header arrived.
    #[error("connection ended inside the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// No header arrived in time.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The first bytes are not a PROXY v2 signature (a direct, unproxied connection).
    #[error("connection does not start with a PROXY protocol v2 header")]
    Missing,
    /// The header announces more bytes than allowed.
    #[error("PROXY header announces {0} bytes, over the limit of {MAX_PAYLOAD_LEN}")]
    TooLong(usize),
    /// The header is malformed.
    #[error("malformed PROXY header: {0}")]
    Malformed(#[from] ppp::v2::ParseError),
}

/// Reads the header and returns the client's address: the source address of a `PROXY`
/// command, or `None` for `LOCAL` (health checks) and address families without one.
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

async fn read<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut fixed = [0u8; FIXED_LEN];
    stream.read_exact(&mut fixed[..SIGNATURE.len()]).await?;
    if &fixed[..SIGNATURE.len()] != SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    stream.read_exact(&mut fixed[SIGNATURE.len()..]).await?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_PAYLOAD_LEN {
        return Err(ProxyHeaderError::TooLong(len));
    }
    let mut whole = Vec::with_capacity(FIXED_LEN + len);
    whole.extend_from_slice(&fixed);
    whole.resize(FIXED_LEN + len, 0);
    stream.read_exact(&mut whole[FIXED_LEN..]).await?;
    let header = ppp::v2::Header::try_from(whole.as_slice())?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
    })
}

/// Encodes a v2 `PROXY` header for a TCP connection from `client` to `destination`.
pub fn encode_header(client: SocketAddr, destination: SocketAddr) -> std::io::Result<Vec<u8>> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    // A v4 client reaching a v6 address (or back) is sent with both sides mapped to v6,
    // since the header carries one family.
    let (src, dst) = match (client, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, destination)
        }
        _ => (to_v6(client), to_v6(destination)),
    };
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst)).build()
}

/// A v2 `LOCAL` header: a connection of the proxy's own (a health check), with no client
/// to report.
pub fn local_header() -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    Builder::new(Version::Two | Command::Local, Protocol::Unspecified as u8)
        .build()
        .unwrap_or_default()
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn round_trip_v4_and_rest_of_stream_untouched() {
        let client: SocketAddr = "203.0.113.7:51234".parse().unwrap();
        let dst: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let mut bytes = encode_header(client, dst).unwrap();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut reader = bytes.as_slice();
        assert_eq!(read_header(&mut reader, T).await.unwrap(), Some(client));
        assert_eq!(reader, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn round_trip_v6_and_mixed_families() {
        let client: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let bytes = encode_header(client, dst).unwrap();
        assert_eq!(
            read_header(&mut bytes.as_slice(), T).await.unwrap(),
            Some(client)
        );
    }

    #[tokio::test]
    async fn local_command_has_no_client() {
        let bytes = local_header();
        assert!(!bytes.is_empty());
        assert_eq!(read_header(&mut bytes.as_slice(), T).await.unwrap(), None);
    }

    #[tokio::test]
    async fn plain_http_is_refused() {
        let err = read_header(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], T).await;
        assert!(matches!(err, Err(ProxyHeaderError::Missing)), "{err:?}");
    }

    #[tokio::test]
    async fn truncated_header_is_an_error() {
        let client: SocketAddr = "203.0.113.7:1".parse().unwrap();
        let bytes = encode_header(client, client).unwrap();
        for cut in [5, 15, bytes.len() - 1] {
            let err = read_header(&mut &bytes[..cut], T).await;
            assert!(
                matches!(err, Err(ProxyHeaderError::Io(_))),
                "cut {cut}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_length_is_refused_without_reading_it() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let err = read_header(&mut bytes.as_slice(), T).await;
        assert!(
            matches!(err, Err(ProxyHeaderError::TooLong(65535))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bad_version_and_family_are_malformed() {
        let mut bad_version = SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]);
        bad_version.extend_from_slice(&[0; 12]);
        let mut bad_family = SIGNATURE.to_vec();
        bad_family.extend_from_slice(&[0x21, 0x71, 0x00, 0x0c]);
        bad_family.extend_from_slice(&[0; 12]);
        let mut short_addresses = SIGNATURE.to_vec();
        short_addresses.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        for bytes in [bad_version, bad_family, short_addresses] {
            let err = read_header(&mut bytes.as_slice(), T).await;
            assert!(
                matches!(err, Err(ProxyHeaderError::Malformed(_))),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let err = read_header(&mut a, Duration::from_millis(20)).await;
        assert!(matches!(err, Err(ProxyHeaderError::Timeout(_))), "{err:?}");
    }
}

#[cfg(test)]
mod fuzz {
    /// Any bytes where a PROXY v2 header is expected: an address, `None` or an error.
    #[test]
    fn fuzz_proxy_v2() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        portico_fuzz::check!("proxy_v2", |data: &[u8]| {
            let mut stream = data;
            let _ = rt.block_on(super::read_header(
                &mut stream,
                std::time::Duration::from_secs(1),
            ));
        });
    }
}
