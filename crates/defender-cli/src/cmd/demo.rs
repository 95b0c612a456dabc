//! `defender demo`: the whole pipeline on one machine in seconds. An Event Hubs emulator in this
//! process, loaded with the bundled fixtures (every table), read over AMQP by the official client
//! and forwarded by the real pipeline into a local archive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use defender_emulator::{Emulator, EmulatorConfig, HubConfig};
use defender_eventhub::Secret;
use defender_forwarder::config::Config;
use defender_forwarder::metrics::Metrics;
use defender_forwarder::metrics::families::{DEAD_LETTERS, RECORDS_OUT};
use defender_forwarder::pipeline::{self, RunOptions, Summary};
use defender_forwarder::sink::files::FilesConfig;
use defender_forwarder::sink::tables::TablesSinkConfig;
use defender_forwarder::source::eventhub::EventHubConfig;
use defender_tables::TableName;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Args {
    pub dir: PathBuf,
    pub fixtures: Option<PathBuf>,
    pub partitions: u32,
}

/// Marks a directory the demo made, so that a rerun may clear it and nothing else.
const MARKER: &str = ".defender-demo";

pub fn run(args: &Args) -> Result<()> {
    let fixtures = fixtures_dir(args.fixtures.as_deref())?;
    prepare(&args.dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args, &fixtures))
}

