//! `defender emulate`: a local Event Hubs service (AMQP on loopback) for trying things out and
//! for tests, optionally preloaded with Defender data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_forwarder::source::eventhub::DEFAULT_HUB_PREFIX;
use defender_schema::Table;

use crate::input;

pub struct Args {
    pub bind: SocketAddr,
    pub hub: String,
    pub partitions: u32,
    pub load: Vec<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub records_per_message: usize,
    pub per_table: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: &Args) -> Result<()> {
    let hubs = if args.per_table {
        Table::ALL
            .iter()
            .map(|t| HubConfig::new(per_table_hub(*t), args.partitions))
            .collect()
    } else {
        vec![HubConfig::new(&args.hub, args.partitions)]
    };
    let emulator = Emulator::start(EmulatorConfig {
        bind: args.bind,
        hubs,
        data_dir: args.data_dir.clone(),
        ..EmulatorConfig::default()
    })
    .await
    .with_context(|| format!("cannot start the emulator on {}", args.bind))?;
    if args.per_table {
        if !args.load.is_empty() {
            load_per_table(&emulator, &args.load, args.records_per_message)?;
        }
        // The namespace connection string (no EntityPath): one forwarder source reads every hub.
        let cs = emulator.connection_string(&per_table_hub(Table::ALL[0]));
        let namespace = cs.split(";EntityPath=").next().unwrap_or(&cs).to_owned();
        let namespace = if cs.contains("UseDevelopmentEmulator") && !namespace.contains("UseDevelopmentEmulator") {
            format!("{namespace};UseDevelopmentEmulator=true")
        } else {
            namespace
        };
        println!("{namespace}");
        eprintln!(
            "Event Hubs emulator on {}: {} hubs `{DEFAULT_HUB_PREFIX}<table>` with {} partitions each. Ctrl-C stops it.",
            emulator.local_addr(),
            Table::ALL.len(),
            args.partitions
        );
        shutdown_signal().await;
        eprintln!("stopping");
        emulator.shutdown().await;
        return Ok(());
    }
    if !args.load.is_empty() {
        let stats = emulator
            .load_paths(&args.hub, &args.load, args.records_per_message)
            .context("cannot load the given files")?;
        eprintln!(
            "loaded {} records from {} files into {} messages ({} of them not Defender records, loaded as they are)",
            stats.records, stats.files, stats.messages, stats.invalid_records
        );
    }
    // The connection string is the first line on stdout, so scripts can read it.
    println!("{}", emulator.connection_string(&args.hub));
    eprintln!(
        "Event Hubs emulator on {}: hub `{}` with {} partitions. Ctrl-C stops it.",
        emulator.local_addr(),
        args.hub,
        args.partitions
    );
    shutdown_signal().await;
    eprintln!("stopping");
    emulator.shutdown().await;
    Ok(())
}

/// The hub Defender's per-table export uses for `table`.
pub fn per_table_hub(table: Table) -> String {
    format!("{DEFAULT_HUB_PREFIX}{}", table.name().to_lowercase())
}

/// Loads every record into its table's hub, in envelopes of up to `per_message` records.
fn load_per_table(emulator: &Emulator, paths: &[PathBuf], per_message: usize) -> Result<()> {
    let mut by_table: BTreeMap<Table, Vec<String>> = BTreeMap::new();
    let mut other = 0u64;
    for source in input::expand(paths)? {
        let bytes = input::read(&source)?;
        let text = String::from_utf8_lossy(&bytes);
        for (_, unit) in input::units(&text) {
            let records: Vec<String> = match unit {
                input::Unit::Body(body) => match defender_schema::split_body(body.as_bytes()) {
                    Ok(split) => split
                        .into_iter()
                        .filter_map(Result::ok)
                        .map(|r| r.raw().to_owned())
                        .collect(),
                    Err(_) => Vec::new(),
                },
                input::Unit::Record(r) => vec![r.to_owned()],
                input::Unit::Broken(_) => Vec::new(),
            };
            for raw in records {
                match defender_schema::parse_record(&raw).ok().and_then(|r| r.table()) {
                    Some(t) => by_table.entry(t).or_default().push(raw),
                    None => other += 1,
                }
            }
        }
    }
    let mut total = 0;
    for (table, records) in &by_table {
        let bodies: Vec<Vec<u8>> = records
            .chunks(per_message.max(1))
            .map(|c| format!(r#"{{"records":[{}]}}"#, c.join(",")).into_bytes())
            .collect();
        emulator
            .append(&per_table_hub(*table), None, bodies)
            .with_context(|| format!("cannot load {table:?}"))?;
        total += records.len();
    }
    eprintln!(
        "loaded {total} records into {} table hubs ({other} records of no known table left out)",
        by_table.len()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler does not fail");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
