//! The local archive sink: records appended per table and UTC day (see [`crate::archive`]),
//! acknowledged once the flush that wrote them has fsynced.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{IDLE, SinkContext, count_out, sleep_opt};
use crate::archive::{Archive, ArchiveError, ArchiveOptions};
use crate::config::FilesSink;
use crate::deadletter::Entry;
use crate::delivery::{Ack, Day, Delivery, Record};

/// Settings of a `files` sink besides the archive's own.
#[derive(Debug, Clone)]
pub struct FilesOptions {
    /// The archive directory.
    pub dir: PathBuf,
    /// How often buffered records are written and fsynced.
    pub flush_interval: Duration,
    /// Flush early once this much is buffered.
    pub max_buffered: usize,
}

/// Opens (and repairs) the archive of a checked `[[sinks]] kind = "files"` entry. `in_flight` is
/// the pipeline's in-flight budget: the sink flushes well before holding all of it.
pub fn open(c: &FilesSink, in_flight: usize) -> Result<(Archive, FilesOptions), String> {
    let mut o = ArchiveOptions::default();
    let small = |n: crate::config::Num| u32::try_from(n.0).unwrap_or(u32::MAX);
    if let Some(n) = c.retention_days {
        o.retention_days = small(n);
    }
    for (table, days) in &c.retention {
        let name = defender_schema::Table::from_name(table).map_or(table.as_str(), |t| t.name());
        o.retention.insert(name.to_owned(), small(*days));
    }
    if let Some(n) = c.segment_mib {
        o.max_segment_bytes = n.0.saturating_mul(1024 * 1024).max(1);
    }
    if let Some(s) = c.segment_age {
        o.max_segment_age = s.0;
    }
    if let Some(n) = c.zstd_level {
        o.level = i32::try_from(n.0).unwrap_or(3).clamp(1, 19);
    }
    let dir = PathBuf::from(&c.dir.0);
    let archive = Archive::open(&dir, o).map_err(|e| e.to_string())?;
    Ok((
        archive,
        FilesOptions {
            dir,
            flush_interval: c.flush_interval.map_or(Duration::from_secs(1), |s| s.0),
            max_buffered: (in_flight / 4).clamp(256 * 1024, 16 * 1024 * 1024),
        },
    ))
}

struct State {
    archive: Option<Archive>,
    acks: Vec<Ack>,
    /// Tables and sizes of what the next flush makes durable (for metrics).
    counted: Vec<(crate::delivery::TableId, usize)>,
    oldest: Option<Instant>,
    failures: u32,
}

/// Runs the sink until every sender is gone, then flushes and seals.
pub async fn run(ctx: SinkContext, archive: Archive, opts: FilesOptions, mut rx: mpsc::Receiver<Delivery>) {
    tracing::info!(sink = %ctx.name, dir = %opts.dir.display(), "archiving records");
    let mut st = State {
        archive: Some(archive),
        acks: Vec::new(),
        counted: Vec::new(),
        oldest: None,
        failures: 0,
    };
    retention(&ctx, &mut st).await;
    let mut tick = tokio::time::interval(opts.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_retention = Instant::now();
    let mut last_input = Instant::now();
    loop {
        let idle_left = (!st.acks.is_empty()).then(|| IDLE.saturating_sub(last_input.elapsed()));
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => {
                    append(&ctx, &mut st, d).await;
                    let buffered = st.archive.as_ref().map_or(0, Archive::buffered_bytes);
                    if buffered >= opts.max_buffered {
                        flush(&ctx, &mut st).await;
                    }
                    last_input = Instant::now();
                }
                None => break,
            },
            () = sleep_opt(idle_left) => flush(&ctx, &mut st).await,
            _ = tick.tick() => {
                flush(&ctx, &mut st).await;
                if last_retention.elapsed() >= Duration::from_secs(3600) {
                    retention(&ctx, &mut st).await;
                    last_retention = Instant::now();
                }
            }
        }
    }
    // Deliver what is buffered, retrying for as long as the shutdown deadline allows.
    while !st.acks.is_empty() {
        flush(&ctx, &mut st).await;
        if !st.acks.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if let Some(a) = st.archive.take() {
        let name = ctx.name.clone();
        let r = tokio::task::spawn_blocking(move || a.close()).await;
        if let Ok(Err(e)) | Err(e) = r.map_err(|e| ArchiveError::Io {
            op: "close",
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        }) {
            tracing::warn!(sink = %name, error = %e, "sealing segments failed; they are repaired on the next start");
        }
    }
}

