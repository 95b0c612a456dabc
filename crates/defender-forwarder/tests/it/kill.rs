//! `kill -9` at random moments, restarts, and at the end every record is in the intake and in
//! the archive at least once, and every segment reads back whole.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::common::{Env, archive_lines, bodies, seq_counts, stderr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing() {
    let env = Env::start(4).await;
    let n = 200_000u64;
    env.send(bodies(0..n, 100));
    // Small segments and frequent flushes: kills land in writes, fsyncs and rotations too.
    let config = env.config(&format!(
        "{}\n{}",
        env.sekoia_sink("batch_events = 200"),
        env.files_sink("segment_mib = 1\nsegment_age = \"1s\"")
    ));
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let mut seed = (now.as_secs() ^ u64::from(now.subsec_nanos()) << 20) | 1;
    eprintln!("seed {seed}");
    let rounds = 20;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // More records arrive while it runs.
        env.send(bodies(n + round * 100..n + (round + 1) * 100, 50));
        let before = env.intake.event_count();
        let mut child = env.spawn(&config, &[]);
        let started = std::time::Instant::now();
        if round % 3 == 2 {
            // Early: while connecting, claiming partitions, opening the archive.
            tokio::time::sleep(Duration::from_millis(seed % 400)).await;
        } else {
            // Mid-stream: after a random number of further records reached the intake.
            let target = before + 2000 + usize::try_from(seed % 10_000).unwrap();
            env.intake.wait_for(target, Duration::from_secs(30)).await;
        }
        child.kill().unwrap();
        let o = common::wait_output(child, Duration::from_secs(5)).await;
        if std::env::var("SHOW_LOGS").is_ok() {
            eprintln!("{}", stderr(&o));
        }
        eprintln!(
            "round {round}: killed after {:?}, intake {before} -> {}",
            started.elapsed(),
            env.intake.event_count()
        );
    }
    let total = n + rounds * 100;
    let out = env.run_until_idle(&config, 2.0, Duration::from_secs(180)).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let counts = seq_counts(&env.intake.events());
    let missing: Vec<u64> = (0..total).filter(|i| !counts.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "intake lost {} records, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let lines = archive_lines(&env.path("archive"));
    let archived = seq_counts(&lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>());
    let missing: Vec<u64> = (0..total).filter(|i| !archived.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "archive lost {} records, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let segments: BTreeSet<_> = lines.iter().map(|(p, _)| p.clone()).collect();
    if let Ok(o) = std::process::Command::new("zstd").arg("-tq").args(&segments).output() {
        assert!(o.status.success(), "zstd -t: {}", String::from_utf8_lossy(&o.stderr));
    }
    let dup_intake: usize = counts.values().map(|c| c - 1).sum();
    let dup_archive: usize = archived.values().map(|c| c - 1).sum();
    #[allow(clippy::cast_precision_loss)]
    let pct = |d: usize| 100.0 * d as f64 / total as f64;
    eprintln!(
        "{rounds} SIGKILLs, {total} records: lost 0; duplicates intake {dup_intake} ({:.1}%), archive {dup_archive} ({:.1}%), {} segments",
        pct(dup_intake),
        pct(dup_archive),
        segments.len()
    );
}
