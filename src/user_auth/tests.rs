//! Tokens signed here with fresh keys; every check has a case that fails it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::*;

const ISS: &str = "https://idp.example";
const AUD: &str = "spiffe://example.org/ns/demo/sa/gateway";

struct Signer {
    kid: &'static str,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl Signer {
    fn new(kid: &'static str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Signer {
            kid,
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": B64.encode(&self.public)})
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }
}

fn now() -> i64 {
    crate::clock::unix_seconds()
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({"sub": sub, "iss": ISS, "aud": AUD, "exp": now() + 300, "groups": ["eng"]})
}

fn auth(jwks: serde_json::Value, required: bool) -> anyhow::Result<UserAuth> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    UserAuth::load(
        &UserAuthConfig {
            keys: UserKeys::JwksFile(path),
            audience: AUD.to_owned(),
            issuer: Some(ISS.to_owned()),
            required,
            leeway: Duration::from_secs(0),
        },
        "unix:///nonexistent",
    )
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

#[test]
fn a_valid_token_names_the_user() {
    let signer = Signer::new("k1");
    let auth = auth(serde_json::json!({"keys": [signer.jwk()]}), false).unwrap();
    let user = auth
        .verify(Some(&bearer(&signer.sign(&claims("alice")))))
        .unwrap()
        .unwrap();
    assert_eq!((user.subject(), user.issuer()), ("alice", ISS));
    // No token: no user, unless required.
    assert!(auth.verify(None).unwrap().is_none());
}

#[test]
fn a_required_token_must_be_there() {
    let signer = Signer::new("k1");
    let auth = auth(serde_json::json!({"keys": [signer.jwk()]}), true).unwrap();
    assert_eq!(auth.verify(None).unwrap_err(), TokenError::Missing);
}

#[test]
fn every_failed_check_refuses() {
    let signer = Signer::new("k1");
    let other = Signer::new("k1");
    let auth = auth(serde_json::json!({"keys": [signer.jwk()]}), false).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("alice");
        f(&mut c);
        signer.sign(&c)
    };
    let good = signer.sign(&claims("alice"));
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged_payload = B64.encode(claims("root").to_string());
    let none_header = B64.encode(r#"{"alg":"none","kid":"k1"}"#);
    let hs_header = B64.encode(r#"{"alg":"HS256","kid":"k1"}"#);
    let cases: Vec<(&str, String)> = vec![
        ("expired", with(&|c| c["exp"] = (now() - 10).into())),
        ("not yet valid", with(&|c| c["nbf"] = (now() + 600).into())),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = "someone-else".into()),
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = "https://evil.example".into()),
        ),
        (
            "no sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        ("signed by another key", other.sign(&claims("alice"))),
        ("payload swapped", format!("{head}.{forged_payload}.{sig}")),
        ("alg none", format!("{none_header}.{forged_payload}.")),
        ("alg HS256", format!("{hs_header}.{forged_payload}.{sig}")),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (name, token) in cases {
        let got = auth.verify(Some(&bearer(&token)));
        assert!(got.is_err(), "{name}: accepted: {got:?}");
    }
    for header in [b"Basic abc".as_slice(), b"Bearer ", b"Bearer", b"\xff"] {
        assert_eq!(
            auth.verify(Some(header)).unwrap_err(),
            TokenError::Malformed
        );
    }
}

#[test]
fn keys_are_chosen_by_kid() {
    let a = Signer::new("a");
    let b = Signer::new("b");
    let auth = auth(serde_json::json!({"keys": [a.jwk(), b.jwk()]}), false).unwrap();
    assert!(auth.verify(Some(&bearer(&b.sign(&claims("bob"))))).is_ok());
    let stranger = Signer::new("c");
    assert_eq!(
        auth.verify(Some(&bearer(&stranger.sign(&claims("eve")))))
            .unwrap_err(),
        TokenError::UnknownKey
    );
}

#[test]
fn unusable_key_sets_are_refused_at_load() {
    let signer = Signer::new("k1");
    let oct = serde_json::json!({"kty": "oct", "kid": "s", "k": B64.encode(b"secret")});
    let err = auth(serde_json::json!({"keys": [oct]}), false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("shared secret"), "{err}");
    let err = auth(serde_json::json!({"keys": []}), false).err().unwrap();
    assert!(err.to_string().contains("no keys"), "{err}");
    let mut wrong_alg = signer.jwk();
    wrong_alg["alg"] = "RS256".into();
    let err = auth(serde_json::json!({"keys": [wrong_alg]}), false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let err = auth(
        serde_json::json!({"keys": [signer.jwk(), signer.jwk()]}),
        false,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("duplicate key id"), "{err}");
}

/// A caller token is refused without a single `Bearer` header, and every
/// token is refused before the JWT bundles arrive (never accepted early).
#[tokio::test]
async fn caller_tokens_refuse_without_one_bearer_or_before_bundles() {
    use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue};
    let config = JwtSvidCallersConfig { audience: None };
    let tokens = CallerTokens::start(&config, "unix:///nonexistent/agent.sock");
    let own = "spiffe://example.org/ns/demo/sa/gateway";
    let check = |values: &[&str]| {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        tokens.verify(headers.get_all(AUTHORIZATION), own)
    };
    let token = Signer::new("k1").sign(&claims("spiffe://example.org/ns/demo/sa/agent"));
    let with_bearer = format!("Bearer {token}");
    assert_eq!(check(&[]), Err(TokenError::Missing));
    assert_eq!(check(&["Basic dXNlcjpwdw=="]), Err(TokenError::Malformed));
    assert_eq!(check(&["Bearer "]), Err(TokenError::Malformed));
    assert_eq!(
        check(&[&with_bearer, &with_bearer]),
        Err(TokenError::Malformed)
    );
    assert_eq!(check(&[&with_bearer]), Err(TokenError::NoBundle));
}

/// A JWT-SVID's `sub` picks the trust bundle that verifies it, so it must
/// be a canonical SPIFFE ID before anything else: one written in another
/// case would pick (and be taken as) another workload's identity.
#[test]
fn a_jwt_svid_subject_must_be_canonical() {
    let token = |sub: &str| {
        let payload = B64.encode(serde_json::json!({"sub": sub}).to_string());
        format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln")
    };
    let ok = unverified_subject(&token("spiffe://example.org/ns/demo/sa/agent")).unwrap();
    assert_eq!(ok.to_string(), "spiffe://example.org/ns/demo/sa/agent");
    for sub in [
        "SPIFFE://example.org/ns/demo/sa/agent",
        "spiffe://EXAMPLE.ORG/ns/demo/sa/agent",
        "spiffe://example.org/ns/demo/sa/agent/",
        "spiffe://example.org/ns/%64emo/sa/agent",
        "alice",
    ] {
        let err = unverified_subject(&token(sub)).unwrap_err();
        assert!(matches!(err, TokenError::Claims(_)), "{sub}: {err:?}");
    }
}
