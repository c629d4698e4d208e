//! A minimal server-sent events reader for `/v1/watch`, written independently of the client
//! crate so that the tests check the wire format itself.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{PATIENCE, TestServer};

/// One event as sent: its fields, with `data` lines joined by `\n`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// One `batch` event, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The event id, which must be the revision.
    pub id: i64,
    pub revision: i64,
    /// `(type, kind, uuid)` of each changed object, in order.
    pub changes: Vec<Change>,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub event_type: String,
    pub kind: String,
    pub uuid: String,
}

impl Change {
    pub fn new(event_type: &str, kind: &str, uuid: &str) -> Change {
        Change { event_type: event_type.into(), kind: kind.into(), uuid: uuid.into() }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// An open watch.
pub struct Watch {
    body: ByteStream,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

impl Watch {
    /// Open `/v1/watch?<query>` with the admin token and optionally `Last-Event-ID`, asserting
    /// a 200 event stream.
    pub async fn open(server: &TestServer, query: &[(&str, String)], last_event_id: Option<i64>) -> Watch {
        let mut rb = server.streaming.get(server.url("/v1/watch")).bearer_auth(&server.token).query(query);
        if let Some(id) = last_event_id {
            rb = rb.header("Last-Event-ID", id.to_string());
        }
        let resp = tokio::time::timeout(PATIENCE, rb.header("Accept", "text/event-stream").send())
            .await
            .expect("watch answers within the patience")
            .expect("watch request reaches the server");
        assert_eq!(resp.status(), StatusCode::OK, "watch {query:?}");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "watch content type {ct:?}");
        Watch { body: Box::pin(resp.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec()))), buf: Vec::new() }
    }

    /// The next event with a data or event field (keep-alive comments are skipped), or `None`
    /// when the stream ended. Fails the test if nothing comes within `wait`.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(raw) = self.take_block() {
                let event = parse_block(&raw);
                if event.event.is_some() || !event.data.is_empty() {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no watch event within {wait:?}"));
            match chunk {
                Some(Ok(bytes)) => self.buf.extend(bytes.into_iter().filter(|b| *b != b'\r')),
                Some(Err(e)) => panic!("watch stream failed: {e}"),
                None => return None,
            }
        }
    }

    /// The next `batch` event, decoded and checked for shape.
    pub async fn next_batch(&mut self) -> Batch {
        let event = self.next_event_within(PATIENCE).await.expect("the watch is still open");
        assert_eq!(event.event.as_deref(), Some("batch"), "event {event:?}");
        decode_batch(&event)
    }

    /// The next `n` batches.
    pub async fn batches(&mut self, n: usize) -> Vec<Batch> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_batch().await);
        }
        out
    }

    /// Waits until the stream ends, failing the test if it does not within the patience.
    pub async fn expect_end(&mut self) {
        while self.next_event_within(PATIENCE).await.is_some() {}
    }

    /// One block (an event's lines) if a whole one is buffered. Carriage returns are dropped
    /// as they arrive, so `\r\n` line ends read as `\n`; JSON data never holds a raw one.
    fn take_block(&mut self) -> Option<String> {
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(self.buf[..end].to_vec()).expect("an event is UTF-8");
        self.buf.drain(..end + 2);
        Some(block)
    }
}

fn parse_block(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "event" => event.event = Some(value.to_string()),
            "id" => event.id = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    event.data = data.join("\n");
    event
}

fn decode_batch(event: &SseEvent) -> Batch {
    let raw: Value =
        serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("batch data is JSON ({e}): {event:?}"));
    let revision = raw["revision"].as_i64().unwrap_or_else(|| panic!("batch without a revision: {raw}"));
    let id: i64 = event
        .id
        .as_deref()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("batch without a numeric id: {event:?}"));
    assert_eq!(id, revision, "a batch's event id is its revision");
    let events = raw["events"].as_array().unwrap_or_else(|| panic!("batch without events: {raw}"));
    assert!(!events.is_empty(), "an empty batch was sent: {raw}");
    let changes = events
        .iter()
        .map(|e| {
            let object = &e["object"];
            assert_eq!(e["kind"], object["kind"], "event kind matches its object: {e}");
            Change {
                event_type: e["type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("event without a type: {e}"))
                    .to_string(),
                kind: e["kind"].as_str().unwrap_or_else(|| panic!("event without a kind: {e}")).to_string(),
                uuid: object["uuid"]
                    .as_str()
                    .unwrap_or_else(|| panic!("event without an object uuid: {e}"))
                    .to_string(),
            }
        })
        .collect();
    Batch { id, revision, changes, raw }
}
