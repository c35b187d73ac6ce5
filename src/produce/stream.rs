//! `GET /activities/stream`: Server-Sent Events of the tenant's newly stored activities.
//!
//! Order of work, so nothing falls between replay and live: join the tenant's live feed (subscribed
//! before the response starts), then read the replay's first page, then send the replay a page at a
//! time (`replay.rs`), then live events, skipping live events the replay already sent. The replay
//! comes from the tenant's recent-events stream in Redis (written by the consumer in the same script
//! that publishes), and from MongoDB only for a gap older than that buffer: a fleet of clients
//! reconnecting after a deploy costs Redis reads, not a query each on the database.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse::{self, Sse};
use futures::stream::{self, Stream, StreamExt};
use prometheus::IntCounterVec;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::auth::authenticate;
use super::error::ApiError;
use super::fanout::{JoinError, LiveEvent, LiveFeed};
use super::read::within_read_timeout;
use super::replay::{
    slot_refusal_reason, PagedReplay, ReplayBroken, ReplaySlot, ReplayStep, StoreReplay,
};
use super::ApiState;
use crate::domain::TenantId;
use crate::store::{ActivityCursor, Store, StoreOutage};

/// The header EventSource sends when it reconnects: the id of the last event it received.
pub const LAST_EVENT_ID_HEADER: &str = "Last-Event-ID";
/// Named event sent after a replay that hit `sse.replay_max_events`.
pub const REPLAY_TRUNCATED_EVENT: &str = "replay-truncated";

#[utoipa::path(
    get,
    path = "/activities/stream",
    tag = "read",
    operation_id = "streamActivities",
    description = "Server-Sent Events (`text/event-stream`) of the tenant's activities as they are stored. \
        Each event: `id: <activity id>` and `data: <the activity JSON, as in GET /activities>` (unnamed, so \
        EventSource's onmessage receives it). `: keep-alive` comment lines every sse.heartbeat_secs. With \
        Last-Event-ID, the activities stored after that id are replayed first (from the tenant's recent-events \
        buffer in Redis, or from MongoDB for a gap older than it; at most \
        sse.replay_max_events; if there were more, an event named `replay-truncated` follows: fetch the \
        rest with GET /activities). The replay is sent a page at a time and must be taken within \
        sse.replay_send_timeout_ms. The stream ends if this instance loses Redis, if a replay misses \
        that deadline or cannot be read to its end, or at shutdown; reconnect with Last-Event-ID.",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id.")),
    responses(
        (status = 200, description = "The event stream.", content_type = "text/event-stream", body = String),
        (status = 400, description = "Last-Event-ID is not an id this service sent.", body = super::activities::ErrorBody),
        (status = 401, description = "No, malformed or unknown API key.", body = super::activities::ErrorBody),
        (status = 403, description = "X-Tenant-Id is not the key's tenant.", body = super::activities::ErrorBody),
        (status = 429, description = "The tenant has sse.max_connections_per_tenant open streams on this instance.", body = super::activities::ErrorBody),
        (status = 503, description = "Redis (live feed) or MongoDB (replay) unavailable, or no replay slot freed within sse.replay_wait_ms (the tenant has sse.max_replays_per_tenant resumes replaying on this instance, or the instance sse.max_concurrent_replays); see Retry-After.", body = super::activities::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    request: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&request, &state.tenants)?;
    let resume_after = match request
        .headers()
        .get(LAST_EVENT_ID_HEADER)
        .map(|value| value.to_str().unwrap_or_default().trim())
    {
        None | Some("") => None,
        Some(raw) => Some(ActivityCursor::parse(raw).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{LAST_EVENT_ID_HEADER} is not an event id this service sent"
            ))
        })?),
    };

    let feed = state
        .fanout
        .join(&tenant, state.metrics.sse_clients())
        .await
        .map_err(|error| match error {
            JoinError::TooMany { limit } => {
                state.metrics.count_rate_limited(tenant.as_str());
                ApiError::TooManyRequests {
                    message: format!(
                        "Too many open streams for tenant {tenant} (limit {limit}); close one or retry later"
                    ),
                    retry_after_secs: 5,
                }
            }
            JoinError::Unavailable(outage) => ApiError::store_unavailable(&outage),
        })?;

    let phase = match resume_after {
        None => Phase::Live(feed, HashSet::new()),
        Some(after) => {
            let slot =
                state
                    .replay_slots
                    .take(&tenant)
                    .await
                    .map_err(|refusal| ApiError::Busy {
                        reason: slot_refusal_reason(refusal),
                        retry_after_secs: 1,
                    })?;
            Phase::Replay(
                Box::new(start_replay(&state, &tenant, after, slot).await?),
                feed,
                after,
            )
        }
    };
    let events = events(phase, state.metrics.sse_replays_cut().clone())
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(Ok::<_, std::convert::Infallible>);

    let mut response = Sse::from_stream(events)
        .with_keep_alive(Duration::from_secs(state.sse.heartbeat_secs))
        .with_retry_duration(Duration::from_millis(state.sse.retry_ms))
        .respond_to(&request)
        .map_into_boxed_body();
    // Reverse proxies (nginx) must pass events through as they come.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The replay for a client resuming after `after`, its first page already read: from the tenant's
