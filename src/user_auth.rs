//! The end user: an optional `Authorization: Bearer <JWT>` verified against a
//! JWKS file, or as a JWT-SVID against the JWT bundles from the SPIFFE
//! Workload API, exposed to policies as `context.user`.
//!
//! The workload is still the caller (its SPIFFE ID from mTLS); the token only
//! says on whose behalf it calls. A request without a token has no user
//! (policies see `context has user` false) unless `user_auth.required` is
//! set. A token that is present but fails verification refuses the request
//! (401): a bad token never degrades to "no user".
//!
//! Verification: the key is chosen by the token's `kid` (a set with one key
//! needs none); the algorithm must be the one the key is for (from the JWK's
//! `alg`, else its key type and curve), so `alg` in the token cannot pick a
//! weaker check; symmetric (`oct`) keys are refused at load, since a shared
//! secret is not an identity. `exp`, `iss` and `aud` are required and
//! checked, `nbf` when present, with `user_auth.leeway_seconds` of skew.
//! The token is not forwarded to the upstream: its audience is the gateway.
//!
//! JWT-SVID mode (`user_auth.jwt_svid: true`): `sub` must be a SPIFFE ID; the
//! key is the `kid` authority in the JWT bundle of that ID's trust domain, as
//! the Workload API delivers it (federated bundles included, kept current).
//! A trust domain without a bundle, or before the first bundle arrives, is a
//! refusal. `iss` is not required (SPIRE sets none); `context.user.iss` is
//! then `spiffe://<trust domain>`.
//!
//! Must never: accept an unsigned or HMAC token, accept an expired one, or
//! treat a token it could not verify as absent.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use spiffe::{JwtSource, SpiffeId};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::value::RawValue;

use crate::config::{JwtSvidCallersConfig, UserAuthConfig, UserKeys};
use crate::identity::spiffe_id;
use crate::policy::User;

/// Verifies end-user tokens. Built once at start.
pub struct UserAuth {
    keys: Keys,
    pub required: bool,
}

enum Keys {
    Jwks {
        keys: HashMap<String, (DecodingKey, Validation)>,
        /// The key to use for a token without `kid`: only when the set has one.
        only: Option<String>,
    },
    JwtSvid {
        /// Filled once the Workload API has delivered JWT bundles.
        source: Arc<OnceLock<JwtSource>>,
        audience: String,
        leeway: u64,
    },
}

/// Why a request's token was refused (the text goes to the caller and the
/// audit record: it names the check, never the token).
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum TokenError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("the token's key id is unknown")]
    UnknownKey,
    #[error("the token failed verification: {0}")]
    Invalid(String),
    #[error("the token's claims are unusable: {0}")]
    Claims(String),
    #[error("no JWT bundle for the token's trust domain")]
    NoBundle,
}

