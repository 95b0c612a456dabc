//! `defender validate`: decode every record into its typed model and report per table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use defender_schema::{BodyError, RecordRef, parse_record, split_body};
use serde::Serialize;

use crate::input::{self, Position, Source, Unit};
use crate::progress;

/// How many invalid records are listed (all are counted).
const SAMPLE_CAP: usize = 20;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub files: usize,
    /// Files found in folders but not read for their extension.
    pub skipped_files: Vec<String>,
    pub records: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Known tables: records seen.
    pub by_table: BTreeMap<String, u64>,
    pub tables: BTreeMap<String, TableSummary>,
    pub invalid_samples: Vec<Invalid>,
    /// Unknown categories: records seen.
    pub unknown_tables: BTreeMap<String, u64>,
    /// Columns the schema does not know, per table.
    pub unknown_columns: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Default, Serialize)]
pub struct TableSummary {
    pub records: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Values not in the documented type, kept as they arrived: `column: expected <- found` -> count.
    pub type_drift: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Invalid {
    pub file: String,
    /// `:line` for NDJSON, `[index]` in a JSON array, then ` record N` inside a message body.
    pub at: String,
    pub table: Option<String>,
    pub column: Option<String>,
    pub reason: String,
}

impl Summary {
    fn invalid(&mut self, source: &Source, at: &str, table: Option<String>, column: Option<String>, reason: String) {
        self.invalid += 1;
        if let Some(t) = &table {
            let entry = self.tables.entry(t.clone()).or_default();
            entry.invalid += 1;
        }
        if self.invalid_samples.len() < SAMPLE_CAP {
            self.invalid_samples.push(Invalid {
                file: source.to_string(),
                at: at.trim().to_owned(),
                table,
                column,
                reason,
            });
        }
    }

    fn record(&mut self, source: &Source, at: &str, r: &RecordRef<'_>) {
        self.records += 1;
        let name = r.table_name().to_owned();
        if r.table().is_some() {
            *self.by_table.entry(name.clone()).or_default() += 1;
        } else {
            *self.unknown_tables.entry(r.category().to_owned()).or_default() += 1;
        }
        self.tables.entry(name.clone()).or_default().records += 1;
        match r.decode() {
            Ok(event) => {
                self.valid += 1;
                let table = self.tables.entry(name.clone()).or_default();
                table.valid += 1;
                for d in event.type_drift() {
                    *table
                        .type_drift
                        .entry(format!("{}: {} <- {}", d.column, d.expected, d.found))
                        .or_default() += 1;
                }
                if let Some(unknown) = event.unknown_columns().filter(|u| !u.is_empty()) {
                    self.unknown_columns
                        .entry(name)
                        .or_default()
                        .extend(unknown.keys().cloned());
                }
            }
            Err(e) => self.invalid(source, at, Some(e.table), e.column, e.reason),
        }
    }

