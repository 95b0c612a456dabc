//! The Blob client and the Blob checkpoint store against Azurite: the layout the Python SDK reads,
//! the client's calls, SAS auth, a missing container, and an Azurite outage in the middle of a run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use defender_eventhub::blob::{
    BlobClient, BlobClientOptions, BlobErrorKind, Condition, StorageConnectionString, StorageCredential, unquote_etag,
};
use defender_eventhub::checkpoint::{BlobCheckpointStore, CheckpointStoreError};
use defender_testkit::Azurite;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

async fn azurite_with(container: &str) -> (Azurite, BlobClient) {
    let azurite = Azurite::start().await.expect("start Azurite");
    azurite.create_container(container).await.unwrap();
    let client = BlobClient::from_connection_string(&azurite.connection_string(), container).unwrap();
    (azurite, client)
}

fn checkpoint(ns: &str, hub: &str, group: &str, partition: &str, offset: &str, sequence: i64) -> Checkpoint {
    Checkpoint {
        fully_qualified_namespace: ns.to_owned(),
        event_hub_name: hub.to_owned(),
        consumer_group: group.to_owned(),
        partition_id: partition.to_owned(),
        offset: Some(offset.to_owned()),
        sequence_number: Some(sequence),
    }
}

fn claim(ns: &str, hub: &str, group: &str, partition: &str, owner: &str, etag: Option<&str>) -> Ownership {
    Ownership {
        fully_qualified_namespace: ns.to_owned(),
        event_hub_name: hub.to_owned(),
        consumer_group: group.to_owned(),
        partition_id: partition.to_owned(),
        owner_id: Some(owner.to_owned()),
        etag: etag.map(Into::into),
        last_modified_time: None,
    }
}

/// What `azure-eventhub-checkpointstoreblob` does with a listed checkpoint blob:
/// `partition_id = name.split("/")[-1]`, `offset = str(metadata["offset"])`,
/// `sequence_number = int(metadata["sequencenumber"])` (a missing key raises).
fn python_reads_checkpoint(name: &str, metadata: &BTreeMap<String, String>) -> (String, String, i64) {
    let partition = name.rsplit('/').next().unwrap().to_owned();
    let offset = metadata.get("offset").expect("Python needs `offset`").clone();
    let sequence = metadata
        .get("sequencenumber")
        .expect("Python needs `sequencenumber`")
        .parse()
        .expect("Python's int() must parse it");
    (partition, offset, sequence)
}

