//! AWS Signature Version 4, as the AWS CLI and SDKs sign every request: [`verify`] checks a
//! request against the access keys an API was configured with, [`sign`] signs portico's
//! own (`portico status`, `portico invoke`) the same way.
//!
//! A signature covers the method, the path, the query, the headers it names and a SHA-256
//! of the body, under a key derived from the secret for one day, region and service
//! (`AWS4-HMAC-SHA256`; AWS's "Create a signed AWS API request"). Verifying recomputes it:
//! the canonical request is built from the request as it arrived, the path encoded once
//! more as every service but S3 does, the query's names and values decoded and encoded
//! again strictly, and the signature compared in constant time. A request more than 15
//! minutes from now is refused as AWS refuses it. Presigned URLs (the signature in the
//! query) and session tokens are not accepted: the APIs know long-term keys only.
//!
//! - `time`: `x-amz-date` stamps;
//! - `canonical`: the canonical request and its encodings.

mod canonical;
mod time;

use http::HeaderMap;
use ring::{digest, hmac};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

pub use time::{amz_date, parse_amz_date};

/// The algorithm name in `Authorization`.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's time may be from now, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// One access key: its id and secret.
#[derive(Clone)]
pub struct AccessKey {
    /// The access key id (`AKIA…`), named in each signed request.
    pub id: String,
    /// The secret access key, never sent.
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The access keys an API accepts, by id.
#[derive(Debug, Clone, Default)]
pub struct AccessKeys {
    secrets: HashMap<String, String>,
}

impl AccessKeys {
    /// The keys `keys`.
    pub fn new(keys: impl IntoIterator<Item = AccessKey>) -> Self {
        Self {
            secrets: keys.into_iter().map(|k| (k.id, k.secret)).collect(),
        }
    }

    /// No key: the API takes unsigned requests.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    Missing,
    /// An `Authorization` header that is not a whole SigV4 one.
    #[error("{0}")]
    Malformed(String),
    /// An access key id the API does not know.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// The signature is not the one the request and the key make.
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    Mismatch,
    /// The request's time is more than [`MAX_SKEW`] from now.
    #[error("Signature expired: {signed} is now earlier than {earliest} ({now} - 15 min.)")]
    Expired {
        /// The request's `x-amz-date`.
        signed: String,
        /// The earliest time accepted.
        earliest: String,
        /// Now.
        now: String,
    },
    /// The credential's scope names another service.
    #[error("Credential should be scoped to correct service: '{0}'. ")]
    WrongService(String),
}

impl Refusal {
    /// The exception's name in a REST-JSON API's `x-amzn-ErrorType` (Lambda).
    pub fn json_error_type(&self) -> &'static str {
        match self {
            Self::Missing => "MissingAuthenticationTokenException",
            Self::UnknownKey => "UnrecognizedClientException",
            Self::Malformed(_) => "IncompleteSignatureException",
            Self::Mismatch | Self::Expired { .. } | Self::WrongService(_) => {
                "InvalidSignatureException"
            }
        }
    }

    /// The error code in a Query API's XML (Elastic Load Balancing).
    pub fn query_code(&self) -> &'static str {
        match self {
            Self::Missing => "MissingAuthenticationToken",
            Self::UnknownKey => "InvalidClientTokenId",
            Self::Malformed(_) => "IncompleteSignature",
            Self::Mismatch | Self::Expired { .. } | Self::WrongService(_) => {
                "SignatureDoesNotMatch"
            }
        }
    }
}

/// What a request is, for signing and verifying: its head and its whole body.
#[derive(Debug, Clone, Copy)]
pub struct Signable<'a> {
    /// The method.
    pub method: &'a str,
    /// The path as it came on the wire (percent-encoded).
    pub path: &'a str,
    /// The query as it came on the wire, without `?`.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Signable<'a> {
    /// The parts of an `http` request and its body.
    pub fn of(parts: &'a http::request::Parts, body: &'a [u8]) -> Self {
        Self {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        }
    }
}

