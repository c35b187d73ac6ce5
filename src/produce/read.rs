//! The read side: `GET /activities`, `GET /activities/{idempotencyKey}`, `GET /analytics`. Every query
//! is scoped to the API key's tenant; no parameter can name another tenant.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::authenticate;
use super::error::ApiError;
use super::shares::{self, ShareRefusal};
use super::{pages, ApiState};
use crate::domain::{IdempotencyKey, TenantId};
use crate::store::{ActivityCursor, ActivityFilter, Store, StoreOutage, StoredActivity};

/// Longest filter value accepted (longer ones cannot match a stored field anyway).
const FILTER_MAX_CHARS: usize = 256;

/// Query of `GET /activities`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to `read.page_max_limit` (default `read.page_default_limit`).
    pub limit: Option<usize>,
    /// The `nextCursor` of the previous page; opaque.
    pub cursor: Option<String>,
    /// Only activities of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub activity_type: Option<String>,
    /// Only activities of this actor.
    pub actor_id: Option<String>,
    /// Only activities on this entity.
    pub entity_id: Option<String>,
}

/// One page of activities.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityPage {
    pub success: bool,
    /// Newest first.
    #[schema(value_type = Vec<StoredActivityBody>)]
    pub activities: Vec<Value>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /activities/{idempotencyKey}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OneActivity {
    pub success: bool,
    #[schema(value_type = StoredActivityBody)]
    pub activity: Value,
}

/// `GET /analytics`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analytics {
    pub success: bool,
    pub tenant_id: String,
    /// Activity type -> number of stored activities of that type.
    pub counts: BTreeMap<String, i64>,
    /// Sum of `counts`.
    pub total: i64,
}

/// A stored activity as clients see it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct StoredActivityBody {
    /// Time-ordered id: the SSE event id.
    id: String,
    tenant_id: String,
    idempotency_key: String,
    actor_id: String,
    actor_name: String,
    #[serde(rename = "type")]
    activity_type: String,
    entity_id: Option<String>,
    #[schema(value_type = Object)]
    metadata: (),
    /// When the API accepted it (RFC 3339).
    enqueued_at: String,
    /// When the consumer stored it (RFC 3339).
    created_at: String,
    /// The datacenter whose API accepted it (`dc.name` there); absent on activities stored before
    /// datacenters were known.
    origin_dc: Option<String>,
    /// Present when the conflict rule put this activity in the place of another one accepted later
    /// under the same key (that one is a `conflict` dead letter): an SSE event with this field
    /// replaces the event seen before under the same id.
    supersedes: Option<SupersededActivityBody>,
}

/// What a stored activity says of the activity it replaced under the conflict rule.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SupersededActivityBody {
    /// The replaced activity's type (its count moved to this one's).
    #[serde(rename = "type")]
    activity_type: String,
}