#[tokio::test]
async fn blob_layout_is_what_the_python_sdk_reads() {
    let (_azurite, client) = azurite_with("layout").await;
    let store = BlobCheckpointStore::new(client.clone());
    let ns = "MyNS.ServiceBus.Windows.Net";

    store
        .update_checkpoint(checkpoint(ns, "MyHub", "$Default", "0", "4294967296", 42))
        .await
        .unwrap();
    let won = store
        .claim_ownership(&[claim(ns, "MyHub", "$Default", "0", "owner-1", None)])
        .await
        .unwrap();
    assert_eq!(won.len(), 1);

    // Exactly the two blobs, named as the Python SDK names them (whole name lower-cased).
    let blobs = client.list_blobs("").await.unwrap();
    let names: Vec<&str> = blobs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "myns.servicebus.windows.net/myhub/$default/checkpoint/0",
            "myns.servicebus.windows.net/myhub/$default/ownership/0",
        ]
    );

    // The checkpoint blob: empty block blob, metadata exactly {offset, sequencenumber}.
    let listed = client
        .list_blobs("myns.servicebus.windows.net/myhub/$default/checkpoint/")
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].metadata,
        BTreeMap::from([
            ("offset".to_owned(), "4294967296".to_owned()),
            ("sequencenumber".to_owned(), "42".to_owned()),
        ])
    );
    assert_eq!(listed[0].content_length, 0);
    assert_eq!(
        python_reads_checkpoint(&listed[0].name, &listed[0].metadata),
        ("0".to_owned(), "4294967296".to_owned(), 42)
    );
    let properties = client
        .get_properties("myns.servicebus.windows.net/myhub/$default/checkpoint/0")
        .await
        .unwrap();
    assert_eq!(properties.blob_type.as_deref(), Some("BlockBlob"));
    assert_eq!(properties.content_length, 0);
    assert_eq!(properties.metadata, listed[0].metadata);

    // The ownership blob: metadata exactly {ownerid}; its listed ETag is the claim's.
    let listed = client
        .list_blobs("myns.servicebus.windows.net/myhub/$default/ownership/")
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].metadata,
        BTreeMap::from([("ownerid".to_owned(), "owner-1".to_owned())])
    );
    assert_eq!(
        unquote_etag(&listed[0].etag),
        unquote_etag(won[0].etag.as_ref().unwrap().as_ref())
    );

    // A checkpoint write keeps both keys, even on an existing blob.
    store
        .update_checkpoint(checkpoint(ns, "MyHub", "$Default", "0", "4294967300", 43))
        .await
        .unwrap();
    let properties = client
        .get_properties("myns.servicebus.windows.net/myhub/$default/checkpoint/0")
        .await
        .unwrap();
    assert_eq!(properties.metadata["offset"], "4294967300");
    assert_eq!(properties.metadata["sequencenumber"], "43");

    // A release writes an empty `ownerid` (a missing key would make Python's listing raise).
    let etag = won[0].etag.as_ref().unwrap().to_string();
    let mut release = claim(ns, "MyHub", "$Default", "0", "", Some(&etag));
    release.owner_id = None;
    assert_eq!(store.claim_ownership(&[release]).await.unwrap().len(), 1);
    let properties = client
        .get_properties("myns.servicebus.windows.net/myhub/$default/ownership/0")
        .await
        .unwrap();
    assert_eq!(properties.metadata.get("ownerid").map(String::as_str), Some(""));
}

