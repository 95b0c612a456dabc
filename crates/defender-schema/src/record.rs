//! [`Record`]: one Streaming API record, owned and fully decoded.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::de::{Key, take, take_unknown};
use crate::{BodyError, Col, DecodeError, Event, RecordError, RecordRef, Timestamp};

/// One record: the envelope fields Defender wraps around a row, and the row as a typed [`Event`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Record {
    /// `time`: when Defender received the event.
    pub time: Option<Col<Timestamp>>,
    /// `tenantId`: the Entra ID tenant.
    pub tenant_id: Option<Col<uuid::Uuid>>,
    /// `operationName`: always `Publish` so far.
    pub operation_name: Option<Col<String>>,
    /// `_TimeReceivedBySvc`: when the streaming service received it (newer exports).
    pub time_received_by_svc: Option<Col<Timestamp>>,
    /// `Tenant`: `DefaultTenant` in older exports.
    pub tenant: Option<Col<String>>,
    /// `category` and `properties`, decoded.
    pub event: Event,
    /// Envelope fields this crate does not know, kept as they arrived.
    pub unknown: Map<String, Value>,
}

/// Why a record could not become a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordDecodeError {
    /// Not a Defender record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A Defender record whose fields could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Why a message body could not become [`Record`]s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyDecodeError {
    /// The body as a whole.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// One record of it.
    #[error("record {index}: {error}")]
    Record {
        /// Position in `records`.
        index: usize,
        /// What is wrong.
        error: RecordDecodeError,
    },
}

