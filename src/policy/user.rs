//! The end user of a request, from the claims of a token the gateway has
//! verified, as the Cedar record `context.user`.
//!
//! `context.user` is `{ sub, iss, claims }`: `sub` and `iss` are required
//! strings; `claims` holds every top-level claim (including `sub` and `iss`)
//! whose value Cedar can hold exactly, converted as tool arguments are
//! (strings, booleans, integers within i64, arrays as sets, objects as
//! records). A claim with any `null` or fractional number in it is left out
//! of `claims` on its own, so a policy reading it sees it absent (`has` is
//! false). Built once per HTTP request, never per decision.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cedar_policy_core::ast::Value;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smol_str::SmolStr;

use super::args;

/// A verified end user. Cheap to share: the record is built once.
#[derive(Debug, Clone)]
pub struct User {
    subject: String,
    issuer: String,
    value: Value,
}

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum UserError {
    #[error("token claims are not a JSON object with unique keys")]
    NotAnObject,
    #[error("token has no string `{0}` claim")]
    Missing(&'static str),
}

/// The claims object with its values kept as raw JSON; duplicate keys are
/// refused rather than resolved.
struct RawClaims<'a>(Vec<(&'a str, &'a RawValue)>);

impl User {
    /// From the JSON claims of a verified token. `issuer` stands in for a
    /// missing `iss` claim (a JWT-SVID has none: its trust domain issues it).
    pub fn from_claims_json(json: &str, issuer: Option<&str>) -> Result<User, UserError> {
        let RawClaims(raw) =
            serde_json::from_str::<RawClaims<'_>>(json).map_err(|_| UserError::NotAnObject)?;
        let mut claims = BTreeMap::new();
        let fallback_issuer = issuer;
        let mut subject = None;
        let mut issuer = None;
        for (key, value) in raw {
            if let Some(v) = args::to_cedar_value(value.get()) {
                claims.insert(SmolStr::from(key), v);
            }
            let as_string = || serde_json::from_str::<String>(value.get()).ok();
            match key {
                "sub" => subject = as_string(),
                "iss" => issuer = as_string(),
                _ => {}
            }
        }
        let subject = subject.ok_or(UserError::Missing("sub"))?;
        let issuer = issuer
            .or(fallback_issuer.map(str::to_owned))
            .ok_or(UserError::Missing("iss"))?;
        let mut record = BTreeMap::new();
        record.insert(SmolStr::new_static("sub"), Value::from(subject.as_str()));
        record.insert(SmolStr::new_static("iss"), Value::from(issuer.as_str()));
        record.insert(
            SmolStr::new_static("claims"),
            Value::record_arc(Arc::new(claims), None),
        );
        Ok(User {
            subject,
            issuer,
            value: Value::record_arc(Arc::new(record), None),
        })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub(super) fn value(&self) -> &Value {
        &self.value
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawClaims<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawClaims<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(&'de str, &'de RawValue)> = Vec::new();
                while let Some(key) = map.next_key::<&'de str>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    out.push((key, map.next_value()?));
                }
                Ok(RawClaims(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_become_a_record_and_unrepresentable_claims_are_left_out() {
        let user = User::from_claims_json(
            r#"{"sub":"alice","iss":"https://idp.example","groups":["eng"],"ratio":0.5,"n":null,"age":7}"#,
            None,
        )
        .unwrap();
        assert_eq!(user.subject(), "alice");
        let Value { value, .. } = user.value();
        let text = format!("{value}");
        assert!(text.contains("\"eng\"") && text.contains("age"), "{text}");
        assert!(!text.contains("ratio") && !text.contains("\"n\""), "{text}");
    }

    #[test]
    fn sub_and_iss_are_required_and_duplicates_refused() {
        assert_eq!(
            User::from_claims_json(r#"{"iss":"x"}"#, None).unwrap_err(),
            UserError::Missing("sub")
        );
        assert_eq!(
            User::from_claims_json(r#"{"sub":"a","sub":"b","iss":"x"}"#, None).unwrap_err(),
            UserError::NotAnObject
        );
        assert_eq!(
            User::from_claims_json("[1]", None).unwrap_err(),
            UserError::NotAnObject
        );
    }
}
