//! Which table a record goes to, the table's Arrow schema and column kinds, and its day.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow_schema::SchemaRef;
use defender_schema::{Table, arrow};

use crate::cell::Kind;

/// The table a record belongs to: a known one, or a table name taken from an unknown category.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableName {
    /// A table with a typed model (and so a typed schema).
    Known(Table),
    /// Another table, stored with the generic schema ([`arrow::unknown_table_schema`]).
    Other(Arc<str>),
}

impl TableName {
    /// The table of a record's `category`: a known table, or `AdvancedHunting-<Name>` -> `<Name>`
    /// (any other category is used whole). Characters that cannot be part of a directory name
    /// safely (anything but ASCII letters, digits, `-` and `.`) become `-`, a leading `.`, `-` or
    /// `_` gets an `X` in front (no table may hide, or collide with `_staging`), and the name is
    /// cut at 128 bytes.
    pub fn of_category(category: &str) -> TableName {
        if let Some(table) = Table::from_category(category) {
            return TableName::Known(table);
        }
        let name = category.strip_prefix("AdvancedHunting-").unwrap_or(category);
        let mut safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
            .take(128)
            .collect();
        if !safe.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            safe.insert(0, 'X');
        }
        TableName::Other(Arc::from(safe))
    }

    /// The directory name.
    pub fn name(&self) -> &str {
        match self {
            TableName::Known(t) => t.name(),
            TableName::Other(name) => name,
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A table's columns as the converter sees them.
#[derive(Debug)]
pub(crate) struct Layout {
    pub schema: SchemaRef,
    /// The table's own columns (none for an unknown table).
    pub columns: Vec<(&'static str, Kind)>,
    index: HashMap<&'static str, usize>,
    /// The column (`Timestamp`) that gives a row its day, if the table has one.
    pub timestamp: Option<usize>,
}

impl Layout {
    /// The layout of a known table, built once.
    pub fn of(table: Table) -> &'static Layout {
        static LAYOUTS: OnceLock<Vec<Layout>> = OnceLock::new();
        let all = LAYOUTS.get_or_init(|| Table::ALL.iter().map(|&t| Layout::build(t)).collect());
        let i = Table::ALL
            .iter()
            .position(|&t| t == table)
            .expect("every table is in ALL");
        &all[i]
    }

    /// The layout of every unknown table.
    pub fn unknown() -> &'static Layout {
        static LAYOUT: OnceLock<Layout> = OnceLock::new();
        LAYOUT.get_or_init(|| Layout {
            schema: arrow::unknown_table_schema(),
            columns: Vec::new(),
            index: HashMap::new(),
            timestamp: None,
        })
    }

    pub fn for_table(table: &TableName) -> &'static Layout {
        match table {
            TableName::Known(t) => Layout::of(*t),
            TableName::Other(_) => Layout::unknown(),
        }
    }

    fn build(table: Table) -> Layout {
        let columns: Vec<(&'static str, Kind)> = table.columns().iter().map(|c| (c.name, Kind::of(c))).collect();
        let index = columns.iter().enumerate().map(|(i, (name, _))| (*name, i)).collect();
        let timestamp = columns
            .iter()
            .position(|(name, kind)| *name == "Timestamp" && *kind == Kind::Timestamp);
        Layout {
            schema: arrow::schema(table),
            columns,
            index,
            timestamp,
        }
    }

    /// The position of a table column.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Whether this is the generic layout of unknown tables.
    pub fn is_unknown(&self) -> bool {
        self.columns.is_empty()
    }
}

/// A UTC day, `YYYY-MM-DD`: the `day=` partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Day(chrono::NaiveDate);

impl Day {
    /// The day of an instant in nanoseconds since the epoch.
    pub fn of_nanos(nanos: i64) -> Day {
        Day(chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(nanos).date_naive())
    }

    /// Today, UTC.
    pub fn today() -> Day {
        Day(chrono::Utc::now().date_naive())
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Day> {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(Day)
    }

    /// The date.
    pub fn date(self) -> chrono::NaiveDate {
        self.0
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_table_names_are_safe_directories() {
        let name = |c: &str| TableName::of_category(c).name().to_owned();
        assert_eq!(name("AdvancedHunting-DeviceProcessEvents"), "DeviceProcessEvents");
        assert_eq!(name("AdvancedHunting-NewThing"), "NewThing");
        assert_eq!(name("AdvancedHunting-../../etc"), "X..-..-etc");
        assert_eq!(name("_staging"), "X-staging");
        assert_eq!(name(""), "X");
        assert!(name(&"a/".repeat(200)).len() <= 129);
    }
}
