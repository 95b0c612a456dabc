//! Dependency faults and a short soak: the intake down longer than any backoff, the hub's
//! connections dropped again and again, the Blob checkpoint store (Azurite) stopped and started;
//! nothing is lost, and memory and open files stay flat.

use std::time::{Duration, Instant};

use crate::common::{Env, bodies, seq_counts, sigterm, stderr};
use defender_testkit::{Azurite, Faults};

const LIMIT: Duration = Duration::from_secs(180);

/// (peak RSS KiB, current RSS KiB, open file descriptors) of a process.
fn usage(pid: u32) -> Option<(u64, u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((field("VmHWM:")?, field("VmRSS:")?, fds))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_outage_and_dropped_hub_connections_lose_nothing() {
    let env = Env::start(4).await;
    let n = 20_000u64;
    env.send(bodies(0..n / 2, 100));
    let config = env.config(&env.sekoia_sink(""));
    let mut child = env.spawn(&config, &[]);
    let pid = child.id();
    assert!(env.intake.wait_for(1_000, LIMIT).await, "{}", env.log());
    // The intake goes down for longer than the longest backoff; more records arrive meanwhile.
    env.intake.set_faults(Faults {
        down: true,
        ..Faults::default()
    });
    env.send(bodies(n / 2..n, 100));
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(4) {
        env.emulator.drop_connections();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let during = env.intake.event_count();
    let (peak_kib, _, _) = usage(pid).unwrap();
    env.intake.set_faults(Faults::default());
    for _ in 0..3 {
        env.emulator.drop_connections();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        env.intake.wait_for(usize::try_from(n).unwrap(), LIMIT).await,
        "not everything arrived after the outage"
    );
    sigterm(pid);
    assert!(child.wait().unwrap().success());
    let counts = seq_counts(&env.intake.events());
    assert!((0..n).all(|i| counts.contains_key(&i)));
    let dups: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "outage 4 s with {} refusals, {} records in before it, peak RSS {} MiB during it, duplicates {dups}",
        env.intake.faults_injected(),
        during,
        peak_kib / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_checkpoints_survive_azurite_stopping() {
    let mut azurite = Azurite::start().await.unwrap();
    let env = Env::start(2).await;
    let n = 6_000u64;
    env.send(bodies(0..n / 2, 100));
    let sinks = format!(
        "[checkpoints]\nkind = \"blob\"\nconnection_string = \"{}\"\ncontainer = \"checkpoints\"\n\n{}",
        azurite.connection_string(),
        env.sekoia_sink("")
    );
    let config = env.config(&sinks);
    let mut child = env.spawn(&config, &["--exit-when-idle", "6"]);
    assert!(env.intake.wait_for(usize::try_from(n / 2).unwrap(), LIMIT).await);
    azurite.stop().await.unwrap();
    env.send(bodies(n / 2..n, 100));
    assert!(
        env.intake.wait_for(usize::try_from(n).unwrap(), LIMIT).await,
        "delivery stopped with the store"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    azurite.restart().await.unwrap();
    let status = child.wait().unwrap();
    let log = env.log();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("checkpoint write failed"),
        "the store outage went unnoticed:\n{log}"
    );
    // The final checkpoints were written after Azurite came back: a restart sends nothing old.
    env.send(bodies(n..n + 5, 5));
    let out = env.run_until_idle(&config, 1.5, LIMIT).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = seq_counts(&env.intake.events());
    assert_eq!(counts.len() as u64, n + 5);
    let dups: usize = counts.values().map(|c| c - 1).sum();
    assert_eq!(dups, 0, "records sent again after the store recovered");
}

/// A steady stream with faults for a while (`DEFENDER_SOAK_SECS`, default 20): resident memory
/// and open file descriptors must not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_memory_and_files_stay_flat() {
    let secs: u64 = std::env::var("DEFENDER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let env = Env::start(4).await;
    env.intake.set_faults(Faults {
        status_429: 0.05,
        retry_after_secs: 0,
        status_503: 0.05,
        drop_connection: 0.05,
        seed: Some(11),
        ..Faults::default()
    });
    let config = env.config(&format!(
        "{}\n{}",
        env.sekoia_sink(""),
        env.files_sink("segment_age = \"2s\"")
    ));
    let mut child = env.spawn(&config, &[]);
    let pid = child.id();
    let start = Instant::now();
    let mut next = 0u64;
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        env.send(bodies(next..next + 2_000, 100));
        next += 2_000;
        if env.emulator.receiver_count(&env.hub).unwrap_or(0) > 0 && next.is_multiple_of(20_000) {
            env.emulator.drop_connections();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(u) = usage(pid) {
            samples.push((start.elapsed(), u));
        }
    }
    assert!(
        env.intake.wait_for(usize::try_from(next).unwrap(), LIMIT).await,
        "the soak fell behind for good: {} of {next}\n{}",
        env.intake.event_count(),
        env.log()
    );
    sigterm(pid);
    assert!(child.wait().unwrap().success());
    // Compare the second quarter (warmed up) with the last one.
    let q = samples.len() / 4;
    let max_of = |s: &[(Duration, (u64, u64, usize))]| {
        (
            s.iter().map(|x| x.1.1).max().unwrap(),
            s.iter().map(|x| x.1.2).max().unwrap(),
        )
    };
    let (rss_early, fds_early) = max_of(&samples[q..2 * q]);
    let (rss_late, fds_late) = max_of(&samples[3 * q..]);
    eprintln!(
        "soak {secs} s, {next} records, {} faults: RSS {} -> {} MiB, fds {fds_early} -> {fds_late}",
        env.intake.faults_injected(),
        rss_early / 1024,
        rss_late / 1024
    );
    assert!(
        rss_late <= rss_early + rss_early / 2 + 16 * 1024,
        "RSS grew: {rss_early} -> {rss_late} KiB"
    );
    assert!(
        fds_late <= fds_early + 8,
        "file descriptors grew: {fds_early} -> {fds_late}"
    );
}
