//! One conformance suite for every `CheckpointStore` of this crate: the file store and the Blob
//! store (on Azurite). Each test runs the same `conformance` function against one store.

use std::collections::BTreeSet;
use std::sync::Arc;

use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use defender_eventhub::blob::{BlobClient, StorageCredential, unquote_etag};
use defender_eventhub::checkpoint::{BlobCheckpointStore, FileCheckpointStore};
use defender_testkit::Azurite;

type Store = Arc<dyn CheckpointStore>;

const NS: &str = "conformance.servicebus.windows.net";
const HUB: &str = "hub";
const GROUP: &str = "$default";

fn ownership(ns: &str, hub: &str, group: &str, partition: &str, owner: Option<&str>, etag: Option<&str>) -> Ownership {
    Ownership {
        fully_qualified_namespace: ns.to_owned(),
        event_hub_name: hub.to_owned(),
        consumer_group: group.to_owned(),
        partition_id: partition.to_owned(),
        owner_id: owner.map(ToOwned::to_owned),
        etag: etag.map(Into::into),
        last_modified_time: None,
    }
}

fn checkpoint(ns: &str, hub: &str, group: &str, partition: &str, sequence: i64) -> Checkpoint {
    Checkpoint {
        fully_qualified_namespace: ns.to_owned(),
        event_hub_name: hub.to_owned(),
        consumer_group: group.to_owned(),
        partition_id: partition.to_owned(),
        offset: Some((sequence * 100).to_string()),
        sequence_number: Some(sequence),
    }
}

fn etag_of(ownership: &Ownership) -> String {
    ownership
        .etag
        .as_ref()
        .expect("a stored ownership has an etag")
        .to_string()
}

async fn list_owners(store: &Store, ns: &str, hub: &str, group: &str) -> Vec<(String, Option<String>, String)> {
    let mut listed: Vec<_> = store
        .list_ownerships(ns, hub, group)
        .await
        .expect("list ownerships")
        .into_iter()
        .map(|o| {
            let etag = unquote_etag(&etag_of(&o)).to_owned();
            (o.partition_id, o.owner_id, etag)
        })
        .collect();
    listed.sort();
    listed
}

async fn list_positions(store: &Store, ns: &str, hub: &str, group: &str) -> Vec<(String, Option<String>, Option<i64>)> {
    let mut listed: Vec<_> = store
        .list_checkpoints(ns, hub, group)
        .await
        .expect("list checkpoints")
        .into_iter()
        .map(|c| (c.partition_id, c.offset, c.sequence_number))
        .collect();
    listed.sort();
    listed
}

