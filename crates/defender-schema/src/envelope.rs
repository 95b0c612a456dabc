//! The Streaming API envelope, `{"records": [record, ...]}`, split without copying.
//!
//! Routing only needs each record's `category` and its exact bytes, so [`split_body`] first tries
//! the hand-written scanner (`scan.rs`), which checks the JSON and keeps only spans. What it
//! leaves alone (anything unusual, broken or not routable) goes through `serde_json` in one pass:
//! every record field is skipped as a borrowed [`RawValue`], and the record's own span is
//! recovered from where its first key and last value sit in the input. Inputs where that cannot
//! work (a record that is not an object, an escaped first key) take a slower two-pass path. All
//! three give the same results where they answer.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::de::Key;
use crate::{BodyError, DecodeError, Event, JsonKind, RecordError, Table};

/// One record of a message body, borrowed from it: the routing fields plus the exact bytes.
#[derive(Debug, Clone)]
pub struct RecordRef<'a> {
    raw: &'a str,
    category: Cow<'a, str>,
    /// Checked JSON: an object.
    properties: &'a str,
    time: Option<&'a str>,
}

impl<'a> RecordRef<'a> {
    /// A record the scanner checked: its spans index `text`; `raw` is what a sink forwards.
    fn scanned(text: &'a str, raw: &'a str, s: &crate::scan::Spans) -> Self {
        let at = |(a, z): (usize, usize)| &text[a..z];
        RecordRef {
            raw,
            category: Cow::Borrowed(at(s.category)),
            properties: at(s.properties),
            time: s.time.map(at),
        }
    }

    /// The record exactly as it arrived (what a sink forwards).
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// `category`, e.g. `AdvancedHunting-DeviceProcessEvents`.
    pub fn category(&self) -> &str {
        &self.category
    }

    /// The table, when the category names one this crate knows.
    pub fn table(&self) -> Option<Table> {
        Table::from_category(&self.category)
    }

    /// The table name: the known table's, else the category without its `AdvancedHunting-` prefix.
    pub fn table_name(&self) -> &str {
        match self.table() {
            Some(t) => t.name(),
            None => self.category.strip_prefix("AdvancedHunting-").unwrap_or(&self.category),
        }
    }

    /// The row (`properties`), undecoded.
    pub fn properties(&self) -> &'a RawValue {
        // Splitting keeps the span, not a `RawValue`: forwarding never asks for one, and a
        // borrowed `RawValue` can only be had by parsing (again) what was already checked.
        serde_json::from_str(self.properties).expect("split_body and parse_record checked this JSON")
    }

    /// The record's `time` as it arrived, when it is a plain string.
    pub fn time(&self) -> Option<&'a str> {
        plain_string(self.time?)
    }

    /// `time` as it arrived, any JSON.
    #[cfg(test)]
    pub(crate) fn time_raw(&self) -> Option<&'a str> {
        self.time
    }

    /// Decodes the row into its typed model ([`Event::Unknown`] for a table this crate does not know).
    pub fn decode(&self) -> Result<Event, DecodeError> {
        // A known table decodes straight from the text; only `Unknown` keeps a `RawValue`.
        match self.table() {
            Some(table) => crate::table::decode_row_text(table, self.properties),
            None => Event::decode(&self.category, self.properties()),
        }
    }
}

/// A record that is JSON but not a Defender record, with where it sits in its body.
#[derive(Debug, Clone)]
pub struct BadRecord<'a> {
    /// Position in `records`.
    pub index: usize,
    /// The record exactly as it arrived.
    pub raw: &'a str,
    /// What is wrong with it.
    pub error: RecordError,
}

impl fmt::Display for BadRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {}", self.index, self.error)
    }
}

/// The records of a message body, good and bad, in order.
pub type Split<'a> = Vec<Result<RecordRef<'a>, BadRecord<'a>>>;

