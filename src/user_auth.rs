//! The end user: an optional `Authorization: Bearer <JWT>` verified against a
//! JWKS file, exposed to policies as `context.user`.
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
//! Must never: accept an unsigned or HMAC token, accept an expired one, or
//! treat a token it could not verify as absent.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::value::RawValue;

use crate::config::{UserAuthConfig, UserKeys};
use crate::policy::User;

/// Verifies end-user tokens. Built once at start.
pub struct UserAuth {
    keys: HashMap<String, (DecodingKey, Validation)>,
    /// The key to use for a token without `kid`: only when the set has one.
    only: Option<String>,
    pub required: bool,
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
}

impl UserAuth {
    pub fn load(config: &UserAuthConfig) -> anyhow::Result<UserAuth> {
        let path = match &config.keys {
            UserKeys::JwksFile(path) => path,
            UserKeys::JwtSvid => anyhow::bail!(
                "user_auth.jwt_svid: verifying end-user JWT-SVIDs is not supported yet; use jwks_file"
            ),
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
            keys,
            only,
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
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Malformed)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let kid = match (&header.kid, &self.only) {
            (Some(kid), _) => kid,
            (None, Some(only)) => only,
            (None, None) => return Err(TokenError::UnknownKey),
        };
        let (key, validation) = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Box<RawValue>>(token, key, validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        User::from_claims_json(data.claims.get())
            .map(|u| Some(Arc::new(u)))
            .map_err(|e| TokenError::Claims(e.to_string()))
    }
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
