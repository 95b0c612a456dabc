//! [`Record`]: one Streaming API record, owned and fully decoded.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::de::{Key, take, take_unknown};
use crate::{BodyError, Col, DecodeError, Event, RecordError, RecordRef, Timestamp, split_body};

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
        split_body(body)?
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                let r = r.map_err(|bad| BodyDecodeError::Record {
                    index,
                    error: bad.error.into(),
                })?;
                Record::from_ref(&r).map_err(|e| BodyDecodeError::Record { index, error: e.into() })
            })
            .collect()
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
