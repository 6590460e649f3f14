//! A sealed session id: what a replica needs to serve the session,
//! encrypted and authenticated (ChaCha20-Poly1305, ring) under a key of the
//! ring, as the `Mcp-Session-Id` the caller holds.
//!
//! Layout, base64url without padding: format byte `1`, key id length, key
//! id, 12-byte random nonce, then the sealed claims and the tag. The format
//! byte and key id are the additional authenticated data. The claims are
//! JSON: the owner's SPIFFE ID, the endpoint it was issued for (an upstream
//! or the aggregated endpoint), the handle (the upstream's own session id,
//! or the aggregated endpoint's), the protocol version, issue time, the
//! absolute end, and what the endpoint keeps (the members' sessions).
//!
//! Opening never panics and tells nothing apart to the caller: a wrong
//! length, encoding, key, tag or endpoint is one answer, "not found".

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::SecureRandom;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proxy::session::keys::{Ring, SessionKeys};

const FORMAT: u8 = 1;
/// The longest sealed id accepted, in characters: room for an owner ID of
/// 2048 bytes and an aggregated endpoint's members, never more.
pub const MAX_SEALED_LEN: usize = 8192;
/// The tag ChaCha20-Poly1305 appends.
const TAG_LEN: usize = 16;

/// What a sealed id carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Claims<V> {
    /// The SPIFFE ID the session is bound to.
    #[serde(rename = "o")]
    pub owner: String,
    /// The endpoint it was issued for: `u:<upstream>` or `a:<aggregate>`.
    #[serde(rename = "p")]
    pub endpoint: String,
    /// The upstream's own session id; on the aggregated endpoint, its own.
    #[serde(rename = "h")]
    pub handle: String,
    /// The protocol version `initialize` agreed, when known.
    #[serde(rename = "v")]
    pub version: Option<String>,
    /// Unix seconds: issued, and the absolute end.
    #[serde(rename = "i")]
    pub issued: i64,
    #[serde(rename = "e")]
    pub expires: i64,
    /// What the endpoint keeps with the session.
    #[serde(rename = "x")]
    pub value: V,
}

/// Why claims could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The sealed id would be longer than [`MAX_SEALED_LEN`], so `open`
    /// would refuse it (an upstream issued a very long session id).
    TooLong,
    /// No randomness for a nonce, or the claims cannot be written.
    Failed,
}

/// An opened id: its claims and the id of the key that sealed it.
pub struct Opened<V> {
    pub claims: Claims<V>,
    pub key_id: std::sync::Arc<str>,
}

/// Seals `claims` under the ring's newest key; returns the sealed id and
/// that key's id. Every id it returns is one `open` takes.
pub fn seal<V: Serialize>(
    keys: &SessionKeys,
    claims: &Claims<V>,
) -> Result<(String, std::sync::Arc<str>), SealError> {
    let ring = keys.current();
    let key = ring.sealing();
    let mut nonce = [0u8; NONCE_LEN];
    keys.rng.fill(&mut nonce).map_err(|_| SealError::Failed)?;
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT);
    // Key ids are at most 32 bytes (checked when the file is read).
    out.push(u8::try_from(key.id.len()).map_err(|_| SealError::Failed)?);
    out.extend_from_slice(key.id.as_bytes());
    let aad_len = out.len();
    out.extend_from_slice(&nonce);
    let mut sealed = serde_json::to_vec(claims).map_err(|_| SealError::Failed)?;
    if base64::encoded_len(out.len() + sealed.len() + TAG_LEN, false)
        .is_none_or(|len| len > MAX_SEALED_LEN)
    {
        return Err(SealError::TooLong);
    }
    key.aead
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..aad_len]),
            &mut sealed,
        )
        .map_err(|_| SealError::Failed)?;
    out.extend_from_slice(&sealed);
    Ok((URL_SAFE_NO_PAD.encode(out), std::sync::Arc::clone(&key.id)))
}

/// Opens a sealed id with the ring's keys; `None` for anything that is not
/// an id some listed key sealed, unchanged.
pub fn open<V: DeserializeOwned>(ring: &Ring, sealed: &str) -> Option<Opened<V>> {
    if sealed.len() > MAX_SEALED_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    let (&format, rest) = bytes.split_first()?;
    let (&id_len, rest) = rest.split_first()?;
    if format != FORMAT || rest.len() < usize::from(id_len) + NONCE_LEN + TAG_LEN {
        return None;
    }
    let (id, rest) = rest.split_at(usize::from(id_len));
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let key = ring.get(id)?;
    let aad = &bytes[..2 + usize::from(id_len)];
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = ciphertext.to_vec();
    let plain = key
        .aead
        .open_in_place(nonce, Aad::from(aad), &mut buffer)
        .ok()?;
    let claims = serde_json::from_slice(plain).ok()?;
    Some(Opened {
        claims,
        key_id: std::sync::Arc::clone(&key.id),
    })
}
