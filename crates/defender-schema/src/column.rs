//! [`Col`]: one column value, decoded into its documented type without ever losing what arrived.
//!
//! Microsoft's docs give each column a KQL type, but real exports drift from it: `"3"` in a `long`
//! column, `0`/`1` in a `bool`, `""` where a number belongs, arrays in `string` columns. A `Col`
//! decodes every one of these, says which case it was, and re-serialises the exact JSON that
//! arrived, so decode -> encode is lossless for any input.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::Value;

use crate::timestamp::Timestamp;

/// A column value as it arrived.
///
/// Fields of the table models are `Option<Col<T>>`: `None` when the column was absent from the
/// record, `Some(Col::Null)` when it was an explicit JSON `null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Col<T> {
    /// The column was JSON `null`.
    Null,
    /// The documented type, in its usual JSON form.
    Value(T),
    /// The documented type, read from another unambiguous JSON form (`"3"` for a `long`, `1` for
    /// a `bool`, `"2024-05-01T10:00:00+00:00"` for a `datetime`). `original` is what arrived and
    /// what is written back.
    ///
    /// Boxed, like `Drift`: both are rare, and keeping them out of line halves the size of a row.
    Coerced(Box<Coerced<T>>),
    /// Not the documented type at all (`""` in an `int`, an array in a `string`). Kept as is.
    Drift(Box<Value>),
}

/// A value read from a form other than the documented one, with what arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Coerced<T> {
    /// The decoded value.
    pub value: T,
    /// The JSON that arrived (what is written back).
    pub original: Value,
}

impl<T> Col<T> {
    /// The decoded value, when there is one (`Value` or `Coerced`).
    pub fn value(&self) -> Option<&T> {
        match self {
            Col::Value(v) => Some(v),
            Col::Coerced(c) => Some(&c.value),
            Col::Null | Col::Drift(_) => None,
        }
    }

    /// Whether the column was an explicit JSON `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Col::Null)
    }

    /// Whether the value did not fit the documented type at all.
    pub fn is_drift(&self) -> bool {
        matches!(self, Col::Drift(_))
    }

    /// The JSON that arrived, when it was not the documented form (`Coerced` or `Drift`).
    pub fn arrived_as(&self) -> Option<&Value> {
        match self {
            Col::Coerced(c) => Some(&c.original),
            Col::Drift(v) => Some(v),
            Col::Null | Col::Value(_) => None,
        }
    }
}

impl<T> From<T> for Col<T> {
    fn from(value: T) -> Self {
        Col::Value(value)
    }
}

/// Reads the value out of an optional column: `row.device_name.value()`.
pub trait ColValue<T> {
    /// The decoded value of a present, non-null, well-typed (or coerced) column.
    fn value(&self) -> Option<&T>;
}

impl<T> ColValue<T> for Option<Col<T>> {
    fn value(&self) -> Option<&T> {
        self.as_ref().and_then(Col::value)
    }
}

/// How a JSON scalar maps onto a column type.
#[doc(hidden)]
#[derive(Debug)]
pub enum Fit<T> {
    Exact(T),
    Coerced(T),
    No,
}

/// The documented column types and the JSON forms each accepts (implemented for `String`, `i64`,
/// `i32`, `bool`, `f64`, [`Timestamp`] and [`uuid::Uuid`]).
pub trait ColumnType: Sized + Serialize {
    #[doc(hidden)]
    fn from_bool(_: bool) -> Fit<Self> {
        Fit::No
    }
    #[doc(hidden)]
    fn from_i64(_: i64) -> Fit<Self> {
        Fit::No
    }
    #[doc(hidden)]
    fn from_u64(v: u64) -> Fit<Self> {
        match i64::try_from(v) {
            Ok(v) => Self::from_i64(v),
            Err(_) => Fit::No,
        }
    }
    #[doc(hidden)]
    fn from_f64(_: f64) -> Fit<Self> {
        Fit::No
    }
    #[doc(hidden)]
    fn from_str(_: &str) -> Fit<Self> {
        Fit::No
    }
}

