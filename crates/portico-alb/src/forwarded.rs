//! The headers ALB adds to every request it forwards: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Port` and `X-Amzn-Trace-Id`.
//!
//! `X-Forwarded-For` follows the load balancer's mode (ALB's attributes): `append` (the
//! default) appends the client's address, with its port when `xff_client_port` is on, to
//! what the client sent; `preserve` sends it as it came; `remove` removes it. Proto and port
//! are replaced. `Host` gets the listener's port appended when the client sent none and the
//! listener is not on its scheme's default port, unless `preserve_host_header` is on. For the
//! trace header ALB documents: absent → a new `Root`; present with a `Root` → a `Self` field
//! is added in front; present without a `Root` → a `Root` is added in front of the fields
//! kept; and when the request's headers are over 7 KB, only a new `Root`.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a request came from and arrived.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The client's address and port (from PROXY v2 when enabled, else the TCP peer).
    pub client: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The listener's port, as the `X-Forwarded-Port` value (made once per listener).
    pub port: &'a HeaderValue,
    /// The listener's port.
    pub port_number: u16,
    /// Bytes of the request's header block as the client sent it (what the load balancer
    /// measured of it on arrival): over [`TRACE_REWRITE_OVER_BYTES`], the trace header is a
    /// new `Root`.
    pub header_bytes: usize,
    /// The load balancer's attributes for these headers.
    pub forwarding: Forwarding,
}

/// How a load balancer treats the headers it forwards: ALB's attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// `routing.http.xff_header_processing.mode`.
    pub xff: portico_config::XffHeaderProcessingMode,
    /// `routing.http.xff_client_port.enabled`.
    pub xff_client_port: bool,
    /// `routing.http.preserve_host_header.enabled`.
    pub preserve_host_header: bool,
}

/// Over this many bytes of request headers, ALB rewrites `X-Amzn-Trace-Id` to a new `Root`.
pub const TRACE_REWRITE_OVER_BYTES: usize = 7 * 1024;

/// Applies ALB's forwarding headers to `headers`; the trace header sent on is then
/// `headers[X_AMZN_TRACE_ID]`.
///
/// Built without `format!` or copies (the address is written digit by digit, and each
/// value takes over a buffer of exactly its size): this runs for every request forwarded.
pub fn apply(headers: &mut HeaderMap, origin: Origin<'_>) {
    use portico_config::XffHeaderProcessingMode as Mode;
    let forwarding = origin.forwarding;
    let oversized = origin.header_bytes > TRACE_REWRITE_OVER_BYTES;
    let xff = match forwarding.xff {
        Mode::Append => Some(appended_xff(headers, origin)),
        Mode::Preserve | Mode::Remove => None,
    };
    let received = headers
        .get_all(X_AMZN_TRACE_ID)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok());
    let trace = trace_header(received.filter(|_| !oversized));
    // Kept fields came from a valid header value, and the rest is ours.
    let trace = HeaderValue::from_maybe_shared(Bytes::from(trace.into_bytes()))
        .unwrap_or(HeaderValue::from_static("-"));
    headers.reserve(4);
    match xff {
        Some(xff) => {
            headers.insert(X_FORWARDED_FOR, xff);
        }
        None if forwarding.xff == Mode::Remove => {
            headers.remove(X_FORWARDED_FOR);
        }
        None => {}
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(origin.proto));
    headers.insert(X_FORWARDED_PORT, origin.port.clone());
    headers.insert(X_AMZN_TRACE_ID, trace);
    if !forwarding.preserve_host_header {
        add_listener_port(headers, origin);
    }
}

/// `X-Forwarded-For` with the client's address (and port) appended to what was sent.
fn appended_xff(headers: &HeaderMap, origin: Origin<'_>) -> HeaderValue {
    let mut ip = [0u8; MAX_IP_TEXT];
    let ip = write_ip(&mut ip, origin.client.ip());
    let prior: usize = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| v.len() + 2)
        .sum();
    let mut xff = Vec::with_capacity(prior + ip.len() + 8);
    for prior in headers.get_all(X_FORWARDED_FOR) {
        xff.extend_from_slice(prior.as_bytes());
        xff.extend_from_slice(b", ");
    }
    if origin.forwarding.xff_client_port {
        // `203.0.113.9:51234`, `[2001:db8::9]:51234`.
        let v6 = origin.client.is_ipv6();
        if v6 {
            xff.push(b'[');
        }
        xff.extend_from_slice(ip);
        if v6 {
            xff.push(b']');
        }
        xff.push(b':');
        xff.extend_from_slice(origin.client.port().to_string().as_bytes());
    } else {
        xff.extend_from_slice(ip);
    }
    // Each piece was a valid header value, and so is their join; the fallback is for form.
    HeaderValue::from_maybe_shared(Bytes::from(xff)).unwrap_or(HeaderValue::from_static("-"))
}

