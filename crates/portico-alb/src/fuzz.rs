//! Fuzz targets of the load balancer's parsers of outside input (see `portico_fuzz`):
//! function replies, ALB events, redirect templates, the desync classifier.

use crate::event::{AlbEvent, RequestParts};
use crate::redirect::{Original, Redirect};

/// A function's reply, in both header modes.
#[test]
fn fuzz_lambda_reply() {
    portico_fuzz::check!("lambda_reply", |data: &[u8]| {
        let _ = crate::reply::into_response(data, false);
        let _ = crate::reply::into_response(data, true);
    });
}

/// Any request becomes an event that serializes.
#[test]
fn fuzz_alb_event() {
    portico_fuzz::check!("alb_event", |data: &[u8]| {
        let Some(raw) = portico_fuzz::raw_request(data) else {
            return;
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let target = text(raw.target);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target.as_str(), None),
        };
        let method = text(raw.method);
        let parts = RequestParts {
            method: &method,
            path,
            query,
            headers: raw
                .headers
                .iter()
                .map(|(n, v)| (text(n).to_ascii_lowercase(), text(v)))
                .collect(),
            body: raw.body,
        };
        for multi in [false, true] {
            let json = AlbEvent::new(&parts, "arn:tg", multi).to_json();
            assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        }
    });
}

/// Redirect templates (one per line: protocol, host, port, path, query, status) expanded
/// for a request (its path?query and host on the next lines).
#[test]
fn fuzz_redirect() {
    portico_fuzz::check!("redirect", |data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let mut lines = text.split('\n');
        let mut next = || lines.next().unwrap_or_default().to_owned();
        let config = portico_config::routing::Redirect {
            protocol: next(),
            host: next(),
            port: next(),
            path: next(),
            query: next(),
            status_code: if next() == "HTTP_302" {
                portico_config::routing::RedirectStatus::Temporary
            } else {
                portico_config::routing::RedirectStatus::Permanent
            },
        };
        let target = next();
        let host = next();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let redirect = Redirect::compile(&config);
        let original = Original {
            protocol: "https",
            host: &host,
            port: 443,
            path,
            query,
        };
        let _ = redirect.location(&original);
        let _ = redirect.respond(&original);
    });
}

/// The desync classifier on any request, in every mode.
#[test]
fn fuzz_desync() {
    use portico_config::model::DesyncMitigationMode as Mode;
    portico_fuzz::check!("desync", |data: &[u8]| {
        let Some(raw) = portico_fuzz::raw_request(data) else {
            return;
        };
        let mut builder = http::Request::builder().method(raw.method).uri(raw.target);
        for (name, value) in &raw.headers {
            builder = builder.header(*name, *value);
        }
        // What hyper would refuse never reaches the classifier.
        let Ok(req) = builder.body(()) else {
            return;
        };
        for mode in [Mode::Monitor, Mode::Defensive, Mode::Strictest] {
            let _ = crate::desync::classify(&req, mode);
        }
    });
}
