//! [`Dynamic`]: a `dynamic` column (or a `string` column that carries JSON), kept as it arrived.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::Value;

use crate::JsonKind;

/// A value of a `dynamic` column, or of a `string` column that holds JSON (`AdditionalFields`,
/// `LoggedOnUsers`, `IPAddresses`, ...). Defender sends these three ways, all kept as they came:
/// a JSON value, a string whose content is JSON, or plain text.
#[derive(Debug, Clone, PartialEq)]
pub enum Dynamic {
    /// JSON `null`.
    Null,
    /// A JSON value that is not a string: an object, array, number or boolean.
    Json(Value),
    /// A string holding a JSON object or array, e.g. `"{\"IsLocalLogon\":true}"`.
    JsonString {
        /// The string exactly as it arrived (re-serialised as is).
        text: String,
        /// Its content, parsed.
        value: Value,
    },
    /// Any other string.
    Text(String),
}

impl Dynamic {
    /// Classifies a string: JSON content when it is an object or array that parses, else text.
    pub fn from_text(text: String) -> Self {
        let looks_like_json = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
        if looks_like_json && let Ok(value) = serde_json::from_str::<Value>(&text) {
            return Dynamic::JsonString { text, value };
        }
        Dynamic::Text(text)
    }

    /// The JSON view of the value: the parsed content of a JSON string, a text as a JSON string.
    pub fn as_json(&self) -> Cow<'_, Value> {
        match self {
            Dynamic::Null => Cow::Owned(Value::Null),
            Dynamic::Json(v) | Dynamic::JsonString { value: v, .. } => Cow::Borrowed(v),
            Dynamic::Text(t) => Cow::Owned(Value::String(t.clone())),
        }
    }

    /// The text, when it arrived as a string (JSON content or not).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Dynamic::JsonString { text, .. } | Dynamic::Text(text) => Some(text),
            Dynamic::Null | Dynamic::Json(_) => None,
        }
    }

    /// Looks up a key in the JSON view (`additional_fields.get("IsLocalLogon")`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Dynamic::Json(v) | Dynamic::JsonString { value: v, .. } => v.get(key),
            Dynamic::Null | Dynamic::Text(_) => None,
        }
    }

    /// The JSON kind that arrived on the wire.
    pub fn arrived_kind(&self) -> JsonKind {
        match self {
            Dynamic::Null => JsonKind::Null,
            Dynamic::Json(v) => JsonKind::of(v),
            Dynamic::JsonString { .. } | Dynamic::Text(_) => JsonKind::String,
        }
    }
}

impl From<Value> for Dynamic {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Dynamic::Null,
            Value::String(s) => Dynamic::from_text(s),
            other => Dynamic::Json(other),
        }
    }
}

impl Serialize for Dynamic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Dynamic::Null => serializer.serialize_unit(),
            Dynamic::Json(v) => v.serialize(serializer),
            Dynamic::JsonString { text, .. } | Dynamic::Text(text) => serializer.serialize_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for Dynamic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DynamicVisitor)
    }
}

struct DynamicVisitor;

impl<'de> Visitor<'de> for DynamicVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::Null)
    }
    fn visit_none<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::Json(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::Json(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Dynamic, E> {
        Ok(Dynamic::Json(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::Json(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::from_text(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Dynamic, E> {
        Ok(Dynamic::from_text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Dynamic, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Dynamic::Json)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Dynamic, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(Dynamic::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_form() {
        let cases = [
            (r#""{\"a\":1}""#, "json-string"),
            (r#"{"a":1}"#, "json"),
            (r#""plain""#, "text"),
            (r#""{not json""#, "text"),
            ("null", "null"),
            ("[1,2]", "json"),
        ];
        for (input, kind) in cases {
            let d: Dynamic = serde_json::from_str(input).unwrap();
            let got = match &d {
                Dynamic::Null => "null",
                Dynamic::Json(_) => "json",
                Dynamic::JsonString { .. } => "json-string",
                Dynamic::Text(_) => "text",
            };
            assert_eq!(got, kind, "{input}");
            assert_eq!(serde_json::to_string(&d).unwrap(), input);
        }
    }

    #[test]
    fn json_string_exposes_content() {
        let d: Dynamic = serde_json::from_str(r#""{\"IsLocalLogon\":true}""#).unwrap();
        assert_eq!(d.get("IsLocalLogon"), Some(&Value::Bool(true)));
    }
}