impl UserAuth {
    /// `workload_api`: the endpoint JWT bundles come from (JWT-SVID mode; the
    /// source is connected in the background, so this never blocks).
    pub fn load(config: &UserAuthConfig, workload_api: &str) -> anyhow::Result<UserAuth> {
        let path = match &config.keys {
            UserKeys::JwksFile(path) => path,
            UserKeys::JwtSvid => {
                let source = spawn_jwt_source(workload_api, "end-user");
                return Ok(UserAuth {
                    keys: Keys::JwtSvid {
                        source,
                        audience: config.audience.clone(),
                        leeway: config.leeway.as_secs(),
                    },
                    required: config.required,
                });
            }
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("user_auth.jwks_file: {}: {e}", path.display()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("user_auth.jwks_file: {}: not a JWKS: {e}", path.display())
        })?;
        if set.keys.is_empty() {
            anyhow::bail!("user_auth.jwks_file: {}: no keys", path.display());
        }
        let mut keys = HashMap::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            let what = || format!("user_auth.jwks_file: key #{index} (kid {kid:?})");
            let algorithm = algorithm_for(jwk).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
            let mut validation = Validation::new(algorithm);
            validation.leeway = config.leeway.as_secs();
            validation.validate_nbf = true;
            validation.set_audience(&[&config.audience]);
            if let Some(issuer) = &config.issuer {
                validation.set_issuer(&[issuer]);
            }
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            if keys.insert(kid.clone(), (key, validation)).is_some() {
                anyhow::bail!("{}: duplicate key id", what());
            }
        }
        let only = (keys.len() == 1)
            .then(|| keys.keys().next().cloned())
            .flatten();
        Ok(UserAuth {
            keys: Keys::Jwks { keys, only },
            required: config.required,
        })
    }

    /// The user of a request, from its `Authorization` header values.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<Option<Arc<User>>, TokenError> {
        let Some(value) = authorization else {
            return if self.required {
                Err(TokenError::Missing)
            } else {
                Ok(None)
            };
        };
        let token = bearer(value)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let user = match &self.keys {
            Keys::Jwks { keys, only } => {
                let kid = match (&header.kid, only) {
                    (Some(kid), _) => kid,
                    (None, Some(only)) => only,
                    (None, None) => return Err(TokenError::UnknownKey),
                };
                let (key, validation) = keys.get(kid).ok_or(TokenError::UnknownKey)?;
                let claims = decode(token, key, validation)?;
                User::from_claims_json(claims.get(), None)
            }
            Keys::JwtSvid {
                source,
                audience,
                leeway,
            } => {
                let (subject, claims) = verify_jwt_svid(source, token, &header, audience, *leeway)?;
                let issuer = format!("spiffe://{}", subject.trust_domain());
                User::from_claims_json(claims.get(), Some(&issuer))
            }
        };
        user.map(|u| Some(Arc::new(u)))
            .map_err(|e| TokenError::Claims(e.to_string()))
    }
}

/// Connects a `JwtSource` in the background; the slot stays empty (every
/// token refused, `NoBundle`) until the first JWT bundles arrive.
fn spawn_jwt_source(workload_api: &str, what: &'static str) -> Arc<OnceLock<JwtSource>> {
    let source = Arc::new(OnceLock::new());
    let slot = Arc::clone(&source);
    let endpoint = workload_api.to_owned();
    tokio::spawn(async move {
        match JwtSource::builder().endpoint(&endpoint).build().await {
            Ok(s) => {
                tracing::info!("JWT bundles received; {what} JWT-SVIDs can be verified");
                let _ = slot.set(s);
            }
            Err(e) => {
                tracing::error!(error = %e, "JWT bundles unavailable; every {what} token is refused")
            }
        }
    });
    source
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(value: &[u8]) -> Result<&str, TokenError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Malformed)
}

/// Verifies a JWT-SVID against the JWT bundle of its subject's trust domain
/// (the `kid` authority in it): signature, `aud`, `exp` (and `nbf` when
/// present) with `leeway` seconds. Returns the subject and the claims.
fn verify_jwt_svid(
    source: &OnceLock<JwtSource>,
    token: &str,
    header: &jsonwebtoken::Header,
    audience: &str,
    leeway: u64,
) -> Result<(SpiffeId, Box<RawValue>), TokenError> {
    let source = source.get().ok_or(TokenError::NoBundle)?;
    let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
    let subject = unverified_subject(token)?;
    let bundle = source
        .try_bundle_for_trust_domain(subject.trust_domain())
        .ok_or(TokenError::NoBundle)?;
    let authority = bundle
        .find_jwt_authority(kid)
        .ok_or(TokenError::UnknownKey)?;
    let jwk: Jwk = serde_json::from_slice(authority.jwk_json())
        .map_err(|e| TokenError::Invalid(format!("bundle key: {e}")))?;
    let algorithm = algorithm_for(&jwk).map_err(TokenError::Invalid)?;
    let key =
        DecodingKey::from_jwk(&jwk).map_err(|e| TokenError::Invalid(format!("bundle key: {e}")))?;
    let mut validation = Validation::new(algorithm);
    validation.leeway = leeway;
    validation.validate_nbf = true;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = decode(token, &key, &validation)?;
    Ok((subject, claims))
}

/// Verifies the JWT-SVID a caller without a client certificate presents on
/// each request (`listener.jwt_svid_callers`). The workload is then the
/// token's `sub`; no end user is involved (the config refuses `user_auth`
/// beside it).
pub struct CallerTokens {
    source: Arc<OnceLock<JwtSource>>,
    /// `None`: the gateway's own SPIFFE ID, given per request.
    audience: Option<String>,
}

