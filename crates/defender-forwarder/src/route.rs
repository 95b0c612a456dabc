//! Which records a sink takes: include / exclude lists of tables, and whether records of tables
//! the schema crate does not know pass.

use defender_schema::Table;

use crate::config::TablesConfig;
use crate::delivery::TableId;

/// A sink's table selection, as a lookup per known table.
#[derive(Debug, Clone)]
pub struct Route {
    known: [bool; Table::ALL.len()],
    unknown: bool,
}

impl Route {
    /// Every table, known or not.
    pub fn all() -> Route {
        Route {
            known: [true; Table::ALL.len()],
            unknown: true,
        }
    }

    /// From a checked configuration (names are known tables; see `Config::parse`).
    pub fn from_config(c: &TablesConfig) -> Route {
        let mut known = [c.include.is_none(); Table::ALL.len()];
        for name in c.include.iter().flatten() {
            if let Some(t) = Table::from_name(name) {
                known[index(t)] = true;
            }
        }
        for name in c.exclude.iter().flatten() {
            if let Some(t) = Table::from_name(name) {
                known[index(t)] = false;
            }
        }
        Route {
            known,
            unknown: c.unknown.is_none_or(|f| f.0),
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
    use crate::config::{Flag, Text};

    fn names(v: &[&str]) -> Vec<Text> {
        v.iter().map(|s| Text((*s).to_owned())).collect()
    }

    #[test]
    fn tables_index_in_declaration_order() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(index(*t), i);
        }
    }

    #[test]
    fn include_exclude_and_unknown() {
        let r = Route::from_config(&TablesConfig {
            include: Some(names(&["DeviceProcessEvents", "emailevents"])),
            exclude: None,
            unknown: Some(Flag(false)),
        });
        assert!(r.accepts(&TableId::Known(Table::DeviceProcessEvents)));
        assert!(r.accepts(&TableId::Known(Table::EmailEvents)));
        assert!(!r.accepts(&TableId::Known(Table::DeviceInfo)));
        assert!(!r.accepts(&TableId::Other("NewTable".into())));

        let r = Route::from_config(&TablesConfig {
            include: None,
            exclude: Some(names(&["DeviceInfo"])),
            unknown: None,
        });
        assert!(!r.accepts(&TableId::Known(Table::DeviceInfo)));
        assert!(r.accepts(&TableId::Known(Table::EmailEvents)));
        assert!(r.accepts(&TableId::Other("NewTable".into())));
        assert_eq!(r.tables().count(), Table::ALL.len() - 1);
    }
}
