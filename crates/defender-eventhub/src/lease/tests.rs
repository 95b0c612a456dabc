//! The engine's I/O loop against an in-memory store with real claim rules.

use std::sync::Mutex;

use super::*;
use crate::checkpoint::MemoryCheckpointStore;

/// Records what the engine reports, as a source's workers would see it.
#[derive(Default)]
struct Log {
    held: Mutex<BTreeMap<String, Grant>>,
    lost: Mutex<Vec<String>>,
}

#[async_trait]
impl LeaseHandler for Log {
    async fn acquired(&self, id: &str, grant: Grant) {
        lock(&self.held).insert(id.to_owned(), grant);
    }
    fn lost(&self, id: &str, _why: &str) {
        lock(&self.held).remove(id);
        lock(&self.lost).push(id.to_owned());
    }
}

fn scope() -> Scope {
    Scope {
        namespace: "ns".into(),
        hub: "hub".into(),
        consumer_group: "$default".into(),
    }
}

fn engine(store: &Arc<MemoryCheckpointStore>, owner: &str, n: usize) -> Arc<Leases> {
    let balancing = Balancing {
        update_interval: Duration::from_secs(1),
        expiry: Duration::from_secs(10),
    };
    let ids = (0..n).map(|i| i.to_string()).collect();
    Leases::new(store.clone(), scope(), owner, balancing, ids, "partition")
}

#[tokio::test]
async fn two_instances_split_and_a_release_hands_over_at_once() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let (a, b) = (engine(&store, "a", 4), engine(&store, "b", 4));
    let (la, lb) = (Log::default(), Log::default());
    a.cycle(&la, true).await.unwrap();
    assert_eq!(a.held().len(), 4);
    for _ in 0..4 {
        b.cycle(&lb, true).await.unwrap();
        a.cycle(&la, true).await.unwrap();
    }
    assert_eq!((a.held().len(), b.held().len()), (2, 2));
    assert_eq!(lock(&la.held).len(), 2, "the handler saw the steals");
    assert_eq!(lock(&la.lost).len(), 2);
    // What b stole from a live a is flagged, so a reader without owner levels waits.
    assert!(lock(&lb.held).values().all(|g| g.from_live_owner));

    a.release_all().await;
    b.cycle(&lb, true).await.unwrap();
    assert_eq!(b.held().len(), 4, "released leases are free at once");
}

#[tokio::test]
async fn a_restart_with_the_same_owner_id_takes_its_leases_back_at_once() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let first = engine(&store, "stable", 3);
    first.cycle(&Log::default(), true).await.unwrap();
    drop(first); // killed: nothing released
    let again = engine(&store, "stable", 3);
    let log = Log::default();
    again.cycle(&log, true).await.unwrap();
    assert_eq!(again.held().len(), 3);
    assert!(lock(&log.held).values().all(|g| !g.from_live_owner));
}

#[tokio::test]
async fn a_silent_owner_is_waited_for_then_replaced() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let dead = engine(&store, "dead", 2);
    dead.cycle(&Log::default(), true).await.unwrap();
    let me = engine(&store, "me", 2);
    let log = Log::default();
    // Renewed a moment ago, but not seen renewing yet: not proven live, not silent either; its
    // fair share is left to it.
    me.cycle(&log, true).await.unwrap();
    let other = me.status().into_iter().find(|s| s.holder != Holder::Me).unwrap();
    assert!(
        matches!(
            other.holder,
            Holder::Other {
                live: false,
                silent: false,
                ..
            }
        ),
        "{other:?}"
    );
    // Seen renewing: live.
    dead.cycle(&Log::default(), true).await.unwrap();
    me.cycle(&log, true).await.unwrap();
    let other = me.status().into_iter().find(|s| s.holder != Holder::Me).unwrap();
    assert!(matches!(other.holder, Holder::Other { live: true, .. }), "{other:?}");
    // Silent past the liveness window: presumed gone, waiting for the expiry.
    store.age_ownerships(Duration::from_secs(6));
    me.cycle(&log, true).await.unwrap();
    assert!(
        me.status()
            .iter()
            .any(|s| matches!(&s.holder, Holder::Other { live: false, silent: true, owner, .. } if owner == "dead"))
    );
    // Expired: taken.
    store.age_ownerships(Duration::from_secs(6));
    me.cycle(&log, true).await.unwrap();
    assert_eq!(me.held().len(), 2);
    assert!(me.status().iter().all(|s| s.holder == Holder::Me));
}

#[tokio::test]
async fn an_unreachable_store_drops_only_what_expired() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let me = engine(&store, "me", 2);
    let log = Log::default();
    me.cycle(&log, true).await.unwrap();
    store.set_failing(true);
    assert!(me.cycle(&log, true).await.is_err());
    me.drop_stale(&log);
    assert_eq!(me.held().len(), 2, "renewed just now: kept");
    for h in lock(&me.held).values_mut() {
        h.renewed -= Duration::from_secs(11);
    }
    me.drop_stale(&log);
    assert!(me.held().is_empty());
    assert_eq!(lock(&log.lost).len(), 2);
    store.set_failing(false);
    me.cycle(&log, true).await.unwrap();
    assert_eq!(me.held().len(), 2, "taken back once the store answers");
}

#[tokio::test]
async fn a_draining_engine_renews_but_takes_nothing_new() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let a = engine(&store, "a", 2);
    let log = Log::default();
    a.cycle(&log, true).await.unwrap();
    let b = engine(&store, "b", 2);
    b.release_all().await;
    a.cycle(&log, false).await.unwrap();
    assert_eq!(a.held().len(), 2);
    let fresh = engine(&store, "c", 2);
    fresh.cycle(&Log::default(), false).await.unwrap();
    assert!(fresh.held().is_empty(), "take = false claims nothing new");
}

#[tokio::test]
async fn run_stops_and_leaves_leases_for_release_all() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let a = engine(&store, "a", 2);
    let log: Arc<Log> = Arc::new(Log::default());
    let (stop_taking, stop) = (CancellationToken::new(), CancellationToken::new());
    let task = tokio::spawn(a.clone().run(log.clone(), stop_taking.clone(), stop.clone()));
    for _ in 0..100 {
        if a.held().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.held().len(), 2);
    stop_taking.cancel();
    stop.cancel();
    task.await.unwrap();
    assert_eq!(a.held().len(), 2);
    a.release_all().await;
    let b = engine(&store, "b", 2);
    b.cycle(&Log::default(), true).await.unwrap();
    assert_eq!(b.held().len(), 2);
}
