//! An Azure Blob container as the root, on Azurite (started by defender-testkit on 127.0.0.1):
//! files written there read back the same (downloaded, then read by us and by pyarrow and
//! DuckDB when the Python is set); a writer that died is recovered from its append-blob logs.

use defender_eventhub::blob::{BlobClient, StorageCredential};
use defender_tables::{BlobRoot, Recovery, Root, TableWriter, TablesConfig};
use defender_testkit::Azurite;
use serde_json::Value;

use crate::common;

fn download(rt: &tokio::runtime::Runtime, client: &BlobClient, into: &std::path::Path) -> Vec<String> {
    let blobs = rt.block_on(client.list_blobs("")).unwrap();
    let mut staged = Vec::new();
    for b in blobs {
        if b.name.starts_with('_') {
            staged.push(b.name);
            continue;
        }
        let bytes = rt.block_on(client.get_blob(&b.name)).unwrap();
        let path = into.join(&b.name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    staged
}

#[test]
fn tables_in_azurite_read_back_the_same() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let azurite = match rt.block_on(Azurite::start()) {
        Ok(a) => a,
        Err(e) => panic!("Azurite is needed for the Blob tests: {e}"),
    };
    let sent = common::fixture_records();
    let config = TablesConfig {
        rotate_rows: 3,
        ..TablesConfig::default()
    };
    // Connection-string form for the first writer, account URL + shared key for the second.
    let by_string = BlobClient::from_connection_string(&azurite.connection_string(), "tables").unwrap();
    let by_key = BlobClient::for_account(
        &azurite.blob_endpoint(),
        "tables",
        StorageCredential::shared_key(azurite.account_name(), azurite.account_key()).unwrap(),
    )
    .unwrap();
    let (half, rest) = sent.split_at(sent.len() / 2);
    let (mut w, _) = TableWriter::open(&Root::Blob(BlobRoot::new(by_string)), "blob-w1", config.clone()).unwrap();
    for r in half {
        w.append(r.as_bytes()).unwrap();
    }
    w.flush().unwrap();
    drop(w); // died: everything is in its append-blob staging logs
    let root = Root::Blob(BlobRoot::new(by_key.clone()));
    let (mut w, recovery) = TableWriter::open(&root, "blob-w1", config).unwrap();
    assert!(
        recovery.records == u64::try_from(half.len()).unwrap() && recovery.torn == 0,
        "{recovery:?}"
    );
    for r in rest {
        w.append(r.as_bytes()).unwrap();
    }
    w.close().unwrap();
    let (_, again) = TableWriter::open(&root, "blob-w1", TablesConfig::default()).unwrap();
    assert_eq!(again, Recovery::default());

    let dir = tempfile::tempdir().unwrap();
    let staged = download(&rt, &by_key, dir.path());
    assert!(staged.is_empty(), "staging left behind: {staged:?}");
    let back = common::read_all(dir.path());
    let arrived = sent.iter().map(|r| serde_json::from_str::<Value>(r).unwrap());
    assert_eq!(common::sorted_values(back), common::sorted_values(arrived));
    match common::python() {
        Some(python) => crate::readers::check_with_readers(&python, dir.path(), &sent),
        None => eprintln!("DEFENDER_TABLES_PYTHON not set: pyarrow/DuckDB over the Blob files skipped"),
    }
    drop(azurite);
}
