//! Live clients, one or more per tenant, connected for the whole run. With an API that serves
//! `GET /activities/stream` they are Server-Sent Events clients that reconnect with `Last-Event-ID`
//! after every API kill, as EventSource does. Without it (the endpoint is not built yet) a stand-in
//! subscribes to the tenant's Redis channel, the feed the endpoint serves, and after each reconnect
//! reads what it may have missed from MongoDB, as the endpoint's resume does; the summary says which
//! mode ran.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{doc, Document};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::env::{Tenant, COLLECTION, DATABASE};
use crate::workload::retry_after_secs;

/// How an event reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Pushed live (an SSE event, or a Pub/Sub message for the stand-in).
    Live,
    /// Read from the store after a reconnect (the stand-in's resume).
    Backfill,
}

#[derive(Debug, Clone)]
pub struct Event {
    /// The SSE `id:` (or the event's `id` field for the stand-in).
    pub id: String,
    /// `tenantId` and `idempotencyKey` of the event's data.
    pub tenant: String,
    pub key: String,
    /// The activity JSON as received (live events only).
    pub data: Option<Value>,
    pub via: Via,
}

/// What one live client saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub events: Vec<Event>,
    pub ids: HashSet<String>,
    pub connects: u32,
    pub failed_connects: u32,
    /// `replay-truncated` events (the server could not replay all it missed).
    pub truncated: u32,
    /// Answers other than 200 to a (re)connect, by status.
    pub refusals: Vec<u16>,
}

impl Seen {
    fn push(&mut self, event: Event) {
        self.ids.insert(event.id.clone());
        self.events.push(event);
    }
}

#[derive(Clone)]
pub struct LiveClient {
    pub tenant: Tenant,
    pub name: String,
    /// The API its stream is open on (with datacenters: the datacenter whose events it gets).
    pub api: String,
    pub seen: Arc<Mutex<Seen>>,
}

/// Starts the live clients; they stop when `stop` is cancelled. With `every_api` (datacenters,
/// each with its own events) every tenant has a stream on every API.
pub fn start(
    sse: bool,
    every_api: bool,
    apis: &[String],
    redis_url: &str,
    mongo_uri: &str,
    tenants: &[Tenant],
    stop: &CancellationToken,
) -> Vec<LiveClient> {
    let mut clients = Vec::new();
    for tenant in tenants {
        // Two SSE clients for the first tenant (fan-out to several streams of one tenant), one for
        // the others; one stand-in per tenant.
        let per_tenant = if sse && every_api {
            apis.len()
        } else if sse && tenant.id == tenants[0].id {
            2
        } else {
            1
        };
        for number in 1..=per_tenant {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let name = format!("{}-{number}", tenant.id);
            // With several API instances the streams spread over them: an event reaches a stream
            // whichever instance accepted it.
            let api = if every_api {
                apis[(number - 1) % apis.len()].clone()
            } else {
                apis[clients.len() % apis.len()].clone()
            };
            if sse {
                tokio::spawn(sse_client(api.clone(), *tenant, seen.clone(), stop.clone()));
            } else {
                tokio::spawn(stand_in(
                    redis_url.to_owned(),
                    mongo_uri.to_owned(),
                    *tenant,
                    seen.clone(),
                    stop.clone(),
                ));
            }
            clients.push(LiveClient {
                tenant: *tenant,
                name,
                api,
                seen,
            });
        }
    }
    clients
}

fn event_from_data(id: Option<String>, data: &str, via: Via) -> Option<Event> {
    let value: Value = serde_json::from_str(data).ok()?;
    let id = id.or_else(|| value["id"].as_str().map(str::to_owned))?;
    Some(Event {
        id,
        tenant: value["tenantId"].as_str().unwrap_or_default().to_owned(),
        key: value["idempotencyKey"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        data: Some(value),
        via,
    })
}

/// An SSE client of `GET /activities/stream` that behaves like EventSource: it reconnects with
/// `Last-Event-ID` after the server's `retry:` delay, backs off when refused (honouring
/// `Retry-After`), and when told the replay was truncated fetches the rest from `GET /activities`, as
/// the API documents.
async fn sse_client(api: String, tenant: Tenant, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let Ok(http) = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(40))
        .build()
    else {
        return;
    };
    let mut last_id: Option<String> = None;
    // EventSource's reconnection time: the server's `retry:` once it sent one.
    let mut retry = Duration::from_millis(2000);
    let mut refusals_in_a_row = 0u32;
    while !stop.is_cancelled() {
        let mut request = http
            .get(format!("{api}/activities/stream"))
            .bearer_auth(tenant.key)
            .header("Accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::select! {
            _ = stop.cancelled() => return,
            response = request.send() => response,
        };
        let mut response = match response {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                let after = retry_after_secs(&response)
                    .map(Duration::from_secs)
                    .unwrap_or_default();
                seen.lock()
                    .expect("seen")
                    .refusals
                    .push(response.status().as_u16());
                refusals_in_a_row += 1;
                let backoff = retry * 2u32.saturating_pow(refusals_in_a_row.min(3));
                sleep_or_stop(after.max(backoff).min(Duration::from_secs(15)), &stop).await;
                continue;
            }
            Err(_) => {
                seen.lock().expect("seen").failed_connects += 1;
                sleep_or_stop(retry, &stop).await;
                continue;
            }
        };
        refusals_in_a_row = 0;
        seen.lock().expect("seen").connects += 1;
        // Bytes until a blank line: a chunk may end inside a multi-byte character.
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                chunk = response.chunk() => chunk,
            };
            let Ok(Some(chunk)) = chunk else { break };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = find_blank_line(&buffer) {
                let raw: Vec<u8> = buffer.drain(..end).collect();
                let block = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
                let (mut id, mut name, mut data) = (None, None, Vec::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim_start().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        name = Some(value.trim_start().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    } else if let Some(value) = line.strip_prefix("retry:") {
                        if let Ok(millis) = value.trim().parse::<u64>() {
                            retry = Duration::from_millis(millis);
                        }
                    }
                }
                if name.as_deref() == Some("replay-truncated") {
                    seen.lock().expect("seen").truncated += 1;
                    fetch_missed(&http, &api, tenant, last_id.as_deref(), &seen).await;
                    continue;
                }
                if data.is_empty() {
                    continue;
                }
                if let Some(event) = event_from_data(id.clone(), &data.join("\n"), Via::Live) {
                    last_id = Some(event.id.clone());
                    seen.lock().expect("seen").push(event);
                } else if id.is_some() {
                    last_id = id;
                }
            }
        }
        sleep_or_stop(retry, &stop).await;
    }
}

