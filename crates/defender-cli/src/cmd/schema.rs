//! `defender schema TABLE`: its columns and types, its JSON Schema, or DDL for other engines
//! (`--format arrow|kql|sql|clickhouse`, one table or `--all`).

use std::fmt::Write as _;

use defender_schema::{KqlType, Table, arrow};

/// What `--format` prints (the doc comments are `--help` text, printed as written).
#[allow(clippy::doc_markdown)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The Arrow schema of the Parquet tables (`defender-tables`), extra columns included.
    Arrow,
    /// `.create-merge table` for Azure Data Explorer / Fabric, with the exact Kusto types.
    Kql,
    /// `CREATE TABLE` for DuckDB and PostgreSQL-style engines, extra columns included.
    Sql,
    /// ClickHouse MergeTree DDL, partitioned by day and ordered by time.
    Clickhouse,
}

pub fn run(tables: &[Table], json: bool, format: Option<Format>) {
    for (i, &table) in tables.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let text = match (format, json) {
            (Some(format), _) => render(table, format),
            (None, true) => table.json_schema().to_owned(),
            (None, false) => columns(table),
        };
        print!("{text}");
    }
}

fn columns(table: Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({}): {}", table.name(), table.category(), table.description());
    out.push('\n');
    let width = table.columns().iter().map(|c| c.name.len()).max().unwrap_or(6);
    let _ = writeln!(out, "{:width$}  {:<8}  DESCRIPTION", "COLUMN", "TYPE");
    for c in table.columns() {
        let mut notes = String::new();
        if c.json_content {
            notes.push_str(" [holds JSON text]");
        }
        if c.observed_only {
            notes.push_str(" [seen in real exports, not in Microsoft's reference]");
        }
        let _ = writeln!(
            out,
            "{:width$}  {:<8}  {}{notes}",
            c.name,
            c.kql_type.name(),
            c.description
        );
    }
    out
}

pub fn render(table: Table, format: Format) -> String {
    match format {
        Format::Arrow => render_arrow(table),
        Format::Kql => render_kql(table),
        Format::Sql => render_sql(table),
        Format::Clickhouse => render_clickhouse(table),
    }
}

fn render_arrow(table: Table) -> String {
    let schema = arrow::schema(table);
    let mut out = format!("// Arrow schema of {} (all fields nullable)\n", table.name());
    for f in schema.fields() {
        let _ = writeln!(out, "{}: {}", f.name(), f.data_type());
    }
    out
}

/// The Kusto table as advanced hunting has it (the extra `_` columns of the Parquet files are
/// left out, so that hunting queries run unchanged).
fn render_kql(table: Table) -> String {
    let mut out = format!(".create-merge table {} (\n", table.name());
    let n = table.columns().len();
    for (i, c) in table.columns().iter().enumerate() {
        let sep = if i + 1 < n { "," } else { "" };
        let _ = writeln!(out, "    {}: {}{sep}", c.name, c.kql_type.name());
    }
    out.push_str(")\n");
    out
}

/// One column of the files: name and KQL type, `None` for the extra text columns.
fn file_columns(table: Table) -> Vec<(&'static str, Option<KqlType>)> {
    let mut out: Vec<(&'static str, Option<KqlType>)> =
        table.columns().iter().map(|c| (c.name, Some(c.kql_type))).collect();
    for name in arrow::EXTRA_COLUMNS {
        let kql = (name == arrow::TIME).then_some(KqlType::Datetime);
        out.push((name, kql));
    }
    out
}

fn render_sql(table: Table) -> String {
    let mut out = format!(
        "-- {}: timestamps are UTC; the Parquet files keep Kusto's 100 ns ticks, these types keep microseconds.\n\
         -- dynamic columns hold JSON; the `_` columns are the envelope, unknown columns, drift and absent columns.\n\
         CREATE TABLE \"{}\" (\n",
        table.name(),
        table.name()
    );
    let columns = file_columns(table);
    for (i, (name, kql)) in columns.iter().enumerate() {
        let ty = match kql {
            Some(KqlType::Datetime) => "TIMESTAMP WITH TIME ZONE",
            Some(KqlType::Long) => "BIGINT",
            Some(KqlType::Int) => "INTEGER",
            Some(KqlType::Bool) => "BOOLEAN",
            Some(KqlType::Real) => "DOUBLE PRECISION",
            Some(KqlType::Dynamic) => "JSON",
            _ => "TEXT",
        };
        let sep = if i + 1 < columns.len() { "," } else { "" };
        let _ = writeln!(out, "    \"{name}\" {ty}{sep}");
    }
    out.push_str(");\n");
    out
}

fn render_clickhouse(table: Table) -> String {
    let time = if table.column("Timestamp").is_some() {
        "Timestamp"
    } else {
        arrow::TIME
    };
    let mut out = format!("CREATE TABLE `{}`\n(\n", table.name());
    let columns = file_columns(table);
    for (i, (name, kql)) in columns.iter().enumerate() {
        let ty = match kql {
            Some(KqlType::Datetime) => "DateTime64(7, 'UTC')",
            Some(KqlType::Long) => "Int64",
            Some(KqlType::Int) => "Int32",
            Some(KqlType::Bool) => "Bool",
            Some(KqlType::Real) => "Float64",
            _ => "String",
        };
        let sep = if i + 1 < columns.len() { "," } else { "" };
        let _ = writeln!(out, "    `{name}` Nullable({ty}){sep}");
    }
    let _ = write!(
        out,
        ")\nENGINE = MergeTree\nPARTITION BY toDate(`{time}`)\nORDER BY `{time}`\nSETTINGS allow_nullable_key = 1;\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        for format in [Format::Arrow, Format::Kql, Format::Sql, Format::Clickhouse] {
            let name = format!("{format:?}").to_lowercase();
            insta::assert_snapshot!(name, render(Table::DeviceProcessEvents, format));
        }
    }

    #[test]
    fn kql_types_are_the_reference_types() {
        let kql = render(Table::DeviceInfo, Format::Kql);
        assert!(kql.starts_with(".create-merge table DeviceInfo (\n"));
        for c in Table::DeviceInfo.columns() {
            assert!(
                kql.contains(&format!("    {}: {}", c.name, c.kql_type.name())),
                "{}",
                c.name
            );
        }
        for &t in Table::ALL {
            for format in [Format::Arrow, Format::Kql, Format::Sql, Format::Clickhouse] {
                assert!(!render(t, format).is_empty());
            }
        }
    }
}
