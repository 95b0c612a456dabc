//! Type drift: values that did not arrive in the type the docs give their column.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::{Col, ColumnType, Dynamic, KqlType};

/// The kind of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonKind {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// a number
    Number,
    /// a string
    String,
    /// an array
    Array,
    /// an object
    Object,
}

impl JsonKind {
    /// The kind of `v`.
    pub fn of(v: &Value) -> Self {
        match v {
            Value::Null => JsonKind::Null,
            Value::Bool(_) => JsonKind::Bool,
            Value::Number(_) => JsonKind::Number,
            Value::String(_) => JsonKind::String,
            Value::Array(_) => JsonKind::Array,
            Value::Object(_) => JsonKind::Object,
        }
    }

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            JsonKind::Null => "null",
            JsonKind::Bool => "bool",
            JsonKind::Number => "number",
            JsonKind::String => "string",
            JsonKind::Array => "array",
            JsonKind::Object => "object",
        }
    }
}

impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a drifting value could still be read as its documented type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftKind {
    /// Read as the documented type from another form (`"3"` as a `long`).
    Coerced,
    /// Not the documented type; kept as it arrived.
    Mismatch,
}

/// One column whose value was not in its documented form. The value itself is kept in the model
/// and written back unchanged; this only reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeDrift {
    /// The column.
    pub column: &'static str,
    /// The type the docs give it.
    pub expected: KqlType,
    /// What arrived.
    pub found: JsonKind,
    /// Coerced or mismatched.
    pub kind: DriftKind,
}

impl fmt::Display for TypeDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.kind {
            DriftKind::Coerced => "read from",
            DriftKind::Mismatch => "kept as",
        };
        write!(f, "{}: {} {} a JSON {}", self.column, self.expected, how, self.found)
    }
}

/// Collects drift from one column; called by the generated `type_drift` of each table.
#[doc(hidden)]
pub fn check_col<T: ColumnType>(
    out: &mut Vec<TypeDrift>,
    column: &'static str,
    expected: KqlType,
    col: Option<&Col<T>>,
) {
    let Some(col) = col else { return };
    let kind = match col {
        Col::Coerced(_) => DriftKind::Coerced,
        Col::Drift(_) => DriftKind::Mismatch,
        Col::Null | Col::Value(_) => return,
    };
    if let Some(arrived) = col.arrived_as() {
        out.push(TypeDrift {
            column,
            expected,
            found: JsonKind::of(arrived),
            kind,
        });
    }
}

/// A `string` column documented to carry JSON text that arrived as a bare JSON value instead: an
/// object or array is the same content in another form (coerced); a number or boolean is not.
#[doc(hidden)]
pub fn check_json_text(out: &mut Vec<TypeDrift>, column: &'static str, col: Option<&Dynamic>) {
    if let Some(d @ Dynamic::Json(v)) = col {
        let kind = if v.is_object() || v.is_array() {
            DriftKind::Coerced
        } else {
            DriftKind::Mismatch
        };
        out.push(TypeDrift {
            column,
            expected: KqlType::String,
            found: d.arrived_kind(),
            kind,
        });
    }
}