/// A caller authenticated by a JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCaller {
    pub spiffe_id: SpiffeId,
    /// The token's `exp`, Unix seconds.
    pub expires: i64,
}

impl CallerTokens {
    /// Connects the JWT bundle source in the background (never blocks).
    pub fn start(config: &JwtSvidCallersConfig, workload_api: &str) -> CallerTokens {
        CallerTokens {
            source: spawn_jwt_source(workload_api, "caller"),
            audience: config.audience.clone(),
        }
    }

    /// The caller of a request from its `Authorization` header values; no
    /// header, a second one, or any failed check is a refusal. `own_id` is
    /// the audience unless one is configured. No clock leeway: a token is
    /// refused from its `exp` on.
    pub fn verify(
        &self,
        authorization: hyper::header::GetAll<'_, hyper::header::HeaderValue>,
        own_id: &str,
    ) -> Result<TokenCaller, TokenError> {
        let mut values = authorization.iter();
        let value = values.next().ok_or(TokenError::Missing)?;
        if values.next().is_some() {
            return Err(TokenError::Malformed);
        }
        let token = bearer(value.as_bytes())?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let audience = self.audience.as_deref().unwrap_or(own_id);
        let (subject, claims) = verify_jwt_svid(&self.source, token, &header, audience, 0)?;
        if subject.path().is_empty() {
            return Err(TokenError::Claims(
                "`sub` needs a path (a workload, not a trust domain)".to_owned(),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Verified {
            sub: String,
            exp: i64,
        }
        // Read back from the verified claims: the subject that picked the
        // bundle must be the one that was signed.
        let verified: Verified = serde_json::from_str(claims.get())
            .map_err(|_| TokenError::Claims("`sub` or `exp` unusable".to_owned()))?;
        if verified.sub != subject.to_string() {
            return Err(TokenError::Claims("`sub` is ambiguous".to_owned()));
        }
        // RFC 7519 4.1.4: not accepted on or after `exp`.
        if verified.exp <= crate::clock::unix_seconds() {
            return Err(TokenError::Invalid("ExpiredSignature".to_owned()));
        }
        Ok(TokenCaller {
            spiffe_id: subject,
            expires: verified.exp,
        })
    }
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Box<RawValue>, TokenError> {
    jsonwebtoken::decode::<Box<RawValue>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// The `sub` of a JWT-SVID before verification, only to pick the bundle that
/// then verifies it: it must be a SPIFFE ID.
fn unverified_subject(token: &str) -> Result<SpiffeId, TokenError> {
    #[derive(serde::Deserialize)]
    struct Subject {
        sub: String,
    }
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| B64.decode(p).ok())
        .ok_or(TokenError::Malformed)?;
    let subject: Subject = serde_json::from_slice(&payload)
        .map_err(|_| TokenError::Claims("no string `sub`".to_owned()))?;
    // Exactly as written: a `sub` whose case was folded would pick (and be
    // taken as) another workload's identity.
    spiffe_id::canonical(&subject.sub).map_err(|e| TokenError::Claims(format!("`sub`: {e}")))
}

/// The one algorithm a key verifies: its `alg`, or what its type implies.
fn algorithm_for(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are refused: a shared secret is not an identity".into(),
            );
        }
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref c => return Err(format!("curve {c:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
    };
    let Some(alg) = jwk.common.key_algorithm else {
        return Ok(implied);
    };
    let declared = match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => {
            return Err(format!(
                "alg {other:?} is not a signature algorithm the gateway accepts"
            ));
        }
    };
    let same_family = matches!(
        (implied, declared),
        (
            Algorithm::RS256,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (Algorithm::ES256, Algorithm::ES256)
            | (Algorithm::ES384, Algorithm::ES384)
            | (Algorithm::EdDSA, Algorithm::EdDSA)
    );
    if !same_family {
        return Err(format!("alg {alg:?} does not fit the key type"));
    }
    Ok(declared)
}

#[cfg(test)]
mod tests;