/// Splits an Event Hub message body (`{"records": [...]}`) into its records, in order.
///
/// A record that is JSON but not a Defender record (no `category`, `properties` not an object)
/// comes back as a [`BadRecord`] in its place; the others are unaffected. A body that is not
/// UTF-8, not JSON or not an envelope is a [`BodyError`].
///
/// ```
/// let body = br#"{"records":[{"time":"2024-05-14T09:31:07.4473310Z","category":"AdvancedHunting-DeviceInfo","properties":{"DeviceName":"ws-01"}}]}"#;
/// let records = defender_schema::split_body(body)?;
/// let record = records[0].as_ref().unwrap();
/// assert_eq!(record.table_name(), "DeviceInfo");
/// assert!(record.raw().starts_with(r#"{"time""#));
/// # Ok::<(), defender_schema::BodyError>(())
/// ```
pub fn split_body(body: &[u8]) -> Result<Split<'_>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::Utf8 {
        offset: e.valid_up_to(),
    })?;
    if let Some(spans) = crate::scan::split(text) {
        return Ok(spans
            .iter()
            .map(|s| Ok(RecordRef::scanned(text, &text[s.record.0..s.record.1], s)))
            .collect());
    }
    split_with_serde(text)
}

/// What [`split_body`] does when the scanner leaves the body to `serde_json`.
pub(crate) fn split_with_serde(text: &str) -> Result<Split<'_>, BodyError> {
    match fast::split(text)? {
        Some(records) => Ok(records),
        None => split_two_pass(text),
    }
}

/// Parses one record on its own (a line of the Storage-account export, or of an NDJSON file).
pub fn parse_record(raw: &str) -> Result<RecordRef<'_>, RecordError> {
    if let Some(s) = crate::scan::record(raw) {
        return Ok(RecordRef::scanned(raw, raw, &s));
    }
    parse_record_with_serde(raw)
}

/// What [`parse_record`] does when the scanner leaves the record to `serde_json`.
pub(crate) fn parse_record_with_serde(raw: &str) -> Result<RecordRef<'_>, RecordError> {
    let fields = record_fields(raw)?;
    fields.into_record(raw)
}

fn record_fields(raw: &str) -> Result<Fields<'_>, RecordError> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let fields = (&mut de)
        .deserialize_any(RecordVisitor)
        .map_err(|e| RecordError::Json(e.to_string()))?;
    de.end().map_err(|e| RecordError::Json(e.to_string()))?;
    fields
}

fn split_two_pass(text: &str) -> Result<Split<'_>, BodyError> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        records: Vec<&'a RawValue>,
    }
    let body: Body<'_> = serde_json::from_str(text).map_err(body_error)?;
    Ok(body
        .records
        .into_iter()
        .enumerate()
        .map(|(index, rv)| {
            let raw = rv.get();
            record_fields(raw)
                .and_then(|f| f.into_record(raw))
                .map_err(|error| BadRecord { index, raw, error })
        })
        .collect())
}

fn body_error(e: serde_json::Error) -> BodyError {
    match e.classify() {
        serde_json::error::Category::Data => BodyError::NotEnvelope(e.to_string()),
        _ => BodyError::Json(e),
    }
}

/// What one pass over a record object collects.
struct Fields<'a> {
    first_key: Option<Cow<'a, str>>,
    last_value: Option<&'a RawValue>,
    category: Option<&'a RawValue>,
    properties: Option<&'a RawValue>,
    time: Option<&'a RawValue>,
    duplicate: Option<&'static str>,
}

