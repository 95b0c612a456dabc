//! Secrets (account keys, SAS tokens, connection strings) never show in Debug, Display, errors or
//! logs of the Blob client and the checkpoint stores.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use defender_eventhub::blob::{
    BlobClient, Condition, SasToken, SharedKeyCredential, StorageConnectionString, StorageCredential,
};
use defender_eventhub::checkpoint::BlobCheckpointStore;
use defender_testkit::Azurite;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A made-up account key (base64 of a recognisable text) and its base64 form.
const KEY: &str = "VEhJUy1JUy1USEUtU0VDUkVULUFDQ09VTlQtS0VZLWRvLW5vdC1sZWFr";
const SIG: &str = "c2VjcmV0LXNhcy1zaWduYXR1cmU%3D";

fn sas() -> String {
    format!("sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&spr=https,http&sig={SIG}")
}

/// Fails if `text` contains any part of a secret.
fn assert_clean(what: &str, text: &str) {
    for secret in [KEY, "VEhJUy1JUy1", SIG, "c2VjcmV0LXNhcy1", "THIS-IS-THE-SECRET"] {
        assert!(!text.contains(secret), "{what} leaks a secret: {text}");
    }
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn credentials_and_connection_strings_redact_in_debug() {
    let key = SharedKeyCredential::new("acct", KEY).unwrap();
    let shown = format!("{key:?}");
    assert_clean("SharedKeyCredential", &shown);
    assert!(shown.contains("acct") && shown.contains("<redacted>"), "{shown}");

    let token = SasToken::new(format!("?{}", sas())).unwrap();
    let shown = format!("{token:?}");
    assert_clean("SasToken", &shown);
    assert!(shown.contains("<redacted>"), "{shown}");

    for credential in [
        StorageCredential::shared_key("acct", KEY).unwrap(),
        StorageCredential::sas(sas()).unwrap(),
    ] {
        assert_clean("StorageCredential", &format!("{credential:?} {credential:#?}"));
    }

    for connection_string in [
        format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"),
        format!(
            "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature={}",
            sas()
        ),
    ] {
        let parsed = StorageConnectionString::parse(&connection_string).unwrap();
        let shown = format!("{parsed:?} {parsed:#?}");
        assert_clean("StorageConnectionString", &shown);
        assert!(shown.contains("acct.blob.core.windows.net"), "{shown}");

        let client = BlobClient::from_connection_string(&connection_string, "checkpoints").unwrap();
        assert_clean(
            "BlobClient",
            &format!("{client:?} {client:#?} {}", client.container_url()),
        );
        let store = BlobCheckpointStore::new(client);
        assert_clean("BlobCheckpointStore", &format!("{store:?} {store:#?}"));
    }

    // Even the published development key is not printed.
    let development = StorageConnectionString::parse("UseDevelopmentStorage=true").unwrap();
    assert!(!format!("{development:?}").contains("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq"));
}

#[test]
fn configuration_errors_do_not_echo_secrets() {
    let bad = [
        format!("AccountName=acct;AccountKey=*{KEY}"),
        format!("AccountKey={KEY}"),
        format!("AccountName=acct;{KEY}"),
        format!("AccountName=acct;AccountKey={KEY};SharedAccessSignature={}", sas()),
        format!("BlobEndpoint=ftp://x/;SharedAccessSignature={}", sas()),
        format!("BlobEndpoint=https://x/?{};SharedAccessSignature={}", sas(), sas()),
    ];
    for text in bad {
        let error = StorageConnectionString::parse(&text).unwrap_err();
        assert_clean("connection string error", &format!("{error} {error:?}"));
        let error = BlobClient::from_connection_string(&text, "c").unwrap_err();
        assert_clean("client error", &format!("{error} {error:?}"));
    }
    let error = BlobClient::new(
        &format!("https://acct.blob.core.windows.net/c?{}", sas()),
        StorageCredential::shared_key("acct", KEY).unwrap(),
    )
    .unwrap_err();
    assert_clean("URL with a SAS", &format!("{error} {error:?}"));
    let error = SharedKeyCredential::new("acct", &format!("{KEY}!")).unwrap_err();
    assert_clean("bad key", &format!("{error} {error:?}"));
}

/// Collects every span field and event of the thread's tracing output as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Collect<'a>(&'a mut String);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut text = self.0.lock().unwrap();
        let _ = write!(text, "span {} ", span.metadata().name());
        span.record(&mut Collect(&mut text));
        text.push('\n');
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        values.record(&mut Collect(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = self.0.lock().unwrap();
        let _ = write!(text, "{} {} ", event.metadata().level(), event.metadata().target());
        event.record(&mut Collect(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn ownership(partition: &str, etag: Option<&str>) -> Ownership {
    Ownership {
        fully_qualified_namespace: "ns".to_owned(),
        event_hub_name: "hub".to_owned(),
        consumer_group: "$default".to_owned(),
        partition_id: partition.to_owned(),
        owner_id: Some("me".to_owned()),
        etag: etag.map(Into::into),
        last_modified_time: None,
    }
}

async fn exercise(store: &BlobCheckpointStore, log: &Capture) -> Vec<String> {
    let mut shown = Vec::new();
    let mut record = |result: Result<String, azure_core::Error>| {
        match result {
            Ok(text) => shown.push(text),
            Err(error) => shown.push(format!("{error} | {error:?} | {:?}", error.kind())),
        }
        shown.push(log.0.lock().unwrap().clone());
    };
    record(
        store
            .claim_ownership(&[ownership("0", None)])
            .await
            .map(|v| format!("{v:?}")),
    );
    record(
        store
            .claim_ownership(&[ownership("0", None)])
            .await
            .map(|v| format!("{v:?}")),
    );
    record(
        store
            .claim_ownership(&[ownership("0", Some("\"0x1\""))])
            .await
            .map(|v| format!("{v:?}")),
    );
    record(
        store
            .list_ownerships("ns", "hub", "$default")
            .await
            .map(|v| format!("{v:?}")),
    );
    let checkpoint = Checkpoint {
        fully_qualified_namespace: "ns".to_owned(),
        event_hub_name: "hub".to_owned(),
        consumer_group: "$default".to_owned(),
        partition_id: "0".to_owned(),
        offset: Some("1".to_owned()),
        sequence_number: Some(1),
    };
    record(store.update_checkpoint(checkpoint).await.map(|()| String::new()));
    record(
        store
            .list_checkpoints("ns", "hub", "$default")
            .await
            .map(|v| format!("{v:?}")),
    );
    let client = store.client();
    for result in [
        client.get_properties("missing").await.map(|p| format!("{p:?}")),
        client.get_range("missing", 0, 9).await.map(|r| format!("{r:?}")),
        client.list_blobs("").await.map(|b| format!("{b:?}")),
        client
            .set_metadata("missing", &[("a", "b")], &Condition::IfMatch("\"x\"".to_owned()))
            .await
            .map(|w| format!("{w:?}")),
    ] {
        shown.push(match result {
            Ok(text) => text,
            Err(error) => format!("{error} | {error:?}"),
        });
    }
    shown
}

#[tokio::test]
async fn request_errors_and_logs_never_show_a_sas_token() {
    let log = Capture::default();
    let _guard = tracing::subscriber::set_default(log.clone());

    // Unreachable service: transport errors (reqwest puts the URL, with its query, in its errors).
    let url = format!("http://127.0.0.1:{}/devstoreaccount1/c", closed_port());
    let store = BlobCheckpointStore::new(BlobClient::new(&url, StorageCredential::sas(sas()).unwrap()).unwrap());
    let shown = exercise(&store, &log).await;
    assert!(
        shown.iter().any(|s| s.contains("cannot reach the storage service")),
        "{shown:?}"
    );
    for text in &shown {
        assert_clean("an error or log line", text);
    }

    // Reachable service that refuses the forged SAS: HTTP 403 errors.
    let azurite = Azurite::start().await.expect("start Azurite");
    azurite.create_container("redaction").await.unwrap();
    let store = BlobCheckpointStore::new(
        BlobClient::new(
            &azurite.container_url("redaction"),
            StorageCredential::sas(sas()).unwrap(),
        )
        .unwrap(),
    );
    let shown = exercise(&store, &log).await;
    assert!(shown.iter().any(|s| s.contains("HTTP 403")), "{shown:?}");
    for text in &shown {
        assert_clean("an error or log line", text);
    }
    assert!(!log.0.lock().unwrap().is_empty(), "the capture saw the client's logs");
}

#[tokio::test]
async fn request_errors_and_logs_never_show_an_account_key() {
    let log = Capture::default();
    let _guard = tracing::subscriber::set_default(log.clone());
    let azurite = Azurite::start().await.expect("start Azurite");
    azurite.create_container("redaction").await.unwrap();
    // The wrong key: every call fails authentication.
    let store = BlobCheckpointStore::new(
        BlobClient::new(
            &azurite.container_url("redaction"),
            StorageCredential::shared_key("devstoreaccount1", KEY).unwrap(),
        )
        .unwrap(),
    );
    let shown = exercise(&store, &log).await;
    assert!(shown.iter().any(|s| s.contains("authentication failed")), "{shown:?}");
    for text in &shown {
        assert_clean("an error or log line", text);
    }
    // And the real dev key never shows either, on success or failure.
    let store = BlobCheckpointStore::new(
        BlobClient::from_connection_string(&azurite.connection_string(), "redaction").unwrap(),
    );
    let shown = exercise(&store, &log).await;
    for text in &shown {
        assert!(!text.contains(azurite.account_key()), "the account key leaks: {text}");
        assert!(
            !text.contains("SharedKey devstoreaccount1:"),
            "a signature leaks: {text}"
        );
    }
}