/// ALB's default for `Host`: a listener on a port other than its scheme's default appends
/// that port to a `Host` that has none.
fn add_listener_port(headers: &mut HeaderMap, origin: Origin<'_>) {
    let default = if origin.proto == "https" { 443 } else { 80 };
    if origin.port_number == default {
        return;
    }
    let Some(host) = headers.get(http::header::HOST) else {
        return;
    };
    let bytes = host.as_bytes();
    // A port is a `:` after the host (after the `]` of an IPv6 literal).
    let after = bytes
        .iter()
        .rposition(|b| *b == b']')
        .map_or(bytes, |i| &bytes[i..]);
    if after.contains(&b':') {
        return;
    }
    let mut value = Vec::with_capacity(bytes.len() + 6);
    value.extend_from_slice(bytes);
    value.push(b':');
    value.extend_from_slice(origin.port.as_bytes());
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(http::header::HOST, value);
    }
}

/// Longest address text: an IPv6 address with an embedded IPv4 one.
const MAX_IP_TEXT: usize = 45;

/// Writes an address as text into `buf` and returns it: IPv4 digit by digit, IPv6 through
/// its `Display`.
fn write_ip(buf: &mut [u8; MAX_IP_TEXT], ip: IpAddr) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = &mut buf[..];
            let _ = write!(cursor, "{v6}");
            len = MAX_IP_TEXT - cursor.len();
        }
    }
    &buf[..len]
}

// Names made once: a `&str` name is parsed and checked again at every use.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) const X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");

/// The `X-Amzn-Trace-Id` ALB forwards, given the one received.
pub fn trace_header(received: Option<&str>) -> String {
    let Some(received) = received.map(str::trim).filter(|s| !s.is_empty()) else {
        let mut out = String::with_capacity("Root=".len() + TRACE_ID_LEN);
        out.push_str("Root=");
        push_trace_id(&mut out);
        return out;
    };
    let fields: Vec<&str> = received
        .split(';')
        .map(str::trim)
        .filter(|f| !f.is_empty() && !f.starts_with("Self="))
        .collect();
    let has_root = fields.iter().any(|f| f.starts_with("Root="));
    let label = if has_root { "Self" } else { "Root" };
    let mut out = String::with_capacity(label.len() + 1 + TRACE_ID_LEN + received.len() + 1);
    out.push_str(label);
    out.push('=');
    push_trace_id(&mut out);
    for f in fields {
        out.push(';');
        out.push_str(f);
    }
    out
}

/// `1-<8 hex digits of epoch seconds>-<24 random hex digits>`, X-Ray's id format.
pub fn new_trace_id() -> String {
    let mut id = String::with_capacity(TRACE_ID_LEN);
    push_trace_id(&mut id);
    id
}

/// Length of a trace id: `1-`, 8 digits, `-`, 24 digits.
const TRACE_ID_LEN: usize = 2 + 8 + 1 + 24;

/// Appends a new trace id. Written digit by digit into a stack buffer: `format!` cost more
/// than the rest of the forwarding headers together, once per request.
fn push_trace_id(out: &mut String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let random = fastrand::u128(..);
    let mut id = [0u8; TRACE_ID_LEN];
    id[..2].copy_from_slice(b"1-");
    write_hex(&mut id[2..10], u128::from(secs as u32));
    id[10] = b'-';
    write_hex(&mut id[11..], random);
    // Hex digits and dashes: ASCII.
    out.push_str(std::str::from_utf8(&id).unwrap_or_default());
}