#[tokio::test]
async fn reads_blobs_written_the_way_the_python_sdk_writes_them() {
    let (_azurite, client) = azurite_with("python").await;
    // As `BlobCheckpointStore` (Python) writes them: lower-case names, empty block blobs.
    let base = "py.servicebus.windows.net/hub/$default";
    for (partition, offset, sequence) in [("0", "1200", "12"), ("1", "3400", "34")] {
        client
            .put_empty_block_blob(
                &format!("{base}/checkpoint/{partition}"),
                &[("offset", offset), ("sequencenumber", sequence)],
                &Condition::None,
            )
            .await
            .unwrap();
    }
    let python_claim = client
        .put_empty_block_blob(
            &format!("{base}/ownership/0"),
            &[("ownerid", "python-owner")],
            &Condition::None,
        )
        .await
        .unwrap();

    let store = BlobCheckpointStore::new(client.clone());
    let mut checkpoints = store
        .list_checkpoints("py.servicebus.windows.net", "hub", "$default")
        .await
        .unwrap();
    checkpoints.sort_by(|a, b| a.partition_id.cmp(&b.partition_id));
    let read: Vec<_> = checkpoints
        .iter()
        .map(|c| (c.partition_id.as_str(), c.offset.as_deref(), c.sequence_number))
        .collect();
    assert_eq!(read, [("0", Some("1200"), Some(12)), ("1", Some("3400"), Some(34))]);

    let ownerships = store
        .list_ownerships("PY.servicebus.windows.net", "Hub", "$Default")
        .await
        .unwrap();
    assert_eq!(ownerships.len(), 1);
    assert_eq!(ownerships[0].owner_id.as_deref(), Some("python-owner"));
    assert_eq!(ownerships[0].partition_id, "0");
    let listed_etag = ownerships[0].etag.as_ref().unwrap().to_string();
    assert_eq!(unquote_etag(&listed_etag), unquote_etag(&python_claim.etag));
    // Python's last-modified (1-second resolution) is what the listing reports.
    let modified = ownerships[0].last_modified_time.unwrap();
    assert_eq!(modified.unix_timestamp(), python_claim.last_modified.timestamp());

    // Steal the Python instance's partition with the listed (unquoted) etag.
    let stolen = store
        .claim_ownership(&[claim(
            "py.servicebus.windows.net",
            "hub",
            "$default",
            "0",
            "rust-owner",
            Some(&listed_etag),
        )])
        .await
        .unwrap();
    assert_eq!(stolen.len(), 1);
    // The Python instance's next renewal with its etag now fails (412): it lost the partition.
    let error = client
        .set_metadata(
            &format!("{base}/ownership/0"),
            &[("ownerid", "python-owner")],
            &Condition::IfMatch(python_claim.etag.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BlobErrorKind::PreconditionFailed);
    assert_eq!(error.error_code(), Some("ConditionNotMet"));
}

#[tokio::test]
async fn blob_client_calls() {
    let (_azurite, client) = azurite_with("calls").await;
    assert!(
        !client.create_container().await.unwrap(),
        "the container exists already"
    );

    // Conditional creation: the second one conflicts.
    let first = client
        .put_empty_block_blob("a/b c/é", &[("k", "v")], &Condition::IfNotExists)
        .await
        .unwrap();
    assert!(
        first.etag.starts_with('"') && first.etag.ends_with('"'),
        "header etags are quoted"
    );
    let error = client
        .put_empty_block_blob("a/b c/é", &[("k", "v2")], &Condition::IfNotExists)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BlobErrorKind::Conflict);
    assert_eq!(error.http_status(), Some(409));
    assert_eq!(error.error_code(), Some("BlobAlreadyExists"));
    assert!(error.to_string().contains("BlobAlreadyExists"), "{error}");

    // If-Match with the right etag (quoted or not), then with a stale one.
    let second = client
        .set_metadata(
            "a/b c/é",
            &[("k", "v3")],
            &Condition::IfMatch(unquote_etag(&first.etag).to_owned()),
        )
        .await
        .unwrap();
    assert_ne!(second.etag, first.etag);
    let error = client
        .set_metadata("a/b c/é", &[("k", "v4")], &Condition::IfMatch(first.etag.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BlobErrorKind::PreconditionFailed);
    let properties = client.get_properties("a/b c/é").await.unwrap();
    assert_eq!(properties.metadata["k"], "v3");
    assert_eq!(properties.etag, second.etag);

    // Missing blobs.
    let error = client.get_properties("missing").await.unwrap_err();
    assert_eq!(error.kind(), BlobErrorKind::NotFound);
    assert_eq!(error.error_code(), Some("BlobNotFound"));
    let error = client
        .set_metadata("missing", &[("k", "v")], &Condition::None)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BlobErrorKind::NotFound);

    // Append blobs and ranges.
    client
        .create_append_blob("log/export.json", &[], &Condition::IfNotExists)
        .await
        .unwrap();
    let range = client.get_range("log/export.json", 0, 1023).await.unwrap();
    assert!(range.data.is_empty());
    assert_eq!(range.total_length, 0);
    let appended = client
        .append_block("log/export.json", b"hello ".to_vec())
        .await
        .unwrap();
    assert_eq!(appended.append_offset, 0);
    let appended = client
        .append_block("log/export.json", b"world\n".to_vec())
        .await
        .unwrap();
    assert_eq!(appended.append_offset, 6);
    assert_eq!(appended.committed_block_count, 2);
    let range = client.get_range("log/export.json", 6, 8).await.unwrap();
    assert_eq!(range.data, b"wor");
    assert_eq!(range.total_length, 12);
    assert_eq!(range.etag, appended.etag);
    let range = client.get_range("log/export.json", 6, 1_000_000).await.unwrap();
    assert_eq!(range.data, b"world\n");
    let range = client.get_range("log/export.json", 12, 20).await.unwrap();
    assert!(range.data.is_empty(), "reading at the end gives nothing");
    assert_eq!(range.total_length, 12);
    assert_eq!(
        client.get_range("log/missing", 0, 1).await.unwrap_err().kind(),
        BlobErrorKind::NotFound
    );

    // Listing across pages (NextMarker), by prefix, with metadata.
    for i in 0..7 {
        client
            .put_empty_block_blob(&format!("page/{i:02}"), &[("n", &i.to_string())], &Condition::None)
            .await
            .unwrap();
    }
    let first_page = client.list_blobs_page("page/", None, Some(3)).await.unwrap();
    assert_eq!(first_page.blobs.len(), 3);
    assert!(first_page.next_marker.is_some(), "a partial page has a NextMarker");
    let all = client.list_blobs_paged("page/", Some(3)).await.unwrap();
    let names: Vec<_> = all.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, (0..7).map(|i| format!("page/{i:02}")).collect::<Vec<_>>());
    assert!(all.iter().enumerate().all(|(i, b)| b.metadata["n"] == i.to_string()));
    assert!(
        all.iter().all(|b| b.etag.starts_with('"')),
        "listed etags are handed out quoted"
    );
    assert_eq!(client.list_blobs("a/").await.unwrap()[0].name, "a/b c/é");

    // Delete, conditional then not.
    let error = client
        .delete_blob("page/00", &Condition::IfMatch("\"0x1\"".to_owned()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BlobErrorKind::PreconditionFailed);
    client.delete_blob("page/00", &Condition::None).await.unwrap();
    assert_eq!(client.list_blobs("page/").await.unwrap().len(), 6);
    assert_eq!(
        client
            .delete_blob("page/00", &Condition::None)
            .await
            .unwrap_err()
            .kind(),
        BlobErrorKind::NotFound
    );

    // A wrong key is an authentication error, not a lost race.
    let wrong = StorageCredential::shared_key("devstoreaccount1", &STANDARD.encode(b"not the key")).unwrap();
    let bad = BlobClient::new(client.container_url().as_str(), wrong).unwrap();
    let error = bad.list_blobs("").await.unwrap_err();
    assert_eq!(error.kind(), BlobErrorKind::AuthenticationFailed, "{error}");
}

