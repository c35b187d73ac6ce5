//! End-to-end latency: from the 202 the client received to the live event of that activity.
//!
//! The live event is read from the API's SSE endpoint (`GET /activities/stream`, one stream per
//! tenant) when the API has it, else from the Redis Pub/Sub channel that feeds it
//! (`<redis.key_prefix>activities:{<tenant>}`, where the consumer publishes every stored activity).
//! Either way the event is matched to its request by `idempotencyKey`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http::{open_event_stream, sse_events, ChunkedDecoder};
use crate::latency::{self, Percentiles};
use crate::processes::HistogramSample;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eResult {
    /// `sse` or `redis-pubsub`.
    pub source: String,
    pub rate: f64,
    pub accepted: u64,
    pub matched: u64,
    /// Accepted but no event within the grace period after the load.
    pub missing: u64,
    /// Events that came before the client had its 202 (counted as 0 ms).
    pub early: u64,
    pub latency: Percentiles,
    /// Where the time went, from the consumer's own histograms over the measured load.
    #[serde(default)]
    pub breakdown: Option<ConsumerBreakdown>,
}

/// The consumer's side of the end-to-end time, from its Prometheus histograms (differences over the
/// measured load). Percentiles are bucket upper bounds (the buckets double: 1, 2, 4, ... ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerBreakdown {
    pub batches: f64,
    pub records_per_batch: f64,
    /// From the API's `enqueuedAt` (just before it produced) to the consumer's store step: the
    /// producer's acknowledgement, the fetch, the batch window and any wait behind the batch before.
    pub to_store_mean_ms: f64,
    pub to_store_p50_bound_ms: Option<f64>,
    pub to_store_p99_bound_ms: Option<f64>,
    /// Applying one batch: the Redis check, the MongoDB insert, the Redis effects (count, publish).
    pub apply_mean_ms: f64,
    pub apply_p99_bound_ms: Option<f64>,
}

impl ConsumerBreakdown {
    /// From two scrapes of the consumer's `/metrics`, before and after the measured load.
    pub fn between(before: &str, after: &str) -> Option<ConsumerBreakdown> {
        let window = |name: &str| {
            HistogramSample::read(after, name).since(&HistogramSample::read(before, name))
        };
        let to_store = window("activity_pipeline_end_to_end_latency_seconds");
        let apply = window("activity_pipeline_consumer_batch_duration_seconds");
        let sizes = window("activity_pipeline_consumer_batch_records");
        let millis = |seconds: f64| seconds * 1e3;
        Some(ConsumerBreakdown {
            batches: sizes.count,
            records_per_batch: sizes.mean()?,
            to_store_mean_ms: millis(to_store.mean()?),
            to_store_p50_bound_ms: to_store.quantile_bound(0.5).map(millis),
            to_store_p99_bound_ms: to_store.quantile_bound(0.99).map(millis),
            apply_mean_ms: millis(apply.mean()?),
            apply_p99_bound_ms: apply.quantile_bound(0.99).map(millis),
        })
    }
}

#[derive(Default)]
struct Slot {
    accepted: Option<Instant>,
    event: Option<Instant>,
}

/// Pairs 202s with events by idempotency key.
pub struct Tracker {
    inner: Mutex<TrackerState>,
}

struct TrackerState {
    slots: HashMap<String, Slot>,
    histogram: Histogram<u64>,
    accepted: u64,
    matched: u64,
    early: u64,
}

impl Tracker {
    pub fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            inner: Mutex::new(TrackerState {
                slots: HashMap::new(),
                histogram: latency::new_histogram(),
                accepted: 0,
                matched: 0,
                early: 0,
            }),
        })
    }

    pub fn accepted(&self, key: &str, at: Instant) {
        let mut state = self.inner.lock().expect("tracker lock");
        state.accepted += 1;
        let slot = state.slots.entry(key.to_owned()).or_default();
        slot.accepted = Some(at);
        if let Some(event) = slot.event {
            state.early += 1;
            state.matched += 1;
            let micros = event.saturating_duration_since(at).as_micros() as u64;
            latency::record(&mut state.histogram, micros);
        }
    }

    pub fn event(&self, key: &str, at: Instant) {
        let mut state = self.inner.lock().expect("tracker lock");
        let slot = state.slots.entry(key.to_owned()).or_default();
        if slot.event.is_some() {
            return;
        }
        slot.event = Some(at);
        if let Some(accepted) = slot.accepted {
            state.matched += 1;
            let micros = at.saturating_duration_since(accepted).as_micros() as u64;
            latency::record(&mut state.histogram, micros);
        }
    }

    /// Forgets everything (after the warm-up).
    pub fn reset(&self) {
        let mut state = self.inner.lock().expect("tracker lock");
        state.slots.clear();
        state.histogram.reset();
        state.accepted = 0;
        state.matched = 0;
        state.early = 0;
    }

    /// Up to `limit` keys answered 202 whose event has not arrived.
    pub fn unmatched(&self, limit: usize) -> Vec<String> {
        let state = self.inner.lock().expect("tracker lock");
        let mut keys: Vec<String> = state
            .slots
            .iter()
            .filter(|(_, slot)| slot.accepted.is_some() && slot.event.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys.truncate(limit);
        keys
    }

    /// (accepted, matched)
    pub fn counts(&self) -> (u64, u64) {
        let state = self.inner.lock().expect("tracker lock");
        (state.accepted, state.matched)
    }

    pub fn result(&self, source: &str, rate: f64) -> E2eResult {
        let state = self.inner.lock().expect("tracker lock");
        E2eResult {
            source: source.to_owned(),
            rate,
            accepted: state.accepted,
            matched: state.matched,
            missing: state.accepted.saturating_sub(state.matched),
            early: state.early,
            latency: Percentiles::of(&state.histogram),
            breakdown: None,
        }
    }
}

