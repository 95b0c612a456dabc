//! `defender backfill`: reads a past time range of a Storage-account export once, through the
//! configured sinks, then exits. Its checkpoints are its own (under the state directory, keyed by
//! the range), so it never moves the live forwarder's, and an interrupted backfill resumes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use defender_forwarder::checkpoints::{CheckpointsConfig, FileStoreConfig};
use defender_forwarder::config::Config;
use defender_forwarder::metrics::Metrics;
use defender_forwarder::metrics::families::{BYTES_IN, RECORDS_IN, RECORDS_OUT};
use defender_forwarder::pipeline::{self, RunOptions};
use defender_forwarder::source::{Backfill, SourceConfig};
use defender_schema::Table;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `defender backfill` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The forwarder's configuration: its `storage` source and its sinks.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Which source (its `name`), when the configuration has several that can read a past range.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Start of the range (RFC 3339); hour blobs from the one holding it.
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the range (RFC 3339, exclusive; default: now).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Only these tables (repeatable; default: the source's).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Only these sinks (repeatable; default: every configured sink).
    #[arg(long = "sink", value_name = "NAME")]
    pub sinks: Vec<String>,
}

fn time(flag: &str, s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("{flag} `{s}` is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)"))
}

pub fn run(args: &Args) -> Result<()> {
    let from = time("--from", &args.from)?;
    let to = match &args.to {
        Some(t) => time("--to", t)?,
        None => Utc::now(),
    };
    if to <= from {
        bail!("--to ({to}) must come after --from ({from})");
    }
    let tables = args
        .tables
        .iter()
        .map(|t| Table::from_name(t).with_context(|| format!("--table {t}: not a known table (see `defender tables`)")))
        .collect::<Result<Vec<_>>>()?;
    let mut config = Config::load(&args.config)?;
    let range = Backfill {
        from,
        to,
        tables: (!tables.is_empty()).then_some(tables),
    };
    let (name, source) = choose_source(&config, args, &range)?;
    for s in &args.sinks {
        if !config.sinks.iter().any(|c| c.name() == s) {
            bail!("--sink {s}: no sink of that name in {}", args.config.display());
        }
    }
    if !args.sinks.is_empty() {
        config.sinks.retain(|c| args.sinks.iter().any(|s| s == c.name()));
    }
    config.sources = vec![source];
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    let mut key = format!("{name}-{}-{}", stamp(from), stamp(to));
    if !args.tables.is_empty() {
        key.push('-');
        key.push_str(&args.tables.join("+").to_lowercase());
    }
    // Its own checkpoints and identity, so a backfill runs beside the live forwarder, never moves
    // its checkpoints, and a rerun resumes.
    let dir = config.state_dir.join("backfills").join(&key);
    config.checkpoints = CheckpointsConfig::File(FileStoreConfig {
        dir: Some(dir.display().to_string()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(backfill(config, &dir))
}

/// The configured source to backfill from, bounded to the range.
fn choose_source(config: &Config, args: &Args, range: &Backfill) -> Result<(String, Box<dyn SourceConfig>)> {
    let able: Vec<(String, Box<dyn SourceConfig>)> = config
        .sources
        .iter()
        .filter_map(|s| s.backfill(range).map(|b| (s.name().to_owned(), b)))
        .collect();
    let names = able.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    let file = args.config.display();
    match (&args.source, able.len()) {
        (Some(n), _) => {
            if !config.sources.iter().any(|s| s.name() == n) {
                bail!("--source {n}: no source of that name in {file}");
            }
            able.into_iter().find(|(name, _)| name == n).with_context(|| {
                format!("--source {n}: this kind of source cannot read a past range (those that can: {names})")
            })
        }
        (None, 1) => Ok(able.into_iter().next().expect("one")),
        (None, 0) => bail!("{file} has no source that can read a past range (`kind = \"storage\"`)"),
        (None, _) => bail!("{file} has several sources that can read a past range ({names}); pick one with --source"),
    }
}

async fn backfill(config: Config, dir: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_secs(3)),
        metrics: Some(metrics.clone()),
        instance_dir: Some(dir.to_owned()),
        ..RunOptions::default()
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("the template is valid"));
    let run = tokio::spawn(pipeline::run(config, options));
    while !run.is_finished() {
        let read = metrics.counter(&RECORDS_IN, &[]);
        let bytes = metrics.counter(&BYTES_IN, &[]);
        let done = metrics.counter(&RECORDS_OUT, &[]);
        bar.set_message(format!(
            "{} blob bytes read, {read} records, {done} delivered",
            indicatif::HumanBytes(bytes)
        ));
        bar.tick();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let summary = run.await.context("the backfill task failed")??;
    if !summary.success() {
        bail!("the backfill did not finish: {}", summary.unread().join(", "));
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = metrics.counter(&BYTES_IN, &[]);
    #[allow(clippy::cast_precision_loss)]
    let rate = summary.records_in as f64 / secs.max(0.001);
    println!(
        "backfilled {} records ({}) in {secs:.1} s ({rate:.0} records/s)",
        summary.records_in,
        indicatif::HumanBytes(bytes)
    );
    for (sink, n) in &summary.records_out {
        println!("  {sink}: {n} delivered");
    }
    if summary.dead_letters > 0 {
        println!(
            "  {} dead letters (see `defender dead-letter list`)",
            summary.dead_letters
        );
    }
    println!(
        "checkpoints of this range: {} (a rerun resumes from them)",
        dir.display()
    );
    Ok(())
}
