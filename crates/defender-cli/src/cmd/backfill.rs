//! `defender backfill`: reads a past time range of a Storage-account export once, through the
//! configured sinks, then exits. Its checkpoints are its own (under the state directory, keyed by
//! the range), so it never moves the live forwarder's, and an interrupted backfill resumes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use defender_forwarder::config::{Checkpoints, Config, Source, Span, Text};
use defender_forwarder::metrics::Metrics;
use defender_forwarder::pipeline::{self, RunOptions};
use defender_schema::Table;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `defender backfill` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The forwarder's configuration: its `storage` source and its sinks.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Which storage source (its `name`), when the configuration has several.
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
    for t in &args.tables {
        if Table::from_name(t).is_none() {
            bail!("--table {t}: not a known table (see `defender tables`)");
        }
    }
    let mut config = Config::load(&args.config)?;
    let names: Vec<String> = config
        .sources
        .iter()
        .filter(|s| matches!(s, Source::Storage(_)))
        .map(|s| s.name().to_owned())
        .collect();
    let chosen = match (&args.source, names.as_slice()) {
        (Some(n), _) if names.contains(n) => n.clone(),
        (Some(n), _) => bail!(
            "--source {n}: no storage source of that name in {}",
            args.config.display()
        ),
        (None, [one]) => one.clone(),
        (None, []) => bail!(
            "{} has no `kind = \"storage\"` source to backfill from",
            args.config.display()
        ),
        (None, _) => bail!(
            "{} has several storage sources ({}); pick one with --source",
            args.config.display(),
            names.join(", ")
        ),
    };
    for s in &args.sinks {
        if !config.sinks.iter().any(|c| c.name() == s) {
            bail!("--sink {s}: no sink of that name in {}", args.config.display());
        }
    }
    if !args.sinks.is_empty() {
        config.sinks.retain(|c| args.sinks.iter().any(|s| s == c.name()));
    }
    config.sources.retain(|s| s.name() == chosen);
    let Some(Source::Storage(source)) = config.sources.first_mut() else {
        unreachable!("chosen among the storage sources")
    };
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    source.start = Some(Text(from.to_rfc3339()));
    source.until = Some(Text(to.to_rfc3339()));
    source.poll_interval = Some(Span(Duration::from_secs(1)));
    let mut key = format!("{chosen}-{}-{}", stamp(from), stamp(to));
    if !args.tables.is_empty() {
        source.tables = Some(args.tables.iter().map(|t| Text(t.clone())).collect());
        key.push('-');
        key.push_str(&args.tables.join("+").to_lowercase());
    }
    let dir = PathBuf::from(&config.state_dir.0).join("backfills").join(&key);
    config.checkpoints = Checkpoints {
        kind: Some(Text("file".to_owned())),
        dir: Some(Text(dir.display().to_string())),
        connection_string: None,
        container: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(backfill(config, &dir))
}

async fn backfill(config: Config, dir: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_secs(3)),
        metrics: Some(metrics.clone()),
        ..RunOptions::default()
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("the template is valid"));
    let run = tokio::spawn(pipeline::run(config, options));
    while !run.is_finished() {
        let read = metrics.counter("defender_records_in_total", &[]);
        let bytes = metrics.counter("defender_bytes_in_total", &[]);
        let done = metrics.counter("defender_records_out_total", &[]);
        bar.set_message(format!(
            "{} blob bytes read, {read} records, {done} delivered",
            indicatif::HumanBytes(bytes)
        ));
        bar.tick();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let summary = run.await.context("the backfill task failed")??;
    let secs = started.elapsed().as_secs_f64();
    let bytes = metrics.counter("defender_bytes_in_total", &[]);
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