/// The idempotency key of a published activity (the JSON of `StoredActivity::to_json`).
pub fn key_of(event: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(event).ok()?;
    Some(value.get("idempotencyKey")?.as_str()?.to_owned())
}

/// Opens `GET /activities/stream` for one tenant. `Ok(None)` when the API has no such endpoint.
async fn open_sse(
    address: SocketAddr,
    api_key: &str,
) -> anyhow::Result<Option<(TcpStream, Vec<u8>, bool)>> {
    let request = crate::workload::tenant_get_request(
        "/activities/stream",
        api_key,
        &[("Accept", "text/event-stream")],
    );
    let (head, stream, rest) = open_event_stream(address, &request, Duration::from_secs(5))
        .await
        .map_err(|error| anyhow::anyhow!("GET /activities/stream: {error}"))?;
    if head.status == 404 || head.status == 405 {
        return Ok(None);
    }
    anyhow::ensure!(
        head.status == 200,
        "GET /activities/stream answered {}",
        head.status
    );
    Ok(Some((stream, rest, head.chunked)))
}

/// Starts listening for live events, feeding `tracker`; returns the source used. The listener
/// tasks end when `stop` is cancelled.
pub async fn listen(
    api: SocketAddr,
    api_keys: &[String],
    redis_url: &str,
    channel_pattern: &str,
    tracker: Arc<Tracker>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<&'static str> {
    let mut streams = Vec::new();
    for api_key in api_keys {
        match open_sse(api, api_key).await? {
            Some(stream) => streams.push(stream),
            None => break,
        }
    }
    if streams.len() == api_keys.len() {
        for (stream, first, chunked) in streams {
            tokio::spawn(read_sse(
                stream,
                first,
                chunked,
                tracker.clone(),
                stop.clone(),
            ));
        }
        return Ok("sse");
    }
    drop(streams);
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe(channel_pattern).await?;
    tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let at = Instant::now();
                    if let Ok(payload) = message.get_payload::<String>() {
                        if let Some(key) = key_of(&payload) {
                            tracker.event(&key, at);
                        }
                    }
                }
            }
        }
    });
    Ok("redis-pubsub")
}

async fn read_sse(
    mut stream: TcpStream,
    first: Vec<u8>,
    chunked: bool,
    tracker: Arc<Tracker>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut decoder = ChunkedDecoder::default();
    let mut carry = Vec::new();
    let mut input = first;
    loop {
        let at = Instant::now();
        let data = if chunked {
            match decoder.feed(&input) {
                Ok(data) => data,
                Err(error) => {
                    eprintln!("SSE stream: {error}");
                    return;
                }
            }
        } else {
            std::mem::take(&mut input)
        };
        for event in sse_events(&mut carry, &data) {
            if let Some(key) = key_of(&event) {
                tracker.event(&key, at);
            }
        }
        input = Vec::with_capacity(8192);
        tokio::select! {
            _ = stop.cancelled() => return,
            read = stream.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

pub mod checks {
    use super::*;

    pub fn events_are_matched_to_acceptances() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        tracker.accepted("a", t0);
        tracker.event("a", t0 + Duration::from_millis(20));
        tracker.event("a", t0 + Duration::from_millis(90)); // a repeat is ignored
        tracker.event("b", t0 + Duration::from_millis(5)); // before its 202
        tracker.accepted("b", t0 + Duration::from_millis(6));
        tracker.accepted("c", t0);
        let result = tracker.result("redis-pubsub", 10.0);
        assert_eq!(
            (
                result.accepted,
                result.matched,
                result.missing,
                result.early
            ),
            (3, 2, 1, 1)
        );
        assert!((result.latency.max_ms - 20.0).abs() < 0.1, "{result:?}");
        tracker.reset();
        assert_eq!(tracker.counts(), (0, 0));
        assert_eq!(
            key_of(r#"{"id":"x","idempotencyKey":"k-1","type":"t"}"#).as_deref(),
            Some("k-1")
        );
        assert_eq!(key_of("not json"), None);
    }
}
