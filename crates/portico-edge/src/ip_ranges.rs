//! The static addresses published in the shape of AWS's `ip-ranges.json`, and the webhook
//! that receives them when they change.
//!
//! `syncToken` is the Unix time of the last change of the set and `createDate` the same
//! moment as `YYYY-MM-DD-hh-mm-ss` (UTC), as AWS publishes them; each address is a `/32` or
//! `/128` prefix with region and network border group `GLOBAL` and service
//! `GLOBALACCELERATOR`.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

/// The document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpRanges {
    /// Unix time of the last change, as a string.
    pub sync_token: String,
    /// The same moment as `YYYY-MM-DD-hh-mm-ss`.
    pub create_date: String,
    /// IPv4 addresses.
    #[serde(rename = "prefixes")]
    pub prefixes: Vec<Prefix>,
    /// IPv6 addresses.
    #[serde(rename = "ipv6_prefixes")]
    pub ipv6_prefixes: Vec<Ipv6Prefix>,
}

/// One IPv4 prefix.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Prefix {
    /// `a.b.c.d/32`.
    pub ip_prefix: String,
    /// `GLOBAL`.
    pub region: String,
    /// `GLOBALACCELERATOR`.
    pub service: String,
    /// `GLOBAL`.
    pub network_border_group: String,
}

/// One IPv6 prefix.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ipv6Prefix {
    /// `…/128`.
    pub ipv6_prefix: String,
    /// `GLOBAL`.
    pub region: String,
    /// `GLOBALACCELERATOR`.
    pub service: String,
    /// `GLOBAL`.
    pub network_border_group: String,
}

impl IpRanges {
    /// The document for `ips`, last changed at `changed`.
    pub fn new(ips: &[IpAddr], changed: SystemTime) -> Self {
        const GLOBAL: &str = "GLOBAL";
        const SERVICE: &str = "GLOBALACCELERATOR";
        let since = changed.duration_since(UNIX_EPOCH).unwrap_or_default();
        let rfc3339 = humantime::format_rfc3339_seconds(UNIX_EPOCH + since).to_string();
        // "2026-11-25T09:44:52Z" → "2026-11-25-09-44-52"
        let create_date = rfc3339.trim_end_matches('Z').replace(['T', ':'], "-");
        let mut doc = Self {
            sync_token: since.as_secs().to_string(),
            create_date,
            prefixes: Vec::new(),
            ipv6_prefixes: Vec::new(),
        };
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => doc.prefixes.push(Prefix {
                    ip_prefix: format!("{v4}/32"),
                    region: GLOBAL.into(),
                    service: SERVICE.into(),
                    network_border_group: GLOBAL.into(),
                }),
                IpAddr::V6(v6) => doc.ipv6_prefixes.push(Ipv6Prefix {
                    ipv6_prefix: format!("{v6}/128"),
                    region: GLOBAL.into(),
                    service: SERVICE.into(),
                    network_border_group: GLOBAL.into(),
                }),
            }
        }
        doc
    }

    /// The document as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not `http://host[:port]/path`.
    #[error("webhook URL {0:?} is not http://host[:port]/path")]
    Url(String),
    /// Connecting or talking to it failed.
    #[error("webhook {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// It answered with a status other than 2xx.
    #[error("webhook {url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// Its status.
        status: u16,
    },
}

/// POSTs `document` to `url`, trying up to three times a second apart.
pub async fn notify(url: &str, document: &IpRanges) -> Result<(), WebhookError> {
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match post(url, document.to_json()).await {
            Ok(()) => return Ok(()),
            Err(e @ WebhookError::Url(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| WebhookError::Url(url.to_owned())))
}

async fn post(url: &str, body: String) -> Result<(), WebhookError> {
    let uri: http::Uri = url.parse().map_err(|_| WebhookError::Url(url.to_owned()))?;
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(WebhookError::Url(url.to_owned()));
    };
    let transport = |reason: String| WebhookError::Transport {
        url: url.to_owned(),
        reason,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((host, port)))
        .await
        .map_err(|_| transport("connect timed out".into()))?
        .map_err(|e| transport(format!("connect: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(format!("handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "portico-ip-ranges")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport(format!("request: {e}")))?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| transport("no answer within 10 s".into()))?
        .map_err(|e| transport(format!("request: {e}")));
    conn.abort();
    let status = response?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(WebhookError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_aws_shape() {
        let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let doc = IpRanges::new(&ips, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let json: serde_json::Value = serde_json::from_str(&doc.to_json()).unwrap();
        assert_eq!(json["syncToken"], "1700000000");
        assert_eq!(json["createDate"], "2023-11-14-22-13-20");
        assert_eq!(json["prefixes"][0]["ip_prefix"], "192.0.2.1/32");
        assert_eq!(json["prefixes"][0]["service"], "GLOBALACCELERATOR");
        assert_eq!(json["prefixes"][0]["region"], "GLOBAL");
        assert_eq!(json["prefixes"][0]["network_border_group"], "GLOBAL");
        assert_eq!(json["ipv6_prefixes"][0]["ipv6_prefix"], "2001:db8::1/128");
    }

    #[tokio::test]
    async fn bad_webhook_urls_are_refused_without_retries() {
        let doc = IpRanges::new(&[], SystemTime::now());
        for url in ["https://example.com/x", "not a url", "http:///path"] {
            assert!(
                matches!(notify(url, &doc).await, Err(WebhookError::Url(_))),
                "{url}"
            );
        }
    }
}