/// recent-events buffer in Redis when it reaches back to `after`; otherwise (an older gap, the buffer
/// off, Redis slow or failing) from MongoDB, ordered by id. A MongoDB that cannot answer the first
/// page is a 503.
async fn start_replay(
    state: &ApiState,
    tenant: &TenantId,
    after: ActivityCursor,
    slot: ReplaySlot,
) -> Result<PagedReplay<StoreReplay>, ApiError> {
    let stored = StoreReplay::Stored {
        repository: state.repository.clone(),
        tenant: tenant.clone(),
        after,
        timeout: state.read.timeout(),
    };
    // The replay slot bounds this read, as it bounds the replay's pages.
    let position = within_read_timeout(
        state,
        Store::Redis,
        state.redis.recent_position(tenant, &after.to_string()),
    )
    .await;
    let source = match position {
        Ok(Some(entry)) => StoreReplay::Recent {
            redis: state.redis.clone(),
            tenant: tenant.clone(),
            after_entry: entry,
            timeout: state.read.timeout(),
        },
        Ok(None) => stored,
        Err(error) => {
            tracing::debug!(%error, "the recent-events buffer could not be read; replaying from MongoDB");
            stored
        }
    };
    let mut replay = PagedReplay::start(
        source,
        slot,
        state.sse.replay_max_events,
        state.sse.replay_page_events,
        state.sse.replay_send_timeout(),
    );
    let mut first_page = replay.prefetch().await;
    if let (Err(broken), StoreReplay::Recent { .. }) = (&first_page, replay.source()) {
        tracing::debug!(%broken, "the recent-events buffer could not be read; replaying from MongoDB");
        replay.switch_source(StoreReplay::Stored {
            repository: state.repository.clone(),
            tenant: tenant.clone(),
            after,
            timeout: state.read.timeout(),
        });
        first_page = replay.prefetch().await;
    }
    first_page.map_err(|broken| {
        let outage = match broken {
            ReplayBroken::Store(outage) => outage,
            ReplayBroken::Timeout { store } => StoreOutage::timed_out(store, "read.timeout_ms"),
            // Only the Redis buffer can be trimmed under a replay; no deadline runs before the
            // first page is sent.
            other => StoreOutage::redis(other),
        };
        ApiError::store_unavailable(&outage)
    })?;
    let source = match replay.source() {
        StoreReplay::Recent { .. } => "redis",
        StoreReplay::Stored { .. } => "mongodb",
    };
    state.metrics.count_sse_replay(source);
    Ok(replay)
}

fn event_of(id: ActivityCursor, json: String) -> sse::Event {
    sse::Event::Data(sse::Data::new(json).id(id.to_string()))
}

/// Where a stream is: sending its replay after the client's Last-Event-ID (holding the live feed,
/// subscribed before the replay was read, so nothing falls between), or live, skipping the events
/// the client already has: those the replay sent, and the one it resumed after. (That one can still
/// be on its way live: a replay from MongoDB sees a document as soon as it is stored, its live event
/// once the consumer's Redis step ran, which a Redis failover delays by seconds.)
enum Phase {
    Replay(Box<PagedReplay<StoreReplay>>, LiveFeed, ActivityCursor),
    Live(LiveFeed, HashSet<ActivityCursor>),
}

/// The stream's events: the replay, then live ones. A replay that breaks (send deadline, buffer
/// trimmed under it, store failing) ends the stream; the client resumes from the last id it got.
/// The live part ends when the feed closes (Redis lost) or this client fell more than
/// `sse.buffer_events` behind; either way the client reconnects with Last-Event-ID and replays the
/// gap. The feed (and its membership) and any replay slot are dropped with the stream, however the
/// client leaves.
fn events(phase: Phase, replays_cut: IntCounterVec) -> impl Stream<Item = sse::Event> {
    stream::unfold(phase, move |mut phase| {
        let replays_cut = replays_cut.clone();
        async move {
            loop {
                match phase {
                    Phase::Replay(mut replay, feed, after) => match replay.next().await {
                        ReplayStep::Event(event) => {
                            return Some((
                                event_of(event.id, event.json),
                                Phase::Replay(replay, feed, after),
                            ))
                        }
                        ReplayStep::Truncated { replayed } => {
                            let notice = sse::Event::Data(
                                sse::Data::new(json!({ "replayed": replayed }).to_string())
                                    .event(REPLAY_TRUNCATED_EVENT),
                            );
                            return Some((notice, Phase::Replay(replay, feed, after)));
                        }
                        ReplayStep::Complete(mut replayed) => {
                            replayed.insert(after);
                            phase = Phase::Live(feed, replayed)
                        }
                        ReplayStep::Broken(broken) => {
                            replays_cut.with_label_values(&[broken.reason()]).inc();
                            tracing::info!(%broken, "ending an SSE stream mid-replay; the client resumes from the last id it got");
                            return None;
                        }
                    },
                    Phase::Live(mut feed, replayed) => match feed.events.recv().await {
                        Ok(event) => {
                            let event: Arc<LiveEvent> = event;
                            if replayed.contains(&event.id) {
                                phase = Phase::Live(feed, replayed);
                                continue;
                            }
                            return Some((
                                event_of(event.id, event.json.clone()),
                                Phase::Live(feed, replayed),
                            ));
                        }
                        Err(RecvError::Lagged(missed)) => {
                            tracing::info!(
                            missed,
                            "an SSE client fell behind; ending its stream so it resumes from the store"
                        );
                            return None;
                        }
                        Err(RecvError::Closed) => return None,
                    },
                }
            }
        }
    })
}
