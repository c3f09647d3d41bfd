//! The function's reply → the HTTP response the client gets.
//!
//! The reply is ALB's response document: `statusCode` (required), `statusDescription`,
//! `headers` or `multiValueHeaders`, `body`, `isBase64Encoded`. Anything that does not fit
//! (not JSON, no status, a status outside 200-599 (a 1xx is not a response a target may end
//! with: ALB answers 502), a header that is not valid HTTP, a body
//! that claims base64 and is not) is `LambdaInvalidResponse`, a 502. In multi-value mode the
//! response headers come from `multiValueHeaders`, otherwise from `headers`, and the other
//! field is ignored, as ALB ignores it ("You must use `multiValueHeaders` if you have enabled
//! multi-value headers and `headers` otherwise"): a function that sends the wrong kind loses
//! its headers here as it would on AWS.

use crate::error::LbError;
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Largest reply document a Lambda target may send: 1 MB.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// ALB's quota on a response's header block: 32 KB in all.
pub const MAX_REPLY_HEADERS_BYTES: usize = 32 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    status_code: u16,
    #[serde(default)]
    status_description: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    multi_value_headers: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: Option<bool>,
}

/// Hop-by-hop headers a function cannot set: the connection to the client is the load
/// balancer's, and the length is computed from the body.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

/// Turns `payload` into the HTTP response.
pub fn into_response(payload: &[u8], multi_value: bool) -> Result<Response<Full<Bytes>>, LbError> {
    if payload.len() > MAX_REPLY_BYTES {
        return Err(LbError::ReplyTooLarge {
            size: payload.len(),
            limit: MAX_REPLY_BYTES,
        });
    }
    let reply: Reply =
        serde_json::from_slice(payload).map_err(|e| LbError::InvalidReply(e.to_string()))?;
    let status = StatusCode::from_u16(reply.status_code)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| {
            LbError::InvalidReply(format!(
                "statusCode {} is not a final HTTP status (200-599)",
                reply.status_code
            ))
        })?;
    let body = decode_body(reply.body, reply.is_base64_encoded.unwrap_or(false))?;

    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Some(reason) = reply.status_description.as_deref().and_then(reason_phrase) {
        response.extensions_mut().insert(reason);
    }
    let headers = response.headers_mut();
    let pairs: Vec<(String, String)> = if multi_value {
        reply
            .multi_value_headers
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(k, vs)| vs.into_iter().map(move |v| (k.clone(), v)))
            .collect()
    } else {
        reply.headers.unwrap_or_default().into_iter().collect()
    };
    let block: usize = pairs.iter().map(|(k, v)| k.len() + 2 + v.len() + 2).sum();
    if block > MAX_REPLY_HEADERS_BYTES {
        return Err(LbError::InvalidReply(format!(
            "response headers of {block} bytes, over ALB's {MAX_REPLY_HEADERS_BYTES}"
        )));
    }
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| LbError::InvalidReply(format!("{name:?} is not a header name")))?;
        if DROPPED.contains(&name.as_str()) {
            continue;
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| LbError::InvalidReply(format!("header {name} has an invalid value")))?;
        headers.append(name, value);
    }
    Ok(response)
}

