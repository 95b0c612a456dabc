//! Typed models of the Microsoft Defender XDR advanced-hunting tables, as the Streaming API
//! delivers them to Event Hubs (`{"records": [...]}`) or to a Storage account (one record per line).
//!
//! - [`split_body`] splits a message body into [`RecordRef`]s without copying: enough to route
//!   a record by table and forward its exact bytes.
//! - [`RecordRef::decode`] turns one into a typed [`Event`]: one variant per [`Table`], each a
//!   struct in [`tables`] with one `Option<Col<T>>` field per column, or [`Event::Unknown`] for
//!   tables this crate does not know yet.
//! - [`Record`] is the owned, fully decoded record, envelope fields included.
//!
//! Nothing that arrives is lost: values that drift from the documented type are kept as they came
//! ([`Col`], [`TypeDrift`]), columns the schema does not know are kept in each row's `unknown`
//! map, and re-serialising gives back the same JSON.
//!
//! # Decoding an Event Hub message body
//!
//! ```
//! use defender_schema::{ColValue, Event, split_body};
//!
//! let body = br#"{"records":[
//!   {"time":"2024-05-14T09:31:07.4473310Z","category":"AdvancedHunting-DeviceProcessEvents",
//!    "properties":{"Timestamp":"2024-05-14T09:30:59.1234567Z","DeviceName":"ws-01","ProcessId":"4242",
//!                  "AdditionalFields":"{\"ParentProcessName\":\"explorer.exe\"}","NewColumn":1}},
//!   {"time":"2024-05-14T09:31:08.0000000Z","category":"AdvancedHunting-SomethingNew","properties":{}}
//! ]}"#;
//!
//! for record in split_body(body)? {
//!     let record = record.expect("a Defender record");
//!     match record.decode()? {
//!         Event::DeviceProcessEvents(row) => {
//!             assert_eq!(row.process_id.value(), Some(&4242)); // "4242" read as a long
//!             let extra = row.additional_fields.as_ref().unwrap();
//!             assert_eq!(extra.get("ParentProcessName").unwrap(), "explorer.exe");
//!             assert!(row.unknown.contains_key("NewColumn"));
//!         }
//!         Event::Unknown { category, .. } => assert_eq!(category, "AdvancedHunting-SomethingNew"),
//!         other => panic!("unexpected {}", other.category()),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "arrow")]
pub mod arrow;
mod column;
mod de;
mod drift;
mod dynamic;
mod envelope;
mod error;
// Column descriptions are prose that names columns; backticking every name would not help.
#[allow(clippy::doc_markdown)]
#[rustfmt::skip]
mod generated;
mod kql;
mod record;
mod scan;
mod table;
mod table_row;
mod timestamp;

pub use column::{Coerced, Col, ColValue, ColumnType};
pub use drift::{DriftKind, JsonKind, TypeDrift};
pub use dynamic::Dynamic;
pub use envelope::{BadRecord, RecordRef, Split, parse_record, split_body};
pub use error::{BodyError, DecodeError, RecordError};
pub use generated::{Event, Table, tables};
pub use kql::{Column, KqlType};
pub use record::{BodyDecodeError, Record, RecordDecodeError};
pub use table::UnknownTable;
pub use table_row::TableRow;
pub use timestamp::{Timestamp, TimestampError};

/// The README's Rust examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

#[doc(hidden)]
pub mod __private {
    //! Used by the generated code only.
    pub use crate::column::Fit;
    pub use crate::de::{Key, take, take_unknown};
    pub use crate::drift::{check_col, check_json_text};
}
