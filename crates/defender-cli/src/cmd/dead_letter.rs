//! `defender dead-letter list|replay`: what the forwarder could not deliver, and sending it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use defender_forwarder::config::Config;
use defender_forwarder::replay;

pub struct ListArgs {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub json: bool,
}

pub struct ReplayArgs {
    pub config: PathBuf,
    pub sinks: Vec<String>,
}

fn state_dir(config: Option<&Path>, state_dir: Option<&Path>) -> Result<PathBuf> {
    match (config, state_dir) {
        (_, Some(d)) => Ok(d.to_owned()),
        (Some(c), None) => {
            let config = Config::load(c)?;
            Ok(config.state_dir)
        }
        (None, None) => bail!("give --config FILE (its state_dir) or --state-dir DIR"),
    }
}

/// Prints every dead letter waiting for a replay. Returns whether there were none.
pub fn list(args: &ListArgs) -> Result<bool> {
    let dir = state_dir(args.config.as_deref(), args.state_dir.as_deref())?;
    if !dir.join("dead-letters").is_dir() {
        bail!(
            "{} has no dead-letters folder: is it the forwarder's state_dir?",
            dir.display()
        );
    }
    let pending = replay::pending(&dir).with_context(|| format!("cannot read dead letters in {}", dir.display()))?;
    let mut total = 0u64;
    let mut by_sink_reason: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (file, entries) in &pending {
        for e in entries {
            match e {
                Ok(e) => {
                    total += 1;
                    if args.json {
                        println!("{}", serde_json::to_string(e).expect("entries serialise"));
                    } else {
                        let reason: String = e.reason.chars().take(120).collect();
                        println!(
                            "{}  {:<10} {:<24} {}  {}",
                            e.at,
                            e.sink,
                            e.table.as_deref().unwrap_or("-"),
                            e.sequence_number.map_or_else(
                                || format!("{} @{}", e.partition, e.offset.as_deref().unwrap_or("?")),
                                |s| format!("{} #{s}", e.partition)
                            ),
                            reason
                        );
                    }
                    *by_sink_reason.entry((e.sink.clone(), kind_of(&e.reason))).or_default() += 1;
                }
                Err(why) => eprintln!("warning: {} : {why}", file.display()),
            }
        }
    }
    if !args.json {
        if total == 0 {
            println!("no dead letters in {}", dir.join("dead-letters").display());
        } else {
            println!("\n{total} dead letters in {}:", dir.join("dead-letters").display());
            for ((sink, reason), n) in by_sink_reason {
                println!("  {n:>8}  {sink}: {reason}");
            }
            println!("send them again with: defender dead-letter replay --config FILE");
        }
    }
    Ok(total == 0)
}

fn kind_of(reason: &str) -> String {
    reason.split(':').next().unwrap_or(reason).chars().take(60).collect()
}

/// Sends dead letters again through their sinks.
pub fn replay(args: &ReplayArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    for s in &args.sinks {
        if !config.sinks.iter().any(|c| c.name() == s) && s != "forwarder" {
            bail!("--sink {s}: no sink of that name in {}", args.config.display());
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(replay::replay(&config, &args.sinks))?;
    if report.files.is_empty() && report.skipped.is_empty() {
        println!("nothing to replay");
        return Ok(());
    }
    for (sink, n) in &report.delivered {
        println!("delivered {n} records to {sink}");
    }
    if report.dead_lettered_again > 0 {
        println!(
            "{} records were refused again and are back in the dead-letter store",
            report.dead_lettered_again
        );
    }
    for (what, why) in &report.skipped {
        println!("skipped {what}: {why}");
    }
    println!("{} files moved to dead-letters/replayed/", report.files.len());
    Ok(())
}
