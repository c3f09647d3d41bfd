//! JWT authorizers against real tokens signed with keys made for the test: every check of
//! API Gateway's authorizer, and the attacks (`alg: none`, HMAC with a public key, forged
//! signatures, oversize and garbage tokens).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "support/keys.rs"]
mod keys;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keys::TestKey;
use portico_gateway::jwks::{Jwks, KeySet};
use portico_gateway::jwt::{Authorizer, JwtError, MAX_TOKEN_BYTES};
use portico_gateway::token::{Claims, mint};
use std::sync::Arc;

const NOW: u64 = 1_795_608_000;
const ISSUER: &str = "https://auth.example.com";

struct Fixture {
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
    authorizer: Authorizer,
}

fn fixture() -> Fixture {
    let (rsa, ec, ed) = (
        keys::rsa("rsa-1"),
        keys::p256("ec-1"),
        keys::ed25519("ed-1"),
    );
    let set = KeySet::parse(keys::jwks(&[&rsa, &ec, &ed]).as_bytes()).unwrap();
    let authorizer = Authorizer::new(
        ISSUER.into(),
        vec!["orders".into(), "billing".into()],
        60,
        Arc::new(Jwks::fixed(set)),
    );
    Fixture {
        rsa,
        ec,
        ed,
        authorizer,
    }
}

fn claims() -> Claims {
    Claims {
        issuer: ISSUER.into(),
        audience: "orders".into(),
        subject: "user-7".into(),
        scopes: vec!["orders:read".into(), "orders:write".into()],
        lifetime_seconds: 300,
        extra: serde_json::Map::new(),
    }
}

fn token(key: &TestKey, kid: &str, claims: &Claims, now: u64) -> String {
    mint(&key.pem, None, Some(kid), claims, now).unwrap()
}

/// A token with `header` and `payload` as given and signature `sig`.
fn raw(header: serde_json::Value, payload: serde_json::Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

#[tokio::test]
async fn all_three_algorithms_verify_and_claims_come_through() {
    let f = fixture();
    for (key, kid) in [(&f.rsa, "rsa-1"), (&f.ec, "ec-1"), (&f.ed, "ed-1")] {
        let t = token(key, kid, &claims(), NOW);
        let v = f.authorizer.verify(&t, &[], NOW).await.unwrap();
        assert_eq!(v.claims["sub"], "user-7", "{kid}");
        assert_eq!(v.scopes, ["orders:read", "orders:write"]);
        assert_eq!(v.claim_text("exp").as_deref(), Some("1795608300"));
    }
}

#[tokio::test]
async fn times_are_checked_with_the_clock_skew() {
    let f = fixture();
    let t = token(&f.ed, "ed-1", &claims(), NOW);
    // Expired 30 s ago: within the 60 s skew. 90 s ago: not.
    assert!(f.authorizer.verify(&t, &[], NOW + 330).await.is_ok());
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW + 390).await,
        Err(JwtError::Expired)
    );
    // Issued (and valid from) 2 minutes in the future.
    let early = token(&f.ed, "ed-1", &claims(), NOW + 120);
    assert_eq!(
        f.authorizer.verify(&early, &[], NOW).await,
        Err(JwtError::NotYetValid)
    );
    let mut c = claims();
    c.extra.insert("nbf".into(), NOW.into());
    c.extra.insert("iat".into(), (NOW + 600).into());
    let t = token(&f.ed, "ed-1", &c, NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::IssuedInFuture)
    );
    let mut c = claims();
    c.extra.insert("exp".into(), serde_json::Value::Null);
    let t = token(&f.ed, "ed-1", &c, NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::Malformed)
    );
}

