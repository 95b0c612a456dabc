//! `defender schema TABLE`: its columns and types, or its JSON Schema.

use defender_schema::Table;

pub fn run(table: Table, json: bool) {
    if json {
        print!("{}", table.json_schema());
        return;
    }
    println!("{} ({}): {}", table.name(), table.category(), table.description());
    println!();
    let width = table.columns().iter().map(|c| c.name.len()).max().unwrap_or(6);
    println!("{:width$}  {:<8}  DESCRIPTION", "COLUMN", "TYPE");
    for c in table.columns() {
        let mut notes = String::new();
        if c.json_content {
            notes.push_str(" [holds JSON text]");
        }
        if c.observed_only {
            notes.push_str(" [seen in real exports, not in Microsoft's reference]");
        }
        println!("{:width$}  {:<8}  {}{notes}", c.name, c.kql_type.name(), c.description);
    }
}
