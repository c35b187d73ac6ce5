//! The tenants as the console shows them: per configured tenant what the stores know (documents
//! in MongoDB, the Redis counters, dead letters in the DLQ), and a live tail of its events fed by
//! the API's own Pub/Sub fan-out ([`crate::produce::Fanout`]).
//!
//! Every number comes from a store shared by all instances, never from one process's Prometheus
//! counters: the console is one process among many and would show a fraction of the truth. The
//! API's intake counts (accepted, duplicate, rate-limited) are the Redis hash every API instance
//! adds to (`produce::IntakeTally`).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse::{self, Sse};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::error::{ConsoleError, ConsoleErrorBody};
use super::ConsoleState;
use crate::domain::TenantId;
use crate::ops::dlq::DeadLetterFilter;
use crate::produce::{IntakeOutcome, JoinError, LiveFeed};

/// The most types one tail may filter on.
pub const TAIL_TYPES_MAX: usize = 20;
/// The longest activity type (the `type` pattern of `schemas/activity.v1.json`).
const TYPE_MAX_CHARS: usize = 64;

/// One tenant's counts, each from the store that keeps it for every instance.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantCounts {
    pub tenant: String,
    /// Activities the API accepted (acknowledged by Kafka), all instances together; added to Redis
    /// by each instance every second.
    pub accepted: i64,
    /// Activities the API answered as duplicates (`duplicate: true`, nothing produced).
    pub duplicate: i64,
    /// Activities the API refused with 429 (the rate limit).
    pub rate_limited: i64,
    /// Activities stored in MongoDB (one document per idempotency key): the source of truth.
    pub stored: i64,
    /// The Redis analytics counters summed (the consumer counts each key once, as it stores it;
    /// differs from `stored` only after a Redis loss, until `analytics rebuild`).
    pub counted: i64,
    /// Dead letters of this tenant now in the DLQ (the record key), purged ones not included.
    pub dead_lettered: usize,
    /// Per activity type, the stored and counted numbers; types known to either store.
    pub types: Vec<TypeCount>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypeCount {
    #[serde(rename = "type")]
    pub activity_type: String,
    /// Documents of this type in MongoDB.
    pub stored: i64,
    /// The Redis counter of this type.
    pub counted: i64,
}

/// Every configured tenant's counts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantList {
    /// In the order of the configuration (by id).
    pub tenants: Vec<TenantCounts>,
}

/// `GET /console/api/tenants/{id}/tail`'s parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// Only these activity types, comma-separated (at most 20); all types when absent.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub activity_type: Option<String>,
}

/// The configured tenant `raw` names: 400 when it cannot be a tenant id, 404 when it is not
/// configured (the console shows only tenants the API would accept).
pub fn configured_tenant(state: &ConsoleState, raw: &str) -> Result<TenantId, ConsoleError> {
    let tenant = TenantId::parse(raw)
        .map_err(|error| ConsoleError::BadRequest(format!("`tenant`: {error}")))?;
    if !state.settings.tenants.contains_key(tenant.as_str()) {
        return Err(ConsoleError::NotFound(format!(
            "no tenant `{tenant}` is configured ([tenants.<id>])"
        )));
    }
    Ok(tenant)
}

/// Every configured tenant, in configuration order. Ids that do not parse are left out: the
/// settings refuse them at start-up, so none reach here.
pub fn configured_tenants(state: &ConsoleState) -> Vec<TenantId> {
    state
        .settings
        .tenants
        .keys()
        .filter_map(|id| TenantId::parse(id).ok())
        .collect()
}

/// Parses a tail's type filter: `None` for every type; a 400 naming the bad type otherwise.
pub fn parse_types(raw: Option<&str>) -> Result<Option<BTreeSet<String>>, ConsoleError> {
    let Some(raw) = raw.map(str::trim).filter(|raw| !raw.is_empty()) else {
        return Ok(None);
    };
    let types: BTreeSet<String> = raw
        .split(',')
        .map(str::trim)
        .map(|activity_type| {
            if is_activity_type(activity_type) {
                Ok(activity_type.to_owned())
            } else {
                Err(ConsoleError::BadRequest(format!(
                    "`type`: {activity_type:?} is not an activity type (1 to {TYPE_MAX_CHARS} of \
                     [A-Za-z0-9._:-], starting with a letter or digit)"
                )))
            }
        })
        .collect::<Result<_, _>>()?;
    if types.len() > TAIL_TYPES_MAX {
        return Err(ConsoleError::BadRequest(format!(
            "`type`: at most {TAIL_TYPES_MAX} types, got {}",
            types.len()
        )));
    }
    Ok(Some(types))
}