fn decode_body(body: Option<String>, base64: bool) -> Result<Bytes, LbError> {
    let body = body.unwrap_or_default();
    if !base64 {
        return Ok(Bytes::from(body));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map(Bytes::from)
        .map_err(|e| LbError::InvalidReply(format!("body is not valid base64: {e}")))
}

/// The reason phrase from a `statusDescription` such as `"200 OK"`.
fn reason_phrase(description: &str) -> Option<hyper::ext::ReasonPhrase> {
    let text = description.trim();
    let text = text
        .split_once(' ')
        .filter(|(code, _)| code.chars().all(|c| c.is_ascii_digit()))
        .map_or(text, |(_, rest)| rest.trim());
    hyper::ext::ReasonPhrase::try_from(text.as_bytes().to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn documented_reply() {
        let r = into_response(
            br#"{"statusCode":200,"statusDescription":"200 OK","isBase64Encoded":false,
                 "headers":{"Content-Type":"text/html"},"body":"<h1>Hello from Lambda!</h1>"}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/html");
        assert_eq!(
            r.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .unwrap()
                .as_bytes(),
            b"OK"
        );
        assert_eq!(body(r).await, "<h1>Hello from Lambda!</h1>");
    }

    #[tokio::test]
    async fn base64_body_is_decoded() {
        let r = into_response(
            br#"{"statusCode":201,"isBase64Encoded":true,"body":"aGkA"}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(body(r).await, &b"hi\x00"[..]);
    }

    #[tokio::test]
    async fn multi_value_headers_in_multi_mode() {
        let r = into_response(
            br#"{"statusCode":200,"headers":{"x":"single"},"multiValueHeaders":{"set-cookie":["a=1","b=2"]}}"#,
            true,
        )
        .unwrap();
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(r.headers().get("x").is_none());
    }

    #[test]
    fn an_informational_status_is_an_invalid_reply() {
        for status in [100, 101, 103, 199] {
            let doc = format!(r#"{{"statusCode":{status}}}"#);
            let err = into_response(doc.as_bytes(), false).unwrap_err();
            assert_eq!(err.status(), 502, "{status}");
            assert_eq!(err.reason(), "LambdaInvalidResponse", "{status}");
        }
        assert!(into_response(br#"{"statusCode":204}"#, false).is_ok());
    }

    #[test]
    fn a_header_block_over_32_k_is_refused() {
        let big = "v".repeat(20 * 1024);
        let doc = format!(r#"{{"statusCode":200,"headers":{{"a":"{big}","b":"{big}"}}}}"#);
        let err = into_response(doc.as_bytes(), false).unwrap_err();
        assert_eq!(err.reason(), "LambdaInvalidResponse");
        let doc = format!(r#"{{"statusCode":200,"headers":{{"a":"{big}"}}}}"#);
        assert!(into_response(doc.as_bytes(), false).is_ok());
    }

    #[test]
    fn each_mode_ignores_the_other_field() {
        // Multi-value headers off: multiValueHeaders is not read.
        let r = into_response(
            br#"{"statusCode":200,"multiValueHeaders":{"set-cookie":["a=1","b=2"]}}"#,
            false,
        )
        .unwrap();
        assert!(r.headers().get("set-cookie").is_none());
        // On: headers is not read.
        let r = into_response(br#"{"statusCode":200,"headers":{"x":"single"}}"#, true).unwrap();
        assert!(r.headers().get("x").is_none());
    }

    #[test]
    fn single_mode_uses_headers() {
        let r = into_response(
            br#"{"statusCode":200,"headers":{"x":"single"},"multiValueHeaders":{"x":["a","b"]}}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            r.headers().get_all("x").iter().collect::<Vec<_>>(),
            ["single"]
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let r = into_response(
            br#"{"statusCode":200,"headers":{"Connection":"close","Transfer-Encoding":"chunked","Content-Length":"99"}}"#,
            false,
        )
        .unwrap();
        assert!(r.headers().is_empty());
    }

    #[test]
    fn malformed_replies_are_invalid() {
        let cases: &[&[u8]] = &[
            b"not json",
            b"\"a string\"",
            b"{}",
            br#"{"statusCode":"200"}"#,
            br#"{"statusCode":99}"#,
            br#"{"statusCode":600}"#,
            br#"{"statusCode":70000}"#,
            br#"{"statusCode":200,"headers":{"bad name":"x"}}"#,
            br#"{"statusCode":200,"headers":{"x":"line\nbreak"}}"#,
            br#"{"statusCode":200,"headers":{"x":1}}"#,
            br#"{"statusCode":200,"isBase64Encoded":true,"body":"%%%"}"#,
        ];
        for case in cases {
            let err = into_response(case, false).unwrap_err();
            assert!(
                matches!(err, LbError::InvalidReply(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(err.status(), 502);
            assert_eq!(err.reason(), "LambdaInvalidResponse");
        }
    }

    #[test]
    fn oversized_reply_is_refused() {
        let big = format!(
            r#"{{"statusCode":200,"body":"{}"}}"#,
            "a".repeat(MAX_REPLY_BYTES)
        );
        let err = into_response(big.as_bytes(), false).unwrap_err();
        assert!(matches!(err, LbError::ReplyTooLarge { .. }));
        assert_eq!(err.status(), 502);
        assert_eq!(err.reason(), "LambdaResponseTooLarge");
    }
}
