//! Credentials carried in a request rather than by its connection: the
//! end user's token (`user_auth`, `context.user`) and, on a connection
//! without a client certificate (`listener.jwt_svid_callers`), the caller's
//! JWT-SVID. Both are read from `Authorization: Bearer`, which is why the
//! config refuses the two together, and why the header never reaches an
//! upstream when either is configured (its audience is the gateway).
//!
//! Must never: treat a token it could not verify as absent, pick one of
//! several `Authorization` headers, or name a caller it did not verify.

use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderValue};

use crate::config::Config;
use crate::policy::User;
use crate::proxy::listener::Peer;
use crate::user_auth::{CallerTokens, TokenError, UserAuth};

/// The verifiers configured for per-request credentials.
pub struct Credentials {
    /// End-user token verification, if configured.
    user_auth: Option<UserAuth>,
    /// JWT-SVID callers on connections without a client certificate, if
    /// configured.
    jwt_callers: Option<CallerTokens>,
}

impl Credentials {
    pub fn new(config: &Config) -> anyhow::Result<Credentials> {
        let endpoint = &config.workload_api.endpoint;
        Ok(Credentials {
            user_auth: config
                .user_auth
                .as_ref()
                .map(|u| UserAuth::load(u, endpoint))
                .transpose()?,
            jwt_callers: config
                .listener
                .jwt_svid_callers
                .as_ref()
                .map(|c| CallerTokens::start(c, endpoint)),
        })
    }

    /// Whether connections without a client certificate are served (each
    /// request then needs a JWT-SVID).
    pub fn accepts_token_callers(&self) -> bool {
        self.jwt_callers.is_some()
    }

    /// Whether `Authorization` is a credential meant for the gateway, so
    /// never passed on.
    pub fn strip_authorization(&self) -> bool {
        self.user_auth.is_some() || self.jwt_callers.is_some()
    }

    /// The caller named by the request's JWT-SVID (audience `own_id`
    /// unless configured), valid until the token's expiry.
    pub fn token_caller(&self, headers: &HeaderMap, own_id: &str) -> Result<Peer, TokenError> {
        let tokens = self.jwt_callers.as_ref().ok_or(TokenError::Missing)?;
        let caller = tokens.verify(headers.get_all(header::AUTHORIZATION), own_id)?;
        Ok(Peer {
            spiffe_id: Arc::from(caller.spiffe_id.to_string()),
            not_after: caller.expires,
        })
    }

    /// The verified end user of a request, if user tokens are configured.
    pub fn user_of(&self, headers: &HeaderMap) -> Result<Option<Arc<User>>, TokenError> {
        let Some(auth) = &self.user_auth else {
            return Ok(None);
        };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(TokenError::Malformed);
        }
        auth.verify(first.map(HeaderValue::as_bytes))
    }
}