/// The `type` pattern of `schemas/activity.v1.json`: `^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`.
fn is_activity_type(candidate: &str) -> bool {
    let mut chars = candidate.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && candidate.len() <= TYPE_MAX_CHARS
        && chars.all(|char| char.is_ascii_alphanumeric() || "._:-".contains(char))
}

/// The counts of `tenants`, reading the DLQ once for all of them. Each store read is bounded by
/// `console.read_timeout_ms`.
pub async fn counts_of(
    state: &ConsoleState,
    tenants: &[TenantId],
) -> Result<Vec<TenantCounts>, ConsoleError> {
    let timeout = state.read_timeout();
    let filter = match tenants {
        [one] => DeadLetterFilter::for_tenant(Some(one.clone())),
        _ => DeadLetterFilter::default(),
    };
    let mut dead_lettered: BTreeMap<String, usize> = BTreeMap::new();
    for view in
        super::api::selected_dead_letters(state, &filter, false, super::api::Detail::Summary)
            .await?
    {
        if let Some(tenant) = &view.tenant {
            *dead_lettered.entry(tenant.clone()).or_default() += 1;
        }
    }
    let mut counts = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let stored_by_type = state
            .repository
            .count_by_type(tenant, Some(timeout))
            .await
            .map_err(|error| {
                ConsoleError::Unavailable(anyhow::anyhow!("MongoDB's counts of {tenant}: {error}"))
            })?;
        let counted_by_type = tokio::time::timeout(timeout, state.redis.analytics(tenant))
            .await
            .map_err(|_| {
                ConsoleError::Unavailable(anyhow::anyhow!(
                    "Redis's counters of {tenant} took longer than console.read_timeout_ms"
                ))
            })?
            .map_err(|error| {
                ConsoleError::Unavailable(anyhow::anyhow!("Redis's counters of {tenant}: {error}"))
            })?;
        let intake = tokio::time::timeout(timeout, state.redis.intake_counts(tenant))
            .await
            .map_err(|_| {
                ConsoleError::Unavailable(anyhow::anyhow!(
                    "Redis's intake counts of {tenant} took longer than console.read_timeout_ms"
                ))
            })?
            .map_err(|error| {
                ConsoleError::Unavailable(anyhow::anyhow!(
                    "Redis's intake counts of {tenant}: {error}"
                ))
            })?;
        let intake_count =
            |outcome: IntakeOutcome| intake.get(outcome.field()).copied().unwrap_or(0);
        let type_names: BTreeSet<&String> = stored_by_type
            .keys()
            .chain(counted_by_type.keys())
            .collect();
        counts.push(TenantCounts {
            tenant: tenant.to_string(),
            accepted: intake_count(IntakeOutcome::Accepted),
            duplicate: intake_count(IntakeOutcome::Duplicate),
            rate_limited: intake_count(IntakeOutcome::RateLimited),
            stored: stored_by_type.values().sum(),
            counted: counted_by_type.values().sum(),
            dead_lettered: dead_lettered.get(tenant.as_str()).copied().unwrap_or(0),
            types: type_names
                .into_iter()
                .map(|name| TypeCount {
                    activity_type: name.clone(),
                    stored: stored_by_type.get(name).copied().unwrap_or(0),
                    counted: counted_by_type.get(name).copied().unwrap_or(0),
                })
                .collect(),
        });
    }
    Ok(counts)
}

#[utoipa::path(
    get,
    path = "/console/api/tenants",
    tag = "tenants",
    operation_id = "listTenants",
    description = "Every configured tenant with its counts: accepted, duplicate and rate-limited (the \
        API's intake counts, a Redis hash every API instance adds to each second), stored (MongoDB \
        documents), counted (the Redis analytics counters), dead-lettered (its records now in the DLQ, \
        purged ones not included), and stored and counted per activity type.",
    responses(
        (status = 200, description = "The tenants.", body = TenantList),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 503, description = "Kafka, MongoDB or Redis did not answer within console.read_timeout_ms.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn list(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    let tenants = counts_of(&state, &configured_tenants(&state)).await?;
    Ok(HttpResponse::Ok().json(TenantList { tenants }))
}

