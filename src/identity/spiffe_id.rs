//! SPIFFE IDs exactly as written: the one rule for every place the gateway
//! reads an identity (client and upstream certificates, JWT-SVID `sub`, the
//! config, policy files, the policy tools' arguments).
//!
//! The `spiffe` crate's parser folds the case of the scheme and the trust
//! domain, so `SPIFFE://EXAMPLE.ORG/agent` would come out as
//! `spiffe://example.org/agent`: another workload's ID. go-spiffe (what
//! SPIRE uses) refuses such input, and the SPIFFE ID spec requires a
//! lower-case scheme and trust domain. Here an ID is accepted only if it is
//! valid and already canonical: parsed and printed again, it gives back the
//! same bytes. Percent-encoding, dot and empty segments, a trailing slash,
//! ports, userinfo, queries, fragments and non-ASCII are refused by the
//! grammar itself (no character outside `[a-z0-9._-]` in the trust domain or
//! `[a-zA-Z0-9._-]` in a path segment).
//!
//! Must never: fold, normalise or decode an ID into another one, or accept
//! an ID it would print differently.

use spiffe::SpiffeId;
use x509_parser::extensions::GeneralName;

/// The longest SPIFFE ID supported, in bytes (the SPIFFE X509-SVID spec
/// asks for at least 2048).
pub const MAX_LEN: usize = 2048;

/// Why a string or a certificate yields no SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{id:?} is not a SPIFFE ID: {reason}")]
    Invalid { id: String, reason: String },
    #[error("{id:?} is not in canonical form (scheme and trust domain must be lower case)")]
    NotCanonical { id: String },
    #[error("a SPIFFE ID is at most {MAX_LEN} bytes; this one has {0}")]
    TooLong(usize),
    #[error("{id:?} names a trust domain, not a workload (it needs a path)")]
    NoPath { id: String },
    #[error("certificate does not parse: {0}")]
    Certificate(String),
    #[error("certificate has no URI SAN")]
    NoUriSan,
    #[error("certificate has more than one URI SAN")]
    SeveralUriSans,
}

/// A valid SPIFFE ID in canonical form (a trust domain alone is allowed).
pub fn canonical(id: &str) -> Result<SpiffeId, IdError> {
    if id.len() > MAX_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    let parsed = SpiffeId::new(id).map_err(|e| IdError::Invalid {
        id: shown(id),
        reason: e.to_string(),
    })?;
    // The crate keeps the path as given and prints the scheme and the
    // lower-cased trust domain; any difference is case folded away.
    if parsed.to_string() != id {
        return Err(IdError::NotCanonical { id: shown(id) });
    }
    Ok(parsed)
}

/// A workload's SPIFFE ID: canonical, with a path.
pub fn workload(id: &str) -> Result<SpiffeId, IdError> {
    let parsed = canonical(id)?;
    if parsed.path().is_empty() {
        return Err(IdError::NoPath { id: shown(id) });
    }
    Ok(parsed)
}

/// The SPIFFE ID of an X.509-SVID leaf: its one URI SAN, a canonical
/// workload ID (X509-SVID spec 2: exactly one URI SAN).
pub fn from_leaf(der: &[u8]) -> Result<SpiffeId, IdError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdError::Certificate(e.to_string()))?;
    from_certificate(&cert)
}

/// As [`from_leaf`], for a certificate already parsed.
pub fn from_certificate(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<SpiffeId, IdError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdError::Certificate(e.to_string()))?
        .ok_or(IdError::NoUriSan)?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(IdError::NoUriSan)?;
    if uris.next().is_some() {
        return Err(IdError::SeveralUriSans);
    }
    workload(uri)
}

/// An ID for a message: cut short, so a 2 KiB ID does not flood a log line.
fn shown(id: &str) -> String {
    const SHOWN: usize = 256;
    match id.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}...", &id[..at]),
        None => id.to_owned(),
    }
}

#[cfg(test)]
#[path = "spiffe_id_tests.rs"]
mod tests;
