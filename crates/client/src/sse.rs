//! Server-sent events of `/v1/watch`, decoded into batches, with reconnection that resumes
//! after the last delivered revision (`Last-Event-ID`).

use std::pin::Pin;
use std::time::Duration;

use enjin_model::Kind;
use enjin_model::api::{Problem, WatchBatch};
use futures_util::{Stream, StreamExt};

use crate::{Client, ClientError, is_transient};

/// Larger events than this are refused rather than buffered without end.
const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The open response body of a watch.
type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// A running watch; see [`Client::watch`].
pub struct Watch {
    client: Client,
    kind: Option<Kind>,
    from: Option<i64>,
    last_seen: Option<i64>,
    body: Option<Body>,
    buf: Vec<u8>,
    backoff: Duration,
    done: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("kind", &self.kind).field("last_seen", &self.last_seen).finish()
    }
}

/// One decoded server-sent event.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SseEvent {
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

impl Watch {
    pub(crate) fn new(client: Client, kind: Option<Kind>, from: Option<i64>) -> Self {
        Watch {
            client,
            kind,
            from,
            last_seen: None,
            body: None,
            buf: Vec::new(),
            backoff: Duration::from_millis(100),
            done: false,
        }
    }

    /// The revision of the last batch delivered.
    pub fn last_revision(&self) -> Option<i64> {
        self.last_seen
    }

    /// The next batch; `None` once the watch has ended for good.
    pub async fn next(&mut self) -> Option<Result<WatchBatch, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = take_event(&mut self.buf) {
                match event.name.as_str() {
                    "batch" => match serde_json::from_str::<WatchBatch>(&event.data) {
                        Ok(batch) => {
                            self.last_seen = Some(batch.revision);
                            return Some(Ok(batch));
                        }
                        Err(e) => {
                            self.done = true;
                            return Some(Err(ClientError::Protocol {
                                url: self.client.base().into(),
                                detail: format!("bad watch event: {e}"),
                            }));
                        }
                    },
                    "error" => {
                        self.done = true;
                        let err = match serde_json::from_str::<Problem>(&event.data) {
                            Ok(p) => ClientError::Api(Box::new(p)),
                            Err(e) => ClientError::Protocol {
                                url: self.client.base().into(),
                                detail: e.to_string(),
                            },
                        };
                        return Some(Err(err));
                    }
                    _ => continue,
                }
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                self.done = true;
                return Some(Err(ClientError::Protocol {
                    url: self.client.base().into(),
                    detail: "watch event too large".into(),
                }));
            }
            let Some(body) = self.body.as_mut() else {
                // Resume after what was delivered; only the first connection uses `from`.
                let from = if self.last_seen.is_some() { None } else { self.from };
                match self.client.open_watch(self.kind, from, self.last_seen).await {
                    Ok(resp) => {
                        self.backoff = Duration::from_millis(100);
                        self.buf.clear();
                        self.body = Some(Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))));
                    }
                    Err(e) if is_transient(&e) => {
                        tracing::debug!(error = %e, backoff = ?self.backoff, "watch reconnecting");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watch connection broke");
                    self.body = None;
                }
                None => self.body = None,
            }
        }
    }
}

/// Take the first complete event (ended by a blank line) out of `buf`.
pub(crate) fn take_event(buf: &mut Vec<u8>) -> Option<SseEvent> {
    loop {
        let end = find_blank_line(buf)?;
        let raw: Vec<u8> = buf.drain(..end.1).collect();
        let text = String::from_utf8_lossy(&raw[..end.0]);
        let mut event = SseEvent::default();
        let mut data = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) =
                line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "event" => event.name = value.to_string(),
                "data" => data.push(value.to_string()),
                "id" => event.id = Some(value.to_string()),
                _ => {}
            }
        }
        if data.is_empty() && event.name.is_empty() {
            // A keep-alive comment.
            continue;
        }
        if event.name.is_empty() {
            event.name = "message".into();
        }
        event.data = data.join("\n");
        return Some(event);
    }
}

/// `enjin bus tail`: verified bus messages as the control plane relays them.
pub struct Tail {
    body: Body,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").finish_non_exhaustive()
    }
}

impl Tail {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Tail { body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))), buf: Vec::new() }
    }

    /// The next message; `None` when the server ends the stream.
    pub async fn next(&mut self) -> Option<Result<enjin_model::api::BusMessage, String>> {
        loop {
            if let Some(event) = take_event(&mut self.buf) {
                return Some(match event.name.as_str() {
                    "message" => {
                        serde_json::from_str(&event.data).map_err(|e| format!("bad tail event: {e}"))
                    }
                    _ => Err(event.data),
                });
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                return Some(Err("tail event too large".into()));
            }
            match self.body.next().await? {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(e) => return Some(Err(format!("tail connection broke: {e}"))),
            }
        }
    }
}

/// Where the first event ends: (end of its text, end including the blank line).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_skips_comments() {
        let mut buf = b": keep-alive\n\nevent: batch\nid: 7\ndata: {\"a\":\ndata: 1}\n\nevent: x\r\ndata: y\r\n\r\npartial".to_vec();
        let e = take_event(&mut buf).expect("first event");
        assert_eq!(e, SseEvent { name: "batch".into(), id: Some("7".into()), data: "{\"a\":\n1}".into() });
        let e = take_event(&mut buf).expect("second event");
        assert_eq!((e.name.as_str(), e.data.as_str()), ("x", "y"));
        assert_eq!(take_event(&mut buf), None);
        assert_eq!(buf, b"partial");
    }

    #[test]
    fn garbage_never_panics() {
        for input in [&b"\n\n\n\n"[..], b"data\n\n", b":::\n\n", b"\xff\xfe\n\n", b"id\nevent\n\n"] {
            let mut buf = input.to_vec();
            while take_event(&mut buf).is_some() {}
        }
    }
}
