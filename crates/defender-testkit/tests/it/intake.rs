//! The Sekoia.io intake imitation, driven by a real HTTP client (and by hand for chunked bodies).

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

use defender_testkit::intake::{MAX_BODY_BYTES, MAX_EVENT_BYTES};
use defender_testkit::{Faults, Intake};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KEY: &str = "intake-key-for-tests";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn batch(key: &str, events: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "intake_key": key, "jsons": events })).unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>, gzipped: bool) -> Answer {
    let mut request = client.post(url).header("content-type", "application/json");
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    let json = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    Answer { status, headers, json }
}

fn ids(answer: &Answer) -> &Vec<Value> {
    answer.json["event_ids"].as_array().expect("event_ids")
}

#[tokio::test]
async fn plain_and_gzip_batches_on_one_connection() {
    let intake = Intake::start(KEY).await.unwrap();
    let http = client();
    let url = intake.batch_url();
    assert_eq!(url, format!("{}/batch", intake.url()));

    let plain = post(&http, &url, batch(KEY, &[r#"{"a":1}"#, r#"{"a":2}"#]), false).await;
    assert_eq!(plain.status, 200);
    assert_eq!(ids(&plain).len(), 2);
    let zipped = batch(KEY, &[r#"{"b":"é\"x"}"#, r#"{"a":3}"#, "not json at all"]);
    let gz = post(&http, &url, gzip(&zipped), true).await;
    assert_eq!(gz.status, 200);
    assert_eq!(ids(&gz).len(), 3);
    let long_path = format!("{}/api/v1/intake-http/batch", intake.url());
    assert_eq!(post(&http, &long_path, batch(KEY, &["{}"]), false).await.status, 200);

    let all: HashSet<&str> = ids(&plain)
        .iter()
        .chain(ids(&gz))
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(all.len(), 5, "ids are unique");
    assert!(all.iter().all(|id| id.len() == 36), "{all:?}");
    let uuid_shaped = |id: &str| {
        id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            14 => c == '4',
            19 => c == '8',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
    };
    assert!(all.iter().all(|id| uuid_shaped(id)), "{all:?}");
    assert!(intake.wait_for(6, Duration::from_secs(1)).await);
    assert_eq!(
        intake.events(),
        [
            r#"{"a":1}"#,
            r#"{"a":2}"#,
            r#"{"b":"é\"x"}"#,
            r#"{"a":3}"#,
            "not json at all",
            "{}"
        ]
    );
    assert_eq!(
        (intake.event_count(), intake.requests(), intake.gzip_requests()),
        (6, 3, 1)
    );
    assert_eq!(intake.connections(), 1, "keep-alive");

    assert_eq!(intake.take_events().len(), 6);
    assert!(intake.events().is_empty());
    assert_eq!(intake.event_count(), 6, "counters are totals");
}

#[tokio::test]
async fn keep_alive_and_connection_close() {
    let intake = Intake::start(KEY).await.unwrap();
    let http = client();
    for i in 0..20 {
        let event = format!(r#"{{"i":{i}}}"#);
        let zipped = i % 2 == 1;
        let body = batch(KEY, &[&event]);
        let body = if zipped { gzip(&body) } else { body };
        let answer = post(&http, &intake.batch_url(), body, zipped).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(intake.connections(), 1);
    assert_eq!(intake.requests(), 20);

    let response = http
        .post(intake.batch_url())
        .header("connection", "close")
        .body(batch(KEY, &["{}"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["connection"], "close");
    response.bytes().await.unwrap();
    assert_eq!(
        post(&http, &intake.batch_url(), batch(KEY, &["{}"]), false)
            .await
            .status,
        200
    );
    assert_eq!(intake.connections(), 2);
    assert_eq!(intake.event_count(), 22);
}

#[tokio::test]
async fn refusals() {
    let intake = Intake::start(KEY).await.unwrap();
    let http = client();
    let url = intake.batch_url();

    let wrong = post(&http, &url, batch("wrong", &["{}"]), false).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.json["message"].is_string());
    let cases: [&[u8]; 4] = [
        b"{not json",
        br#"{"intake_key": "intake-key-for-tests"}"#,
        br#"{"jsons": ["{}"]}"#,
        br#"{"intake_key": "intake-key-for-tests", "jsons": [{"a": 1}]}"#,
    ];
    for body in cases {
        assert_eq!(post(&http, &url, body.to_vec(), false).await.status, 400);
    }
    assert_eq!(post(&http, &url, b"garbage".to_vec(), true).await.status, 400);
    let elsewhere = format!("{}/other", intake.url());
    assert_eq!(post(&http, &elsewhere, batch(KEY, &["{}"]), false).await.status, 404);

    // Over 10 MiB once decompressed, though small on the wire.
    let huge = "x".repeat(MAX_BODY_BYTES);
    let body = gzip(&batch(KEY, &[&huge]));
    assert!(body.len() < MAX_BODY_BYTES / 100);
    assert_eq!(post(&http, &url, body, true).await.status, 413);
    // Over 10 MiB as sent: refused before reading it all.
    assert_eq!(post(&http, &url, batch(KEY, &[&huge]), false).await.status, 413);

    assert_eq!((intake.event_count(), intake.requests()), (0, 0));
    assert!(format!("{intake:?}").contains("Intake"));
    assert!(!format!("{intake:?}").contains(KEY), "Debug must not show the key");
}

#[tokio::test]
async fn oversize_event_gets_a_null_id_and_the_others_go_on() {
    let intake = Intake::start(KEY).await.unwrap();
    let big = format!(r#"{{"big":"{}"}}"#, "y".repeat(MAX_EVENT_BYTES));
    let at_limit = "z".repeat(MAX_EVENT_BYTES);
    let answer = post(
        &client(),
        &intake.batch_url(),
        batch(KEY, &["first", &big, &at_limit, "last"]),
        false,
    )
    .await;
    assert_eq!(answer.status, 200);
    let ids = ids(&answer);
    assert_eq!(ids.len(), 4);
    assert!(ids[0].is_string() && ids[1].is_null() && ids[2].is_string() && ids[3].is_string());
    assert_eq!(intake.events(), ["first", at_limit.as_str(), "last"]);
}

#[tokio::test]
async fn status_faults_record_nothing() {
    let intake = Intake::start(KEY).await.unwrap();
    let http = client();
    let url = intake.batch_url();

    intake.set_faults(Faults {
        status_429: 1.0,
        retry_after_secs: 3,
        ..Faults::default()
    });
    let answer = post(&http, &url, batch(KEY, &["{}"]), false).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers["retry-after"], "3");

    intake.set_faults(Faults {
        down: true,
        ..Faults::default()
    });
    assert_eq!(post(&http, &url, batch(KEY, &["{}"]), false).await.status, 503);
    intake.set_faults(Faults {
        status_500: 1.0,
        ..Faults::default()
    });
    assert_eq!(post(&http, &url, batch(KEY, &["{}"]), false).await.status, 500);
    assert_eq!(
        (intake.event_count(), intake.requests(), intake.faults_injected()),
        (0, 0, 3)
    );

    // Half the requests fail: a client that retries gets every event in eventually.
    intake.set_faults(Faults {
        status_503: 0.5,
        seed: Some(7),
        ..Faults::default()
    });
    for i in 0..20 {
        let event = i.to_string();
        while post(&http, &url, batch(KEY, &[&event]), false).await.status != 200 {}
    }
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(intake.events(), expected);
    assert!(intake.faults_injected() > 3, "some 503 were injected");

    intake.set_faults(Faults::default());
    assert_eq!(post(&http, &url, batch(KEY, &["{}"]), false).await.status, 200);
}

#[tokio::test]
async fn dropped_connections_and_slow_answers() {
    let intake = Intake::start(KEY).await.unwrap();
    let http = client();
    intake.set_faults(Faults {
        drop_connection: 1.0,
        ..Faults::default()
    });
    let result = http.post(intake.batch_url()).body(batch(KEY, &["{}"])).send().await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(intake.event_count(), 0);
    assert!(intake.faults_injected() >= 1);

    let delay = Duration::from_millis(300);
    intake.set_faults(Faults {
        slow: 1.0,
        slow_delay: delay,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    assert_eq!(
        post(&http, &intake.batch_url(), batch(KEY, &["{}"]), false)
            .await
            .status,
        200
    );
    assert!(started.elapsed() >= delay);
    assert_eq!((intake.slowed(), intake.event_count()), (1, 1));
}

#[tokio::test]
async fn counting_without_storing_and_waiting() {
    let intake = Intake::start(KEY).await.unwrap();
    intake.set_store_events(false);
    let url = intake.batch_url();
    let sender = tokio::spawn(async move {
        let http = client();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            post(&http, &url, batch(KEY, &["{}", "{}"]), false).await;
        }
    });
    assert!(intake.wait_for(20, Duration::from_secs(10)).await);
    sender.await.unwrap();
    assert!(intake.events().is_empty());
    assert!(!intake.wait_for(21, Duration::from_millis(50)).await);
    intake.shutdown();
}

/// Chunked bodies, `Expect: 100-continue` and pipelined requests, written by hand.
#[tokio::test]
async fn raw_http() {
    let intake = Intake::start(KEY).await.unwrap();
    let mut socket = tokio::net::TcpStream::connect(intake.addr()).await.unwrap();
    let body = batch(KEY, &["one", "two"]);
    let (a, b) = body.split_at(10);
    let mut request = format!(
        "POST /batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n{:x};ext=1\r\n",
        a.len()
    )
    .into_bytes();
    request.extend_from_slice(a);
    request.extend_from_slice(format!("\r\n{:X}\r\n", b.len()).as_bytes());
    request.extend_from_slice(b);
    request.extend_from_slice(b"\r\n0\r\nX-Trailer: 1\r\n\r\n");
    let plain = batch(KEY, &["three"]);
    request.extend_from_slice(
        format!(
            "POST /batch?x=1 HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            plain.len()
        )
        .as_bytes(),
    );
    request.extend_from_slice(&plain);
    socket.write_all(&request).await.unwrap();

    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    assert!(answer.contains("Connection: close\r\n"));
    assert_eq!(intake.events(), ["one", "two", "three"]);
    assert_eq!(intake.connections(), 1);
}
