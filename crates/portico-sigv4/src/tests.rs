#![allow(clippy::unwrap_used)]

use super::*;

/// AWS's example key from its Signature Version 4 test suite.
fn example_key() -> AccessKey {
    AccessKey {
        id: "AKIDEXAMPLE".into(),
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
    }
}

fn at(stamp: &str) -> SystemTime {
    parse_amz_date(stamp).unwrap()
}

/// A request of the test suite: `method path?query`, Host and X-Amz-Date, signed as the
/// suite signs it (host;x-amz-date), with `signature`.
fn suite_request(method: &str, target: &str, signature: &str) -> http::request::Parts {
    let (mut parts, ()) = http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "example.amazonaws.com")
        .header("x-amz-date", "20150830T123600Z")
        .body(())
        .unwrap()
        .into_parts();
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
    );
    parts
        .headers
        .insert("authorization", authorization.parse().unwrap());
    parts
}

#[test]
fn the_test_suites_requests_verify_and_sign_alike() {
    let keys = AccessKeys::new([example_key()]);
    let now = at("20150830T123600Z");
    for (method, target, signature) in [
        (
            "GET",
            "/",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "GET",
            "/?Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "POST",
            "/",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
    ] {
        let parts = suite_request(method, target, signature);
        assert_eq!(
            verify(Signable::of(&parts, b""), &keys, "service", now),
            Ok("AKIDEXAMPLE".to_owned()),
            "{method} {target}"
        );
        // Signing the same request gives the same signature.
        let (mut unsigned, ()) = http::Request::builder()
            .method(method)
            .uri(target)
            .header("host", "example.amazonaws.com")
            .body(())
            .unwrap()
            .into_parts();
        sign(
            &mut unsigned,
            b"",
            &example_key(),
            ("us-east-1", "service"),
            now,
        );
        let authorization = unsigned.headers["authorization"].to_str().unwrap();
        assert!(authorization.ends_with(signature), "{authorization}");
    }
}

fn signed(body: &[u8], now: SystemTime) -> http::request::Parts {
    let (mut parts, ()) = http::Request::builder()
        .method("POST")
        .uri("http://127.0.0.1:9001/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A0%3Afunction%3Ahello/invocations?Qualifier=%24LATEST")
        .header("x-amz-invocation-type", "RequestResponse")
        .body(())
        .unwrap()
        .into_parts();
    sign(
        &mut parts,
        body,
        &example_key(),
        ("us-east-1", "lambda"),
        now,
    );
    parts
}

#[test]
fn what_was_signed_cannot_change() {
    let keys = AccessKeys::new([example_key()]);
    let now = at("20261203T120000Z");
    let parts = signed(b"{\"a\":1}", now);
    assert!(verify(Signable::of(&parts, b"{\"a\":1}"), &keys, "lambda", now).is_ok());
    // Another body, path, query or signed header value: a mismatch.
    assert_eq!(
        verify(Signable::of(&parts, b"{\"a\":2}"), &keys, "lambda", now),
        Err(Refusal::Mismatch)
    );
    let mut moved = parts.clone();
    moved.uri = "http://127.0.0.1:9001/2015-03-31/functions/other/invocations?Qualifier=%24LATEST"
        .parse()
        .unwrap();
    assert_eq!(
        verify(Signable::of(&moved, b"{\"a\":1}"), &keys, "lambda", now),
        Err(Refusal::Mismatch)
    );
    let mut event = parts.clone();
    event
        .headers
        .insert("x-amz-invocation-type", "Event".parse().unwrap());
    assert_eq!(
        verify(Signable::of(&event, b"{\"a\":1}"), &keys, "lambda", now),
        Err(Refusal::Mismatch)
    );
    // An unsigned header may be added.
    let mut added = parts.clone();
    added.headers.insert("user-agent", "x".parse().unwrap());
    assert!(verify(Signable::of(&added, b"{\"a\":1}"), &keys, "lambda", now).is_ok());
}

#[test]
fn keys_times_and_scopes_are_checked() {
    let now = at("20261203T120000Z");
    let parts = signed(b"", now);
    let request = Signable::of(&parts, b"");
    let other = AccessKeys::new([AccessKey {
        id: "AKIDOTHER".into(),
        secret: "x".into(),
    }]);
    assert_eq!(
        verify(request, &other, "lambda", now),
        Err(Refusal::UnknownKey)
    );
    let wrong_secret = AccessKeys::new([AccessKey {
        id: "AKIDEXAMPLE".into(),
        secret: "not the secret".into(),
    }]);
    assert_eq!(
        verify(request, &wrong_secret, "lambda", now),
        Err(Refusal::Mismatch)
    );
    let keys = AccessKeys::new([example_key()]);
    assert_eq!(
        verify(request, &keys, "elasticloadbalancing", now),
        Err(Refusal::WrongService("elasticloadbalancing".into()))
    );
    let later = now + Duration::from_secs(16 * 60);
    let Err(Refusal::Expired { signed, .. }) = verify(request, &keys, "lambda", later) else {
        panic!("a request 16 minutes old is expired");
    };
    assert_eq!(signed, "20261203T120000Z");
    let earlier = now - Duration::from_secs(16 * 60);
    assert!(matches!(
        verify(request, &keys, "lambda", earlier),
        Err(Refusal::Expired { .. })
    ));
    assert!(verify(request, &keys, "lambda", now + Duration::from_secs(14 * 60)).is_ok());
}

#[test]
fn malformed_authorizations_are_refused_with_their_reason() {
    let keys = AccessKeys::new([example_key()]);
    let now = at("20150830T123600Z");
    let mut parts = suite_request("GET", "/", &"0".repeat(64));
    parts.headers.remove("authorization");
    assert_eq!(
        verify(Signable::of(&parts, b""), &keys, "service", now),
        Err(Refusal::Missing)
    );
    for bad in [
        "AWS4-HMAC-SHA1 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz00000000000000000000000000000000000000000000000000000000000000",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-missing, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150831/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, Bogus=1, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        parts.headers.insert("authorization", bad.parse().unwrap());
        let got = verify(Signable::of(&parts, b""), &keys, "service", now);
        assert!(matches!(got, Err(Refusal::Malformed(_))), "{bad}: {got:?}");
    }
}

/// Any `Authorization` value, on any request: a verdict, never a panic.
#[test]
fn fuzz_sigv4() {
    let keys = AccessKeys::new([example_key()]);
    let now = at("20150830T123600Z");
    portico_fuzz::check!("sigv4", |data: &[u8]| {
        let Ok(value) = http::HeaderValue::from_bytes(data) else {
            return;
        };
        let mut parts = suite_request("GET", "/a%2Fb?c=%zz&d", &"0".repeat(64));
        parts.headers.insert("authorization", value);
        let _ = verify(Signable::of(&parts, data), &keys, "service", now);
    });
}
