//! Minting test tokens (`portico token`): a JWT signed with a private key in PEM, with the
//! claims an authorizer checks.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key is not a PEM private key of a supported algorithm.
    #[error("the key is not an RSA, P-256 or Ed25519 private key in PEM ({0})")]
    Key(String),
}

/// What goes into a token.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// `iss`.
    pub issuer: String,
    /// `aud`; left out when empty.
    pub audience: String,
    /// `sub`.
    pub subject: String,
    /// `scope`, joined with spaces; left out when empty.
    pub scopes: Vec<String>,
    /// Seconds from now to `exp`.
    pub lifetime_seconds: u64,
    /// More claims, added last (they may replace the ones above).
    pub extra: Map<String, Value>,
}

/// Signs `claims` at Unix time `now` with the PEM private key `pem`, as `algorithm` or, if
/// `None`, the one the key is for. `kid` goes into the header.
pub fn mint(
    pem: &[u8],
    algorithm: Option<Algorithm>,
    kid: Option<&str>,
    claims: &Claims,
    now: u64,
) -> Result<String, TokenError> {
    let mut body = Map::new();
    body.insert("iss".into(), claims.issuer.clone().into());
    if !claims.audience.is_empty() {
        body.insert("aud".into(), claims.audience.clone().into());
    }
    body.insert("sub".into(), claims.subject.clone().into());
    body.insert("iat".into(), now.into());
    body.insert("nbf".into(), now.into());
    body.insert("exp".into(), (now + claims.lifetime_seconds).into());
    if !claims.scopes.is_empty() {
        body.insert("scope".into(), claims.scopes.join(" ").into());
    }
    body.extend(claims.extra.clone());
    let candidates = match algorithm {
        Some(alg) => vec![alg],
        None => crate::jwks::ALGORITHMS.to_vec(),
    };
    let mut last = String::from("no algorithm tried");
    for alg in candidates {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            other => return Err(TokenError::Key(format!("{other:?} is not supported"))),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        match key.and_then(|key| jsonwebtoken::encode(&header, &body, &key)) {
            Ok(token) => return Ok(token),
            Err(e) => last = e.to_string(),
        }
    }
    Err(TokenError::Key(last))
}