/// The end (exclusive) of the first event block: after a `\n\n` or `\r\n\r\n`.
fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    let lf = buffer
        .windows(2)
        .position(|pair| pair == b"\n\n")
        .map(|at| at + 2);
    let crlf = buffer
        .windows(4)
        .position(|quad| quad == b"\r\n\r\n")
        .map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}

/// After a truncated replay: pages of `GET /activities` (newest first) down to `until` (the last
/// event the replay delivered), each unseen activity kept as a "backfill" event.
async fn fetch_missed(
    http: &reqwest::Client,
    api: &str,
    tenant: Tenant,
    until: Option<&str>,
    seen: &Arc<Mutex<Seen>>,
) {
    let mut cursor: Option<String> = None;
    for _ in 0..200 {
        let mut request = http
            .get(format!("{api}/activities"))
            .bearer_auth(tenant.key)
            .query(&[("limit", "500")])
            .timeout(Duration::from_secs(10));
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor.as_str())]);
        }
        // As a client should: a page refused with 503 (the store slow or down) or lost is asked
        // again after Retry-After, a few times, before giving up.
        let mut page = None;
        for _ in 0..6 {
            let Some(attempt) = request.try_clone() else {
                return;
            };
            match attempt.send().await {
                Ok(response) if response.status().is_success() => {
                    page = response.json::<Value>().await.ok();
                    break;
                }
                Ok(response) => {
                    let after = retry_after_secs(&response)
                        .map_or(Duration::from_secs(1), Duration::from_secs);
                    let after = after.clamp(Duration::from_secs(1), Duration::from_secs(5));
                    tokio::time::sleep(after).await;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        let Some(page) = page else {
            return;
        };
        let activities = page["activities"].as_array().cloned().unwrap_or_default();
        let mut reached = false;
        {
            let mut seen = seen.lock().expect("seen");
            for activity in &activities {
                if let Some(mut event) = event_from_data(None, &activity.to_string(), Via::Backfill)
                {
                    reached |= until == Some(event.id.as_str());
                    if !seen.ids.contains(&event.id) {
                        event.data = None;
                        seen.push(event);
                    }
                }
            }
        }
        cursor = page["nextCursor"].as_str().map(str::to_owned);
        if reached || cursor.is_none() {
            return;
        }
    }
}

/// The stand-in: the tenant's Redis channel, plus a read of MongoDB after every reconnect.
async fn stand_in(
    redis_url: String,
    mongo_uri: String,
    tenant: Tenant,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    let channel = format!("activities:{{{}}}", tenant.id);
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let mongo = mongodb::Client::with_uri_str(&mongo_uri).await.ok();
    while !stop.is_cancelled() {
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            pubsub = client.get_async_pubsub() => pubsub,
        };
        let Ok(mut pubsub) = pubsub else {
            seen.lock().expect("seen").failed_connects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if pubsub.subscribe(&channel).await.is_err() {
            seen.lock().expect("seen").failed_connects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let reconnect = {
            let mut seen = seen.lock().expect("seen");
            seen.connects += 1;
            seen.connects > 1
        };
        if reconnect {
            if let Some(mongo) = &mongo {
                backfill(mongo, tenant, &seen).await;
            }
        }
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            if let Some(event) = event_from_data(None, &payload, Via::Live) {
                seen.lock().expect("seen").push(event);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything of the tenant in MongoDB that the client has not seen, as "backfill" events. Retried
/// while MongoDB is down (that is a fault too).
async fn backfill(mongo: &mongodb::Client, tenant: Tenant, seen: &Arc<Mutex<Seen>>) {
    let collection = mongo.database(DATABASE).collection::<Document>(COLLECTION);
    for _ in 0..50 {
        let found = async {
            let cursor = collection
                .find(doc! {"tenantId": tenant.id})
                .projection(doc! {"_id": 1, "tenantId": 1, "idempotencyKey": 1})
                .await?;
            cursor
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<Document>, _>>()
        }
        .await;
        if let Ok(documents) = found {
            let mut seen = seen.lock().expect("seen");
            for document in documents {
                let Ok(id) = document.get_object_id("_id") else {
                    continue;
                };
                let id = id.to_hex();
                if !seen.ids.contains(&id) {
                    seen.push(Event {
                        id,
                        tenant: document.get_str("tenantId").unwrap_or_default().to_owned(),
                        key: document
                            .get_str("idempotencyKey")
                            .unwrap_or_default()
                            .to_owned(),
                        data: None,
                        via: Via::Backfill,
                    });
                }
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