    fn unit(&mut self, source: &Source, pos: Position, unit: &Unit<'_>) {
        let at = pos.to_string();
        match unit {
            Unit::Broken(reason) => self.invalid(source, &at, None, None, reason.clone()),
            Unit::Record(json) => match parse_record(json) {
                Ok(r) => self.record(source, &at, &r),
                Err(e) => {
                    self.records += 1;
                    self.invalid(source, &at, None, None, e.to_string());
                }
            },
            Unit::Body(json) => match split_body(json.as_bytes()) {
                Ok(records) => {
                    for (i, r) in records.into_iter().enumerate() {
                        let at = format!("{at} record {i}");
                        match r {
                            Ok(r) => self.record(source, &at, &r),
                            Err(bad) => {
                                self.records += 1;
                                self.invalid(source, &at, None, None, bad.error.to_string());
                            }
                        }
                    }
                }
                Err(e) => {
                    let reason = match e {
                        BodyError::Json(e) => format!("message body is not valid JSON: {e}"),
                        other => other.to_string(),
                    };
                    self.invalid(source, &at, None, None, reason);
                }
            },
        }
    }
}

pub struct Args {
    pub paths: Vec<PathBuf>,
    pub json: bool,
}

/// Runs the command; `Ok(false)` when something was invalid (exit 1).
pub fn run(args: &Args) -> Result<bool> {
    input::require_some(&args.paths)?;
    let (sources, skipped) = input::expand_listing(&args.paths)?;
    let total: u64 = sources.iter().map(input::size).sum();
    let bar = progress::bytes(total, "validating");
    let mut summary = Summary {
        skipped_files: skipped.iter().map(|p| p.display().to_string()).collect(),
        ..Summary::default()
    };
    for source in &sources {
        let data = input::read(source)?;
        summary.files += 1;
        match std::str::from_utf8(&data) {
            Ok(text) => {
                for (pos, unit) in input::units(text) {
                    summary.unit(source, pos, &unit);
                }
            }
            Err(e) => summary.invalid(
                source,
                "",
                None,
                None,
                format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            ),
        }
        bar.inc(input::size(source));
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(summary.invalid == 0)
}

/// The human report.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let width = s.tables.keys().map(String::len).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "{:width$}  {:>8}  {:>8}  {:>8}  {:>6}",
        "TABLE", "RECORDS", "VALID", "INVALID", "DRIFT"
    );
    for (name, t) in &s.tables {
        let drift: u64 = t.type_drift.values().sum();
        let _ = writeln!(
            out,
            "{name:width$}  {:>8}  {:>8}  {:>8}  {drift:>6}",
            t.records, t.valid, t.invalid
        );
    }
    for (name, t) in s.tables.iter().filter(|(_, t)| !t.type_drift.is_empty()) {
        let _ = writeln!(out, "\ntype drift in {name} (kept as it arrived):");
        for (what, n) in &t.type_drift {
            let _ = writeln!(out, "  {what} x{n}");
        }
    }
    if !s.unknown_columns.is_empty() {
        let _ = writeln!(out, "\nunknown columns (kept):");
        for (table, columns) in &s.unknown_columns {
            let list: Vec<&str> = columns.iter().map(String::as_str).collect();
            let _ = writeln!(out, "  {table}: {}", list.join(", "));
        }
    }
    if !s.unknown_tables.is_empty() {
        let _ = writeln!(out, "\nunknown tables (kept):");
        for (category, n) in &s.unknown_tables {
            let _ = writeln!(out, "  {category} x{n}");
        }
    }
    if s.invalid > 0 {
        let shown = s.invalid_samples.len();
        let _ = writeln!(out, "\ninvalid ({shown} shown of {}):", s.invalid);
        for i in &s.invalid_samples {
            let column = i
                .column
                .as_deref()
                .map(|c| format!(" column `{c}`:"))
                .unwrap_or_default();
            let sep = if i.at.is_empty() || i.at.starts_with([':', '[']) {
                ""
            } else {
                " "
            };
            let _ = writeln!(out, "  {}{sep}{}:{column} {}", i.file, i.at, i.reason);
        }
    }
    let _ = writeln!(
        out,
        "\n{} records in {} files: {} valid, {} invalid",
        s.records, s.files, s.valid, s.invalid
    );
    render_skipped(&mut out, &s.skipped_files);
    out
}

/// Files a folder held that were not read: counted, the first few named, and how to read them.
fn render_skipped(out: &mut String, skipped: &[String]) {
    const SHOWN: usize = 10;
    if skipped.is_empty() {
        return;
    }
    let n = skipped.len();
    let _ = writeln!(
        out,
        "{n} {} skipped: in folders only {} files are read (also .gz / .zst):",
        if n == 1 { "file" } else { "files" },
        input::data_extensions()
    );
    for f in skipped.iter().take(SHOWN) {
        let _ = writeln!(out, "  {f}");
    }
    if skipped.len() > SHOWN {
        let _ = writeln!(out, "  ... and {} more", skipped.len() - SHOWN);
    }
    let example = skipped.first().map_or("FILE", String::as_str);
    let _ = writeln!(
        out,
        "to read them anyway, name them: defender validate {example} ... (a file named on the command line is read whatever its name)"
    );
}