/// The fields of an `Authorization: AWS4-HMAC-SHA256 …` header.
struct Authorization<'a> {
    key_id: &'a str,
    /// `DATE/REGION/SERVICE/aws4_request`.
    scope: &'a str,
    date: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, Refusal> {
    let malformed = |what: &str| Refusal::Malformed(format!("Authorization header: {what}"));
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| malformed("the algorithm must be AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in rest.split(',').map(str::trim) {
        match field.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(malformed(&format!("unknown field {field:?}"))),
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let signed = signed.ok_or_else(|| malformed("no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("no Signature"))?;
    let (key_id, scope) = credential
        .split_once('/')
        .ok_or_else(|| malformed("Credential is not KEY/DATE/REGION/SERVICE/aws4_request"))?;
    let parts: Vec<&str> = scope.split('/').collect();
    let [date, _region, service, "aws4_request"] = parts.as_slice() else {
        return Err(malformed(
            "Credential is not KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("Signature is not 64 hexadecimal digits"));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return Err(malformed("an empty name in SignedHeaders"));
    }
    Ok(Authorization {
        key_id,
        scope,
        date,
        service,
        signed_headers,
        signature,
    })
}

/// Checks `request`'s signature against `keys`, for `service`, at `now`. Returns the id of
/// the key that signed it.
pub fn verify(
    request: Signable<'_>,
    keys: &AccessKeys,
    service: &str,
    now: SystemTime,
) -> Result<String, Refusal> {
    let header = request
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or(Refusal::Missing)?
        .to_str()
        .map_err(|_| Refusal::Malformed("Authorization header is not text".into()))?;
    let auth = parse_authorization(header)?;
    let secret = keys.secrets.get(auth.key_id).ok_or(Refusal::UnknownKey)?;
    if auth.service != service {
        return Err(Refusal::WrongService(service.to_owned()));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(Refusal::Malformed(format!(
                "'{required}' must be a signed header"
            )));
        }
    }
    let stamp = request
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Refusal::Malformed("no X-Amz-Date header".into()))?;
    let signed_at = parse_amz_date(stamp).ok_or_else(|| {
        Refusal::Malformed(format!("X-Amz-Date {stamp:?} is not YYYYMMDDTHHMMSSZ"))
    })?;
    if !stamp.starts_with(auth.date) {
        return Err(Refusal::Malformed(format!(
            "the Credential's date {} is not the day of X-Amz-Date {stamp}",
            auth.date
        )));
    }
    let too_old = now.checked_sub(MAX_SKEW).is_some_and(|t| signed_at < t);
    if too_old || signed_at > now + MAX_SKEW {
        let earliest = now.checked_sub(MAX_SKEW).unwrap_or(now);
        return Err(Refusal::Expired {
            signed: stamp.to_owned(),
            earliest: amz_date(earliest),
            now: amz_date(now),
        });
    }
    let canonical = canonical::request(request, &auth.signed_headers)?;
    let to_sign = string_to_sign(stamp, auth.scope, &canonical);
    let key = signing_key(secret, auth.scope);
    let provided = hex_decode(auth.signature)
        .ok_or_else(|| Refusal::Malformed("Signature is not hexadecimal".into()))?;
    hmac::verify(&key, to_sign.as_bytes(), &provided).map_err(|_| Refusal::Mismatch)?;
    Ok(auth.key_id.to_owned())
}

/// Signs `parts` (whose body is `body`) with `key` for `region` and `service` at `now`:
/// sets `x-amz-date` and `Authorization`, signing `host` (from the URI's authority when the
/// header is missing) and every `x-amz-*` and `content-type` header.
pub fn sign(
    parts: &mut http::request::Parts,
    body: &[u8],
    key: &AccessKey,
    (region, service): (&str, &str),
    now: SystemTime,
) {
    let stamp = amz_date(now);
    let set = |parts: &mut http::request::Parts, name: &'static str, value: &str| {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            parts.headers.insert(name, value);
        }
    };
    if !parts.headers.contains_key(http::header::HOST)
        && let Some(authority) = parts.uri.authority().map(|a| a.as_str().to_owned())
    {
        set(parts, "host", &authority);
    }
    set(parts, "x-amz-date", &stamp);
    let mut names: Vec<&str> = parts
        .headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|n| *n == "host" || *n == "content-type" || n.starts_with("x-amz-"))
        .collect();
    names.sort_unstable();
    names.dedup();
    let signed_headers = names.join(";");
    let day = &stamp[..8];
    let scope = format!("{day}/{region}/{service}/aws4_request");
    let canonical = canonical::request(Signable::of(parts, body), &names).unwrap_or_default();
    let to_sign = string_to_sign(&stamp, &scope, &canonical);
    let signature = hmac::sign(&signing_key(&key.secret, &scope), to_sign.as_bytes());
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={}",
        key.id,
        hex(signature.as_ref())
    );
    set(parts, "authorization", &authorization);
}

fn string_to_sign(stamp: &str, scope: &str, canonical: &str) -> String {
    let hash = digest::digest(&digest::SHA256, canonical.as_bytes());
    format!("{ALGORITHM}\n{stamp}\n{scope}\n{}", hex(hash.as_ref()))
}

/// `kSigning`: the secret, through the scope's day, region, service and `aws4_request`.
fn signing_key(secret: &str, scope: &str) -> hmac::Key {
    let mut key = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes());
    for part in scope.split('/') {
        let tag = hmac::sign(&key, part.as_bytes());
        key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
    }
    key
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [a, b] => Some(digit(*a)? << 4 | digit(*b)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