#[utoipa::path(
    get,
    path = "/console/api/tenants/{tenant}",
    tag = "tenants",
    operation_id = "getTenant",
    description = "One configured tenant's counts (see listTenants).",
    params(("tenant" = String, Path, description = "A configured tenant's id.")),
    responses(
        (status = 200, description = "The tenant's counts.", body = TenantCounts),
        (status = 400, description = "Not a tenant id.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 404, description = "No such tenant is configured.", body = ConsoleErrorBody),
        (status = 503, description = "Kafka, MongoDB or Redis did not answer within console.read_timeout_ms.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn one(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    let tenant = configured_tenant(&state, &path)?;
    let counts = counts_of(&state, std::slice::from_ref(&tenant))
        .await?
        .pop()
        .ok_or_else(|| ConsoleError::Unexpected(anyhow::anyhow!("no counts for {tenant}")))?;
    Ok(HttpResponse::Ok().json(counts))
}

#[utoipa::path(
    get,
    path = "/console/api/tenants/{tenant}/tail",
    tag = "tenants",
    operation_id = "tailTenant",
    description = "Server-Sent Events (`text/event-stream`): the tenant's activities as they are \
        stored, from now on (no replay), through the same Redis Pub/Sub fan-out as the API's \
        /activities/stream. Each event's data is the activity's JSON and its `id:` the document id. \
        When this stream falls behind, a `lagged` event says how many were skipped. `: keep-alive` \
        comments every sse.heartbeat_secs.",
    params(
        ("tenant" = String, Path, description = "A configured tenant's id."),
        TailQuery,
    ),
    responses(
        (status = 200, description = "The event stream.", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not a tenant id, a bad type, or an unknown parameter.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 404, description = "No such tenant is configured.", body = ConsoleErrorBody),
        (status = 429, description = "This console already has sse.max_connections_per_tenant tails of the tenant open.", body = ConsoleErrorBody),
        (status = 503, description = "Redis Pub/Sub is unavailable.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn tail(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    path: web::Path<String>,
    query: web::Query<TailQuery>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    let tenant = configured_tenant(&state, &path)?;
    let types = parse_types(query.activity_type.as_deref())?;
    let feed = state
        .fanout
        .join(&tenant, &state.tail_streams)
        .await
        .map_err(|error| match error {
            JoinError::TooMany { limit } => ConsoleError::TooMany(format!(
                "this console already has {limit} live tails of {tenant} open; close one"
            )),
            JoinError::Unavailable(outage) => {
                ConsoleError::Unavailable(anyhow::anyhow!("Redis Pub/Sub: {outage}"))
            }
        })?;
    let events = tail_events(feed, types)
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(Ok::<_, Infallible>);
    let mut response = Sse::from_stream(events)
        .with_keep_alive(Duration::from_secs(state.settings.sse.heartbeat_secs))
        .respond_to(&request)
        .map_into_boxed_body();
    // Reverse proxies (nginx) must pass events through as they come.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// The feed's events of the wanted types, as SSE events; ends when the fan-out ends the feed (a
/// lost Pub/Sub connection), and the browser's EventSource reconnects by itself.
fn tail_events(feed: LiveFeed, types: Option<BTreeSet<String>>) -> impl Stream<Item = sse::Event> {
    let types = Arc::new(types);
    futures::stream::unfold(feed, move |mut feed| {
        let types = Arc::clone(&types);
        async move {
            loop {
                match feed.events.recv().await {
                    Ok(event) => {
                        if wanted(&event.json, types.as_ref().as_ref()) {
                            let data = sse::Data::new(event.json.clone()).id(event.id.to_string());
                            return Some((sse::Event::Data(data), feed));
                        }
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        let data =
                            sse::Data::new(serde_json::json!({ "skipped": skipped }).to_string())
                                .event("lagged");
                        return Some((sse::Event::Data(data), feed));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// Whether an event (the activity's JSON) is of one of `types` (all when `None`).
fn wanted(json: &str, types: Option<&BTreeSet<String>>) -> bool {
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        activity_type: String,
    }
    match types {
        None => true,
        Some(types) => serde_json::from_str::<TypeOnly>(json)
            .is_ok_and(|event| types.contains(&event.activity_type)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filters_follow_the_schema_pattern() {
        assert_eq!(parse_types(None).unwrap(), None);
        assert_eq!(parse_types(Some(" ")).unwrap(), None);
        let types = parse_types(Some("login, comment.created"))
            .unwrap()
            .unwrap();
        assert_eq!(
            types.into_iter().collect::<Vec<_>>(),
            ["comment.created", "login"]
        );
        for bad in ["-login", "a b", "login,", "<script>", &"x".repeat(65)] {
            let error = parse_types(Some(bad)).unwrap_err();
            assert!(error.to_string().starts_with("`type`"), "{bad}: {error}");
        }
        let many: Vec<String> = (0..21).map(|n| format!("t{n}")).collect();
        assert!(parse_types(Some(&many.join(","))).is_err());
    }

    #[test]
    fn events_are_filtered_by_type() {
        let login = r#"{"id":"1","type":"login"}"#;
        let only_comments: BTreeSet<String> = ["comment".to_owned()].into();
        assert!(wanted(login, None));
        assert!(!wanted(login, Some(&only_comments)));
        assert!(!wanted("not json", Some(&only_comments)));
    }
}
