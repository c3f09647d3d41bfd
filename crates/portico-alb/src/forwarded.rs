//! The headers ALB adds to every request it forwards: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Port` and `X-Amzn-Trace-Id`.
//!
//! `X-Forwarded-For` follows ALB's default `append` mode: the client's address is appended
//! to what the client sent. Proto and port are replaced. For the trace header ALB documents:
//! absent → a new `Root`; present with a `Root` → a `Self` field is added in front; present
//! without a `Root` → a `Root` is added in front of the fields kept.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a request came from and arrived.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The client's address (from PROXY v2 when enabled, else the TCP peer).
    pub client: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The listener's port.
    pub port: u16,
}

/// Applies ALB's forwarding headers to `headers`. Returns the trace header value sent on.
pub fn apply(headers: &mut HeaderMap, origin: Origin) -> String {
    let client = origin.client.to_string();
    let mut xff = Vec::new();
    for prior in headers.get_all(X_FORWARDED_FOR) {
        xff.extend_from_slice(prior.as_bytes());
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(client.as_bytes());
    // Each piece was a valid header value, and so is their join; the fallback is for form.
    let xff = HeaderValue::from_bytes(&xff)
        .or_else(|_| HeaderValue::from_str(&client))
        .unwrap_or(HeaderValue::from_static("-"));
    let trace = trace_header(
        headers
            .get_all(X_AMZN_TRACE_ID)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok()),
    );
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(origin.proto));
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(origin.port));
    if let Ok(value) = HeaderValue::from_str(&trace) {
        headers.insert(X_AMZN_TRACE_ID, value);
    }
    trace
}

// Names made once: a `&str` name is parsed and checked again at every use.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");

/// The `X-Amzn-Trace-Id` ALB forwards, given the one received.
pub fn trace_header(received: Option<&str>) -> String {
    let Some(received) = received.map(str::trim).filter(|s| !s.is_empty()) else {
        return format!("Root={}", new_trace_id());
    };
    let fields: Vec<&str> = received
        .split(';')
        .map(str::trim)
        .filter(|f| !f.is_empty() && !f.starts_with("Self="))
        .collect();
    let has_root = fields.iter().any(|f| f.starts_with("Root="));
    let label = if has_root { "Self" } else { "Root" };
    let mut out = format!("{label}={}", new_trace_id());
    for f in fields {
        out.push(';');
        out.push_str(f);
    }
    out
}

/// `1-<8 hex digits of epoch seconds>-<24 random hex digits>`, X-Ray's id format.
pub fn new_trace_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let random = fastrand::u128(..) & ((1u128 << 96) - 1);
    format!("1-{:08x}-{random:024x}", secs as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_trace_id(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == 3
            && parts[0] == "1"
            && parts[1].len() == 8
            && parts[2].len() == 24
            && parts[1..]
                .iter()
                .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
    }

    #[test]
    fn new_root_when_absent() {
        let t = trace_header(None);
        assert!(is_trace_id(t.strip_prefix("Root=").unwrap()), "{t}");
    }

    #[test]
    fn self_added_when_root_present_and_custom_fields_kept() {
        let t = trace_header(Some(
            "Root=1-67891233-abcdef012345678912345678;CalledFrom=app",
        ));
        let (first, rest) = t.split_once(';').unwrap();
        assert!(is_trace_id(first.strip_prefix("Self=").unwrap()), "{t}");
        assert_eq!(
            rest,
            "Root=1-67891233-abcdef012345678912345678;CalledFrom=app"
        );
    }

    #[test]
    fn an_old_self_is_replaced() {
        let t = trace_header(Some(
            "Self=1-00000000-000000000000000000000000;Root=1-67891233-abcdef012345678912345678",
        ));
        assert_eq!(t.matches("Self=").count(), 1);
        assert!(!t.contains("Self=1-00000000"));
    }

    #[test]
    fn root_added_when_missing() {
        let t = trace_header(Some("CalledFrom=app"));
        assert!(
            t.starts_with("Root=1-") && t.ends_with(";CalledFrom=app"),
            "{t}"
        );
    }

    #[test]
    fn xff_appends_and_proto_port_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("x"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("1"));
        let origin = Origin {
            client: "203.0.113.9".parse().unwrap(),
            proto: "http",
            port: 8080,
        };
        let trace = apply(&mut h, origin);
        let get = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("x-forwarded-for"), ["10.0.0.1, 10.0.0.2, 203.0.113.9"]);
        assert_eq!(get("x-forwarded-proto"), ["http"]);
        assert_eq!(get("x-forwarded-port"), ["8080"]);
        assert_eq!(get("x-amzn-trace-id"), [trace.as_str()]);
        assert_eq!(get("host"), ["x"]);
    }
}