/// Fills `out` with the low hex digits of `value`, lower case, zero-padded.
fn write_hex(out: &mut [u8], value: u128) {
    let digits = out.len();
    for (i, slot) in out.iter_mut().enumerate() {
        let nibble = (value >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
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
    fn hex_digits_are_formats() {
        for value in [
            0u128,
            1,
            0xabc,
            u128::from(u32::MAX),
            (1u128 << 96) - 1,
            u128::MAX,
        ] {
            let mut eight = [0u8; 8];
            write_hex(&mut eight, value);
            assert_eq!(&eight[..], format!("{:08x}", value as u32).as_bytes());
            let mut twenty_four = [0u8; 24];
            write_hex(&mut twenty_four, value);
            let expected = format!("{:024x}", value & ((1u128 << 96) - 1));
            assert_eq!(&twenty_four[..], expected.as_bytes());
        }
        let id = new_trace_id();
        assert!(is_trace_id(&id) && id.len() == TRACE_ID_LEN, "{id}");
    }

    #[test]
    fn addresses_are_written_as_their_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.254.1.200",
            "127.0.0.1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; MAX_IP_TEXT];
            assert_eq!(write_ip(&mut buf, ip), ip.to_string().as_bytes());
        }
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
            client: "203.0.113.9:51234".parse().unwrap(),
            proto: "http",
            port: &HeaderValue::from_static("8080"),
            port_number: 8080,
            header_bytes: 0,
            forwarding: Forwarding {
                preserve_host_header: true,
                ..Forwarding::default()
            },
        };
        apply(&mut h, origin);
        let trace = h[X_AMZN_TRACE_ID].clone();
        let get = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("x-forwarded-for"), ["10.0.0.1, 10.0.0.2, 203.0.113.9"]);
        assert_eq!(get("x-forwarded-proto"), ["http"]);
        assert_eq!(get("x-forwarded-port"), ["8080"]);
        assert_eq!(get("x-amzn-trace-id"), [trace.to_str().unwrap()]);
        assert_eq!(get("host"), ["x"]);
    }

    fn forwarded(headers: &[(&str, &str)], port: u16, forwarding: Forwarding) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in headers {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let port_value = HeaderValue::from(port);
        // As the handler measures the client's headers on arrival.
        let header_bytes = h
            .iter()
            .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
            .sum();
        apply(
            &mut h,
            Origin {
                client: "203.0.113.9:51234".parse().unwrap(),
                proto: "http",
                port: &port_value,
                port_number: port,
                header_bytes,
                forwarding,
            },
        );
        h
    }

    #[test]
    fn xff_modes_and_the_client_port() {
        use portico_config::XffHeaderProcessingMode as Mode;
        let sent = [("x-forwarded-for", "10.0.0.1")];
        let with = |forwarding| forwarded(&sent, 80, forwarding);
        let h = with(Forwarding {
            xff_client_port: true,
            ..Forwarding::default()
        });
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 203.0.113.9:51234");
        let h = with(Forwarding {
            xff: Mode::Preserve,
            ..Forwarding::default()
        });
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        let h = with(Forwarding {
            xff: Mode::Remove,
            ..Forwarding::default()
        });
        assert!(h.get("x-forwarded-for").is_none());
    }

    #[test]
    fn host_gets_a_non_default_listener_port_unless_preserved() {
        let h = forwarded(&[("host", "example.com")], 8080, Forwarding::default());
        assert_eq!(h["host"], "example.com:8080");
        let h = forwarded(&[("host", "example.com")], 80, Forwarding::default());
        assert_eq!(h["host"], "example.com");
        let h = forwarded(&[("host", "example.com:9")], 8080, Forwarding::default());
        assert_eq!(h["host"], "example.com:9");
        let h = forwarded(&[("host", "[2001:db8::1]")], 8080, Forwarding::default());
        assert_eq!(h["host"], "[2001:db8::1]:8080");
        let preserved = Forwarding {
            preserve_host_header: true,
            ..Forwarding::default()
        };
        let h = forwarded(&[("host", "example.com")], 8080, preserved);
        assert_eq!(h["host"], "example.com");
    }

    #[test]
    fn over_7_kb_of_headers_the_trace_is_a_new_root() {
        let big = "v".repeat(7 * 1024);
        let sent = [
            (
                "x-amzn-trace-id",
                "Root=1-67891233-abcdef012345678912345678",
            ),
            ("x-big", big.as_str()),
        ];
        let h = forwarded(&sent, 80, Forwarding::default());
        let trace = h["x-amzn-trace-id"].to_str().unwrap();
        assert!(
            trace.starts_with("Root=1-") && !trace.contains(';'),
            "{trace}"
        );
        let h = forwarded(&sent[..1], 80, Forwarding::default());
        let trace = h["x-amzn-trace-id"].to_str().unwrap();
        assert!(
            trace.starts_with("Self=1-")
                && trace.ends_with(";Root=1-67891233-abcdef012345678912345678"),
            "{trace}"
        );
    }
}
