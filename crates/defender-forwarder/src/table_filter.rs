//! Which records a sink takes: include / exclude lists of tables, and whether records of tables
//! the schema crate does not know pass.

use defender_schema::Table;
use serde::Deserialize;
use serde_with::serde_as;

use crate::config::{Flag, FromText, Invalid, ListOf};
use crate::delivery::TableId;

/// `tables = { include = [...], exclude = [...], unknown = true }` of a sink.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    /// Only these tables (default: all).
    #[serde(default)]
    #[serde_as(as = "Option<ListOf<FromText>>")]
    pub include: Option<Vec<Table>>,
    /// Not these tables.
    #[serde(default)]
    #[serde_as(as = "Option<ListOf<FromText>>")]
    pub exclude: Option<Vec<Table>>,
    /// Records of tables the schema crate does not know pass (default true).
    #[serde(default = "TablesConfig::default_unknown")]
    #[serde_as(as = "Flag")]
    pub unknown: bool,
}

impl TablesConfig {
    const fn default_unknown() -> bool {
        true
    }

    pub(crate) fn check(&self) -> Result<(), Invalid> {
        if self.include.as_ref().is_some_and(Vec::is_empty) {
            return Err(Invalid::new(
                "include",
                "is empty, so the sink would get nothing; leave it out to take every table",
            ));
        }
        Ok(())
    }
}

impl Default for TablesConfig {
    fn default() -> Self {
        Self {
            include: None,
            exclude: None,
            unknown: true,
        }
    }
}

/// A sink's table selection, as a lookup per known table.
#[derive(Debug, Clone)]
pub struct TableFilter {
    known: [bool; Table::ALL.len()],
    unknown: bool,
}

impl TableFilter {
    /// Every table, known or not.
    pub fn all() -> TableFilter {
        TableFilter {
            known: [true; Table::ALL.len()],
            unknown: true,
        }
    }

    /// From a sink's configuration.
    pub fn new(c: &TablesConfig) -> TableFilter {
        let mut known = [c.include.is_none(); Table::ALL.len()];
        for t in c.include.iter().flatten() {
            known[index(*t)] = true;
        }
        for t in c.exclude.iter().flatten() {
            known[index(*t)] = false;
        }
        TableFilter {
            known,
            unknown: c.unknown,
        }
    }

    /// Whether a record of `table` goes to this sink.
    pub fn accepts(&self, table: &TableId) -> bool {
        match table {
            TableId::Known(t) => self.known[index(*t)],
            TableId::Other(_) => self.unknown,
        }
    }

    /// The known tables this route takes.
    pub fn tables(&self) -> impl Iterator<Item = Table> + '_ {
        Table::ALL.iter().copied().filter(|t| self.known[index(*t)])
    }
}

fn index(t: Table) -> usize {
    // `Table::ALL` lists the variants in declaration order (checked below).
    t as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<Table> {
        v.iter().map(|s| Table::from_name(s).unwrap()).collect()
    }

    #[test]
    fn tables_index_in_declaration_order() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(index(*t), i);
        }
    }

    #[test]
    fn include_exclude_and_unknown() {
        let r = TableFilter::new(&TablesConfig {
            include: Some(names(&["DeviceProcessEvents", "emailevents"])),
            exclude: None,
            unknown: false,
        });
        assert!(r.accepts(&TableId::Known(Table::DeviceProcessEvents)));
        assert!(r.accepts(&TableId::Known(Table::EmailEvents)));
        assert!(!r.accepts(&TableId::Known(Table::DeviceInfo)));
        assert!(!r.accepts(&TableId::Other("NewTable".into())));

        let r = TableFilter::new(&TablesConfig {
            include: None,
            exclude: Some(names(&["DeviceInfo"])),
            unknown: true,
        });
        assert!(!r.accepts(&TableId::Known(Table::DeviceInfo)));
        assert!(r.accepts(&TableId::Known(Table::EmailEvents)));
        assert!(r.accepts(&TableId::Other("NewTable".into())));
        assert_eq!(r.tables().count(), Table::ALL.len() - 1);
    }
}
