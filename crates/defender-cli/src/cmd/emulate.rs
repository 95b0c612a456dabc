//! `defender emulate`: a local Event Hubs service (AMQP on loopback) for trying things out and
//! for tests, optionally preloaded with Defender data.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};

pub struct Args {
    pub bind: SocketAddr,
    pub hub: String,
    pub partitions: u32,
    pub load: Vec<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub records_per_message: usize,
}

pub fn run(args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: &Args) -> Result<()> {
    let emulator = Emulator::start(EmulatorConfig {
        bind: args.bind,
        hubs: vec![HubConfig::new(&args.hub, args.partitions)],
        data_dir: args.data_dir.clone(),
        ..EmulatorConfig::default()
    })
    .await
    .with_context(|| format!("cannot start the emulator on {}", args.bind))?;
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