impl ColumnType for String {
    // A number in a `string` column is drift, not a coercion: the JSON Schemas say `string`, and
    // the two must agree on what is well-typed.
    fn from_str(v: &str) -> Fit<Self> {
        Fit::Exact(v.to_owned())
    }
}

fn integer_from_f64<T: TryFrom<i64>>(v: f64) -> Fit<T> {
    // Only whole numbers well inside i64 are unambiguous; `12.0` in a FileSize column is one.
    #[allow(clippy::cast_possible_truncation)]
    if v.fract() == 0.0
        && v.abs() < 9.0e15
        && let Ok(n) = T::try_from(v as i64)
    {
        return Fit::Coerced(n);
    }
    Fit::No
}

macro_rules! integer_column {
    ($t:ty) => {
        impl ColumnType for $t {
            fn from_i64(v: i64) -> Fit<Self> {
                match <$t>::try_from(v) {
                    Ok(v) => Fit::Exact(v),
                    Err(_) => Fit::No,
                }
            }
            fn from_f64(v: f64) -> Fit<Self> {
                integer_from_f64(v)
            }
            fn from_str(v: &str) -> Fit<Self> {
                match v.parse::<$t>() {
                    Ok(n) => Fit::Coerced(n),
                    Err(_) => Fit::No,
                }
            }
        }
    };
}
integer_column!(i64);
integer_column!(i32);

impl ColumnType for bool {
    fn from_bool(v: bool) -> Fit<Self> {
        Fit::Exact(v)
    }
    fn from_i64(v: i64) -> Fit<Self> {
        match v {
            0 => Fit::Coerced(false),
            1 => Fit::Coerced(true),
            _ => Fit::No,
        }
    }
    fn from_str(v: &str) -> Fit<Self> {
        match v {
            "true" | "True" | "1" => Fit::Coerced(true),
            "false" | "False" | "0" => Fit::Coerced(false),
            _ => Fit::No,
        }
    }
}

impl ColumnType for f64 {
    #[allow(clippy::cast_precision_loss)]
    fn from_i64(v: i64) -> Fit<Self> {
        // Written back as the integer that arrived, so the conversion costs nothing.
        Fit::Coerced(v as f64)
    }
    #[allow(clippy::cast_precision_loss)]
    fn from_u64(v: u64) -> Fit<Self> {
        Fit::Coerced(v as f64)
    }
    fn from_f64(v: f64) -> Fit<Self> {
        Fit::Exact(v)
    }
    fn from_str(v: &str) -> Fit<Self> {
        match v.parse::<f64>() {
            Ok(n) if n.is_finite() => Fit::Coerced(n),
            _ => Fit::No,
        }
    }
}

impl ColumnType for Timestamp {
    fn from_str(v: &str) -> Fit<Self> {
        if let Some(ts) = Timestamp::parse_canonical(v) {
            Fit::Exact(ts)
        } else if let Some(ts) = Timestamp::parse_lenient(v) {
            Fit::Coerced(ts)
        } else {
            Fit::No
        }
    }
}

impl ColumnType for uuid::Uuid {
    fn from_str(v: &str) -> Fit<Self> {
        match uuid::Uuid::try_parse(v) {
            Ok(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                if u.hyphenated().encode_lower(&mut buf) == v {
                    Fit::Exact(u)
                } else {
                    Fit::Coerced(u)
                }
            }
            Err(_) => Fit::No,
        }
    }
}

impl<T: ColumnType> Col<T> {
    fn from_fit(fit: Fit<T>, original: impl FnOnce() -> Value) -> Self {
        match fit {
            Fit::Exact(v) => Col::Value(v),
            Fit::Coerced(value) => Col::Coerced(Box::new(Coerced {
                value,
                original: original(),
            })),
            Fit::No => Col::Drift(Box::new(original())),
        }
    }
}

