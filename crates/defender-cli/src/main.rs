//! `defender`: inspect and validate Microsoft Defender XDR advanced-hunting data.
#![forbid(unsafe_code)]

mod cmd;
mod input;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use defender_schema::Table;

#[derive(Parser)]
#[command(name = "defender", version, about = "Work with Microsoft Defender XDR advanced-hunting events", long_about = None)]
#[command(propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every supported table with its category and column count.
    #[command(after_help = "Examples:\n  defender tables\n  defender tables --json | jq '.[].table'")]
    Tables {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a table's columns and types.
    #[command(
        after_help = "Examples:\n  defender schema DeviceProcessEvents\n  defender schema deviceprocessevents --json > DeviceProcessEvents.schema.json"
    )]
    Schema {
        /// The table: its name in any case, or its category.
        #[arg(value_parser = parse_table)]
        table: Table,
        /// Print the table's JSON Schema (draft 2020-12).
        #[arg(long)]
        json: bool,
    },
    /// Decode every record into its typed model and report per table.
    ///
    /// Reads files or folders (recursively: *.json, *.ndjson, *.jsonl, plain or .gz / .zst) or `-`
    /// for stdin. Each may hold Event Hub message bodies ({"records": [...]}), single records,
    /// NDJSON, or JSON arrays of either. Values that drift from the documented types, unknown
    /// columns and unknown tables are reported, not counted as invalid: a record is invalid only
    /// when it is not a Defender record (broken JSON, no `category`, `properties` not an object).
    ///
    /// Exit status: 0 nothing invalid, 1 something invalid, 2 usage error.
    #[command(
        after_help = "Examples:\n  defender validate fixtures/\n  defender validate --json export.ndjson.zst\n  az eventhubs ... | defender validate -"
    )]
    Validate {
        /// Print a JSON summary instead of the report.
        #[arg(long)]
        json: bool,
        /// Files, folders, or `-` for stdin.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
}

fn parse_table(s: &str) -> Result<Table, String> {
    s.parse::<Table>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tables { json } => cmd::tables::run(json).map(|()| true),
        Command::Schema { table, json } => {
            cmd::schema::run(table, json);
            Ok(true)
        }
        Command::Validate { json, paths } => cmd::validate::run(&cmd::validate::Args { paths, json }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