/// The whole suite. `make_store` returns a new handle on the SAME store each call (a new HTTP
/// client, or a new file-store handle on the same directory) so that concurrent claimers behave like
/// separate processes.
async fn conformance(make_store: impl Fn() -> Store) {
    let store = make_store();

    // --- Empty listings.
    assert!(store.list_ownerships(NS, HUB, GROUP).await.unwrap().is_empty());
    assert!(store.list_checkpoints(NS, HUB, GROUP).await.unwrap().is_empty());
    assert!(store.claim_ownership(&[]).await.unwrap().is_empty());

    // --- First claim wins; it comes back with an etag and a recent last-modified time.
    let before = azure_core::time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(5);
    let won = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "0", Some("alice"), None)])
        .await
        .unwrap();
    assert_eq!(won.len(), 1, "the first claim wins");
    assert_eq!(won[0].owner_id.as_deref(), Some("alice"));
    assert_eq!(won[0].partition_id, "0");
    let alice_etag = etag_of(&won[0]);
    let modified = won[0].last_modified_time.expect("a won claim has a last-modified time");
    assert!(modified >= before, "last-modified {modified} is recent");

    // A second first-claim (no etag) loses: left out, not an error.
    let lost = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "0", Some("bob"), None)])
        .await
        .unwrap();
    assert!(lost.is_empty(), "a second first-claim is left out: {lost:?}");
    // A claim with a made-up etag loses too.
    let lost = store
        .claim_ownership(&[ownership(
            NS,
            HUB,
            GROUP,
            "0",
            Some("bob"),
            Some("\"0x8D00000DEADBEEF\""),
        )])
        .await
        .unwrap();
    assert!(lost.is_empty(), "a stale etag is left out: {lost:?}");
    // A claim with an etag on a partition that has no record loses as well.
    let lost = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "9", Some("bob"), Some(&alice_etag))])
        .await
        .unwrap();
    assert!(
        lost.is_empty(),
        "an etag claim on a missing record is left out: {lost:?}"
    );

    // The listing shows alice with the etag her claim returned (quoted or not).
    assert_eq!(
        list_owners(&store, NS, HUB, GROUP).await,
        vec![(
            "0".to_owned(),
            Some("alice".to_owned()),
            unquote_etag(&alice_etag).to_owned()
        )]
    );
    let listed = store.list_ownerships(NS, HUB, GROUP).await.unwrap();
    assert!(listed[0].last_modified_time.is_some());
    assert_eq!(listed[0].fully_qualified_namespace, NS);

    // --- Renew with the current etag: wins, and the etag changes; the old one is now stale.
    let renewed = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "0", Some("alice"), Some(&alice_etag))])
        .await
        .unwrap();
    assert_eq!(renewed.len(), 1, "renewing with the current etag wins");
    let renewed_etag = etag_of(&renewed[0]);
    assert_ne!(
        unquote_etag(&renewed_etag),
        unquote_etag(&alice_etag),
        "a renewal changes the etag"
    );
    let lost = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "0", Some("bob"), Some(&alice_etag))])
        .await
        .unwrap();
    assert!(lost.is_empty(), "stealing with a stale etag is left out");
    // The listed etag works as a claim etag (listed ETags are unquoted on Blob Storage).
    let listed_etag = etag_of(&store.list_ownerships(NS, HUB, GROUP).await.unwrap()[0]);

    // --- Release (no owner) with the current etag, then another instance claims it.
    let released = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "0", None, Some(&listed_etag))])
        .await
        .unwrap();
    assert_eq!(released.len(), 1, "release with the listed etag wins");
    assert_eq!(released[0].owner_id, None);
    let listed = list_owners(&store, NS, HUB, GROUP).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, None, "a released partition lists without owner");
    let release_etag = etag_of(&released[0]);
    let reclaimed = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "0", Some("bob"), Some(&release_etag))])
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1, "reclaiming a released partition with its etag wins");
    assert_eq!(list_owners(&store, NS, HUB, GROUP).await[0].1.as_deref(), Some("bob"));
    // An empty owner id is a release too.
    let released = store
        .claim_ownership(&[ownership(NS, HUB, GROUP, "0", Some(""), Some(&etag_of(&reclaimed[0])))])
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].owner_id, None);
    assert_eq!(list_owners(&store, NS, HUB, GROUP).await[0].1, None);

    // --- Several claims in one call: winners come back, losers are left out.
    let current = etag_of(&released[0]);
    let mixed = store
        .claim_ownership(&[
            ownership(NS, HUB, GROUP, "0", Some("carol"), Some(&current)),
            ownership(NS, HUB, GROUP, "1", Some("carol"), None),
            ownership(NS, HUB, GROUP, "2", Some("carol"), Some("\"0xBAD\"")),
            ownership(NS, HUB, GROUP, "3", Some("carol"), None),
        ])
        .await
        .unwrap();
    let won: BTreeSet<_> = mixed.iter().map(|o| o.partition_id.as_str()).collect();
    assert_eq!(won, BTreeSet::from(["0", "1", "3"]));
    assert!(mixed.iter().all(|o| o.etag.is_some() && o.last_modified_time.is_some()));
    let owners: Vec<_> = list_owners(&store, NS, HUB, GROUP)
        .await
        .into_iter()
        .map(|(p, o, _)| (p, o))
        .collect();
    assert_eq!(
        owners,
        ["0", "1", "3"]
            .map(|p| (p.to_owned(), Some("carol".to_owned())))
            .to_vec()
    );

    // --- Checkpoints: write, list, overwrite.
    store
        .update_checkpoint(checkpoint(NS, HUB, GROUP, "0", 10))
        .await
        .unwrap();
    store
        .update_checkpoint(checkpoint(NS, HUB, GROUP, "1", 20))
        .await
        .unwrap();
    assert_eq!(
        list_positions(&store, NS, HUB, GROUP).await,
        vec![
            ("0".to_owned(), Some("1000".to_owned()), Some(10)),
            ("1".to_owned(), Some("2000".to_owned()), Some(20)),
        ]
    );
    store
        .update_checkpoint(checkpoint(NS, HUB, GROUP, "0", 11))
        .await
        .unwrap();
    let listed = store.list_checkpoints(NS, HUB, GROUP).await.unwrap();
    let zero = listed.iter().find(|c| c.partition_id == "0").unwrap();
    assert_eq!((zero.offset.as_deref(), zero.sequence_number), (Some("1100"), Some(11)));
    assert_eq!(zero.fully_qualified_namespace, NS);
    assert_eq!(zero.event_hub_name, HUB);
    assert_eq!(zero.consumer_group, GROUP);
    // Checkpoints and ownerships do not see each other.
    assert_eq!(list_owners(&store, NS, HUB, GROUP).await.len(), 3);

    // --- Isolation between hubs, consumer groups and namespaces (same partition ids).
    let other_hub = "hub2";
    let other_group = "reporting";
    let other_ns = "other.servicebus.windows.net";
    store
        .update_checkpoint(checkpoint(NS, other_hub, GROUP, "0", 500))
        .await
        .unwrap();
    store
        .update_checkpoint(checkpoint(NS, HUB, other_group, "0", 600))
        .await
        .unwrap();
    store
        .update_checkpoint(checkpoint(other_ns, HUB, GROUP, "0", 700))
        .await
        .unwrap();
    // "hub" must not match "hub2" by prefix.
    assert_eq!(list_positions(&store, NS, HUB, GROUP).await.len(), 2);
    assert_eq!(
        list_positions(&store, NS, other_hub, GROUP).await,
        vec![("0".to_owned(), Some("50000".to_owned()), Some(500))]
    );
    assert_eq!(
        list_positions(&store, NS, HUB, other_group).await,
        vec![("0".to_owned(), Some("60000".to_owned()), Some(600))]
    );
    assert_eq!(
        list_positions(&store, other_ns, HUB, GROUP).await,
        vec![("0".to_owned(), Some("70000".to_owned()), Some(700))]
    );
    let claimed = store
        .claim_ownership(&[ownership(NS, other_hub, GROUP, "0", Some("dave"), None)])
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        1,
        "the same partition of another hub is a separate record"
    );
    assert!(store.list_ownerships(NS, HUB, other_group).await.unwrap().is_empty());
    assert!(store.list_ownerships(other_ns, HUB, GROUP).await.unwrap().is_empty());
    assert_eq!(list_owners(&store, NS, other_hub, GROUP).await.len(), 1);

    // --- Names are lower-cased: mixed case reads and writes the same records.
    let upper = store
        .claim_ownership(&[ownership(
            "Conformance.ServiceBus.Windows.NET",
            "HUB",
            "$Default",
            "1",
            Some("eve"),
            None,
        )])
        .await
        .unwrap();
    assert!(
        upper.is_empty(),
        "a mixed-case name addresses the existing (lower-case) record"
    );
    let owners = list_owners(&store, "CONFORMANCE.servicebus.windows.net", "Hub", "$DEFAULT").await;
    assert_eq!(owners.len(), 3, "a mixed-case listing finds the lower-case records");
    store
        .update_checkpoint(checkpoint("Mixed.Servicebus.Windows.Net", "MyHub", "Group-A", "7", 1))
        .await
        .unwrap();
    assert_eq!(
        list_positions(&store, "mixed.servicebus.windows.net", "myhub", "group-a").await,
        vec![("7".to_owned(), Some("100".to_owned()), Some(1))]
    );

    // --- Bad input is an error, not a lost claim.
    assert!(
        store
            .claim_ownership(&[ownership(NS, HUB, GROUP, "", Some("x"), None)])
            .await
            .is_err()
    );
    assert!(store.list_checkpoints("", HUB, GROUP).await.is_err());
    assert!(store.list_ownerships(NS, "a/b", GROUP).await.is_err());
    let mut empty = checkpoint(NS, HUB, GROUP, "5", 1);
    empty.offset = None;
    empty.sequence_number = None;
    assert!(
        store.update_checkpoint(empty).await.is_err(),
        "a checkpoint without position"
    );
    assert!(
        list_positions(&store, NS, HUB, GROUP)
            .await
            .iter()
            .all(|(p, ..)| p != "5")
    );

    // --- Many concurrent claimers on one partition: exactly one wins, round after round.
    let claimers = 12;
    let mut etag: Option<String> = None;
    for round in 0..4 {
        let barrier = Arc::new(tokio::sync::Barrier::new(claimers));
        let mut tasks = Vec::new();
        for claimer in 0..claimers {
            let store = make_store();
            let barrier = Arc::clone(&barrier);
            let etag = etag.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("claimer-{claimer}");
                let request = ownership(NS, HUB, GROUP, "race", Some(&owner), etag.as_deref());
                barrier.wait().await;
                store.claim_ownership(&[request]).await
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            winners.extend(task.await.unwrap().expect("a lost race is not an error"));
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one claimer wins: {winners:?}");
        let listed = store.list_ownerships(NS, HUB, GROUP).await.unwrap();
        let race = listed.iter().find(|o| o.partition_id == "race").unwrap();
        assert_eq!(
            race.owner_id, winners[0].owner_id,
            "round {round}: the winner is listed"
        );
        assert_eq!(unquote_etag(&etag_of(race)), unquote_etag(&etag_of(&winners[0])));
        etag = Some(etag_of(&winners[0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    conformance(move || Arc::new(FileCheckpointStore::open(&path).unwrap()) as Store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_store_conformance() {
    let azurite = Azurite::start().await.expect("start Azurite");
    azurite.create_container("conformance").await.unwrap();
    let url = azurite.container_url("conformance");
    let key = azurite.account_key();
    conformance(move || {
        let credential = StorageCredential::shared_key("devstoreaccount1", key).unwrap();
        Arc::new(BlobCheckpointStore::new(BlobClient::new(&url, credential).unwrap())) as Store
    })
    .await;
}
