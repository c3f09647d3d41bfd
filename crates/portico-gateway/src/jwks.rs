//! JSON Web Key Sets: which keys verify tokens, read from a file or kept current from a URL.
//!
//! Only signing keys of the algorithms portico verifies are kept: RSA (`RS256`), P-256
//! (`ES256`) and Ed25519 (`EdDSA`). Other keys in a set (encryption keys, HMAC secrets,
//! other curves) are skipped, so a provider's full set can be used as it is published.
//!
//! A URL's set is fetched at start, again every refresh period, and early when a token names
//! a key the set lacks (a provider rotated its keys), at most once per
//! [`MIN_EARLY_REFRESH`] so that made-up key ids cannot make portico hammer the provider.

use crate::fetch;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Algorithms tokens may be signed with.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Shortest time between two fetches caused by unknown key ids.
pub const MIN_EARLY_REFRESH: Duration = Duration::from_secs(10);

/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a key set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The document is not a JWKS.
    #[error("not a JSON Web Key Set: {0}")]
    Malformed(String),
    /// The document has no key portico can verify with.
    #[error("no RS256, ES256 or EdDSA signing key in the set ({skipped} other keys skipped)")]
    NoUsableKey {
        /// Keys present but not usable.
        skipped: usize,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The URL could not be fetched.
    #[error("cannot fetch {url}: {source}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        source: fetch::FetchError,
    },
}

/// One verification key.
pub struct Key {
    /// Its `kid`, if the set gives one.
    pub kid: Option<String>,
    /// The one algorithm it verifies.
    pub algorithm: Algorithm,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys portico can verify with.
    pub fn parse(document: &[u8]) -> Result<Self, JwksError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document =
            serde_json::from_slice(document).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let total = doc.keys.len();
        let keys: Vec<Key> = doc
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| usable(&jwk))
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { skipped: total });
        }
        Ok(Self { keys })
    }

    /// The key for a token signed with `algorithm` naming `kid`. A token without a `kid`
    /// gets the set's only key of its algorithm, if there is exactly one.
    pub fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<&Key> {
        let mut of_alg = self.keys.iter().filter(|k| k.algorithm == algorithm);
        match kid {
            Some(kid) => of_alg.find(|k| k.kid.as_deref() == Some(kid)),
            None => match (of_alg.next(), of_alg.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            },
        }
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key and algorithm of `jwk`, if it is a signing key portico verifies with. A key's own
/// `alg`, when given, must agree with its type.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let declared = match jwk.common.key_algorithm {
        None => by_type,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
    };
    if declared != by_type {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithm: by_type,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// Where an authorizer's keys come from, and the set in use.
#[derive(Debug)]
pub struct Jwks {
    current: RwLock<Arc<KeySet>>,
    url: Option<String>,
    refresh: Duration,
    /// When the last early fetch started; serializes early fetches.
    early: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// Keys read once from a document already loaded.
    pub fn fixed(set: KeySet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
            url: None,
            refresh: Duration::MAX,
            early: tokio::sync::Mutex::new(None),
        }
    }

    /// Keys read from the file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, JwksError> {
        let document = std::fs::read(path).map_err(|source| JwksError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::fixed(KeySet::parse(&document)?))
    }

    /// Keys fetched from `url` now and then every `refresh` until `shutdown`. A first fetch
    /// that fails is logged and retried in the background; tokens fail until it succeeds.
    pub async fn from_url(
        url: &str,
        refresh: Duration,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let jwks = Arc::new(Self {
            current: RwLock::new(Arc::new(KeySet::default())),
            url: Some(url.to_owned()),
            refresh,
            early: tokio::sync::Mutex::new(None),
        });
        let first_ok = jwks.fetch().await;
        tasks.spawn(jwks.clone().keep_fresh(first_ok, shutdown.clone()));
        jwks
    }

    /// The set in use.
    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fetches the set again when it lacks a key a token names, unless an early fetch ran
    /// within [`MIN_EARLY_REFRESH`]. Returns whether a new set was installed.
    pub async fn refresh_for_unknown_key(&self) -> bool {
        if self.url.is_none() {
            return false;
        }
        let mut last = self.early.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_EARLY_REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        // Boxed: the fetch (an HTTPS client) is a future of kilobytes, and without the box it
        // would be carried inline by every request's future that checks a token, copied
        // into place per request, while it runs only when a key is unknown.
        Box::pin(self.fetch()).await
    }

    /// One fetch; installs the set and returns true on success, logs and returns false on
    /// failure (the old set stays).
    async fn fetch(&self) -> bool {
        let Some(url) = &self.url else {
            return false;
        };
        let result = fetch::get(url, MAX_JWKS_BYTES)
            .await
            .map_err(|source| JwksError::Fetch {
                url: url.clone(),
                source,
            })
            .and_then(|body| KeySet::parse(&body));
        match result {
            Ok(set) => {
                tracing::info!(%url, keys = set.len(), "JWKS fetched");
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
                true
            }
            Err(error) => {
                tracing::warn!(%url, %error, "JWKS fetch failed; keeping the keys held");
                false
            }
        }
    }

    /// Refetches every refresh period, and every 5 s after a failed fetch.
    async fn keep_fresh(self: Arc<Self>, mut ok: bool, shutdown: CancellationToken) {
        const RETRY: Duration = Duration::from_secs(5);
        loop {
            let wait = if ok { self.refresh } else { RETRY };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            ok = self.fetch().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    fn jwks(keys: &str) -> Vec<u8> {
        format!("{{\"keys\":[{keys}]}}").into_bytes()
    }

    #[test]
    fn keeps_signing_keys_of_supported_algorithms_only() {
        let doc = jwks(&format!(
            r#"{{"kty":"RSA","kid":"r1","use":"sig","n":"{RSA_N}","e":"AQAB"}},
               {{"kty":"RSA","kid":"enc","use":"enc","n":"{RSA_N}","e":"AQAB"}},
               {{"kty":"oct","kid":"h","k":"c2VjcmV0"}},
               {{"kty":"OKP","crv":"Ed25519","kid":"e1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}},
               {{"kty":"RSA","kid":"r2","alg":"ES256","n":"{RSA_N}","e":"AQAB"}},
               {{"kty":"weird"}}"#
        ));
        let set = KeySet::parse(&doc).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.find(Some("r1"), Algorithm::RS256).is_some());
        assert!(set.find(Some("r1"), Algorithm::ES256).is_none());
        assert!(set.find(Some("e1"), Algorithm::EdDSA).is_some());
        assert!(set.find(Some("h"), Algorithm::HS256).is_none());
        assert!(set.find(Some("enc"), Algorithm::RS256).is_none());
        // No kid: the only key of the algorithm.
        assert_eq!(
            set.find(None, Algorithm::EdDSA).unwrap().kid.as_deref(),
            Some("e1")
        );
    }

    #[test]
    fn bad_documents_are_refused_with_the_reason() {
        assert!(matches!(
            KeySet::parse(b"not json"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            KeySet::parse(b"{\"keys\": 3}"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            KeySet::parse(&jwks(r#"{"kty":"oct","k":"c2VjcmV0"}"#)),
            Err(JwksError::NoUsableKey { skipped: 1 })
        ));
    }
}
