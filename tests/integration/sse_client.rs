//! A minimal Server-Sent Events reader over a reqwest response, enough to assert on what a client
//! receives.

use std::time::Duration;

/// One event as a client sees it (comments and `retry:` lines are skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen so far (heartbeats).
    pub comments: usize,
    /// The server ended the stream (seen by `next_event`).
    pub ended: bool,
}

impl SseClient {
    /// Opens `GET {address}/activities/stream`; panics unless the answer is a 200 event stream.
    pub async fn open(address: &str, api_key: &str, last_event_id: Option<&str>) -> SseClient {
        Self::from_response(Self::request(address, api_key, last_event_id).await)
    }

    /// The client of an answer to `request`; panics unless it is a 200 event stream.
    pub fn from_response(response: reqwest::Response) -> SseClient {
        assert_eq!(response.status(), 200, "the stream opens");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        SseClient {
            response,
            buffer: String::new(),
            comments: 0,
            ended: false,
        }
    }

    /// The raw answer to a stream request, whatever its status.
    pub async fn request(
        address: &str,
        api_key: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(format!("{address}/activities/stream"))
            .bearer_auth(api_key);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("the API answers")
    }

    /// The next event within `wait`; `None` on timeout or when the stream ended.
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(value) = line.strip_prefix("id: ") {
                        event.id = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        event.event = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(event);
                }
            }
            let chunk = match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    self.ended = true;
                    return None;
                }
            };
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        }
    }

    /// True when the server ended the stream within `wait`, reading (and dropping) what remains.
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
            }
        }
    }
}