#[utoipa::path(
    get,
    path = "/activities",
    tag = "read",
    operation_id = "listActivities",
    description = "The tenant's stored activities, newest first, one page at a time.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page.", body = ActivityPage),
        (status = 400, description = "Bad parameter (unknown name, limit out of range, bad cursor).", body = super::activities::ErrorBody),
        (status = 401, description = "No, malformed or unknown API key.", body = super::activities::ErrorBody),
        (status = 403, description = "X-Tenant-Id is not the key's tenant.", body = super::activities::ErrorBody),
        (status = 503, description = "MongoDB did not answer within read.timeout_ms, or too many reads of this tenant or instance are in flight (Retry-After).", body = super::activities::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    request: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&request, &state.tenants)?;
    let query = web::Query::<ListQuery>::from_query(request.query_string())
        .map_err(|error| ApiError::BadRequest(format!("Invalid query: {error}")))?
        .into_inner();
    let limit = query.limit.unwrap_or(state.read.page_default_limit);
    if !(1..=state.read.page_max_limit).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {}",
            state.read.page_max_limit
        )));
    }
    let before = match &query.cursor {
        None => None,
        Some(raw) => Some(
            ActivityCursor::parse(raw)
                .ok_or_else(|| ApiError::BadRequest("cursor is not a valid cursor".to_owned()))?,
        ),
    };
    for (name, value) in [
        ("type", &query.activity_type),
        ("actorId", &query.actor_id),
        ("entityId", &query.entity_id),
    ] {
        if value
            .as_ref()
            .is_some_and(|value| value.is_empty() || value.chars().count() > FILTER_MAX_CHARS)
        {
            return Err(ApiError::BadRequest(format!(
                "{name} must be 1-{FILTER_MAX_CHARS} characters"
            )));
        }
    }
    let filter = ActivityFilter {
        activity_type: query.activity_type,
        actor_id: query.actor_id,
        entity_id: query.entity_id,
    };
    // One more than the page tells whether there is a next page.
    let _place = take_place(&state, &tenant).await?;
    let deadline = Instant::now() + state.read.timeout();
    let (mut found, source) =
        pages::newest_first(&state, &tenant, &filter, before, limit + 1, deadline).await?;
    state.metrics.page_served(source.label());
    let next_cursor = if found.len() > limit {
        found.truncate(limit);
        found
            .last()
            .map(|last| ActivityCursor::from_id(last.id).to_string())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(ActivityPage {
        success: true,
        activities: found.into_iter().map(|entry| entry.activity).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/activities/{idempotencyKey}",
    tag = "read",
    operation_id = "getActivity",
    description = "The tenant's stored activity with this key. 404 until the consumer has stored it. \
        (Keys `batch` and `stream` name other routes and cannot be read here; use GET /activities.)",
    params(("idempotencyKey" = String, Path, description = "The activity's idempotency key.")),
    responses(
        (status = 200, description = "The stored activity.", body = OneActivity),
        (status = 400, description = "Not a valid idempotency key.", body = super::activities::ErrorBody),
        (status = 401, description = "No, malformed or unknown API key.", body = super::activities::ErrorBody),
        (status = 403, description = "X-Tenant-Id is not the key's tenant.", body = super::activities::ErrorBody),
        (status = 404, description = "No such activity for this tenant, or not processed yet.", body = super::activities::ErrorBody),
        (status = 503, description = "MongoDB did not answer within read.timeout_ms, or too many reads of this tenant or instance are in flight (Retry-After).", body = super::activities::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&request, &state.tenants)?;
    let key = IdempotencyKey::parse(&path.into_inner()).map_err(|error| {
        ApiError::BadRequest(format!("The idempotency key in the path {error}"))
    })?;
    let found = bounded(
        &state,
        &tenant,
        Store::MongoDB,
        find_by_key(&state, &tenant, &key),
    )
    .await?;
    let activity = found.ok_or(ApiError::ActivityNotFound)?;
    Ok(HttpResponse::Ok().json(OneActivity {
        success: true,
        activity: activity.to_json(),
    }))
}

/// The tenant's activity stored under `key`. The consumer's idempotency mark (24 h) names the
/// document's id, and a lookup by id alone is what every store answers from its primary key
/// (FerretDB too, which serves the `(tenantId, idempotencyKey)` query by scanning the collection).
/// The document found must be the tenant's and the key's. Without a usable mark (expired, Redis
/// away, a document stored and not yet marked) the plain query answers.
async fn find_by_key(
    state: &ApiState,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<StoredActivity>, StoreOutage> {
    let budget = state.read.timeout();
    let marked = shortcut(state, state.redis.already_marked(&[(tenant, key)]))
        .await
        .and_then(|mut marks| marks.pop().flatten());
    if let Some(id) = marked.and_then(|mark| ObjectId::parse_str(&mark.document_id).ok()) {
        if let Some(stored) = state.repository.find_by_id(id, budget).await? {
            if stored.tenant_id == *tenant && stored.idempotency_key == *key {
                state.metrics.lookup_served("mark");
                return Ok(Some(stored));
            }
        }
    }
    state.metrics.lookup_served("query");
    state.repository.find_one(tenant, key, budget).await
}

#[utoipa::path(
    get,
    path = "/analytics",
    tag = "read",
    operation_id = "getAnalytics",
    description = "Counts of the tenant's stored activities per type (each activity counted once).",
    responses(
        (status = 200, description = "The counters.", body = Analytics),
        (status = 401, description = "No, malformed or unknown API key.", body = super::activities::ErrorBody),
        (status = 403, description = "X-Tenant-Id is not the key's tenant.", body = super::activities::ErrorBody),
        (status = 503, description = "Redis did not answer within read.timeout_ms, or too many reads of this tenant or instance are in flight (Retry-After).", body = super::activities::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn analytics(
    request: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&request, &state.tenants)?;
    let counts = bounded(
        &state,
        &tenant,
        Store::Redis,
        state.redis.analytics(&tenant),
    )
    .await?;
    Ok(HttpResponse::Ok().json(Analytics {
        success: true,
        tenant_id: tenant.to_string(),
        total: counts.values().sum(),
        counts,
    }))
}

/// Runs one store read of `tenant` within `read.timeout_ms`, once it has its place among the reads
/// in flight (`read.max_concurrent`, `read.max_concurrent_per_tenant`); a read that finds no place
/// within `read.queue_wait_ms` is a 503 Busy, a failure or a timeout of the store a 503 too. Both
/// carry Retry-After.
pub(crate) async fn bounded<T>(
    state: &ApiState,
    tenant: &TenantId,
    store: Store,
    call: impl Future<Output = Result<T, StoreOutage>>,
) -> Result<T, ApiError> {
    let _place = take_place(state, tenant).await?;
    within_read_timeout(state, store, call).await
}

/// A read's place among the reads in flight (`read.max_concurrent`, `read.max_concurrent_per_tenant`),
/// held until dropped; a read that finds none within `read.queue_wait_ms` is a 503 Busy.
async fn take_place(state: &ApiState, tenant: &TenantId) -> Result<shares::SharePermit, ApiError> {
    state
        .read_slots
        .take(tenant)
        .await
        .map_err(|refusal| ApiError::Busy {
            reason: read_refusal_reason(refusal),
            retry_after_secs: 1,
        })
}

/// Runs one store call within `read.timeout_ms`, without a place among the reads in flight: for the
/// SSE replay's reads, which its replay slot already bounds. A failure or a timeout is a 503.
pub(crate) async fn within_read_timeout<T>(
    state: &ApiState,
    store: Store,
    call: impl Future<Output = Result<T, StoreOutage>>,
) -> Result<T, ApiError> {
    within(state.read.timeout(), store, call).await
}

/// Runs one store call within `budget` (what is left of `read.timeout_ms`); a failure or a timeout
/// is a 503.
pub(crate) async fn within<T>(
    budget: Duration,
    store: Store,
    call: impl Future<Output = Result<T, StoreOutage>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(budget, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(outage)) => Err(ApiError::store_unavailable(&outage)),
        Err(_) => Err(ApiError::store_unavailable(&StoreOutage::timed_out(
            store,
            "read.timeout_ms",
        ))),
    }
}

/// The part of `read.timeout_ms` a read's Redis shortcut may take (the recent-pages set, the
/// idempotency mark) before MongoDB answers instead: a Redis that does not answer costs a read this
/// much once, then nothing while `ApiState::read_shortcuts` skips it.
pub(crate) fn shortcut_budget(state: &ApiState) -> Duration {
    state.read.timeout() / 4
}

/// Runs a read's Redis shortcut within `shortcut_budget`; `None` (MongoDB answers) when Redis is
/// being skipped, fails or is slower, which also skips it for a moment.
pub(crate) async fn shortcut<T>(
    state: &ApiState,
    call: impl Future<Output = Result<T, StoreOutage>>,
) -> Option<T> {
    if state.read_shortcuts.skipping() {
        return None;
    }
    match tokio::time::timeout(shortcut_budget(state), call).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(outage)) => {
            state.read_shortcuts.failed(&outage.to_string());
            None
        }
        Err(_) => {
            state.read_shortcuts.failed("timed out");
            None
        }
    }
}

/// The sentence of the 503 for a read that found no place (`ApiError::Busy` takes a fixed one).
fn read_refusal_reason(refusal: ShareRefusal) -> &'static str {
    match refusal {
        ShareRefusal::TenantShare => {
            "this tenant has read.max_concurrent_per_tenant reads in flight on this instance"
        }
        ShareRefusal::Instance => "too many reads are in flight on this instance",
    }
}
