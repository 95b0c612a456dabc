//! Errors of the decoders.

use crate::JsonKind;
use crate::de::COLUMN_ERROR_PREFIX;

/// A message body that cannot be split into records at all. The whole body is unusable (the
/// forwarder dead-letters it as one piece).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Not UTF-8.
    #[error("message body is not UTF-8 (invalid byte at offset {offset})")]
    Utf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Not well-formed JSON.
    #[error("message body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON, but not `{"records": [...]}`.
    #[error("message body is not a Streaming API envelope (expected an object with a `records` array): {0}")]
    NotEnvelope(String),
}

/// A record that is JSON but not a Defender record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is not a JSON object.
    #[error("record is a JSON {0}, not an object")]
    NotAnObject(JsonKind),
    /// Not valid JSON (single-record input only; in a body this is a [`BodyError`]).
    #[error("record is not valid JSON: {0}")]
    Json(String),
    /// No `category`.
    #[error("record has no `category`")]
    MissingCategory,
    /// `category` is not a string.
    #[error("record `category` is a JSON {0}, not a string")]
    CategoryNotString(JsonKind),
    /// No `properties`.
    #[error("record has no `properties`")]
    MissingProperties,
    /// `properties` is not an object.
    #[error("record `properties` is a JSON {0}, not an object")]
    PropertiesNotObject(JsonKind),
    /// A record field appears twice, so which one is meant is ambiguous.
    #[error("record field `{0}` appears twice")]
    DuplicateField(&'static str),
}

/// A record's properties (or envelope fields) could not be decoded into the typed model.
///
/// Type drift never causes this (it is kept and reported, see [`crate::TypeDrift`]); broken JSON,
/// a duplicated column or a row that is not an object does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}: {}{reason}", column.as_deref().map(|c| format!("column `{c}`: ")).unwrap_or_default())]
pub struct DecodeError {
    /// The table (or category, for a record of an unknown table).
    pub table: String,
    /// The column at fault, when one is.
    pub column: Option<String>,
    /// Why.
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn from_json(table: &str, err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        let (column, reason) = match msg
            .strip_prefix(COLUMN_ERROR_PREFIX)
            .and_then(|rest| rest.split_once("`: "))
        {
            Some((column, reason)) => (Some(column.to_owned()), reason.to_owned()),
            None => (None, msg),
        };
        DecodeError {
            table: table.to_owned(),
            column,
            reason,
        }
    }
}
