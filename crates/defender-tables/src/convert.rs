//! Records (their exact JSON bytes) to Arrow rows, losslessly: see [`crate::cell`] for the
//! per-value rule and docs/tables.md for the columns.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::TablesError;
use crate::cell::{self, Cell, Kind, Typed};
use crate::layout::{Day, Layout, TableName};

/// The envelope keys with columns of their own, and their column kinds.
const ENVELOPE_COLUMNS: [(&str, &str, Kind); 4] = [
    ("time", defender_schema::arrow::TIME, Kind::Timestamp),
    ("tenantId", defender_schema::arrow::TENANT_ID, Kind::Text),
    ("operationName", defender_schema::arrow::OPERATION_NAME, Kind::Text),
    ("category", defender_schema::arrow::CATEGORY, Kind::Text),
];

/// One record, parsed and classified, borrowing from its text.
#[derive(Debug)]
pub(crate) struct Row<'a> {
    pub table: TableName,
    pub layout: &'static Layout,
    pub day: Option<Day>,
    /// One per table column; `None`: absent.
    cells: Vec<Option<(Cell<'a>, &'a str)>>,
    /// `time`, `tenantId`, `operationName`, `category`; `None`: absent.
    envelope_cells: [Option<(Cell<'a>, &'a str)>; 4],
    envelope_other: Vec<(Cow<'a, str>, &'a str)>,
    unknown: Vec<(Cow<'a, str>, &'a str)>,
    /// The raw `properties` (unknown tables keep it whole); `None`: absent.
    properties: Option<&'a str>,
}

/// Ordered `(key, raw value)` pairs of a JSON object.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(64));
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn object(text: &str) -> Result<Entries<'_>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let entries = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(entries)
}

impl<'a> Row<'a> {
    /// Parses one record. Fails only when it is not a Defender record: not a JSON object, no
    /// string `category`, or `properties` present but not an object.
    pub fn parse(text: &'a str) -> Result<Row<'a>, TablesError> {
        let not_a_record = |why: String| TablesError::NotARecord(why);
        let envelope = object(text).map_err(not_a_record)?;
        let mut envelope_cells: [Option<(Cell<'a>, &'a str)>; 4] = Default::default();
        let mut envelope_other = Vec::new();
        let mut properties = None;
        let mut category: Option<Cow<'a, str>> = None;
        for (key, raw) in envelope.0 {
            let raw = raw.get();
            if key == "properties" {
                properties = Some(raw);
            } else if let Some(i) = ENVELOPE_COLUMNS.iter().position(|(k, _, _)| *k == key) {
                if i == 3 {
                    category = raw.starts_with('"').then(|| cell::unescape(raw));
                }
                envelope_cells[i] = Some((cell::classify(ENVELOPE_COLUMNS[i].2, raw), raw));
            } else {
                envelope_other.push((key, raw));
            }
        }
        let category = category.ok_or_else(|| not_a_record("no string `category`".to_owned()))?;
        if properties.is_some_and(|p| !p.starts_with('{')) {
            return Err(not_a_record("`properties` is not an object".to_owned()));
        }
        let table = TableName::of_category(&category);
        let layout = Layout::for_table(&table);
        let mut row = Row {
            table,
            layout,
            day: None,
            cells: vec![None; layout.columns.len()],
            envelope_cells,
            envelope_other,
            unknown: Vec::new(),
            properties,
        };
        row.fill_properties()?;
        row.day = row.find_day();
        Ok(row)
    }

    fn fill_properties(&mut self) -> Result<(), TablesError> {
        let Some(text) = self.properties else { return Ok(()) };
        let layout = self.layout;
        if layout.is_unknown() {
            return Ok(());
        }
        let entries = object(text).map_err(TablesError::NotARecord)?;
        for (key, raw) in entries.0 {
            let raw = raw.get();
            match layout.column(&key) {
                Some(i) => self.cells[i] = Some((cell::classify(layout.columns[i].1, raw), raw)),
                None => self.unknown.push((key, raw)),
            }
        }
        Ok(())
    }

    /// The day of `properties.Timestamp`, else of the envelope's `time`.
    fn find_day(&self) -> Option<Day> {
        let from = |c: &Option<(Cell<'_>, &str)>| match c {
            Some((
                Cell {
                    typed: Typed::Ts(n), ..
                },
                _,
            )) => Some(Day::of_nanos(*n)),
            _ => None,
        };
        let own = match self.layout.timestamp {
            Some(i) => from(&self.cells[i]),
            None => self.properties.and_then(unknown_table_timestamp).map(Day::of_nanos),
        };
        own.or_else(|| from(&self.envelope_cells[0]))
    }
}

/// `properties.Timestamp` of an unknown table's row, when it is a timestamp.
fn unknown_table_timestamp(properties: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Ts<'a> {
        #[serde(rename = "Timestamp", borrow)]
        timestamp: Option<&'a RawValue>,
    }
    let ts: Ts<'_> = serde_json::from_str(properties).ok()?;
    let raw = ts.timestamp?.get();
    match cell::classify(Kind::Timestamp, raw).typed {
        Typed::Ts(n) => Some(n),
        _ => None,
    }
}

