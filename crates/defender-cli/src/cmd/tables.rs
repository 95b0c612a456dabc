//! `defender tables`: every supported table.

use anyhow::Result;
use defender_schema::Table;
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    table: &'static str,
    category: &'static str,
    columns: usize,
    streamed: bool,
    description: &'static str,
}

pub fn run(json: bool) -> Result<()> {
    let rows: Vec<Row> = Table::ALL
        .iter()
        .map(|t| Row {
            table: t.name(),
            category: t.category(),
            columns: t.columns().len(),
            streamed: t.streamed(),
            description: t.description(),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = rows.iter().map(|r| r.table.len()).max().unwrap_or(5);
    let cat_width = rows.iter().map(|r| r.category.len()).max().unwrap_or(8);
    println!(
        "{:width$}  {:cat_width$}  {:>7}  STREAMED",
        "TABLE", "CATEGORY", "COLUMNS"
    );
    for r in &rows {
        let streamed = if r.streamed { "yes" } else { "no" };
        println!(
            "{:width$}  {:cat_width$}  {:>7}  {streamed}",
            r.table, r.category, r.columns
        );
    }
    println!(
        "\n{} tables; STREAMED = on Microsoft's list of Streaming API tables (the others appear in real exports too).",
        rows.len()
    );
    Ok(())
}
