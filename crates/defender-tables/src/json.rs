//! The inverse of [`crate::convert`]: Arrow rows back to the JSON records that arrived.

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use defender_schema::arrow as cols;
use serde_json::{Map, Value};

use crate::TablesError;
use crate::cell::{self, Kind, Typed};
use crate::layout::{Layout, TableName};

/// The envelope keys with columns of their own, their columns and kinds.
const ENVELOPE: [(&str, &str, Kind); 4] = [
    ("time", cols::TIME, Kind::Timestamp),
    ("tenantId", cols::TENANT_ID, Kind::Text),
    ("operationName", cols::OPERATION_NAME, Kind::Text),
    ("category", cols::CATEGORY, Kind::Text),
];

/// Rebuilds the records of a batch of `table` (columns are found by name, so a batch with the
/// columns reordered or with more of them, such as a reader's `day`, works too).
pub fn batch_to_records(table: &TableName, batch: &RecordBatch) -> Result<Vec<Value>, TablesError> {
    let layout = Layout::for_table(table);
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| TablesError::Schema(format!("the batch has no column `{name}`")))
    };
    let own: Vec<_> = layout
        .columns
        .iter()
        .map(|(name, kind)| column(name).map(|a| (*name, *kind, a)))
        .collect::<Result<_, _>>()?;
    let envelope: Vec<_> = ENVELOPE
        .iter()
        .map(|(key, name, kind)| column(name).map(|a| (*key, *name, *kind, a)))
        .collect::<Result<_, _>>()?;
    let (extra_envelope, unknown, drift, absent) = (
        column(cols::ENVELOPE)?,
        column(cols::UNKNOWN)?,
        column(cols::DRIFT)?,
        column(cols::ABSENT)?,
    );
    let properties_text = if layout.is_unknown() {
        Some(column(cols::PROPERTIES)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let drift = object_at(drift, r)?;
        let absent: HashSet<String> = match text_at(absent, r)? {
            Some(t) => serde_json::from_str(t).map_err(|e| bad(cols::ABSENT, &e))?,
            None => HashSet::new(),
        };
        let value_of = |name: &str, kind: Kind, array: &dyn Array| -> Result<Option<Value>, TablesError> {
            if absent.contains(name) {
                return Ok(None);
            }
            if let Some(original) = drift.get(name) {
                return Ok(Some(original.clone()));
            }
            Ok(Some(cell::reencode(kind, &typed_at(array, kind, r)?)))
        };
        let mut record = Map::new();
        for (key, name, kind, array) in &envelope {
            if let Some(v) = value_of(name, *kind, array)? {
                record.insert((*key).to_owned(), v);
            }
        }
        record.extend(object_at(extra_envelope, r)?);
        if !absent.contains(cols::PROPERTIES) {
            let properties = if let Some(a) = properties_text {
                match text_at(a, r)? {
                    Some(t) => serde_json::from_str(t).map_err(|e| bad(cols::PROPERTIES, &e))?,
                    None => Value::Null,
                }
            } else {
                let mut row = Map::new();
                for (name, kind, array) in &own {
                    if let Some(v) = value_of(name, *kind, array)? {
                        row.insert((*name).to_owned(), v);
                    }
                }
                row.extend(object_at(unknown, r)?);
                Value::Object(row)
            };
            record.insert("properties".to_owned(), properties);
        }
        out.push(Value::Object(record));
    }
    Ok(out)
}

fn bad(column: &str, e: &serde_json::Error) -> TablesError {
    TablesError::Schema(format!("column `{column}` does not hold valid JSON: {e}"))
}

fn text_at(array: &dyn Array, row: usize) -> Result<Option<&str>, TablesError> {
    if array.is_null(row) {
        return Ok(None);
    }
    match array.data_type() {
        DataType::Utf8 => Ok(Some(array.as_string::<i32>().value(row))),
        DataType::LargeUtf8 => Ok(Some(array.as_string::<i64>().value(row))),
        DataType::Utf8View => Ok(Some(array.as_string_view().value(row))),
        other => Err(TablesError::Schema(format!("expected a string column, found {other}"))),
    }
}

fn object_at(array: &dyn Array, row: usize) -> Result<Map<String, Value>, TablesError> {
    match text_at(array, row)? {
        Some(t) => serde_json::from_str(t).map_err(|e| bad("_Envelope/_Unknown/_Drift", &e)),
        None => Ok(Map::new()),
    }
}

fn typed_at(array: &dyn Array, kind: Kind, row: usize) -> Result<Typed<'_>, TablesError> {
    if array.is_null(row) {
        return Ok(Typed::Null);
    }
    let wrong = || TablesError::Schema(format!("a {kind:?} column holds {}", array.data_type()));
    Ok(match kind {
        Kind::Timestamp => Typed::Ts(
            array
                .as_primitive_opt::<TimestampNanosecondType>()
                .ok_or_else(wrong)?
                .value(row),
        ),
        Kind::Int64 => Typed::I64(array.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?.value(row)),
        Kind::Int32 => Typed::I32(array.as_primitive_opt::<Int32Type>().ok_or_else(wrong)?.value(row)),
        Kind::Float64 => Typed::F64(array.as_primitive_opt::<Float64Type>().ok_or_else(wrong)?.value(row)),
        Kind::Bool => Typed::Bool(array.as_boolean_opt().ok_or_else(wrong)?.value(row)),
        Kind::Text | Kind::JsonText | Kind::Dynamic => {
            Typed::Str(std::borrow::Cow::Borrowed(text_at(array, row)?.ok_or_else(wrong)?))
        }
    })
}
