//! Audit checkpoints as JWS: signed on the writer thread with the
//! gateway's current X.509-SVID key (ES256 for P-256, ES384 for P-384; any
//! other key is refused with a reason), verified by `audit verify` against
//! a trust bundle.
//!
//! A checkpoint is a JWS in compact serialisation whose protected header
//! carries the SVID chain (`x5c`, leaf first), and whose payload names the
//! chain position it seals (`seq`), the hash of the line before it
//! (`prev`), the gateway's SPIFFE ID and the time. Verification checks the
//! leaf with the same X509-SVID rules and WebPKI path building as a
//! caller's certificate (`identity::verify_chain`) at the checkpoint's
//! time, then the signature with the leaf's key.
//!
//! Must never: sign with a key it cannot name the algorithm of, or accept
//! a checkpoint whose chain it did not verify.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, UnparsedPublicKey};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

/// `typ` of a checkpoint's protected header.
const TYP: &str = "spiffe-mcp-gateway-audit-checkpoint";

/// Why a checkpoint could not be signed, or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no X.509-SVID is held")]
    NoSvid,
    #[error("the SVID key is neither EC P-256 nor P-384 (only ES256 and ES384 are signed)")]
    UnsupportedKey,
    #[error("signing failed")]
    Sign,
    #[error("not a compact JWS: {0}")]
    Malformed(String),
    #[error("unsupported JWS algorithm {0:?}")]
    Algorithm(String),
    #[error("the certificate chain does not verify against the bundle: {0}")]
    Chain(rustls::Error),
    #[error("the signature does not verify with the x5c leaf's key")]
    Signature,
    #[error("the trust bundle: {0}")]
    Bundle(String),
}

/// The key a checkpoint is signed with: the current SVID.
#[derive(Clone)]
pub struct SigningKey {
    pub spiffe_id: String,
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
}

/// Where the writer finds the current SVID.
pub trait KeySource: Send {
    fn signing_key(&self) -> Result<SigningKey, CheckpointError>;
    /// The gateway's SPIFFE ID, if an SVID is held.
    fn spiffe_id(&self) -> Option<String>;
}

/// No identity: every checkpoint is unsigned (sinks built without one).
pub(crate) struct NoKeys;

impl KeySource for NoKeys {
    fn signing_key(&self) -> Result<SigningKey, CheckpointError> {
        Err(CheckpointError::NoSvid)
    }
    fn spiffe_id(&self) -> Option<String> {
        None
    }
}

impl KeySource for crate::identity::Identity {
    fn signing_key(&self) -> Result<SigningKey, CheckpointError> {
        let svid = crate::identity::Identity::current(self)
            .and_then(|c| c.svid())
            .ok_or(CheckpointError::NoSvid)?;
        Ok(SigningKey {
            spiffe_id: svid.spiffe_id().to_string(),
            chain: svid
                .cert_chain()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
            key_pkcs8: svid.private_key().as_ref().to_vec(),
        })
    }
    fn spiffe_id(&self) -> Option<String> {
        crate::identity::Identity::current(self).map(|c| c.spiffe_id.to_string())
    }
}

/// What a checkpoint signs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Payload {
    /// The checkpoint's own position in the chain.
    pub seq: u64,
    /// The hash of the line before it: everything up to it is sealed.
    pub prev: String,
    pub spiffe_id: String,
    /// RFC 3339, milliseconds.
    pub time: String,
    /// Unix seconds: when the certificate must have been valid.
    pub iat: i64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    x5c: Vec<String>,
}

/// A compact JWS over `payload` with `key`.
pub fn sign(key: &SigningKey, payload: &Payload) -> Result<String, CheckpointError> {
    let rng = SystemRandom::new();
    let (alg, pair) = key_pair(&key.key_pkcs8, &rng)?;
    let header = Header {
        alg: alg.to_owned(),
        typ: TYP.to_owned(),
        x5c: key.chain.iter().map(|der| STANDARD.encode(der)).collect(),
    };
    let mut input = encode_json(&header)?;
    input.push('.');
    input.push_str(&encode_json(payload)?);
    let signature = pair
        .sign(&rng, input.as_bytes())
        .map_err(|_| CheckpointError::Sign)?;
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
    Ok(input)
}

fn key_pair(
    pkcs8: &[u8],
    rng: &SystemRandom,
) -> Result<(&'static str, EcdsaKeyPair), CheckpointError> {
    let algorithms: [(&str, &'static EcdsaSigningAlgorithm); 2] = [
        ("ES256", &signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        ("ES384", &signature::ECDSA_P384_SHA384_FIXED_SIGNING),
    ];
    algorithms
        .into_iter()
        .find_map(|(name, alg)| {
            EcdsaKeyPair::from_pkcs8(alg, pkcs8, rng)
                .ok()
                .map(|p| (name, p))
        })
        .ok_or(CheckpointError::UnsupportedKey)
}

fn encode_json(value: &impl Serialize) -> Result<String, CheckpointError> {
    let json = serde_json::to_vec(value).map_err(|_| CheckpointError::Sign)?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// The CAs a checkpoint's chain must lead to (a PEM file, one or more).
#[derive(Clone)]
pub struct Bundle {
    roots: Arc<RootCertStore>,
}

impl Bundle {
    pub fn from_pem(pem: &[u8]) -> Result<Bundle, CheckpointError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| CheckpointError::Bundle(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| CheckpointError::Bundle(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(CheckpointError::Bundle(
                "no CERTIFICATE in the PEM file".to_owned(),
            ));
        }
        Ok(Bundle {
            roots: Arc::new(roots),
        })
    }
}

/// A checkpoint whose chain and signature verified.
#[derive(Debug)]
pub struct Verified {
    pub payload: Payload,
    /// The SPIFFE ID of the leaf that signed.
    pub spiffe_id: String,
    pub leaf: Vec<u8>,
}

/// Verifies a compact JWS checkpoint against `bundle`.
pub fn verify(jws: &str, bundle: &Bundle) -> Result<Verified, CheckpointError> {
    let malformed = |what: &str| CheckpointError::Malformed(what.to_owned());
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("three dot-separated parts expected"));
    };
    let header: Header = decode_json(h).ok_or_else(|| malformed("protected header"))?;
    let payload: Payload = decode_json(p).ok_or_else(|| malformed("payload"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed("signature encoding"))?;
    let alg: &'static dyn signature::VerificationAlgorithm = match header.alg.as_str() {
        "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
        "ES384" => &signature::ECDSA_P384_SHA384_FIXED,
        other => return Err(CheckpointError::Algorithm(other.to_owned())),
    };
    let chain = header
        .x5c
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed("x5c encoding"))?;
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| malformed("empty x5c"))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(payload.iat.max(0) as u64));
    let id = crate::identity::verify_chain(leaf, intermediates, Arc::clone(&bundle.roots), at)
        .map_err(CheckpointError::Chain)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|_| malformed("x5c leaf"))?;
    let key = cert.public_key().subject_public_key.data.as_ref();
    let input_len = h.len() + 1 + p.len();
    UnparsedPublicKey::new(alg, key)
        .verify(&jws.as_bytes()[..input_len], &sig)
        .map_err(|_| CheckpointError::Signature)?;
    Ok(Verified {
        payload,
        spiffe_id: id.to_string(),
        leaf: leaf.as_ref().to_vec(),
    })
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}
