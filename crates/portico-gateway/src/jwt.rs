//! JWT authorizers: the checks API Gateway's JWT authorizer makes, in its order.
//!
//! 1. The token is read from `Authorization`, alone or after `Bearer `.
//! 2. Its header names an algorithm portico verifies (RS256, ES256, EdDSA; never `none`
//!    nor an HMAC secret) and, by `kid`, a key of the authorizer's set.
//! 3. The signature holds.
//! 4. `iss` is the authorizer's issuer; `aud` (or `client_id` when there is no `aud`) is
//!    one of its audiences; `exp` is in the future and `nbf` and `iat` are not, each with
//!    the configured clock skew.
//! 5. With scopes on the rule, the `scope` (space separated) or `scp` claim holds at least
//!    one of them.
//!
//! Steps 1–4 failing is 401 with `WWW-Authenticate: Bearer … error="invalid_token"`; step 5
//! failing is 403 with `error="insufficient_scope"`.

use crate::jwks::Jwks;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused. The message is what `error_description` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No `Authorization` header.
    #[error("no token in the Authorization header")]
    Missing,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not three base64url parts with JSON inside.
    #[error("the token is malformed")]
    Malformed,
    /// `alg` is `none`, HMAC, or unknown.
    #[error("the token's algorithm is not accepted (RS256, ES256 or EdDSA)")]
    Algorithm,
    /// No key of the set matches `kid` and `alg`.
    #[error("no signing key matches the token's kid")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// `iss` is not the authorizer's.
    #[error("the token does not have a valid issuer")]
    Issuer,
    /// Neither `aud` nor `client_id` is one of the audiences.
    #[error("the token does not have a valid audience")]
    Audience,
    /// A required claim is absent.
    #[error("the token has no {0} claim")]
    MissingClaim(String),
    /// The scopes do not include one the rule requires.
    #[error("the token does not have the required scope")]
    Scope,
}

impl JwtError {
    /// Whether the answer is 403 rather than 401.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Scope)
    }
}

/// A token that passed: its claims and scopes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verified {
    /// Every claim of the token.
    pub claims: Map<String, Value>,
    /// The `scope` or `scp` claim, split.
    pub scopes: Vec<String>,
}

impl Verified {
    /// The value of [`crate::CLAIMS_HEADER`]: the claims as JSON, base64url without padding.
    pub fn claims_header(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(&self.claims).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// A claim as text: strings as they are, numbers and booleans printed.
    pub fn claim_text(&self, name: &str) -> Option<String> {
        match self.claims.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// One authorizer: issuer, audiences, clock skew and keys.
#[derive(Debug)]
pub struct Authorizer {
    issuer: String,
    audiences: Vec<String>,
    skew: u64,
    jwks: Arc<Jwks>,
}

impl Authorizer {
    /// An authorizer trusting `issuer` for `audiences`, with keys from `jwks`.
    pub fn new(issuer: String, audiences: Vec<String>, skew_seconds: u32, jwks: Arc<Jwks>) -> Self {
        Self {
            issuer,
            audiences,
            skew: u64::from(skew_seconds),
            jwks,
        }
    }

    /// The token of an `Authorization` header value: the value itself, or what follows
    /// `Bearer ` (any case).
    pub fn token_of(header: &[u8]) -> Result<&str, JwtError> {
        let text = std::str::from_utf8(header).map_err(|_| JwtError::Malformed)?;
        let token = match text.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => &text[7..],
            _ => text,
        };
        Ok(token.trim())
    }

    /// Runs steps 2–5 on `token` at Unix time `now`; `scopes` are the rule's.
    pub async fn verify(
        &self,
        token: &str,
        scopes: &[String],
        now: u64,
    ) -> Result<Verified, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        if token.is_empty() {
            return Err(JwtError::Missing);
        }
        let (alg, kid) = read_header(token)?;
        let kid = kid.as_deref();
        let mut keys = self.jwks.current();
        if keys.find(kid, alg).is_none() && self.jwks.refresh_for_unknown_key().await {
            keys = self.jwks.current();
        }
        let key = keys.find(kid, alg).ok_or(JwtError::UnknownKey)?;
        let claims = self.signed_claims(token, &key.key, alg)?;
        self.check_times(&claims, now)?;
        self.check_audience(&claims)?;
        let granted = scopes_of(&claims);
        if !scopes.is_empty() && !scopes.iter().any(|s| granted.contains(s)) {
            return Err(JwtError::Scope);
        }
        Ok(Verified {
            claims,
            scopes: granted,
        })
    }

    /// Verifies the signature and `iss`, and returns the claims.
    fn signed_claims(
        &self,
        token: &str,
        key: &jsonwebtoken::DecodingKey,
        alg: Algorithm,
    ) -> Result<Map<String, Value>, JwtError> {
        let mut validation = Validation::new(alg);
        // Times and audience are checked by `check_times` and `check_audience`, which
        // follow API Gateway (iat, client_id) where the crate's checks do not.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        validation.set_issuer(&[&self.issuer]);
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => JwtError::Signature,
                ErrorKind::InvalidIssuer => JwtError::Issuer,
                ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c),
                ErrorKind::InvalidAlgorithm => JwtError::Algorithm,
                _ => JwtError::Malformed,
            })
    }

    fn check_times(&self, claims: &Map<String, Value>, now: u64) -> Result<(), JwtError> {
        let time = |name: &str| {
            claims
                .get(name)
                .map(|v| v.as_f64().ok_or(JwtError::Malformed))
        };
        let exp = time("exp").ok_or_else(|| JwtError::MissingClaim("exp".into()))??;
        let now = now as f64;
        let skew = self.skew as f64;
        if exp + skew <= now {
            return Err(JwtError::Expired);
        }
        if time("nbf").transpose()?.is_some_and(|nbf| nbf > now + skew) {
            return Err(JwtError::NotYetValid);
        }
        if time("iat").transpose()?.is_some_and(|iat| iat > now + skew) {
            return Err(JwtError::IssuedInFuture);
        }
        Ok(())
    }

    /// `aud` (a string or a list) must hold one of the audiences; without `aud`,
    /// `client_id` must be one.
    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), JwtError> {
        let allowed = |v: &Value| {
            v.as_str()
                .is_some_and(|s| self.audiences.iter().any(|a| a == s))
        };
        let ok = match (claims.get("aud"), claims.get("client_id")) {
            (Some(Value::Array(list)), _) => list.iter().any(allowed),
            (Some(aud), _) => allowed(aud),
            (None, Some(client)) => allowed(client),
            (None, None) => false,
        };
        if ok { Ok(()) } else { Err(JwtError::Audience) }
    }
}

/// The algorithm and `kid` of a token's header, refusing an `alg` portico does not verify
/// (`none` above all) before anything else is read from the token.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), JwtError> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Head {
        alg: Option<String>,
        kid: Option<String>,
    }
    let head = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| JwtError::Malformed)?;
    let head: Head = serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)?;
    let alg = match head.alg.as_deref() {
        Some("RS256") => Algorithm::RS256,
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        _ => return Err(JwtError::Algorithm),
    };
    Ok((alg, head.kid))
}

/// The scopes a token grants: `scope` split on spaces, or `scp` as a list or a string.
fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let split = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => split(s),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}