/// An account SAS for the emulator account (services b, resource types sco, version 2021-08-06).
fn account_sas(key: &str, permissions: &str) -> String {
    let expiry = "2099-01-01T00:00:00Z";
    let version = "2021-08-06";
    let to_sign = format!("devstoreaccount1\n{permissions}\nb\nsco\n\n{expiry}\n\nhttps,http\n{version}\n\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(&STANDARD.decode(key).unwrap()).unwrap();
    mac.update(to_sign.as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    let signature: String = signature
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_owned(),
            '/' => "%2F".to_owned(),
            '=' => "%3D".to_owned(),
            c => c.to_string(),
        })
        .collect();
    format!("sv={version}&ss=b&srt=sco&sp={permissions}&se={expiry}&spr=https,http&sig={signature}")
}

#[tokio::test]
async fn sas_tokens_authorize_requests() {
    let (azurite, _) = azurite_with("sas").await;
    let sas = account_sas(azurite.account_key(), "rwdlac");
    let connection_string = format!("BlobEndpoint={};SharedAccessSignature={sas}", azurite.blob_endpoint());
    let parsed = StorageConnectionString::parse(&connection_string).unwrap();
    assert!(matches!(parsed.credential(), StorageCredential::Sas(_)));
    let client = BlobClient::from_connection_string(&connection_string, "sas").unwrap();
    let store = BlobCheckpointStore::new(client.clone());
    store
        .update_checkpoint(checkpoint("ns", "hub", "$default", "3", "30", 3))
        .await
        .unwrap();
    let won = store
        .claim_ownership(&[claim("ns", "hub", "$default", "3", "sas-owner", None)])
        .await
        .unwrap();
    assert_eq!(won.len(), 1);
    assert_eq!(store.list_checkpoints("ns", "hub", "$default").await.unwrap().len(), 1);

    // A read-only SAS cannot write: an error, and not a "lost claim".
    let read_only = format!("{}/sas", azurite.blob_endpoint());
    let client = BlobClient::new(
        &read_only,
        StorageCredential::sas(account_sas(azurite.account_key(), "rl")).unwrap(),
    )
    .unwrap();
    let store = BlobCheckpointStore::new(client);
    assert_eq!(store.list_ownerships("ns", "hub", "$default").await.unwrap().len(), 1);
    let error = store
        .claim_ownership(&[claim("ns", "hub", "$default", "4", "reader", None)])
        .await
        .unwrap_err();
    let inner = error.downcast_ref::<CheckpointStoreError>().expect("our error inside");
    let CheckpointStoreError::Blob(blob) = inner else {
        panic!("expected a blob error, got {inner:?}")
    };
    assert_eq!(blob.kind(), BlobErrorKind::AuthenticationFailed, "{blob}");
}