impl<'a> Fields<'a> {
    fn into_record(self, raw: &'a str) -> Result<RecordRef<'a>, RecordError> {
        if let Some(field) = self.duplicate {
            return Err(RecordError::DuplicateField(field));
        }
        let category = self.category.ok_or(RecordError::MissingCategory)?;
        // Categories have no escapes: borrow the text between the quotes without a second parser.
        let category = match plain_string(category.get()) {
            Some(text) => Cow::Borrowed(text),
            None => {
                serde_json::from_str::<Key<'a>>(category.get())
                    .map_err(|_| RecordError::CategoryNotString(raw_kind(category)))?
                    .0
            }
        };
        let properties = self.properties.ok_or(RecordError::MissingProperties)?;
        if !properties.get().starts_with('{') {
            return Err(RecordError::PropertiesNotObject(raw_kind(properties)));
        }
        Ok(RecordRef {
            raw,
            category,
            properties: properties.get(),
            time: self.time.map(RawValue::get),
        })
    }
}

/// The text of a JSON string value that has no escapes (so its text is its raw bytes).
fn plain_string(v: &str) -> Option<&str> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

pub(crate) fn raw_kind(v: &RawValue) -> JsonKind {
    match v.get().as_bytes().first() {
        Some(b'{') => JsonKind::Object,
        Some(b'[') => JsonKind::Array,
        Some(b'"') => JsonKind::String,
        Some(b't' | b'f') => JsonKind::Bool,
        Some(b'n') => JsonKind::Null,
        _ => JsonKind::Number,
    }
}

/// Visits one record: collects the routing fields, skipping every value as a borrowed raw slice.
/// Anything but an object becomes `Err(NotAnObject)` (its value is consumed, so a body pass goes on).
struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Result<Fields<'de>, RecordError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut f = Fields {
            first_key: None,
            last_value: None,
            category: None,
            properties: None,
            time: None,
            duplicate: None,
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            let slot = match key.as_str() {
                "category" => Some((&mut f.category, "category")),
                "properties" => Some((&mut f.properties, "properties")),
                "time" => Some((&mut f.time, "time")),
                _ => None,
            };
            if let Some((slot, name)) = slot
                && slot.replace(value).is_some()
            {
                f.duplicate.get_or_insert(name);
            }
            if f.first_key.is_none() {
                f.first_key = Some(key.0);
            }
            f.last_value = Some(value);
        }
        Ok(Ok(f))
    }

    crate::de::reject_non_objects!(RecordError::NotAnObject);
}

/// The one-pass split. `Ok(None)` asks for the two-pass path.
mod fast {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};

    use super::{BadRecord, BodyError, Fields, RecordVisitor, Split, body_error};
    use crate::RecordError;
    use crate::de::BodyVisitor;

    pub(super) fn split(text: &str) -> Result<Option<Split<'_>>, BodyError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let out = (&mut de)
            .deserialize_map(BodyVisitor(RecordsSeed { text }))
            .map_err(body_error)?;
        de.end().map_err(body_error)?;
        match out {
            Some(Some(records)) => Ok(Some(records)),
            Some(None) => Ok(None),
            None => Err(BodyError::NotEnvelope("no `records` field".into())),
        }
    }

    struct RecordsSeed<'t> {
        text: &'t str,
    }

    impl<'de> DeserializeSeed<'de> for RecordsSeed<'de> {
        type Value = Option<Split<'de>>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for RecordsSeed<'de> {
        type Value = Option<Split<'de>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("`records` as an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(64));
            let mut usable = true;
            while let Some(fields) = seq.next_element_seed(RecordSeed)? {
                if !usable {
                    continue; // keep consuming so syntax errors still surface
                }
                let span = match &fields {
                    Ok(f) => span_of(self.text, f),
                    Err(_) => None,
                };
                match (fields, span) {
                    (Ok(f), Some(raw)) => {
                        let index = out.len();
                        out.push(f.into_record(raw).map_err(|error| BadRecord { index, raw, error }));
                    }
                    _ => usable = false,
                }
            }
            Ok(usable.then_some(out))
        }
    }

    struct RecordSeed;

    impl<'de> DeserializeSeed<'de> for RecordSeed {
        type Value = Result<Fields<'de>, RecordError>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(RecordVisitor)
        }
    }

    /// The record's exact text: from the `{` before its first key to the `}` after its last value.
    fn span_of<'t>(text: &'t str, f: &Fields<'t>) -> Option<&'t str> {
        let Some(Cow::Borrowed(first_key)) = &f.first_key else {
            return None;
        };
        let last = f.last_value?.get();
        let base = text.as_ptr() as usize;
        let key_at = (first_key.as_ptr() as usize).checked_sub(base)?;
        let last_end = (last.as_ptr() as usize).checked_sub(base)? + last.len();
        let bytes = text.as_bytes();
        if last_end > bytes.len() || key_at < 2 || bytes[key_at - 1] != b'"' {
            return None;
        }
        let start = bytes[..key_at - 1].iter().rposition(|b| !is_ws(*b))?;
        let end = last_end + bytes[last_end..].iter().position(|b| !is_ws(*b))?;
        (bytes[start] == b'{' && bytes[end] == b'}').then(|| &text[start..=end])
    }

    fn is_ws(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | b'\r')
    }
}
