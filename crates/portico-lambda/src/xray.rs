//! The X-Ray trace header Lambda hands every invocation (`Lambda-Runtime-Trace-Id`, which the
//! runtime clients put in `_X_AMZN_TRACE_ID`): `Root=1-5759e988-bd862e3fe1be46a994272793;
//! Parent=53995c3f42cd8ad8;Sampled=0`.
//!
//! The trace is the caller's when it sent one (the load balancer's `X-Amzn-Trace-Id`, an
//! Invoke API call's): its `Root`, and its sampling decision; the `Parent` is a new segment
//! id, the function's invocation being a new segment under it. Without one, a new trace is
//! started, not sampled, as Lambda does when tracing is off (`PassThrough`).

use std::time::{SystemTime, UNIX_EPOCH};

/// The header for an invocation whose caller sent `incoming`.
pub(crate) fn header(incoming: Option<&str>) -> String {
    let field = |name: &str| {
        incoming?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    };
    let root = field("Root")
        .filter(|r| is_trace_id(r))
        .unwrap_or_else(new_root);
    let sampled = match field("Sampled").as_deref() {
        Some("1") => "1",
        _ => "0",
    };
    format!("Root={root};Parent={};Sampled={sampled}", hex(8))
}

/// A new trace id: `1-`, the time in seconds (8 hex digits), 24 random hex digits.
fn new_root() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("1-{:08x}-{}", secs & 0xffff_ffff, hex(12))
}

/// Whether `id` has a trace id's shape: `1-` 8 hex `-` 24 hex.
fn is_trace_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let hexes = |s: Option<&str>, n: usize| {
        s.is_some_and(|s| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    parts.next() == Some("1")
        && hexes(parts.next(), 8)
        && hexes(parts.next(), 24)
        && parts.next().is_none()
}

/// `bytes` random bytes as lower-case hex.
fn hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() < bytes * 2 {
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(header: &str) -> Vec<(String, String)> {
        header
            .split(';')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_caller_s_trace_goes_on_under_a_new_parent() {
        let h = header(Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"));
        let p = parts(&h);
        assert_eq!(
            p[0],
            ("Root".into(), "1-5759e988-bd862e3fe1be46a994272793".into())
        );
        assert_eq!(p[1].0, "Parent");
        assert_eq!(p[1].1.len(), 16);
        assert_eq!(p[2], ("Sampled".into(), "1".into()));
        // The load balancer's header: its Root, a Self field dropped, not sampled.
        let alb = header(Some(
            "Self=1-67891234-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678;CalledFrom=app",
        ));
        assert!(
            alb.starts_with("Root=1-67891233-abcdef012345678912345678;Parent="),
            "{alb}"
        );
        assert!(alb.ends_with(";Sampled=0"), "{alb}");
    }

    #[test]
    fn without_one_a_new_trace_starts_unsampled() {
        for incoming in [None, Some("garbage"), Some("Root=2-xyz;Sampled=1")] {
            let h = header(incoming);
            let p = parts(&h);
            assert!(is_trace_id(&p[0].1), "{h}");
            assert_eq!(p.len(), 3, "{h}");
        }
        assert!(header(None).ends_with(";Sampled=0"));
        assert_ne!(header(None), header(None));
    }
}
