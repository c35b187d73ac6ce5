//! `GET /activities/stream`: Server-Sent Events of the tenant's newly stored activities.
//!
//! Order of work, so nothing falls between replay and live: join the tenant's live feed (subscribed
//! before the response starts), then read the replay, then send the replay, then live events,
//! skipping live events the replay already sent. The replay comes from the tenant's recent-events
//! stream in Redis (written by the consumer in the same script that publishes), and from MongoDB only
//! for a gap older than that buffer: a fleet of clients reconnecting after a deploy costs Redis reads,
//! not a query each on the database.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse::{self, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::authenticate;
use super::error::ApiError;
use super::live::{JoinError, LiveEvent, LiveFeed};
use super::read::bounded;
use super::ApiState;
use crate::domain::TenantId;
use crate::store::ActivityCursor;

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
        rest with GET /activities). The stream ends if this instance loses Redis, or shuts down; \
        reconnect with Last-Event-ID.",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id.")),
    responses(
        (status = 200, description = "The event stream.", content_type = "text/event-stream", body = String),
        (status = 400, description = "Last-Event-ID is not an id this service sent.", body = super::activities::ErrorBody),
        (status = 401, description = "No, malformed or unknown API key.", body = super::activities::ErrorBody),
        (status = 403, description = "X-Tenant-Id is not the key's tenant.", body = super::activities::ErrorBody),
        (status = 429, description = "The tenant has sse.max_connections_per_tenant open streams on this instance.", body = super::activities::ErrorBody),
        (status = 503, description = "Redis (live feed) or MongoDB (replay) unavailable, or sse.max_concurrent_replays resumes are replaying on this instance and none finished within sse.replay_wait_ms; see Retry-After.", body = super::activities::ErrorBody),
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

    let mut replay = Vec::new();
    let mut slot = None;
    if let Some(after) = resume_after {
        slot = Some(state.replay_slots.take().await.ok_or(ApiError::Busy {
            reason: "too many SSE clients are resuming on this instance at once",
            retry_after_secs: 1,
        })?);
        replay = replay_after(&state, &tenant, after).await?;
    }
    let truncated = replay.len() > state.sse.replay_max_events;
    replay.truncate(state.sse.replay_max_events);
    // Live events the replay sent already (they were published after this stream subscribed).
    let replayed: HashSet<ActivityCursor> = replay.iter().map(|event| event.id).collect();

    let notice = truncated.then(|| {
        sse::Event::Data(
            sse::Data::new(json!({"replayed": replay.len()}).to_string())
                .event(REPLAY_TRUNCATED_EVENT),
        )
    });
    let replay_events = stream::iter(
        replay
            .into_iter()
            .map(|event| event_of(event.id, event.json)),
    )
    .chain(stream::iter(notice));
    let replay_events = match slot {
        Some(slot) => holding(replay_events, slot).left_stream(),
        None => replay_events.right_stream(),
    };
    let events = replay_events
        .chain(live_events(feed, replayed))
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

/// What a client resuming after `after` missed, oldest first, at most `sse.replay_max_events + 1`
/// events (one more tells the caller the replay is truncated). From the tenant's recent-events
/// buffer in Redis when it reaches back to `after`; otherwise (an older gap, the buffer off, Redis
/// slow or failing) from MongoDB, ordered by id.
async fn replay_after(
    state: &ApiState,
    tenant: &TenantId,
    after: ActivityCursor,
) -> Result<Vec<LiveEvent>, ApiError> {
    let limit = state.sse.replay_max_events + 1;
    let recent = bounded(
        state,
        "Redis",
        state.redis.recent_after(tenant, &after.to_string(), limit),
    )
    .await;
    match recent {
        Ok(Some(recent)) => {
            state.metrics.count_sse_replay("redis");
            return Ok(recent
                .into_iter()
                .filter_map(|event| {
                    Some(LiveEvent {
                        id: ActivityCursor::parse(&event.document_id)?,
                        json: event.event,
                    })
                })
                .collect());
        }
        Ok(None) => {}
        Err(error) => {
            tracing::debug!(%error, "the recent-events buffer could not be read; replaying from MongoDB");
        }
    }
    state.metrics.count_sse_replay("mongodb");
    let stored = bounded(
        state,
        "MongoDB",
        state.repository.stored_after(tenant, after, limit),
    )
    .await?;
    Ok(stored
        .iter()
        .map(|activity| LiveEvent {
            id: ActivityCursor::of(activity),
            json: activity.to_json().to_string(),
        })
        .collect())
}

fn event_of(id: ActivityCursor, json: String) -> sse::Event {
    sse::Event::Data(sse::Data::new(json).id(id.to_string()))
}

/// Bounds the replays being read or sent at once on one instance (`sse.max_concurrent_replays`):
/// a replay's events stay in memory until its client has taken them, so a fleet of dashboards
/// resuming together after a deploy would otherwise hold `replay_max_events` each, all at once.
pub struct ReplaySlots {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl ReplaySlots {
    pub fn new(slots: usize, wait: Duration) -> ReplaySlots {
        ReplaySlots {
            slots: Arc::new(Semaphore::new(slots)),
            wait,
        }
    }

    /// A slot, waiting at most the configured time for one to free; `None` if none did.
    pub async fn take(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// `events`, holding `slot` until the last of them has been handed to the response (or the client
/// left and the stream was dropped).
fn holding<S: Stream + Unpin>(
    events: S,
    slot: OwnedSemaphorePermit,
) -> impl Stream<Item = S::Item> {
    stream::unfold((events, slot), |(mut events, slot)| async move {
        let event = events.next().await?;
        Some((event, (events, slot)))
    })
}

/// The live part: events from the feed, but those in `replayed`. It ends when the feed closes
/// (Redis lost) or this client fell more than `sse.buffer_events` behind; either way the client
/// reconnects with Last-Event-ID and replays the gap. The feed (and its membership) is dropped
/// with the stream, however the client leaves.
fn live_events(
    feed: LiveFeed,
    replayed: HashSet<ActivityCursor>,
) -> impl Stream<Item = sse::Event> {
    stream::unfold((feed, replayed), |(mut feed, replayed)| async move {
        loop {
            match feed.events.recv().await {
                Ok(event) => {
                    let event: Arc<LiveEvent> = event;
                    if replayed.contains(&event.id) {
                        continue;
                    }
                    return Some((event_of(event.id, event.json.clone()), (feed, replayed)));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(
                        missed,
                        "an SSE client fell behind; ending its stream so it resumes from the store"
                    );
                    return None;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_WAIT: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn a_replay_holds_its_slot_until_its_last_event_is_taken() {
        let slots = ReplaySlots::new(1, NO_WAIT);
        let slot = slots.take().await.expect("one slot free");
        assert!(slots.take().await.is_none(), "the only slot is taken");

        let mut events = Box::pin(holding(stream::iter([1, 2]), slot));
        assert_eq!(events.next().await, Some(1));
        assert!(slots.take().await.is_none(), "still replaying");
        assert_eq!(events.next().await, Some(2));
        assert_eq!(events.next().await, None);
        assert!(slots.take().await.is_some(), "free once the replay is out");
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_replay_frees_its_slot() {
        let slots = ReplaySlots::new(1, NO_WAIT);
        let mut events = Box::pin(holding(
            stream::iter([1, 2, 3]),
            slots.take().await.unwrap(),
        ));
        assert_eq!(events.next().await, Some(1));
        drop(events);
        assert!(slots.take().await.is_some());
    }

    #[tokio::test]
    async fn a_resume_waits_for_a_slot_to_free() {
        let slots = Arc::new(ReplaySlots::new(1, Duration::from_secs(10)));
        let slot = slots.take().await.unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while the slot is taken");
        drop(slot);
        assert!(waiting.await.unwrap(), "gets the slot once it frees");
    }
}
