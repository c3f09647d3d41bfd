//! CORS as API Gateway's HTTP APIs do it: preflights are answered without calling the
//! target (and before any authorizer: browsers send no credentials on them), and CORS
//! headers on real responses are the gateway's, replacing any the target sent.
//!
//! A preflight from an origin, method or header that is not allowed gets its 204 without
//! `Access-Control-Allow-*` headers, so the browser refuses the real request.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use portico_config::Cors;

/// A list from the configuration, or `*`.
#[derive(Debug, Clone)]
enum Allowed {
    Any,
    /// Lower-cased for headers; as written for origins and methods.
    List(Vec<String>),
}

impl Allowed {
    fn new(values: &[String], fold_case: bool) -> Self {
        if values.iter().any(|v| v == "*") {
            Self::Any
        } else {
            Self::List(
                values
                    .iter()
                    .map(|v| {
                        if fold_case {
                            v.to_ascii_lowercase()
                        } else {
                            v.clone()
                        }
                    })
                    .collect(),
            )
        }
    }

    fn allows(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|v| v == value),
        }
    }
}

/// One listener's or rule's CORS settings, ready to answer.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Allowed,
    methods: Allowed,
    headers: Allowed,
    /// `Access-Control-Allow-Methods` when methods are listed.
    methods_value: Option<HeaderValue>,
    /// `Access-Control-Allow-Headers` when headers are listed.
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a preflight asks about.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
}

fn joined(values: &[String]) -> Option<HeaderValue> {
    if values.is_empty() || values.iter().any(|v| v == "*") {
        return None;
    }
    HeaderValue::from_str(&values.join(",")).ok()
}

impl CorsPolicy {
    /// The policy for validated settings.
    pub fn new(cors: &Cors) -> Self {
        Self {
            origins: Allowed::new(&cors.allow_origins, false),
            methods: Allowed::new(&cors.allow_methods, false),
            headers: Allowed::new(&cors.allow_headers, true),
            methods_value: joined(&cors.allow_methods),
            headers_value: joined(&cors.allow_headers),
            expose: joined(&cors.expose_headers),
            max_age: cors.max_age_seconds.map(HeaderValue::from),
            credentials: cors.allow_credentials,
        }
    }

    /// The value of `Access-Control-Allow-Origin` for `origin`, if it is allowed: the
    /// origin itself, or `*` when any origin is allowed without credentials.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let text = origin.to_str().ok()?;
        if !self.origins.allows(text) {
            return None;
        }
        Some(match (&self.origins, self.credentials) {
            (Allowed::Any, false) => HeaderValue::from_static("*"),
            _ => origin.clone(),
        })
    }

    /// The answer to a preflight with request headers `headers`.
    pub fn preflight(&self, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(header::VARY, vary());
        let Some(origin) = headers
            .get(header::ORIGIN)
            .and_then(|o| self.allow_origin(o))
        else {
            return response;
        };
        let method_ok = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| self.methods.allows(m));
        let requested: Vec<String> = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let headers_ok = requested.iter().all(|h| self.headers.allows(h));
        if !method_ok || !headers_ok {
            return response;
        }
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        let methods = self
            .methods_value
            .clone()
            .or_else(|| headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).cloned());
        if let Some(methods) = methods {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        let allow_headers = match &self.headers {
            Allowed::Any if !requested.is_empty() => {
                HeaderValue::from_str(&requested.join(",")).ok()
            }
            _ => self.headers_value.clone(),
        };
        if let Some(allow_headers) = allow_headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        }
        if let Some(age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        response
    }

    /// Puts the CORS headers for a request from `origin` on `response`, replacing any the
    /// target set.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        for name in CORS_RESPONSE_HEADERS {
            response.remove(name);
        }
        response.append(header::VARY, vary());
        let Some(allow) = origin.and_then(|o| self.allow_origin(o)) else {
            return;
        };
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// The CORS headers a target's response may carry, which the gateway's replace.
const CORS_RESPONSE_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

fn vary() -> HeaderValue {
    HeaderValue::from_static("Origin")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::new(&Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["Content-Type".into(), "Authorization".into()],
            expose_headers: vec!["x-request-id".into()],
            max_age_seconds: Some(600),
            allow_credentials: credentials,
        })
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn allowed_preflight_gets_every_header() {
        let c = cors(&["https://app.example.com"], true);
        let r = c.preflight(&request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, Authorization",
            ),
        ]));
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(
            h["access-control-allow-headers"],
            "Content-Type,Authorization"
        );
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], "Origin");
    }

    #[test]
    fn refused_preflight_has_no_allow_headers() {
        let c = cors(&["https://app.example.com"], false);
        for req in [
            request(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ]),
            request(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ]),
            request(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-secret"),
            ]),
        ] {
            let r = c.preflight(&req);
            assert_eq!(r.status(), 204);
            assert!(r.headers().get("access-control-allow-origin").is_none());
        }
    }

    #[test]
    fn responses_get_the_gateways_headers_only() {
        let c = cors(&["*"], false);
        let mut out = request(&[("access-control-allow-origin", "https://backend.example")]);
        let origin = HeaderValue::from_static("https://anyone.example");
        c.decorate(Some(&origin), &mut out);
        assert_eq!(out["access-control-allow-origin"], "*");
        assert_eq!(out["access-control-expose-headers"], "x-request-id");
        let mut out = request(&[("access-control-allow-origin", "*")]);
        c.decorate(None, &mut out);
        assert!(out.get("access-control-allow-origin").is_none());
    }
}