#[tokio::test]
async fn missing_container_is_an_error_not_a_lost_claim() {
    let azurite = Azurite::start().await.expect("start Azurite");
    let client = BlobClient::from_connection_string(&azurite.connection_string(), "never-created").unwrap();
    let store = BlobCheckpointStore::new(client);
    let error = store
        .claim_ownership(&[claim("ns", "hub", "$default", "0", "me", None)])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("ContainerNotFound"), "{error}");
    let error = store
        .claim_ownership(&[claim("ns", "hub", "$default", "0", "me", Some("\"0x1\""))])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("ContainerNotFound"), "{error}");
    assert!(
        store
            .update_checkpoint(checkpoint("ns", "hub", "$default", "0", "1", 1))
            .await
            .is_err()
    );
    assert!(store.list_ownerships("ns", "hub", "$default").await.is_err());
}

/// Polls `check` until it returns `Some`, or panics at the deadline.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn survives_an_azurite_outage() {
    let mut azurite = Azurite::start().await.expect("start Azurite");
    azurite.create_container("outage").await.unwrap();
    let options = BlobClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    };
    let credential = StorageCredential::shared_key(azurite.account_name(), azurite.account_key()).unwrap();
    let client = BlobClient::with_options(&azurite.container_url("outage"), credential, &options).unwrap();
    let store = BlobCheckpointStore::new(client);
    let (ns, hub, group) = ("outage.servicebus.windows.net", "hub", "$default");

    store
        .update_checkpoint(checkpoint(ns, hub, group, "0", "100", 1))
        .await
        .unwrap();
    let won = store
        .claim_ownership(&[claim(ns, hub, group, "0", "me", None)])
        .await
        .unwrap();
    let etag = won[0].etag.as_ref().unwrap().to_string();

    azurite.stop().await.unwrap();

    // Every call fails fast with a clear, typed error while the service is down.
    let started = Instant::now();
    let errors = [
        store.list_ownerships(ns, hub, group).await.unwrap_err(),
        store.list_checkpoints(ns, hub, group).await.unwrap_err(),
        store
            .claim_ownership(&[claim(ns, hub, group, "0", "me", Some(&etag))])
            .await
            .unwrap_err(),
        store
            .claim_ownership(&[claim(ns, hub, group, "1", "me", None)])
            .await
            .unwrap_err(),
        store
            .update_checkpoint(checkpoint(ns, hub, group, "0", "200", 2))
            .await
            .unwrap_err(),
    ];
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failing took {:?}",
        started.elapsed()
    );
    for error in &errors {
        assert!(
            matches!(error.kind(), azure_core::error::ErrorKind::Connection),
            "a connection error: {:?}",
            error.kind()
        );
        let text = error.to_string();
        assert!(text.contains("cannot reach the storage service"), "{text}");
        let Some(CheckpointStoreError::Blob(blob)) = error.downcast_ref::<CheckpointStoreError>() else {
            panic!("expected a blob error: {error:?}")
        };
        assert!(blob.is_transient());
        assert_eq!(blob.kind(), BlobErrorKind::Connection);
    }

    azurite.restart().await.unwrap();

    // Works again (the same store and HTTP client), and nothing written before the outage is lost.
    let checkpoints = eventually("the store to answer again", Duration::from_secs(20), || async {
        store.list_checkpoints(ns, hub, group).await.ok()
    })
    .await;
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].sequence_number, Some(1));
    let renewed = store
        .claim_ownership(&[claim(ns, hub, group, "0", "me", Some(&etag))])
        .await
        .unwrap();
    assert_eq!(renewed.len(), 1, "the claim made before the outage is still current");
    store
        .update_checkpoint(checkpoint(ns, hub, group, "0", "200", 2))
        .await
        .unwrap();
    let checkpoints = store.list_checkpoints(ns, hub, group).await.unwrap();
    assert_eq!(checkpoints[0].sequence_number, Some(2));
}

