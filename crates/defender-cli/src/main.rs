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
        after_help = "Examples:\n  defender schema DeviceProcessEvents\n  defender schema deviceprocessevents --json > DeviceProcessEvents.schema.json\n  defender schema DeviceProcessEvents --format kql\n  defender schema --all --format clickhouse"
    )]
    Schema {
        /// The table: its name in any case, or its category.
        #[arg(value_parser = parse_table, required_unless_present = "all")]
        table: Option<Table>,
        /// Every table, one after the other.
        #[arg(long, conflicts_with = "table")]
        all: bool,
        /// Print the table's JSON Schema (draft 2020-12).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Print it for another engine: `arrow` (the Parquet tables' Arrow schema), `kql`
        /// (`.create-merge table`), `sql` (DuckDB/PostgreSQL `CREATE TABLE`), `clickhouse`
        /// (MergeTree DDL by day).
        #[allow(clippy::doc_markdown)]
        #[arg(long, value_enum)]
        format: Option<cmd::schema::Format>,
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
    /// Try the whole pipeline in seconds, with nothing installed and no Azure account.
    ///
    /// Starts an Event Hubs emulator in this process, loads the bundled fixtures (every table),
    /// and runs the real forwarder over the real AMQP client into a local archive; then prints
    /// what landed where, per table.
    #[command(
        after_help = "Examples:\n  defender demo\n  defender demo --dir /tmp/demo && zstdcat /tmp/demo/archive/EmailEvents/*/*.ndjson.zst"
    )]
    Demo {
        /// Where the archive and state go (cleared when it was made by an earlier demo).
        #[arg(long, default_value = "defender-demo")]
        dir: PathBuf,
        /// Data to load (default: the repository's `fixtures/`).
        #[arg(long, value_name = "DIR")]
        fixtures: Option<PathBuf>,
        /// Partitions of the demo hub.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
        partitions: u32,
    },
    /// Read a past time range of a Storage-account export once, through the configured sinks.
    ///
    /// Uses the `kind = "storage"` source and the sinks of a forwarder configuration, with
    /// checkpoints of its own (an interrupted backfill resumes; the live forwarder's are untouched).
    #[command(
        after_help = "Examples:\n  defender backfill --config forwarder.toml --from 2026-11-01T00:00:00Z --to 2026-11-08T00:00:00Z\n  defender backfill --config forwarder.toml --from 2026-11-20T00:00:00Z --table EmailEvents --sink archive"
    )]
    Backfill(cmd::backfill::Args),
    /// Show or replay what the forwarder dead-lettered.
    #[command(subcommand, name = "dead-letter")]
    DeadLetter(DeadLetterCommand),
    /// Run a local Event Hubs emulator (AMQP on loopback), optionally loaded with Defender data.
    ///
    /// Prints a connection string as the first line of output (the Rust and Python Event Hubs
    /// clients accept it; it carries `UseDevelopmentEmulator=true`), then serves until stopped.
    #[command(
        after_help = "Examples:\n  defender emulate --load fixtures/\n  defender emulate --hubs per-table --load fixtures/\n  defender emulate --bind 127.0.0.1:5672 --hub defender --partitions 8 --load export.ndjson --data-dir ./hub-data"
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
        /// `per-table`: serve one hub per table, named as Defender names them
        /// (`insights-logs-advancedhunting-<table>`), and load each record into its table's hub.
        #[arg(long, value_name = "LAYOUT", value_parser = ["per-table"])]
        hubs: Option<String>,
    },
    /// Send the records of files to an Event Hub, packed as Defender packs them.
    ///
    /// Envelopes {"records": [...]} of up to --records-per-message records, each under 1 MB,
    /// in batches. Takes what `validate` reads; what is not a Defender record is listed and
    /// skipped. Prints `sent N records in M messages to HUB (X records/s)` at the end.
    #[command(
        after_help = "Examples:\n  defender send --connection-string \"$CS\" fixtures/\n  defender send --connection-string \"$CS\" --hub defender --partition 0 --records-per-message 10 export.ndjson.zst"
    )]
    Send(cmd::send::Args),
    /// Print the records arriving on an Event Hub as NDJSON (exact bytes), without checkpointing.
    ///
    /// Reads every partition; stops after --count records, or on Ctrl-C.
    #[command(
        after_help = "Examples:\n  defender tail --connection-string \"$CS\"\n  defender tail --connection-string \"$CS\" --from earliest --table DeviceProcessEvents --count 10 | jq .properties.FileName"
    )]
    Tail(cmd::tail::Args),
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List the dead letters waiting for a replay, with their reasons.
    ///
    /// Exit status: 0 when there are none, 1 when there are some, 2 on error.
    #[command(
        after_help = "Examples:\n  defender dead-letter list --config forwarder.toml\n  defender dead-letter list --state-dir /var/lib/defender --json | jq .reason"
    )]
    List {
        /// The forwarder's configuration (for its state directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The forwarder's state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// One JSON object per dead letter.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters again, each through the sink that gave it up, as configured now.
    ///
    /// Run it after fixing the cause (a wrong intake key, a full disk). What is refused again
    /// goes back to the store; replayed files move to `dead-letters/replayed/`.
    #[command(
        after_help = "Examples:\n  defender dead-letter replay --config forwarder.toml\n  defender dead-letter replay --config forwarder.toml --sink sekoia"
    )]
    Replay {
        /// The forwarder's configuration (its sinks and state directory).
        #[arg(long, short)]
        config: PathBuf,
        /// Only the dead letters of this sink (repeatable).
        #[arg(long = "sink", value_name = "NAME")]
        sinks: Vec<String>,
    },
}

fn parse_table(s: &str) -> Result<Table, String> {
    s.parse::<Table>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tables { json } => cmd::tables::run(json).map(|()| true),
        Command::Schema {
            table,
            all,
            json,
            format,
        } => {
            let tables = if all {
                Table::ALL.to_vec()
            } else {
                table.into_iter().collect()
            };
            cmd::schema::run(&tables, json, format);
            Ok(true)
        }
        Command::Validate { json, paths } => cmd::validate::run(&cmd::validate::Args { paths, json }),
        Command::Backfill(args) => cmd::backfill::run(&args).map(|()| true),
        Command::Demo {
            dir,
            fixtures,
            partitions,
        } => cmd::demo::run(&cmd::demo::Args {
            dir,
            fixtures,
            partitions,
        })
        .map(|()| true),
        Command::DeadLetter(DeadLetterCommand::List {
            config,
            state_dir,
            json,
        }) => cmd::dead_letter::list(&cmd::dead_letter::ListArgs {
            config,
            state_dir,
            json,
        }),
        Command::DeadLetter(DeadLetterCommand::Replay { config, sinks }) => {
            cmd::dead_letter::replay(&cmd::dead_letter::ReplayArgs { config, sinks }).map(|()| true)
        }
        Command::Emulate {
            bind,
            hub,
            partitions,
            load,
            data_dir,
            records_per_message,
            hubs,
        } => cmd::emulate::run(&cmd::emulate::Args {
            bind,
            hub,
            partitions,
            load,
            data_dir,
            records_per_message,
            per_table: hubs.is_some(),
        })
        .map(|()| true),
        Command::Send(args) => cmd::send::run(&args),
        Command::Tail(args) => cmd::tail::run(&args),
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
