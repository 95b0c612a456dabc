//! Settings of a tables writer: one serde struct, every field optional with its default beside
//! it, durations written like the rest of the configuration (`"500ms"`, `"15m"`, `"2h"`, `"7d"`,
//! or a number of seconds), numbers as numbers or numeric strings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::TablesError;

/// Rotation, row groups, retention, compaction and recovery of a tables writer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// Days a table's files are kept, counted from the end of their day (default 90).
    #[serde(deserialize_with = "num")]
    pub retention_days: u32,
    /// Days kept per table, e.g. `{ DeviceProcessEvents = 30 }`; names as `defender tables` prints.
    #[serde(deserialize_with = "num_map")]
    pub retention: BTreeMap<String, u32>,
    /// A file is published once it holds this many rows (default 1,000,000).
    #[serde(deserialize_with = "num")]
    pub rotate_rows: u64,
    /// ... or this many MiB of encoded Parquet (default 256).
    #[serde(deserialize_with = "num")]
    pub rotate_mib: u64,
    /// ... or once its first record is this old (default 15m): how long a record may wait
    /// before hunting queries see it.
    #[serde(deserialize_with = "span", serialize_with = "span_out")]
    pub rotate_age: Duration,
    /// Rows per row group (default 122,880, the row group size `DuckDB` uses).
    #[serde(deserialize_with = "num")]
    pub row_group_rows: usize,
    /// MiB of encoded, unwritten row groups held across all open files before the largest is
    /// written out as a (smaller) row group (default 96): the writer's memory bound.
    #[serde(deserialize_with = "num")]
    pub buffer_mib: u64,
    /// zstd level of the Parquet pages (default 3).
    #[serde(deserialize_with = "num")]
    pub zstd_level: i32,
    /// Merge the files of a day once the day has been over this long (default 2h); `"0s"` turns
    /// compaction off. Local roots only (see docs/tables.md for Blob).
    #[serde(deserialize_with = "span", serialize_with = "span_out")]
    pub compact_after: Duration,
    /// A day is compacted when it has at least this many files (default 4).
    #[serde(deserialize_with = "num")]
    pub compact_min_files: usize,
    /// The staging area of another writer untouched this long is recovered (published) by
    /// this one (default 7d).
    #[serde(deserialize_with = "span", serialize_with = "span_out")]
    pub orphan_after: Duration,
}

impl Default for TablesConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            retention: BTreeMap::new(),
            rotate_rows: 1_000_000,
            rotate_mib: 256,
            rotate_age: Duration::from_secs(15 * 60),
            row_group_rows: 122_880,
            buffer_mib: 96,
            zstd_level: 3,
            compact_after: Duration::from_secs(2 * 3600),
            compact_min_files: 4,
            orphan_after: Duration::from_secs(7 * 86_400),
        }
    }
}

impl TablesConfig {
    /// Checks the values that have limits.
    pub fn validate(&self) -> Result<(), TablesError> {
        let bad = |m: &str| Err(TablesError::Config(m.to_owned()));
        if self.rotate_rows == 0 || self.rotate_mib == 0 || self.row_group_rows == 0 {
            return bad("rotate_rows, rotate_mib and row_group_rows must be at least 1");
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad("zstd_level must be 1 to 22");
        }
        if self.rotate_age.is_zero() {
            return bad("rotate_age must be more than 0s");
        }
        Ok(())
    }

    /// Days kept for a table.
    pub fn retention_for(&self, table: &str) -> u32 {
        self.retention
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(table))
            .map_or(self.retention_days, |(_, days)| *days)
    }
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"`, or a whole number of seconds.
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    Ok(match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Duration::from_millis(n),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => return Err(format!("unknown duration unit `{other}` (ms, s, m, h, d)")),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn to_num<T: TryFrom<u64>, E: de::Error>(v: NumOrText) -> Result<T, E> {
    let n = match v {
        NumOrText::Num(n) => n,
        NumOrText::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| E::custom(format!("`{t}` is not a whole number")))?,
    };
    T::try_from(n).map_err(|_| E::custom(format!("{n} is out of range")))
}

fn num<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    to_num(NumOrText::deserialize(d)?)
}

fn num_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u32>, D::Error> {
    BTreeMap::<String, NumOrText>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| to_num(v).map(|n| (k, n)))
        .collect()
}

fn span<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(Duration::from_secs(n)),
        NumOrText::Text(t) => parse_span(&t).map_err(de::Error::custom),
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn span_out<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_forms() {
        let c: TablesConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, TablesConfig::default());
        let c: TablesConfig = serde_json::from_str(
            r#"{"rotate_age":"5m","retention_days":"30","retention":{"DeviceProcessEvents":7},"compact_after":0}"#,
        )
        .unwrap();
        assert_eq!(c.rotate_age, Duration::from_secs(300));
        assert_eq!(c.retention_for("deviceprocessevents"), 7);
        assert_eq!(c.retention_for("EmailEvents"), 30);
        assert!(c.compact_after.is_zero());
        assert!(serde_json::from_str::<TablesConfig>(r#"{"rotate_agee":"5m"}"#).is_err());
        assert!(serde_json::from_str::<TablesConfig>(r#"{"rotate_age":"5y"}"#).is_err());
        let again: TablesConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }
}