/// The Python store itself, both ways. Runs when `DEFENDER_CHECKPOINT_PYTHON` names a Python with
/// the SDK (`.ci/run` sets one up: `pip install azure-eventhub-checkpointstoreblob==1.2.0`).
const PYTHON_INTEROP: &str = r#"
import sys, json
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
store = BlobCheckpointStore.from_connection_string(sys.argv[1], sys.argv[2])
ns, hub, group = "Interop.ServiceBus.Windows.Net", "MyHub", "$Default"
checkpoints = store.list_checkpoints(ns, hub, group)
ownerships = store.list_ownership(ns, hub, group)
print(json.dumps({
    "checkpoints": sorted([c["partition_id"], c["offset"], c["sequence_number"]] for c in checkpoints),
    "owners": sorted([o["partition_id"], o["owner_id"]] for o in ownerships),
}))
steal = dict([o for o in ownerships if o["partition_id"] == "0"][0], owner_id="python-owner")
fresh = {"fully_qualified_namespace": ns, "eventhub_name": hub, "consumer_group": group,
         "partition_id": "1", "owner_id": "python-owner"}
claimed = store.claim_ownership([steal, fresh])
assert sorted(o["partition_id"] for o in claimed) == ["0", "1"], claimed
store.update_checkpoint({"fully_qualified_namespace": ns, "eventhub_name": hub, "consumer_group": group,
                         "partition_id": "1", "offset": "777", "sequence_number": 77})
"#;

#[tokio::test]
async fn the_python_sdk_reads_and_writes_our_blobs() {
    let Ok(python) = std::env::var("DEFENDER_CHECKPOINT_PYTHON") else {
        println!("skipped: set DEFENDER_CHECKPOINT_PYTHON to a python with azure-eventhub-checkpointstoreblob");
        return;
    };
    let (azurite, client) = azurite_with("interop").await;
    let store = BlobCheckpointStore::new(client);
    let (ns, hub, group) = ("Interop.ServiceBus.Windows.Net", "MyHub", "$Default");
    store
        .update_checkpoint(checkpoint(ns, hub, group, "0", "123", 12))
        .await
        .unwrap();
    let won = store
        .claim_ownership(&[claim(ns, hub, group, "0", "rust-owner", None)])
        .await
        .unwrap();

    let output = std::process::Command::new(python)
        .args(["-c", PYTHON_INTEROP, &azurite.connection_string(), "interop"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({"checkpoints": [["0", "123", 12]], "owners": [["0", "rust-owner"]]}),
        "what Python read from our blobs"
    );

    // What Python wrote, read by us; our old claim is stale now.
    let mut owners: Vec<_> = store
        .list_ownerships(ns, hub, group)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.partition_id, o.owner_id))
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        [("0", "python-owner"), ("1", "python-owner")].map(|(p, o)| (p.to_owned(), Some(o.to_owned())))
    );
    let mut positions: Vec<_> = store
        .list_checkpoints(ns, hub, group)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.partition_id, c.offset, c.sequence_number))
        .collect();
    positions.sort();
    assert_eq!(
        positions,
        [("0", "123", 12), ("1", "777", 77)].map(|(p, o, s)| (p.to_owned(), Some(o.to_owned()), Some(s)))
    );
    let etag = won[0].etag.as_ref().unwrap().to_string();
    let renewed = store
        .claim_ownership(&[claim(ns, hub, group, "0", "rust-owner", Some(&etag))])
        .await
        .unwrap();
    assert!(renewed.is_empty(), "Python stole partition 0: our renewal loses");
}