/// Writes `"key"` (JSON-escaped) into `out`.
fn push_key(out: &mut String, key: &str) {
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(key);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(key).expect("a string serialises"));
    }
}

/// A JSON object text of `(key, raw value)` pairs; `None` when there are none.
fn object_text<'k>(pairs: impl Iterator<Item = (&'k str, &'k str)>) -> Option<String> {
    let mut out = String::new();
    for (key, raw) in pairs {
        out.push(if out.is_empty() { '{' } else { ',' });
        push_key(&mut out, key);
        out.push(':');
        out.push_str(raw);
    }
    (!out.is_empty()).then(|| {
        out.push('}');
        out
    })
}

/// A JSON array text of names; `None` when there are none.
fn array_text<'k>(names: impl Iterator<Item = &'k str>) -> Option<String> {
    let mut out = String::new();
    for name in names {
        out.push(if out.is_empty() { '[' } else { ',' });
        push_key(&mut out, name);
    }
    (!out.is_empty()).then(|| {
        out.push(']');
        out
    })
}

/// One Arrow column being built.
#[derive(Debug)]
enum ColumnBuilder {
    Ts(TimestampNanosecondBuilder),
    I64(Int64Builder),
    I32(Int32Builder),
    Bool(BooleanBuilder),
    F64(Float64Builder),
    Str(StringBuilder),
}

