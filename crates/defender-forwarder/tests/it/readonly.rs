//! The disk turning read-only under the archive and the file checkpoint store, then writable
//! again: errors are logged, nothing is lost, and both recover. Uses `chattr +i` (immutable even
//! for root); skipped where the file system does not support it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Env, archive_lines, bodies, seq_counts, sigterm, stderr};

fn immutable(path: &Path, on: bool) -> bool {
    Command::new("chattr")
        .args(["-R", if on { "+i" } else { "-i" }])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes everything writable again however the test ends, so the temporary directory can go.
struct Thaw(std::path::PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        immutable(&self.0, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_archive_and_checkpoint_store_recover() {
    let env = Env::start(2).await;
    let probe = env.path("probe");
    std::fs::create_dir_all(&probe).unwrap();
    if !immutable(&probe, true) {
        eprintln!("note: chattr +i is not available here; test skipped");
        return;
    }
    immutable(&probe, false);

    let n = 6_000u64;
    env.send(bodies(0..n / 2, 100));
    let config = env.config(&format!("{}\n{}", env.sekoia_sink(""), env.files_sink("")));
    let mut child = env.spawn(&config, &[]);
    assert!(
        env.intake
            .wait_for(usize::try_from(n / 2).unwrap(), Duration::from_secs(120))
            .await,
        "{}",
        env.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (archive, checkpoints) = (env.path("archive"), env.path("state").join("checkpoints"));
    let _thaw = Thaw(env.dir.path().to_owned());
    assert!(immutable(&archive, true) && immutable(&checkpoints, true));
    env.send(bodies(n / 2..n, 100));
    // The intake still gets everything while the disk refuses writes...
    assert!(
        env.intake
            .wait_for(usize::try_from(n).unwrap(), Duration::from_secs(120))
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = archive_lines(&archive).len();
    assert!(env.log().contains("archive flush failed"), "{}", env.log());
    // ...and once it is writable again the archive catches up, while checkpoints still fail...
    assert!(immutable(&archive, false));
    let start = Instant::now();
    while seq_counts(&archive_lines(&archive).into_iter().map(|(_, l)| l).collect::<Vec<_>>()).len()
        < usize::try_from(n).unwrap()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the archive did not recover:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(env.log().contains("checkpoint write failed"), "{}", env.log());
    // ...until the checkpoint store is writable again too.
    assert!(immutable(&checkpoints, false));
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm(child.id());
    assert!(child.wait().unwrap().success(), "{}", env.log());
    eprintln!("archived {during} records while read-only (of {n}); all {n} after recovery");

    // Checkpoints were written after recovery: a restart sends only what is new.
    env.send(bodies(n..n + 5, 5));
    let out = env.run_until_idle(&config, 1.5, Duration::from_secs(120)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = seq_counts(&env.intake.events());
    assert_eq!(counts.len() as u64, n + 5);
    assert_eq!(
        env.intake.event_count() as u64,
        n + 5,
        "records sent again after recovery"
    );
}