impl<T: ColumnType> Serialize for Col<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Col::Null => serializer.serialize_unit(),
            Col::Value(v) => v.serialize(serializer),
            Col::Coerced(c) => c.original.serialize(serializer),
            Col::Drift(v) => v.serialize(serializer),
        }
    }
}

impl<'de, T: ColumnType> Deserialize<'de> for Col<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ColVisitor(std::marker::PhantomData))
    }
}

struct ColVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: ColumnType> Visitor<'de> for ColVisitor<T> {
    type Value = Col<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Col::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Col::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Col::from_fit(T::from_bool(v), || Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Col::from_fit(T::from_i64(v), || Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Col::from_fit(T::from_u64(v), || Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Col::from_fit(T::from_f64(v), || Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Col::from_fit(T::from_str(v), || Value::String(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Col::Drift(Box::new(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Col::Drift(Box::new(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round<T: ColumnType>(json: &str) -> Col<T> {
        let col: Col<T> = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&col).unwrap(), json, "written back as it arrived");
        col
    }

    #[test]
    fn long_forms() {
        assert_eq!(round::<i64>("42"), Col::Value(42));
        assert_eq!(
            round::<i64>("639199803770463703").value(),
            Some(&639_199_803_770_463_703)
        );
        assert_eq!(round::<i64>(r#""3""#).value(), Some(&3));
        assert_eq!(round::<i64>("12.0").value(), Some(&12));
        assert!(round::<i64>(r#""""#).is_drift());
        assert!(round::<i64>(r#""N/A""#).is_drift());
        assert!(round::<i64>("12.5").is_drift());
        assert!(round::<i64>("18446744073709551615").is_drift());
        assert!(round::<i64>("[1]").is_drift());
        assert!(round::<i64>("null").is_null());
    }

    #[test]
    fn int_range() {
        assert_eq!(round::<i32>("2147483647").value(), Some(&i32::MAX));
        assert!(round::<i32>("2147483648").is_drift());
    }

    #[test]
    fn bool_forms() {
        assert_eq!(round::<bool>("true"), Col::Value(true));
        assert_eq!(round::<bool>("0").value(), Some(&false));
        assert_eq!(round::<bool>(r#""True""#).value(), Some(&true));
        assert!(round::<bool>(r#""""#).is_drift());
        assert!(round::<bool>("2").is_drift());
    }

    #[test]
    fn string_forms() {
        assert_eq!(round::<String>(r#""a\"b""#).value().map(String::as_str), Some("a\"b"));
        assert!(round::<String>("7").is_drift());
        assert!(round::<String>(r#"["a","b"]"#).is_drift());
        assert!(round::<String>(r#"{"a":{"b":[1,null]}}"#).is_drift());
    }

    #[test]
    fn real_forms() {
        assert_eq!(round::<f64>("1.5"), Col::Value(1.5));
        assert_eq!(round::<f64>("2").value(), Some(&2.0));
        assert_eq!(round::<f64>(r#""2.25""#).value(), Some(&2.25));
    }

    #[test]
    fn timestamp_forms() {
        let c = round::<Timestamp>(r#""2024-05-14T09:31:07.4473310Z""#);
        assert!(matches!(c, Col::Value(_)));
        let c = round::<Timestamp>(r#""2024-05-14T11:31:07+02:00""#);
        assert_eq!(c.value().unwrap().to_string(), "2024-05-14T09:31:07Z");
        assert!(round::<Timestamp>(r#""not a date""#).is_drift());
        assert!(round::<Timestamp>("1715678467").is_drift());
    }

    #[test]
    fn uuid_forms() {
        assert!(matches!(
            round::<uuid::Uuid>(r#""5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b""#),
            Col::Value(_)
        ));
        assert!(matches!(
            round::<uuid::Uuid>(r#""5F2B6A1E-3C4D-4E5F-8A9B-0C1D2E3F4A5B""#),
            Col::Coerced(_)
        ));
        assert!(round::<uuid::Uuid>(r#""user1""#).is_drift());
    }
}
