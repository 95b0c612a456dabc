//! Small pieces the generated table decoders share.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// An object key, borrowed from the input when it has no escapes.
#[doc(hidden)]
#[derive(Debug)]
pub struct Key<'de>(pub Cow<'de, str>);

impl Key<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The prefix of the message for an error inside one column's value; [`crate::DecodeError`]
/// reads the column name back from it.
pub(crate) const COLUMN_ERROR_PREFIX: &str = "column `";

/// Reads the value of a known column, refusing a second occurrence (which could not be written
/// back losslessly, and is a sign of a forged or broken record).
#[doc(hidden)]
pub fn take<'de, A, T>(map: &mut A, slot: &mut Option<T>, column: &'static str) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(de::Error::custom(format_args!(
            "{COLUMN_ERROR_PREFIX}{column}`: appears twice"
        )));
    }
    match map.next_value() {
        Ok(v) => {
            *slot = Some(v);
            Ok(())
        }
        Err(e) => Err(de::Error::custom(format_args!("{COLUMN_ERROR_PREFIX}{column}`: {e}"))),
    }
}

/// Keeps a column the schema does not know.
#[doc(hidden)]
pub fn take_unknown<'de, A>(map: &mut A, unknown: &mut Map<String, Value>, key: Key<'de>) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
{
    let key = key.0.into_owned();
    if unknown.contains_key(&key) {
        return Err(de::Error::custom(format_args!(
            "{COLUMN_ERROR_PREFIX}{key}`: appears twice"
        )));
    }
    match map.next_value::<Value>() {
        Ok(v) => {
            unknown.insert(key, v);
            Ok(())
        }
        Err(e) => Err(de::Error::custom(format_args!("{COLUMN_ERROR_PREFIX}{key}`: {e}"))),
    }
}

/// The `visit_*` methods for everything but an object, in a visitor whose `Value` is a
/// `Result<_, _>`: each consumes the value and answers `Ok(Err($make(kind)))`, so the pass over the
/// rest of the input goes on and the caller learns what arrived instead.
macro_rules! reject_non_objects {
    ($make:expr) => {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(Err(($make)(crate::JsonKind::Array)))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Err(($make)(crate::JsonKind::Bool)))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Err(($make)(crate::JsonKind::Number)))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Err(($make)(crate::JsonKind::Number)))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Err(($make)(crate::JsonKind::Number)))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Err(($make)(crate::JsonKind::String)))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Err(($make)(crate::JsonKind::Null)))
        }
    };
}
pub(crate) use reject_non_objects;

/// Visits a message body, `{"records": [...], ...}`: hands `records` to the seed, skips every
/// other field, refuses a second `records`. `None` when there is no `records` at all.
pub(crate) struct BodyVisitor<S>(pub S);

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for BodyVisitor<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with a `records` array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seed = Some(self.0);
        let mut records = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.as_str() == "records" {
                let Some(seed) = seed.take() else {
                    return Err(de::Error::custom("`records` appears twice"));
                };
                records = Some(map.next_value_seed(seed)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(records)
    }
}