fn fixtures_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_dir() {
            bail!("fixtures folder {} does not exist", p.display());
        }
        return Ok(p.to_owned());
    }
    let here = PathBuf::from("fixtures");
    if here.join("tables").is_dir() {
        return Ok(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    if built.join("tables").is_dir() {
        return Ok(built.canonicalize().unwrap_or(built));
    }
    bail!("cannot find the bundled fixtures: run from the repository root, or pass --fixtures DIR")
}

fn prepare(dir: &Path) -> Result<()> {
    if dir.exists() {
        let is_demo = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !is_demo && !empty {
            bail!(
                "{} exists and was not made by `defender demo`; choose another folder with --dir",
                dir.display()
            );
        }
        // A fresh emulator starts its sequence numbers again: old checkpoints would skip it all.
        for sub in ["archive", "tables", "state"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("cannot clear {}", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `defender demo`; it clears archive/, tables/ and state/ when run again\n",
    )
    .with_context(|| format!("cannot write in {}", dir.display()))?;
    Ok(())
}

async fn demo(args: &Args, fixtures: &Path) -> Result<()> {
    let started = Instant::now();
    let hub = "defender";
    let emulator = Emulator::start(EmulatorConfig {
        hubs: vec![HubConfig::new(hub, args.partitions)],
        ..EmulatorConfig::default()
    })
    .await
    .context("cannot start the Event Hubs emulator")?;
    let loaded = emulator
        .load_paths(hub, &[fixtures.to_owned()], 100)
        .with_context(|| format!("cannot load {}", fixtures.display()))?;
    println!(
        "Event Hubs emulator on {} (AMQP): hub `{hub}`, {} partitions",
        emulator.local_addr(),
        args.partitions
    );
    println!(
        "loaded {} records from {} files in {} into {} messages",
        loaded.records,
        loaded.files,
        fixtures.display(),
        loaded.messages
    );
    let dir = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
    let config = demo_config(&dir, emulator.connection_string(hub));
    let summary = forward(config, loaded.records).await?;
    emulator.shutdown().await;
    report(&dir, &summary, loaded.records, started)
}

/// The forwarder's configuration for the demo: the emulator's hub into a local archive, built in
/// code as any program embedding the forwarder would.
fn demo_config(dir: &Path, connection_string: String) -> Config {
    let mut config = Config::new(dir.join("state"));
    config.forwarder.checkpoint_interval = Duration::from_millis(100);
    let mut source = EventHubConfig::new(Secret::new(connection_string));
    source.name = Some("demo".to_owned());
    config.sources.push(Box::new(source));
    let mut archive = FilesConfig::new(dir.join("archive").display().to_string());
    archive.flush_interval = Duration::from_millis(100);
    config.sinks.push(Box::new(archive));
    config.sinks.push(Box::new(TablesSinkConfig::local(dir.join("tables"))));
    config
}

/// Runs the pipeline until it is caught up, with a progress bar.
async fn forward(config: Config, records: u64) -> Result<Summary> {
    config.check().context("the demo configuration is invalid")?;
    let metrics = Arc::new(Metrics::default());
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_millis(800)),
        metrics: Some(metrics.clone()),
        ..RunOptions::default()
    };
    let bar = ProgressBar::with_draw_target(Some(records), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("forwarding [{bar:30}] {pos}/{len} records")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let run = tokio::spawn(pipeline::run(config, options));
    while !run.is_finished() {
        let done = metrics.counter(&RECORDS_OUT, &[]) + metrics.counter(&DEAD_LETTERS, &[]);
        bar.set_position(done.min(records));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    let summary = run
        .await
        .context("the forwarder task failed")?
        .context("the forwarder failed")?;
    if !summary.success() {
        bail!("the forwarder did not finish cleanly");
    }
    Ok(summary)
}

/// Prints what landed where, read back from the archive itself.
fn report(dir: &Path, summary: &Summary, loaded: u64, started: Instant) -> Result<()> {
    let archive = dir.join("archive");
    let tables = dir.join("tables");
    let state = dir.join("state");
    let counts = count_archive(&archive)?;
    let rows = count_tables(&tables)?;
    let total: u64 = counts.values().map(|(r, _)| r).sum();
    let archived = summary
        .records_out
        .iter()
        .find(|(s, _)| s == "files")
        .map_or(0, |(_, n)| *n);
    println!(
        "forwarded {archived} records over AMQP into the archive and the tables in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<36} {:>8} {:>9} {:>11}",
        "table", "records", "segments", "table rows"
    );
    for (table, (records, segments)) in &counts {
        let in_tables = rows.get(table).copied().unwrap_or(0);
        println!("{table:<36} {records:>8} {segments:>9} {in_tables:>11}");
    }
    println!(
        "{:<36} {total:>8} {:>9} {:>11}\n",
        "total",
        counts.values().map(|(_, s)| s).sum::<u64>(),
        rows.values().sum::<u64>()
    );
    println!("archive:      {}/<Table>/<YYYY-MM-DD>/*.ndjson.zst", archive.display());
    println!(
        "              read one with: zstdcat {}/DeviceProcessEvents/*/*.ndjson.zst",
        archive.display()
    );
    println!(
        "tables:       {}/<Table>/day=<YYYY-MM-DD>/*.parquet (docs/tables.md)",
        tables.display()
    );
    println!("              a first query, with DuckDB (pip install duckdb):");
    println!(
        "              duckdb -c \"SELECT ActionType, count(*) AS n FROM read_parquet('{}/DeviceProcessEvents/*/*.parquet', hive_partitioning = true) GROUP BY ActionType ORDER BY n DESC\"",
        tables.display()
    );
    if summary.dead_letters > 0 {
        println!(
            "dead letters: {} records that are not Defender records, in {} (see: defender dead-letter list --state-dir {})",
            summary.dead_letters,
            state.join("dead-letters").display(),
            state.display()
        );
    } else {
        println!("dead letters: none");
    }
    if total + summary.dead_letters != loaded {
        bail!(
            "{loaded} records were loaded but {total} archived and {} dead-lettered",
            summary.dead_letters
        );
    }
    Ok(())
}

/// Rows per table, read back from the published Parquet files themselves.
fn count_tables(root: &Path) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let Ok(tables) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for table in tables {
        let table = table?.path();
        let name = table
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with('_') || !table.is_dir() {
            continue;
        }
        let table_name = TableName::of_category(&format!("AdvancedHunting-{name}"));
        for day in std::fs::read_dir(&table)? {
            for file in std::fs::read_dir(day?.path())? {
                let file = file?.path();
                if file.extension().is_some_and(|x| x == "parquet") {
                    let records = defender_tables::read_file(&table_name, &file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    *out.entry(name.clone()).or_default() += records.len() as u64;
                }
            }
        }
    }
    Ok(out)
}

/// Records and segments per table, read back from the archive itself.
fn count_archive(archive: &Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    let Ok(tables) = std::fs::read_dir(archive) else {
        return Ok(out);
    };
    for table in tables {
        let table = table?.path();
        if !table.is_dir() {
            continue;
        }
        let name = table
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let entry: &mut (u64, u64) = out.entry(name).or_default();
        for day in std::fs::read_dir(&table)? {
            for seg in std::fs::read_dir(day?.path())? {
                let seg = seg?.path();
                if !seg.to_string_lossy().ends_with(".ndjson.zst") {
                    continue;
                }
                let data = std::fs::read(&seg).with_context(|| format!("cannot read {}", seg.display()))?;
                let text = zstd::stream::decode_all(&data[..])
                    .with_context(|| format!("cannot decompress {}", seg.display()))?;
                entry.0 += text.split(|b| *b == b'\n').skip(1).count() as u64;
                entry.1 += 1;
            }
        }
    }
    Ok(out)
}
