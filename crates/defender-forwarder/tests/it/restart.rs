//! Restarts after a crash, run as users run them: the bundled examples with only their documented
//! variables set (file checkpoints in `DEFENDER_STATE_DIR`, the default owner id and expiry).
//!
//! - A forwarder killed with SIGKILL again and again reads again at once after each restart (its
//!   identity is kept in the state directory), and `--exit-when-idle` exits 0 only once every
//!   record reached the intake. Every duplicate is a record that was delivered but not yet
//!   checkpointed when a kill landed: what was in flight.
//! - Two processes on one state directory: the second is refused, naming the first.
//! - `--exit-when-idle` beside a live instance exits once its own share is read; beside a dead
//!   one it waits, says for whom and until when, and takes over (at once when the file store can
//!   tell the owner is gone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use defender_testkit::{Azurite, Faults};

use crate::common::{
    Env, KEY, Rng, bodies, checkpointed, hub_checkpoints, run_then_kill, seq_counts, sigterm, stderr, wait_output,
};

const LIMIT: Duration = Duration::from_secs(180);
const RECORDS: u64 = 20_000;
const PER_BODY: usize = 100;
const PARTITIONS: u32 = 4;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name)
}

/// The forwarder with `examples/forward-to-sekoia.toml` and only its documented variables.
fn sekoia_example(env: &Env, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_defender-forwarder"));
    c.arg("--config")
        .arg(example("forward-to-sekoia.toml"))
        .args(args)
        .env_clear()
        .env(
            "DEFENDER_EVENTHUB_CONNECTION_STRING",
            env.emulator.connection_string(&env.hub),
        )
        .env("DEFENDER_EVENTHUB_NAME", &env.hub)
        .env("DEFENDER_STATE_DIR", state)
        .env("SEKOIA_INTAKE_URL", env.intake.url())
        .env("SEKOIA_INTAKE_KEY", KEY)
        .env(
            "DEFENDER_LOG",
            "info,azure_messaging_eventhubs=warn,azure_core_amqp=warn,fe2o3_amqp=warn",
        )
        .stdin(Stdio::null());
    c
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap()
}

async fn run_to_end(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    wait_output(cmd.spawn().unwrap(), LIMIT).await
}