async fn append(ctx: &SinkContext, st: &mut State, d: Delivery) {
    let Delivery { records, ack, read_at } = d;
    let archive = st.archive.as_mut().expect("present between flushes");
    let today = Day::today();
    let mut rejected: Vec<(Record, String)> = Vec::new();
    for r in records {
        let day = r.day.unwrap_or(today);
        match archive.append(r.table.name(), day.as_str(), &super::one_line(&r.raw)) {
            Ok(()) => st.counted.push((r.table.clone(), r.raw.len())),
            Err(e) => {
                let reason = e.to_string();
                rejected.push((r, reason));
            }
        }
    }
    if !rejected.is_empty() {
        let n = rejected.len() as u64;
        let entries = rejected
            .iter()
            .map(|(r, why)| Entry::new(&ctx.name, &r.origin, Some(r.table.name()), why.clone(), &r.raw))
            .collect();
        ctx.dead_letters.put_until_ok(entries).await;
        ctx.metrics.add(
            "defender_dead_letters_total",
            &[("sink", &ctx.name), ("reason", "unarchivable")],
            n,
        );
    }
    st.oldest = Some(st.oldest.map_or(read_at, |t| t.min(read_at)));
    st.acks.push(ack);
}

async fn flush(ctx: &SinkContext, st: &mut State) {
    if st.acks.is_empty() {
        return;
    }
    let mut archive = st.archive.take().expect("present between flushes");
    let (archive, result) = tokio::task::spawn_blocking(move || {
        let r = archive.flush();
        (archive, r)
    })
    .await
    .expect("the flush task does not panic");
    st.archive = Some(archive);
    match result {
        Ok(_) => {
            st.failures = 0;
            let counted = std::mem::take(&mut st.counted);
            if !counted.is_empty() {
                count_out(ctx, counted.iter().map(|(t, n)| (t, *n)));
            }
            if let Some(t) = st.oldest.take() {
                ctx.metrics.observe(
                    "defender_delivery_seconds",
                    &[("sink", &ctx.name)],
                    t.elapsed().as_secs_f64(),
                    counted.len() as u64,
                );
            }
            for a in st.acks.drain(..) {
                a.ack();
            }
        }
        Err(e) => {
            st.failures += 1;
            ctx.metrics
                .add("defender_retries_total", &[("sink", &ctx.name), ("reason", "io")], 1);
            tracing::error!(sink = %ctx.name, error = %e, attempt = st.failures, "archive flush failed; records stay buffered and are retried");
            // Back off a little so a full disk does not spin.
            tokio::time::sleep(Duration::from_millis(200 * u64::from(st.failures.min(10)))).await;
        }
    }
}

async fn retention(ctx: &SinkContext, st: &mut State) {
    let Some(mut archive) = st.archive.take() else { return };
    let today = chrono::Utc::now().date_naive();
    let (archive, r) = tokio::task::spawn_blocking(move || {
        let r = archive.enforce_retention(today);
        (archive, r)
    })
    .await
    .expect("the retention task does not panic");
    st.archive = Some(archive);
    match r {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(sink = %ctx.name, days = removed.len(), "removed days past retention");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(sink = %ctx.name, error = %e, "retention failed; retried in an hour"),
    }
}