impl Record {
    /// Decodes every record of an Event Hub message body, in order.
    ///
    /// ```
    /// use defender_schema::{ColValue, Event, Record};
    ///
    /// let body = br#"{"records":[{"time":"2024-05-14T09:31:07.4473310Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","properties":{"Timestamp":"2024-05-14T09:30:59.1234567Z","DeviceName":"ws-01.example.com","FileName":"powershell.exe","ProcessId":4242,"AdditionalFields":null}}]}"#;
    /// let records = Record::from_body(body)?;
    /// let Event::DeviceProcessEvents(row) = &records[0].event else { panic!("not a process event") };
    /// assert_eq!(row.file_name.value().map(String::as_str), Some("powershell.exe"));
    /// assert_eq!(row.process_id.value(), Some(&4242));
    /// // Re-serialising gives back the same JSON, 7-digit timestamps included.
    /// let again = serde_json::to_value(&records[0])?;
    /// assert_eq!(again["properties"]["Timestamp"], "2024-05-14T09:30:59.1234567Z");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_body(body: &[u8]) -> Result<Vec<Record>, BodyDecodeError> {
        typed_body::decode(body)
    }

    /// Decodes one record given on its own (a line of NDJSON or of the Storage-account export).
    pub fn from_json(raw: &str) -> Result<Record, RecordDecodeError> {
        let r = crate::parse_record(raw)?;
        Ok(Record::from_ref(&r)?)
    }

    /// Decodes a split record.
    pub fn from_ref(r: &RecordRef<'_>) -> Result<Record, DecodeError> {
        let event = r.decode()?;
        let envelope: Envelope = serde_json::from_str(r.raw()).map_err(|e| DecodeError::from_json("record", &e))?;
        Ok(Record {
            time: envelope.time,
            tenant_id: envelope.tenant_id,
            operation_name: envelope.operation_name,
            time_received_by_svc: envelope.time_received_by_svc,
            tenant: envelope.tenant,
            event,
            unknown: envelope.unknown,
        })
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(v) = &self.time {
            map.serialize_entry("time", v)?;
        }
        if let Some(v) = &self.tenant_id {
            map.serialize_entry("tenantId", v)?;
        }
        if let Some(v) = &self.operation_name {
            map.serialize_entry("operationName", v)?;
        }
        map.serialize_entry("category", self.event.category())?;
        map.serialize_entry("properties", &self.event)?;
        if let Some(v) = &self.time_received_by_svc {
            map.serialize_entry("_TimeReceivedBySvc", v)?;
        }
        if let Some(v) = &self.tenant {
            map.serialize_entry("Tenant", v)?;
        }
        for (k, v) in &self.unknown {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Record {
    /// Works with `serde_json` deserializers (the row is captured raw, then decoded by category).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Record::from_json(raw.get()).map_err(de::Error::custom)
    }
}

/// The envelope fields of a record; `category` and `properties` are decoded separately.
#[derive(Default)]
struct Envelope {
    time: Option<Col<Timestamp>>,
    tenant_id: Option<Col<uuid::Uuid>>,
    operation_name: Option<Col<String>>,
    time_received_by_svc: Option<Col<Timestamp>>,
    tenant: Option<Col<String>>,
    unknown: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut e = Envelope::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match key.as_str() {
                        "time" => take(&mut map, &mut e.time, "time")?,
                        "tenantId" => take(&mut map, &mut e.tenant_id, "tenantId")?,
                        "operationName" => take(&mut map, &mut e.operation_name, "operationName")?,
                        "_TimeReceivedBySvc" => take(&mut map, &mut e.time_received_by_svc, "_TimeReceivedBySvc")?,
                        "Tenant" => take(&mut map, &mut e.tenant, "Tenant")?,
                        "category" | "properties" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => take_unknown(&mut map, &mut e.unknown, key)?,
                    }
                }
                Ok(e)
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// `Record::from_body` in one pass: each row is decoded straight into its table's struct when its
/// `category` comes before `properties` (as Defender writes them), else captured raw and decoded
/// after the record's other fields.
mod typed_body {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::value::RawValue;

    use super::{BodyDecodeError, Envelope, Record, RecordDecodeError};
    use crate::de::{BodyVisitor, Key, take, take_unknown};
    use crate::{BodyError, DecodeError, Event, RecordError, Table};

    /// Where the pass is, so an error that aborts it can name the record and table.
    #[derive(Default)]
    struct Progress {
        /// A capacity guess: Defender records are 1 to 3 KiB.
        expected_records: usize,
        index: Cell<usize>,
        in_record: Cell<bool>,
        table: Cell<Option<Table>>,
    }

    pub(super) fn decode(body: &[u8]) -> Result<Vec<Record>, BodyDecodeError> {
        let text = std::str::from_utf8(body).map_err(|e| BodyError::Utf8 {
            offset: e.valid_up_to(),
        })?;
        let progress = Progress {
            expected_records: (body.len() / 1024).clamp(16, 4096),
            ..Progress::default()
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let out = (&mut de)
            .deserialize_map(BodyVisitor(RecordsSeed(&progress)))
            .and_then(|out| de.end().map(|()| out));
        match out {
            Ok(Some(records)) => records
                .into_iter()
                .enumerate()
                .map(|(index, r)| r.map_err(|error| BodyDecodeError::Record { index, error }))
                .collect(),
            Ok(None) => Err(BodyError::NotEnvelope("no `records` field".into()).into()),
            Err(e) => Err(match e.classify() {
                // A record that failed inside (a duplicated column): name the record and the table.
                serde_json::error::Category::Data if progress.in_record.get() => BodyDecodeError::Record {
                    index: progress.index.get(),
                    error: DecodeError::from_json(progress.table.get().map_or("record", Table::name), &e).into(),
                },
                serde_json::error::Category::Data => BodyError::NotEnvelope(e.to_string()).into(),
                _ => BodyError::Json(e).into(),
            }),
        }
    }

    struct RecordsSeed<'p>(&'p Progress);

    impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
        type Value = Vec<Result<Record, RecordDecodeError>>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for RecordsSeed<'_> {
        type Value = Vec<Result<Record, RecordDecodeError>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("`records` as an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(self.0.expected_records));
            loop {
                self.0.index.set(out.len());
                self.0.table.set(None);
                self.0.in_record.set(true);
                let next = seq.next_element_seed(RecordSeed(self.0))?;
                self.0.in_record.set(false);
                match next {
                    Some(r) => out.push(r),
                    None => return Ok(out),
                }
            }
        }
    }

    struct RecordSeed<'p>(&'p Progress);

    impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
        type Value = Result<Record, RecordDecodeError>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for RecordSeed<'_> {
        type Value = Result<Record, RecordDecodeError>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a record object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut env = Envelope::default();
            let mut category: Option<String> = None;
            let mut event: Option<Result<Event, RecordError>> = None;
            let mut raw_properties: Option<&'de RawValue> = None;
            let mut problem: Option<RecordError> = None;
            while let Some(key) = map.next_key::<Key<'de>>()? {
                match key.as_str() {
                    "time" => take(&mut map, &mut env.time, "time")?,
                    "tenantId" => take(&mut map, &mut env.tenant_id, "tenantId")?,
                    "operationName" => take(&mut map, &mut env.operation_name, "operationName")?,
                    "_TimeReceivedBySvc" => take(&mut map, &mut env.time_received_by_svc, "_TimeReceivedBySvc")?,
                    "Tenant" => take(&mut map, &mut env.tenant, "Tenant")?,
                    "category" => {
                        let raw: &'de RawValue = map.next_value()?;
                        if category.is_some() {
                            problem.get_or_insert(RecordError::DuplicateField("category"));
                        }
                        match serde_json::from_str::<Key<'_>>(raw.get()) {
                            Ok(k) => category = Some(k.0.into_owned()),
                            Err(_) => {
                                problem.get_or_insert(RecordError::CategoryNotString(crate::envelope::raw_kind(raw)));
                            }
                        }
                    }
                    "properties" => {
                        if event.is_some() || raw_properties.is_some() {
                            problem.get_or_insert(RecordError::DuplicateField("properties"));
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                        match category.as_deref().and_then(Table::from_category) {
                            Some(table) => {
                                self.0.table.set(Some(table));
                                event = Some(map.next_value_seed(RowSeed(table))?);
                                self.0.table.set(None);
                            }
                            None => raw_properties = Some(map.next_value()?),
                        }
                    }
                    _ => take_unknown(&mut map, &mut env.unknown, key)?,
                }
            }
            if let Some(problem) = problem {
                return Ok(Err(problem.into()));
            }
            let Some(category) = category else {
                return Ok(Err(RecordError::MissingCategory.into()));
            };
            let event = match (event, raw_properties) {
                (Some(Ok(event)), _) => event,
                (Some(Err(e)), _) => return Ok(Err(e.into())),
                (None, None) => return Ok(Err(RecordError::MissingProperties.into())),
                (None, Some(raw)) if !raw.get().starts_with('{') => {
                    return Ok(Err(
                        RecordError::PropertiesNotObject(crate::envelope::raw_kind(raw)).into()
                    ));
                }
                (None, Some(raw)) => match Event::decode(&category, raw) {
                    Ok(event) => event,
                    Err(e) => return Ok(Err(e.into())),
                },
            };
            Ok(Ok(Record {
                time: env.time,
                tenant_id: env.tenant_id,
                operation_name: env.operation_name,
                time_received_by_svc: env.time_received_by_svc,
                tenant: env.tenant,
                event,
                unknown: env.unknown,
            }))
        }

        crate::de::reject_non_objects!(|kind| RecordDecodeError::from(RecordError::NotAnObject(kind)));
    }

    /// Decodes `properties` straight into the table's row; anything but an object is a bad record.
    struct RowSeed(Table);

    impl<'de> DeserializeSeed<'de> for RowSeed {
        type Value = Result<Event, RecordError>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for RowSeed {
        type Value = Result<Event, RecordError>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a row object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Event::decode_from(self.0, de::value::MapAccessDeserializer::new(map)).map(Ok)
        }
        crate::de::reject_non_objects!(RecordError::PropertiesNotObject);
    }
}