/// Records that reached the intake but are not covered by a checkpoint: what a crash now would
/// send again.
fn in_flight(delivered: &BTreeSet<u64>, checkpoints: &BTreeMap<String, i64>) -> BTreeSet<u64> {
    delivered
        .iter()
        .copied()
        .filter(|s| !checkpointed(*s, checkpoints, PER_BODY, PARTITIONS))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkills_the_example_reads_again_at_once_and_exits_only_when_caught_up() {
    let env = Env::start(PARTITIONS).await;
    env.send(bodies(0..RECORDS, PER_BODY));
    env.intake.set_faults(Faults {
        status_429: 0.03,
        retry_after_secs: 0,
        status_500: 0.03,
        status_503: 0.03,
        drop_connection: 0.03,
        ..Faults::default()
    });
    let state = env.path("state");
    let log = env.path("forwarder.log");
    let mut rng = Rng::new();
    let mut could_repeat = BTreeSet::new();
    let mut first_read = Vec::new();
    for round in 0..5 {
        let lifetime = Duration::from_millis(500 + rng.next() % 2500);
        let reading = run_then_kill(sekoia_example(&env, &state, &[]), &log, &env.intake, lifetime).await;
        let delivered: BTreeSet<u64> = seq_counts(&env.intake.events()).into_keys().collect();
        let at_risk = in_flight(&delivered, &hub_checkpoints(&state));
        eprintln!(
            "round {round}: killed after {lifetime:?}; first record at the intake after {reading:?}; {} delivered, {} not yet checkpointed",
            delivered.len(),
            at_risk.len()
        );
        could_repeat.extend(at_risk);
        first_read.extend(reading);
    }
    env.intake.set_faults(Faults::default());
    let out = run_to_end(sekoia_example(&env, &state, &["--exit-when-idle", "5"])).await;
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("caught up"), "{text}");

    let counts = seq_counts(&env.intake.events());
    let missing: Vec<u64> = (0..RECORDS).filter(|s| !counts.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} records never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let repeated: BTreeSet<u64> = counts.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
    let unexplained: Vec<&u64> = repeated.difference(&could_repeat).collect();
    assert!(
        unexplained.is_empty(),
        "{} duplicates were checkpointed before a kill (read again from too far back), e.g. {:?}",
        unexplained.len(),
        &unexplained[..unexplained.len().min(5)]
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    // A restart must not wait for its own ownerships to expire (60 s by default).
    let slowest = first_read.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(10),
        "a restart took {slowest:?} to read: {first_read:?}"
    );
    eprintln!(
        "5 SIGKILLs, {RECORDS} records: lost 0; duplicates {duplicates} (at most {} were in flight at the kills); restart to first record: {first_read:?}",
        could_repeat.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_state_directory_is_refused() {
    let env = Env::start(1).await;
    let state = env.path("state");
    let log = env.path("first.log");
    let mut first = spawn_logged(sekoia_example(&env, &state, &[]), &log);
    let deadline = Instant::now() + LIMIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("forwarder running")
    {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first forwarder ended:\n{text}"
        );
        assert!(Instant::now() < deadline, "the first forwarder did not start:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = run_to_end(sekoia_example(&env, &state, &[])).await;
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("in use by another forwarder") && text.contains(&format!("pid {}", first.id())),
        "{text}"
    );
    sigterm(first.id());
    assert!(first.wait().unwrap().success());
}

/// Two forwarders sharing a checkpoint store, each with its own state directory and identity.
struct Pair {
    env: Env,
    store: String,
}

impl Pair {
    fn config(&self, who: &str, extra: &str) -> PathBuf {
        let text = format!(
            "state_dir = \"{state}\"\n{store}\n[[sources]]\nkind = \"eventhub\"\nconnection_string = \"${{TEST_CONNECTION_STRING}}\"\n{extra}\n{sink}",
            state = self.env.path(&format!("state-{who}")).display(),
            store = self.store,
            sink = self.env.sekoia_sink(""),
        );
        let path = self.env.path(&format!("{who}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Starts `a` (alone, it takes every partition) and waits until it delivered `sent` records.
async fn first_takes_all(pair: &Pair, a: &Path, sent: usize) -> Child {
    let child = pair.env.spawn(a, &[]);
    assert!(pair.env.intake.wait_for(sent, LIMIT).await);
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_beside_a_live_then_a_dead_instance_on_the_file_store() {
    let env = Env::start(PARTITIONS).await;
    let store = format!("[checkpoints]\ndir = \"{}\"\n", env.path("checkpoints").display());
    let pair = Pair { env, store };
    // Defaults for ownership: the file store tells a dead owner at once, no expiry to wait for.
    let (a, b) = (pair.config("a", ""), pair.config("b", ""));
    pair.env.send(bodies(0..4000, PER_BODY));
    let mut first = first_takes_all(&pair, &a, 4000).await;

    // Beside a live instance: b takes its share, reads it to the end, and exits 0.
    pair.env.send(bodies(4000..8000, PER_BODY));
    let out = pair.env.run_until_idle(&b, 2.0, LIMIT).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("caught up"), "{}", stderr(&out));
    assert!(
        pair.env.intake.wait_for(8000, LIMIT).await,
        "a and b between them read everything"
    );

    // Beside a dead one: its lock is gone with it, so b takes everything over at once.
    first.kill().unwrap();
    first.wait().unwrap();
    pair.env.send(bodies(8000..12000, PER_BODY));
    let started = Instant::now();
    let out = pair.env.run_until_idle(&b, 2.0, LIMIT).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited {:?} for a dead owner",
        started.elapsed()
    );
    let counts = seq_counts(&pair.env.intake.events());
    assert!((0..12000).all(|s| counts.contains_key(&s)), "every record arrived");
}

/// Azurite and two forwarders' configurations sharing a Blob checkpoint store on it.
async fn blob_pair() -> (Azurite, Pair) {
    let azurite = Azurite::start().await.expect("start Azurite");
    azurite.create_container("checkpoints").await.unwrap();
    let store = format!(
        "[checkpoints]\nkind = \"blob\"\nconnection_string = \"{}\"\ncontainer = \"checkpoints\"\n",
        azurite.connection_string()
    );
    let pair = Pair {
        env: Env::start(PARTITIONS).await,
        store,
    };
    (azurite, pair)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_waits_for_a_silent_owner_on_the_blob_store_and_reports_it() {
    let (_azurite, pair) = blob_pair().await;
    // A short expiry (not the default 60 s): a Blob store cannot tell a dead owner from a slow
    // one, so b must wait for the expiry, and this test should not wait a minute for it. The
    // file-store test above runs the defaults.
    let timing = "ownership_update_interval = \"1s\"\nownership_expiry = \"15s\"\n";
    let (a, b) = (pair.config("a", timing), pair.config("b", timing));
    pair.env.send(bodies(0..4000, PER_BODY));
    let mut first = first_takes_all(&pair, &a, 4000).await;
    first.kill().unwrap();
    first.wait().unwrap();
    pair.env.send(bodies(4000..8000, PER_BODY));

    // Past the liveness window (7.5 s: a is silent) but before the expiry (15 s after its last
    // renewal): exit 3, naming what is unread and who holds it.
    let out = run_to_end(pair.env.command(&b, &["--exit-when-idle", "1", "--max-wait", "10"])).await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("max-wait") && text.contains("silent owner"), "{text}");
    assert!(
        text.contains("waits for its silent owner's lease to expire") && text.contains("expires="),
        "{text}"
    );

    // Enough time: it waits, takes over once the lease expires, reads everything, exits 0.
    let out = pair.env.run_until_idle(&b, 1.0, LIMIT).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = seq_counts(&pair.env.intake.events());
    assert!((0..8000).all(|s| counts.contains_key(&s)), "every record arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_their_own_state_split_the_partitions_through_blob() {
    let (_azurite, pair) = blob_pair().await;
    // No owner ids: each instance's identity comes from its own state directory.
    let (a, b) = (pair.config("a", ""), pair.config("b", ""));
    let (log_a, log_b) = (pair.env.path("a.log"), pair.env.path("b.log"));
    let first = spawn_logged(pair.env.command(&a, &[]), &log_a);
    let second = spawn_logged(pair.env.command(&b, &[]), &log_b);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let deadline = Instant::now() + LIMIT;
    while (!read(&log_a).contains("partition acquired") || !read(&log_b).contains("partition acquired"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pair.env.send(bodies(0..4000, PER_BODY));
    assert!(pair.env.intake.wait_for(4000, LIMIT).await);
    sigterm(first.id());
    sigterm(second.id());
    let (a_out, b_out) = (wait_output(first, LIMIT).await, wait_output(second, LIMIT).await);
    assert!(a_out.status.success() && b_out.status.success());
    let (ta, tb) = (read(&log_a), read(&log_b));
    assert!(
        ta.contains("partition acquired") && tb.contains("partition acquired"),
        "both read:\n{ta}\n{tb}"
    );
    let id = |who: &str| std::fs::read_to_string(pair.env.path(&format!("state-{who}/owner-id"))).unwrap();
    assert_ne!(id("a"), id("b"), "each state directory has its own identity");
    assert!(
        ta.contains(id("a").trim()) && tb.contains(id("b").trim()),
        "each logs its own:\n{ta}\n{tb}"
    );
}
