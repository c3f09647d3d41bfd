//! HTTP request → the ALB event a Lambda target receives.
//!
//! ALB's rules, as documented for Lambda targets:
//! - header names are lower-cased; in single-value mode a repeated header or query key
//!   carries its **last** value; in multi-value mode every value is kept, in order;
//! - only one kind is sent: `headers` + `queryStringParameters`, or `multiValueHeaders` +
//!   `multiValueQueryStringParameters`;
//! - query strings are passed exactly as the client sent them, never URL-decoded;
//! - the body is sent as-is for `text/*`, `application/json`, `application/javascript` and
//!   `application/xml` without a `Content-Encoding`; anything else is base64 with
//!   `isBase64Encoded: true`.
//!
//! The event is serialized by our own types rather than `aws_lambda_events`, whose request
//! type always writes both header kinds; the tests check that the official type reads ours.

use base64::Engine;
use serde::Serialize;
use std::collections::BTreeMap;

/// The parts of an HTTP request that make an ALB event.
#[derive(Debug, Clone)]
pub struct RequestParts<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path without the query string, as received.
    pub path: &'a str,
    /// The raw query string (without `?`), if any.
    pub query: Option<&'a str>,
    /// Header names (lower case) and values, in the order received, repeats included.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: &'a [u8],
}

/// The ALB event, in the shape Lambda targets receive it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlbEvent<'a> {
    request_context: RequestContext<'a>,
    http_method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string_parameters: Option<BTreeMap<&'a str, &'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_value_query_string_parameters: Option<BTreeMap<&'a str, Vec<&'a str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<&'a str, &'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_value_headers: Option<BTreeMap<&'a str, Vec<&'a str>>>,
    body: String,
    is_base64_encoded: bool,
}

#[derive(Debug, Serialize)]
struct RequestContext<'a> {
    elb: Elb<'a>,
    /// A verified JWT, in API Gateway HTTP APIs' shape: `authorizer.jwt.{claims, scopes}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer: Option<Authorizer<'a>>,
}

#[derive(Debug, Serialize)]
struct Authorizer<'a> {
    jwt: &'a portico_gateway::jwt::Verified,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Elb<'a> {
    target_group_arn: &'a str,
}

impl<'a> AlbEvent<'a> {
    /// Builds the event for `req`, sent to the target group `target_group_arn`.
    pub fn new(req: &'a RequestParts<'a>, target_group_arn: &'a str, multi_value: bool) -> Self {
        let query_pairs = query_pairs(req.query);
        let header_pairs = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let (body, is_base64_encoded) = encode_body(req);
        let mut event = AlbEvent {
            request_context: RequestContext {
                elb: Elb { target_group_arn },
                authorizer: None,
            },
            http_method: req.method,
            path: req.path,
            query_string_parameters: None,
            multi_value_query_string_parameters: None,
            headers: None,
            multi_value_headers: None,
            body,
            is_base64_encoded,
        };
        if multi_value {
            event.multi_value_query_string_parameters = Some(multi(query_pairs));
            event.multi_value_headers = Some(multi(header_pairs));
        } else {
            // Collecting into a map keeps the last value of a repeated key, as ALB does.
            event.query_string_parameters = Some(query_pairs.collect());
            event.headers = Some(header_pairs.collect());
        }
        event
    }

    /// Adds a verified JWT as `requestContext.authorizer.jwt`.
    pub fn with_jwt(mut self, jwt: Option<&'a portico_gateway::jwt::Verified>) -> Self {
        self.request_context.authorizer = jwt.map(|jwt| Authorizer { jwt });
        self
    }

    /// The event as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing string maps and strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn multi<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(v);
    }
    map
}

/// Splits a raw query string into key/value pairs without decoding anything.
/// `a=1&b&c=` gives `a=1`, `b=` and `c=`; empty segments (`&&`) are skipped.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once('=').unwrap_or((s, "")))
}

