//! `defender`: inspect and validate Microsoft Defender XDR advanced-hunting data.
#![forbid(unsafe_code)]

mod cmd;
mod input;
mod progress;

use std::net::SocketAddr;
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
    /// Run a local Event Hubs emulator (AMQP on loopback), optionally loaded with Defender data.
    ///
    /// Prints a connection string as the first line of output (the Rust and Python Event Hubs
    /// clients accept it; it carries `UseDevelopmentEmulator=true`), then serves until stopped.
    #[command(
        after_help = "Examples:\n  defender emulate --load fixtures/\n  defender emulate --bind 127.0.0.1:5672 --hub defender --partitions 8 --load export.ndjson --data-dir ./hub-data"
    )]
    Emulate {
        /// Address to listen on (loopback only; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:5672")]
        bind: SocketAddr,
        /// The event hub to serve.
        #[arg(long, default_value = "defender")]
        hub: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
        partitions: u32,
        /// Files or folders of Defender data to preload (message bodies, NDJSON or JSON arrays).
        #[arg(long, value_name = "PATH")]
        load: Vec<PathBuf>,
        /// Keep events in this folder, so they survive a restart.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Records per preloaded message (Defender sends about 100).
        #[arg(long, default_value_t = 100)]
        records_per_message: usize,
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
        Command::Emulate {
            bind,
            hub,
            partitions,
            load,
            data_dir,
            records_per_message,
        } => cmd::emulate::run(&cmd::emulate::Args {
            bind,
            hub,
            partitions,
            load,
            data_dir,
            records_per_message,
        })
        .map(|()| true),
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