#[tokio::test]
async fn issuer_audience_and_scopes_are_checked() {
    let f = fixture();
    let mut c = claims();
    c.issuer = "https://evil.example.com".into();
    let t = token(&f.rsa, "rsa-1", &c, NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::Issuer)
    );

    let mut c = claims();
    c.audience = "somebody-else".into();
    let t = token(&f.rsa, "rsa-1", &c, NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::Audience)
    );

    // A list of audiences with one of ours passes.
    let mut c = claims();
    c.extra
        .insert("aud".into(), serde_json::json!(["x", "billing"]));
    let t = token(&f.rsa, "rsa-1", &c, NOW);
    assert!(f.authorizer.verify(&t, &[], NOW).await.is_ok());

    // Without `aud`, `client_id` is the audience (Cognito access tokens).
    let mut c = claims();
    c.audience.clear();
    c.extra.insert("client_id".into(), "orders".into());
    let t = token(&f.ec, "ec-1", &c, NOW);
    assert!(f.authorizer.verify(&t, &[], NOW).await.is_ok());
    // `aud` wins over `client_id` when both are there; a null `aud` matches nothing.
    c.extra.insert("aud".into(), serde_json::Value::Null);
    let t = token(&f.ec, "ec-1", &c, NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::Audience)
    );

    let t = token(&f.ed, "ed-1", &claims(), NOW);
    let need = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(
        f.authorizer
            .verify(&t, &need(&["admin", "orders:write"]), NOW)
            .await
            .is_ok()
    );
    let e = f
        .authorizer
        .verify(&t, &need(&["admin"]), NOW)
        .await
        .unwrap_err();
    assert_eq!(e, JwtError::Scope);
    assert!(e.is_forbidden());

    // `scp` as a list works as `scope` does.
    let mut c = claims();
    c.scopes.clear();
    c.extra.insert("scp".into(), serde_json::json!(["admin"]));
    let t = token(&f.ed, "ed-1", &c, NOW);
    assert!(
        f.authorizer
            .verify(&t, &need(&["admin"]), NOW)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_refused() {
    let f = fixture();
    let good = token(&f.rsa, "rsa-1", &claims(), NOW);
    let payload: serde_json::Value = {
        let middle = good.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(middle).unwrap()).unwrap()
    };

    // alg: none, with and without a signature.
    for sig in ["", "AAAA"] {
        let t = raw(
            serde_json::json!({"alg": "none", "kid": "rsa-1"}),
            payload.clone(),
            sig,
        );
        assert_eq!(
            f.authorizer.verify(&t, &[], NOW).await,
            Err(JwtError::Algorithm)
        );
    }
    // HS256 "signed" with the RSA public key's JWK as the secret (algorithm confusion).
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("rsa-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(f.rsa.jwk.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        f.authorizer.verify(&hs, &[], NOW).await,
        Err(JwtError::Algorithm)
    );

    // The payload changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = payload.clone();
    forged["sub"] = "admin".into();
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    assert_eq!(
        f.authorizer.verify(&parts.join("."), &[], NOW).await,
        Err(JwtError::Signature)
    );

    // Signed by a key the authorizer does not trust, under a trusted kid.
    let stranger = keys::ed25519("ed-1");
    let t = token(&stranger, "ed-1", &claims(), NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::Signature)
    );
    // A kid nobody knows; and a kid of another algorithm's key.
    let t = token(&f.ed, "nope", &claims(), NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::UnknownKey)
    );
    let t = token(&f.ed, "rsa-1", &claims(), NOW);
    assert_eq!(
        f.authorizer.verify(&t, &[], NOW).await,
        Err(JwtError::UnknownKey)
    );

    // A header without `alg`.
    assert_eq!(
        f.authorizer.verify("e30.e30.", &[], NOW).await,
        Err(JwtError::Algorithm)
    );
    for garbage in ["abc", "a.b.c", "....", "\u{1F600}.x.y"] {
        assert_eq!(
            f.authorizer.verify(garbage, &[], NOW).await,
            Err(JwtError::Malformed),
            "{garbage}"
        );
    }
    let huge = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
    assert_eq!(
        f.authorizer.verify(&huge, &[], NOW).await,
        Err(JwtError::TooLarge)
    );
    assert_eq!(
        f.authorizer.verify("", &[], NOW).await,
        Err(JwtError::Missing)
    );
}

#[test]
fn the_token_is_read_with_or_without_bearer() {
    assert_eq!(
        Authorizer::token_of(b"Bearer abc.def.ghi").unwrap(),
        "abc.def.ghi"
    );
    assert_eq!(Authorizer::token_of(b"bearer abc").unwrap(), "abc");
    assert_eq!(Authorizer::token_of(b"abc.def.ghi").unwrap(), "abc.def.ghi");
    assert_eq!(Authorizer::token_of(b"\xff"), Err(JwtError::Malformed));
}
