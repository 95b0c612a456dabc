//! Hand-written parts of [`Table`] and [`Event`]; the per-table parts are generated.

use std::fmt;
use std::str::FromStr;

use serde_json::value::RawValue;

use crate::{Column, DecodeError, Event, Table};

impl Table {
    /// Finds a table by name, ignoring ASCII case (`deviceprocessevents` works), or by its full
    /// category (`AdvancedHunting-DeviceProcessEvents`).
    pub fn from_name(name: &str) -> Option<Table> {
        let name = name.strip_prefix("AdvancedHunting-").unwrap_or(name);
        Table::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// A column by its exact name.
    pub fn column(self, name: &str) -> Option<&'static Column> {
        self.columns().iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a name that is no known table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown table `{0}` (`defender tables` lists the known ones)")]
pub struct UnknownTable(pub String);

impl FromStr for Table {
    type Err = UnknownTable;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Table::from_name(s).ok_or_else(|| UnknownTable(s.to_owned()))
    }
}

impl Event {
    /// The record's category (`AdvancedHunting-<Table>`).
    pub fn category(&self) -> &str {
        match (self, self.table()) {
            (Event::Unknown { category, .. }, _) => category,
            (_, Some(t)) => t.category(),
            (_, None) => unreachable!("every variant but Unknown has a table"),
        }
    }
}

pub(crate) fn decode_row(table: Table, properties: &RawValue) -> Result<Event, DecodeError> {
    decode_row_text(table, properties.get())
}

/// [`decode_row`] from the row's JSON text.
pub(crate) fn decode_row_text(table: Table, properties: &str) -> Result<Event, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(properties);
    Event::decode_from(table, &mut de)
        .and_then(|event| de.end().map(|()| event))
        .map_err(|e| DecodeError::from_json(table.name(), &e))
}