/// Whether ALB sends `req`'s body as text (a text type, not content-encoded) rather than
/// base64.
pub(crate) fn is_text_body(req: &RequestParts<'_>) -> bool {
    let header = |name: &str| {
        req.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    header("content-encoding").is_none() && header("content-type").is_some_and(is_text_content_type)
}

/// The body as ALB sends it: text as-is, everything else base64.
fn encode_body(req: &RequestParts<'_>) -> (String, bool) {
    if req.body.is_empty() {
        return (String::new(), false);
    }
    match (is_text_body(req), std::str::from_utf8(req.body)) {
        (true, Ok(s)) => (s.to_owned(), false),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(req.body),
            true,
        ),
    }
}

/// ALB's text types: `text/*`, `application/json`, `application/javascript`, `application/xml`.
fn is_text_content_type(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || matches!(
            media.as_str(),
            "application/json" | "application/javascript" | "application/xml"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::alb::AlbTargetGroupRequest;
    use serde_json::{Value, json};

    const ARN: &str = "arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/lambda-279XGJDqGZ5rsrHC2Fjr/49e9d65c45c6791a";

    fn parts<'a>(
        query: Option<&'a str>,
        headers: &[(&str, &str)],
        body: &'a [u8],
    ) -> RequestParts<'a> {
        RequestParts {
            method: "GET",
            path: "/lambda",
            query,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        }
    }

    fn event_json(p: &RequestParts<'_>, multi: bool) -> Value {
        serde_json::from_slice(&AlbEvent::new(p, ARN, multi).to_json()).unwrap()
    }

    /// A verified token is in `requestContext.authorizer.jwt` (API Gateway HTTP APIs'
    /// shape), and the official ALB type still reads the event.
    #[test]
    fn verified_jwt_goes_into_the_request_context() {
        let p = parts(None, &[("host", "a")], b"");
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "user-7".into());
        let jwt = portico_gateway::jwt::Verified {
            claims,
            scopes: vec!["orders:read".into()],
        };
        let json = AlbEvent::new(&p, ARN, false).with_jwt(Some(&jwt)).to_json();
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v["requestContext"],
            json!({
                "elb": { "targetGroupArn": ARN },
                "authorizer": { "jwt": { "claims": { "sub": "user-7" }, "scopes": ["orders:read"] } }
            })
        );
        let official: AlbTargetGroupRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            official.request_context.elb.target_group_arn.as_deref(),
            Some(ARN)
        );
        assert!(
            event_json(&p, false)["requestContext"]
                .get("authorizer")
                .is_none()
        );
    }

    /// The example event of the ALB documentation ("Lambda functions as targets").
    #[test]
    fn documented_example_event() {
        let p = parts(
            Some("query=1234ABCD"),
            &[
                (
                    "accept",
                    "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,image/apng,*/*;q=0.8",
                ),
                ("accept-encoding", "gzip"),
                ("accept-language", "en-US,en;q=0.9"),
                ("connection", "keep-alive"),
                ("host", "lambda-alb-123578498.us-east-2.elb.amazonaws.com"),
                ("upgrade-insecure-requests", "1"),
                (
                    "user-agent",
                    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/71.0.3578.98 Safari/537.36",
                ),
                (
                    "x-amzn-trace-id",
                    "Root=1-5c536348-3d683b8b04734faae651f476",
                ),
                ("x-forwarded-for", "72.12.164.125"),
                ("x-forwarded-port", "80"),
                ("x-forwarded-proto", "http"),
                ("x-imforwards", "20"),
            ],
            b"",
        );
        let expected = json!({
            "requestContext": {"elb": {"targetGroupArn": ARN}},
            "httpMethod": "GET",
            "path": "/lambda",
            "queryStringParameters": {"query": "1234ABCD"},
            "headers": {
                "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,image/apng,*/*;q=0.8",
                "accept-encoding": "gzip",
                "accept-language": "en-US,en;q=0.9",
                "connection": "keep-alive",
                "host": "lambda-alb-123578498.us-east-2.elb.amazonaws.com",
                "upgrade-insecure-requests": "1",
                "user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/71.0.3578.98 Safari/537.36",
                "x-amzn-trace-id": "Root=1-5c536348-3d683b8b04734faae651f476",
                "x-forwarded-for": "72.12.164.125",
                "x-forwarded-port": "80",
                "x-forwarded-proto": "http",
                "x-imforwards": "20"
            },
            "body": "",
            "isBase64Encoded": false
        });
        assert_eq!(event_json(&p, false), expected);
    }

    #[test]
    fn single_value_mode_keeps_last_value_and_sends_no_multi_fields() {
        let p = parts(
            Some("k=1&k=2&x"),
            &[("cookie", "a=1"), ("cookie", "b=2")],
            b"",
        );
        let v = event_json(&p, false);
        assert_eq!(v["queryStringParameters"], json!({"k": "2", "x": ""}));
        assert_eq!(v["headers"]["cookie"], "b=2");
        assert!(v.get("multiValueHeaders").is_none());
        assert!(v.get("multiValueQueryStringParameters").is_none());
    }

    #[test]
    fn multi_value_mode_keeps_every_value_and_sends_no_single_fields() {
        let p = parts(
            Some("k=1&k=2"),
            &[("cookie", "a=1"), ("cookie", "b=2")],
            b"",
        );
        let v = event_json(&p, true);
        assert_eq!(
            v["multiValueQueryStringParameters"],
            json!({"k": ["1", "2"]})
        );
        assert_eq!(v["multiValueHeaders"]["cookie"], json!(["a=1", "b=2"]));
        assert!(v.get("headers").is_none());
        assert!(v.get("queryStringParameters").is_none());
    }

    #[test]
    fn query_is_not_decoded() {
        let p = parts(Some("x=foo%3Dbar&name=a+b&%41=%42"), &[], b"");
        let v = event_json(&p, false);
        assert_eq!(
            v["queryStringParameters"],
            json!({"x": "foo%3Dbar", "name": "a+b", "%41": "%42"})
        );
    }

    #[test]
    fn no_query_is_an_empty_object() {
        let v = event_json(&parts(None, &[], b""), false);
        assert_eq!(v["queryStringParameters"], json!({}));
    }

    #[test]
    fn text_bodies_are_sent_as_is() {
        for ct in [
            "text/plain",
            "text/html; charset=utf-8",
            "application/json",
            "Application/JSON",
            "application/javascript",
            "application/xml",
        ] {
            let v = event_json(&parts(None, &[("content-type", ct)], b"{\"a\":1}"), false);
            assert_eq!(v["body"], "{\"a\":1}", "{ct}");
            assert_eq!(v["isBase64Encoded"], false, "{ct}");
        }
    }

    #[test]
    fn other_bodies_are_base64() {
        let cases: &[&[(&str, &str)]] = &[
            &[("content-type", "application/octet-stream")],
            &[("content-type", "image/png")],
            &[],
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
        ];
        for headers in cases {
            let v = event_json(&parts(None, headers, b"hi\x00"), false);
            assert_eq!(v["body"], "aGkA", "{headers:?}");
            assert_eq!(v["isBase64Encoded"], true, "{headers:?}");
        }
    }

    #[test]
    fn official_types_read_our_events() {
        for multi in [false, true] {
            let p = parts(
                Some("a=1&a=2"),
                &[("host", "h"), ("x-a", "1"), ("x-a", "2")],
                b"body",
            );
            let json = AlbEvent::new(&p, ARN, multi).to_json();
            let parsed: AlbTargetGroupRequest = serde_json::from_slice(&json).unwrap();
            assert_eq!(parsed.http_method, http::Method::GET);
            assert_eq!(parsed.path.as_deref(), Some("/lambda"));
            assert_eq!(
                parsed.request_context.elb.target_group_arn.as_deref(),
                Some(ARN)
            );
            assert!(parsed.is_base64_encoded);
            if multi {
                assert_eq!(parsed.multi_value_headers.get_all("x-a").iter().count(), 2);
                assert_eq!(
                    parsed.multi_value_query_string_parameters.all("a"),
                    Some(vec!["1", "2"])
                );
            } else {
                assert_eq!(parsed.headers["x-a"], "2");
                assert_eq!(parsed.query_string_parameters.first("a"), Some("2"));
            }
        }
    }
}