impl ColumnBuilder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Timestamp => ColumnBuilder::Ts(TimestampNanosecondBuilder::new().with_timezone("UTC")),
            Kind::Int64 => ColumnBuilder::I64(Int64Builder::new()),
            Kind::Int32 => ColumnBuilder::I32(Int32Builder::new()),
            Kind::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
            Kind::Float64 => ColumnBuilder::F64(Float64Builder::new()),
            Kind::Text | Kind::JsonText | Kind::Dynamic => ColumnBuilder::Str(StringBuilder::new()),
        }
    }

    fn append(&mut self, typed: Option<&Typed<'_>>) {
        match (self, typed) {
            (ColumnBuilder::Ts(b), Some(Typed::Ts(v))) => b.append_value(*v),
            (ColumnBuilder::I64(b), Some(Typed::I64(v))) => b.append_value(*v),
            (ColumnBuilder::I32(b), Some(Typed::I32(v))) => b.append_value(*v),
            (ColumnBuilder::Bool(b), Some(Typed::Bool(v))) => b.append_value(*v),
            (ColumnBuilder::F64(b), Some(Typed::F64(v))) => b.append_value(*v),
            (ColumnBuilder::Str(b), Some(Typed::Str(v))) => b.append_value(v),
            (builder, _) => builder.append_null(),
        }
    }

    fn append_text(&mut self, text: Option<&str>) {
        match (self, text) {
            (ColumnBuilder::Str(b), Some(t)) => b.append_value(t),
            (builder, _) => builder.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Ts(b) => b.append_null(),
            ColumnBuilder::I64(b) => b.append_null(),
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::Str(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Ts(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) => Arc::new(b.finish()),
            ColumnBuilder::I32(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
        }
    }
}

/// Rows of one table collected into Arrow columns.
#[derive(Debug)]
pub(crate) struct BatchBuilder {
    layout: &'static Layout,
    columns: Vec<ColumnBuilder>,
    rows: usize,
    /// Text bytes appended since the last batch (a size estimate for flushing).
    bytes: usize,
}

/// Extra columns after the table's own: 4 envelope columns, `_Envelope`, `_Unknown`, `_Drift`,
/// `_Absent` (and `_Properties` for unknown tables).
const EXTRA_COUNT: usize = 8;

impl BatchBuilder {
    pub fn new(layout: &'static Layout) -> Self {
        let mut columns: Vec<ColumnBuilder> = layout.columns.iter().map(|(_, k)| ColumnBuilder::new(*k)).collect();
        columns.push(ColumnBuilder::new(Kind::Timestamp));
        let strings = EXTRA_COUNT - 1 + usize::from(layout.is_unknown());
        columns.extend((0..strings).map(|_| ColumnBuilder::new(Kind::Text)));
        debug_assert_eq!(columns.len(), layout.schema.fields().len());
        Self {
            layout,
            columns,
            rows: 0,
            bytes: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a row of this builder's layout.
    pub fn append(&mut self, row: &Row<'_>, raw_len: usize) {
        debug_assert!(std::ptr::eq(row.layout, self.layout));
        let n = self.layout.columns.len();
        let mut drift: Vec<(&str, &str)> = Vec::new();
        let mut absent: Vec<&str> = Vec::new();
        for (i, c) in row.cells.iter().enumerate() {
            let name = self.layout.columns[i].0;
            if let Some((cell, raw)) = c {
                self.columns[i].append(Some(&cell.typed));
                if cell.drift {
                    drift.push((name, raw));
                }
            } else {
                self.columns[i].append_null();
                if row.properties.is_some() {
                    absent.push(name);
                }
            }
        }
        for (j, c) in row.envelope_cells.iter().enumerate() {
            let name = ENVELOPE_COLUMNS[j].1;
            if let Some((cell, raw)) = c {
                self.columns[n + j].append(Some(&cell.typed));
                if cell.drift {
                    drift.push((name, raw));
                }
            } else {
                self.columns[n + j].append_null();
                absent.push(name);
            }
        }
        if row.properties.is_none() {
            absent.push(defender_schema::arrow::PROPERTIES);
        }
        let envelope = object_text(row.envelope_other.iter().map(|(k, v)| (&**k, *v)));
        let unknown = object_text(row.unknown.iter().map(|(k, v)| (&**k, *v)));
        let drift = object_text(drift.into_iter());
        let absent = array_text(absent.into_iter());
        for (k, text) in [envelope, unknown, drift, absent].iter().enumerate() {
            self.columns[n + 4 + k].append_text(text.as_deref());
        }
        if self.layout.is_unknown() {
            self.columns[n + 8].append_text(row.properties);
        }
        self.rows += 1;
        self.bytes += raw_len;
    }

    /// The rows so far as a batch; the builder starts over.
    pub fn finish(&mut self) -> Result<RecordBatch, TablesError> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        self.bytes = 0;
        Ok(RecordBatch::try_new(self.layout.schema.clone(), arrays)?)
    }
}

/// Converts records into batches, one per table, in order of first appearance (tests, tools).
pub fn records_to_batches<'r>(
    records: impl IntoIterator<Item = &'r str>,
) -> Result<Vec<(TableName, RecordBatch)>, TablesError> {
    let mut builders: Vec<(TableName, BatchBuilder)> = Vec::new();
    for text in records {
        let row = Row::parse(text)?;
        let i = if let Some(i) = builders.iter().position(|(t, _)| *t == row.table) {
            i
        } else {
            builders.push((row.table.clone(), BatchBuilder::new(row.layout)));
            builders.len() - 1
        };
        builders[i].1.append(&row, text.len());
    }
    builders.into_iter().map(|(t, mut b)| Ok((t, b.finish()?))).collect()
}
