//! Tool arguments (JSON) to a Cedar record, exactly or not at all.
//!
//! Reads the raw JSON once with a serde visitor straight into Cedar
//! values: no intermediate `serde_json::Value`, and no use of Cedar's
//! own JSON format, whose `__entity`/`__extn` escapes would let a caller
//! forge entity references. Must never approximate: a value Cedar cannot
//! hold exactly makes the whole record unrepresentable.
//!
//! When policies read only `arguments_representable`, [`is_representable`]
//! answers the same question without building the values (a twin set of
//! visitors with the same refusals; a test holds them to the same answer).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::sync::Arc;

use cedar_policy_core::ast::Value;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use smol_str::SmolStr;

/// One JSON value as a Cedar expression.
struct CedarValue(Value);

/// A JSON object as a Cedar record (anything else is rejected).
struct CedarRecord(Value);

struct ValueVisitor;
struct RecordVisitor;

/// A JSON value Cedar can hold exactly, checked and dropped.
struct Representable;

/// A JSON object whose values Cedar can hold exactly.
struct RepresentableRecord;

/// An object key, borrowed from the JSON text unless it has escapes.
struct Key<'de>(Cow<'de, str>);

struct CheckVisitor;
struct CheckRecordVisitor;
struct KeyVisitor;

/// The arguments as a Cedar record, or `None` if they are not an object or
/// hold anything Cedar cannot represent exactly (null, a fraction, an
/// integer outside i64, a duplicate key, nesting past serde_json's limit).
pub(super) fn to_cedar_record(json: &str) -> Option<Value> {
    serde_json::from_str::<CedarRecord>(json)
        .ok()
        .map(|record| record.0)
}

/// One JSON value as a Cedar value, or `None` if Cedar cannot hold it exactly.
pub(super) fn to_cedar_value(json: &str) -> Option<Value> {
    serde_json::from_str::<CedarValue>(json)
        .ok()
        .map(|value| value.0)
}

/// Whether [`to_cedar_record`] would return a record for `json`.
pub(super) fn is_representable(json: &str) -> bool {
    serde_json::from_str::<RepresentableRecord>(json).is_ok()
}

fn unrepresentable<E: de::Error>(what: &str) -> E {
    E::custom(format_args!("{what} has no exact Cedar value"))
}

fn visit_record<'de, A: MapAccess<'de>>(mut map: A) -> Result<Value, A::Error> {
    let mut fields = BTreeMap::new();
    while let Some(key) = map.next_key::<String>()? {
        let value: CedarValue = map.next_value()?;
        match fields.entry(SmolStr::from(key)) {
            Entry::Vacant(slot) => {
                slot.insert(value.0);
            }
            Entry::Occupied(_) => return Err(unrepresentable("a duplicate key")),
        }
    }
    Ok(Value::record_arc(Arc::new(fields), None))
}

impl<'de> serde::Deserialize<'de> for CedarValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor).map(CedarValue)
    }
}

impl<'de> serde::Deserialize<'de> for CedarRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor).map(CedarRecord)
    }
}

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        visit_record(map)
    }
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Value::from)
            .map_err(|_| unrepresentable("an integer above i64"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(unrepresentable("a fractional number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Value::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Value::from(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(unrepresentable("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(item) = seq.next_element::<CedarValue>()? {
            items.push(item.0);
        }
        Ok(Value::set(items, None))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        visit_record(map)
    }
}

/// The keys of one object, refusing a duplicate as [`visit_record`] does.
fn check_record<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    let mut keys = Vec::new();
    while let Some(Key(key)) = map.next_key()? {
        map.next_value::<Representable>()?;
        keys.push(key);
    }
    keys.sort_unstable();
    if keys.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(unrepresentable("a duplicate key"));
    }
    Ok(())
}

impl<'de> serde::Deserialize<'de> for Representable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for RepresentableRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CheckRecordVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
}

impl<'de> Visitor<'de> for CheckRecordVisitor {
    type Value = RepresentableRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        check_record(map).map(|()| RepresentableRecord)
    }
}

/// Accepts and refuses exactly what [`ValueVisitor`] does.
impl<'de> Visitor<'de> for CheckVisitor {
    type Value = Representable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Representable)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Representable)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(|_| Representable)
            .map_err(|_| unrepresentable("an integer above i64"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(unrepresentable("a fractional number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Representable)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(unrepresentable("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Representable>()?.is_some() {}
        Ok(Representable)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        check_record(map).map(|()| Representable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_agrees_with_the_conversion() {
        let cases = [
            r#"{}"#,
            r#"{"city":"Berlin","days":3,"hourly":false,"tags":["a","a"],"o":{"k":-1}}"#,
            r#"{"max":9223372036854775807,"min":-9223372036854775808}"#,
            r#"{"big":9223372036854775808}"#,
            r#"{"f":1.5}"#,
            r#"{"e":1e3}"#,
            r#"{"n":null}"#,
            r#"{"deep":[[{"n":null}]]}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"o":{"b":1,"b":1}}"#,
            r#"{"\u00e9":"x","e\u0301":"y"}"#,
            r#"{"__entity":{"type":"Mcp::Workload","id":"x"}}"#,
            r#"[1,2]"#,
            r#""text""#,
            "null",
            "",
            r#"{"a":1} trailing"#,
            r#"{"a":"#,
        ];
        for json in cases {
            assert_eq!(
                is_representable(json),
                to_cedar_record(json).is_some(),
                "{json}"
            );
        }
    }
}
