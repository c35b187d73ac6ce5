//! Intake: `POST /activities` and `POST /activities/batch`.

use std::time::Instant;

use actix_web::http::{header, StatusCode};
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures::StreamExt;
use serde::Serialize;

use super::auth::authenticate;
use super::dedupe::KeyVerdict;
use super::error::ApiError;
use super::tally::IntakeOutcome;
use super::ApiState;
use crate::domain::{
    limit_batch_details, parse_batch, ActivityEnvelope, FieldError, IdempotencyKey, NewActivity,
    PayloadFingerprint, TenantId,
};
use crate::kafka::PublishError;

/// The client's idempotency key header.
pub const IDEMPOTENCY_KEY_HEADER: &str = "X-Idempotency-Key";

/// The 202 body of `POST /activities` (the seed's contract, plus `duplicate`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always `true`.
    pub success: bool,
    /// `Activity queued for processing`.
    pub message: String,
    /// The activity's key: the client's `X-Idempotency-Key`, or a UUIDv7 made by the server.
    pub idempotency_key: String,
    /// `true` when this key was already accepted: nothing was produced again.
    pub duplicate: bool,
}

/// `POST /activities`: validate, publish, and answer 202 once the broker acknowledged.
#[utoipa::path(
    post,
    path = "/activities",
    tag = "intake",
    operation_id = "createActivity",
    description = "Validates one activity against the activity schema and publishes it to Kafka, keyed by the \
        tenant. 202 means the broker acknowledged the record. A retry with an already accepted \
        X-Idempotency-Key and the same payload answers 202 with `duplicate: true` and produces nothing; \
        the same key with a different payload answers 422; while a request with the same key and \
        payload is still being produced, 409 (retry after Retry-After).",
    params(
        ("X-Idempotency-Key" = Option<String>, Header, description = "1-128 characters of [A-Za-z0-9._:-]; without it the server makes a UUIDv7."),
        ("X-Tenant-Id" = Option<String>, Header, description = "If sent, must be the API key's tenant (else 403)."),
    ),
    request_body(content = ActivitySchemaRef, content_type = "application/json", description = "An activity, as described by /schemas/activity.v1.json."),
    responses(
        (status = 202, description = "Acknowledged by Kafka (or already accepted with the same payload: `duplicate: true`).", body = Accepted),
        (status = 400, description = "Invalid body or header; `details` names failing fields and rules (at most limits.max_reported_errors; `detailsOmitted` counts the rest).", body = ErrorBody),
        (status = 409, description = "A request with this X-Idempotency-Key and payload is still being produced; see Retry-After. `idempotencyKey` names the key.", body = ErrorBody),
        (status = 422, description = "This X-Idempotency-Key was already used for a different payload; nothing was produced. `idempotencyKey` names the key.", body = ErrorBody),
        (status = 401, description = "No, malformed or unknown API key.", body = ErrorBody),
        (status = 403, description = "X-Tenant-Id is not the key's tenant.", body = ErrorBody),
        (status = 413, description = "Body over http.max_body_bytes.", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON.", body = ErrorBody),
        (status = 429, description = "Over the tenant's rate limit; see Retry-After.", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time or the producer queue is full; see Retry-After.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
// A debug span: at the default filter, per-request info spans cost ~10% of the API's CPU in a
// profile, formatting fields for log lines that are never written (BENCHMARKS.md, Tuning).
#[tracing::instrument(level = "debug", skip_all, fields(tenant, key))]
pub async fn create(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&request, &state.tenants)?;
    require_json(&request)?;
    let client_key = idempotency_key(&request)?;
    // Layer 2 only pays for keys a client chose: a key the server makes now is new by construction,
    // and a client that never sent a key cannot send the same one again in a retry.
    let key_from_client = client_key.is_some();
    let key = client_key.unwrap_or_else(IdempotencyKey::generate);
    tracing::Span::current()
        .record("tenant", tenant.as_str())
        .record("key", key.as_str());
    rate_limit(&state, &tenant, 1).await?;
    let body = read_body(&request, payload, state.max_body_bytes).await?;
    let activity = state.validator.parse_body(&body)?;
    let fingerprint = PayloadFingerprint::of(&activity);

    let verdict = if key_from_client {
        state
            .accepted
            .reserve(&[(&tenant, &key, &fingerprint)])
            .await[0]
    } else {
        KeyVerdict::Produce { reserved: false }
    };
    let duplicate = match verdict {
        KeyVerdict::Duplicate => true,
        KeyVerdict::InFlight => return Err(ApiError::KeyInFlight { key: key.into() }),
        KeyVerdict::Conflict => return Err(ApiError::KeyReused { key: key.into() }),
        KeyVerdict::Produce { reserved } => {
            let envelope = ActivityEnvelope::new(tenant.clone(), key.clone(), activity);
            let published = publish(&state, &envelope, &fingerprint).await;
            if reserved {
                let reservation = [(&tenant, &key, &fingerprint)];
                match published {
                    Ok(()) => state.accepted.settle(&reservation, &[]).await,
                    Err(_) => state.accepted.settle(&[], &reservation).await,
                }
            }
            published?;
            false
        }
    };
    let outcome = if duplicate {
        IntakeOutcome::Duplicate
    } else {
        IntakeOutcome::Accepted
    };
    state.tally.add(&tenant, outcome, 1);
    Ok(HttpResponse::Accepted().json(Accepted {
        success: true,
        message: "Activity queued for processing".to_owned(),
        idempotency_key: key.to_string(),
        duplicate,
    }))
}

/// A batch item that passed validation, waiting for layer 2 and the producer.
struct ValidItem {
    index: usize,
    key: IdempotencyKey,
    key_from_client: bool,
    activity: NewActivity,
    fingerprint: PayloadFingerprint,
}

/// What happened to one item of a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemResult {
    /// Position of the item in `activities`.
    pub index: usize,
    /// 202 (acknowledged, or already accepted with the same payload), 400 (invalid), 409 (its key is
    /// being produced by another request right now), 422 (its key was already used for a different
    /// activity) or 503 (Kafka did not acknowledge).
    pub status: u16,
    /// The item's key (absent only when the item's own key was invalid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// With 202: whether the key was already accepted (nothing produced again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// With 400, 409, 422 and 503: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With 400: failing fields and rules, at most limits.max_reported_errors per item and
    /// intake.batch_max_reported_errors in the whole batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<FieldErrorBody>>)]
    pub details: Option<Vec<FieldError>>,
    /// With 400, when some of the item's failures are not in `details`: how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_omitted: Option<usize>,
}

/// The body of every `POST /activities/batch` answer that got as far as judging items.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchOutcome {
    /// `true` when every item was accepted.
    pub success: bool,
    /// Present when some item was not accepted: a one-line summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Items answered 202 (including duplicates).
    pub accepted: usize,
    /// Of those, items whose key was already accepted.
    pub duplicates: usize,
    /// Items answered 400.
    pub invalid: usize,
    /// Items answered 503.
    pub unavailable: usize,
    /// Items answered 422: their key was already used for a different activity.
    pub conflicts: usize,
    /// Items answered 409: their key is being produced by another request right now.
    pub in_flight: usize,
    /// One result per item, in request order.
    pub results: Vec<ItemResult>,
}

/// `POST /activities/batch`: up to `intake.batch_max_items` activities, produced concurrently.
#[utoipa::path(
    post,
    path = "/activities/batch",
    tag = "intake",
    operation_id = "createActivities",
    description = "Body `{\"activities\": [item, ...]}`; an item is an activity, or \
        `{\"idempotencyKey\": \"...\", \"activity\": {...}}` to give it its own key. Items without one get \
        `<X-Idempotency-Key>:<index>` when the header is sent (so a retried batch is deduplicated item by \
        item), else a UUIDv7. Each item is judged alone: invalid items get 400 in `results`, items \
        whose key was used for a different payload 422, items whose key is being produced by another \
        request 409, while the valid ones are produced concurrently and awaited. The status is 202 \
        when every item was accepted, 503 when none was accepted and Kafka refused some, 400 / 422 / \
        409 when every item got that answer, 207 otherwise. The whole batch costs its item count \
        against the rate limit.",
    params(
        ("X-Idempotency-Key" = Option<String>, Header, description = "Batch key: item i without its own key gets `<key>:<i>`."),
        ("X-Tenant-Id" = Option<String>, Header, description = "If sent, must be the API key's tenant (else 403)."),
    ),
    request_body(content = BatchRequestSchema, content_type = "application/json"),
    responses(
        (status = 202, description = "Every item accepted.", body = BatchOutcome),
        (status = 207, description = "Some items accepted, some not; see `results`.", body = BatchOutcome),
        (status = 400, description = "The batch itself is malformed (an error body with `details`), or every item is invalid (a batch outcome with `results`).", body = BatchRefusal),
        (status = 401, description = "No, malformed or unknown API key.", body = ErrorBody),
        (status = 403, description = "X-Tenant-Id is not the key's tenant.", body = ErrorBody),
        (status = 409, description = "Every item's key is being produced by another request right now; see Retry-After.", body = BatchOutcome),
        (status = 413, description = "Body over intake.batch_max_body_bytes.", body = ErrorBody),
        (status = 422, description = "Every item's key was already used for a different payload.", body = BatchOutcome),
        (status = 415, description = "Content-Type is not JSON.", body = ErrorBody),
        (status = 429, description = "The batch's item count is over the tenant's rate limit; see Retry-After.", body = ErrorBody),
        (status = 503, description = "No item accepted because Kafka did not acknowledge; see Retry-After.", body = BatchOutcome),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant, items))]
pub async fn create_batch(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&request, &state.tenants)?;
    require_json(&request)?;
    let batch_key = idempotency_key(&request)?;
    tracing::Span::current().record("tenant", tenant.as_str());
    let body = read_body(&request, payload, state.batch_max_body_bytes).await?;
    let mut items = parse_batch(
        &body,
        batch_key.as_ref(),
        &state.validator,
        state.batch_max_items,
    )?;
    limit_batch_details(&mut items, state.batch_max_reported_errors);
    tracing::Span::current().record("items", items.len());
    rate_limit(&state, &tenant, items.len()).await?;

    let mut results: Vec<ItemResult> = Vec::with_capacity(items.len());
    let mut valid: Vec<ValidItem> = Vec::new();
    for item in items {
        let key = item.key.as_ref().map(ToString::to_string);
        match item.activity {
            Ok(activity) => {
                valid.push(ValidItem {
                    index: item.index,
                    key: item.key.expect("valid items have a key"),
                    key_from_client: item.key_from_client,
                    fingerprint: PayloadFingerprint::of(&activity),
                    activity,
                });
                results.push(ItemResult {
                    index: item.index,
                    status: 202,
                    idempotency_key: key,
                    duplicate: Some(false),
                    error: None,
                    details: None,
                    details_omitted: None,
                });
            }
            Err(failure) => results.push(ItemResult {
                index: item.index,
                status: 400,
                idempotency_key: key,
                duplicate: None,
                error: Some(failure.summary()),
                details_omitted: (failure.omitted > 0).then_some(failure.omitted),
                details: Some(failure.errors),
            }),
        }
    }

    // Layer 2: reserve the keys the client chose, so a retried item with the same payload is a
    // duplicate, a reused key with another payload a 422 and a key in flight a 409. A key the server
    // just made cannot have been used before, so it is not asked about (nor marked below).
    let chosen: Vec<(&TenantId, &IdempotencyKey, &PayloadFingerprint)> = valid
        .iter()
        .filter(|item| item.key_from_client)
        .map(|item| (&tenant, &item.key, &item.fingerprint))
        .collect();
    let mut verdicts = state.accepted.reserve(&chosen).await.into_iter();
    drop(chosen);
    let mut to_publish = Vec::with_capacity(valid.len());
    for item in valid {
        let verdict = if item.key_from_client {
            verdicts
                .next()
                .unwrap_or(KeyVerdict::Produce { reserved: false })
        } else {
            KeyVerdict::Produce { reserved: false }
        };
        let result = &mut results[item.index];
        let refusal = match verdict {
            KeyVerdict::Produce { reserved } => {
                let envelope = ActivityEnvelope::new(tenant.clone(), item.key, item.activity);
                to_publish.push((item.index, reserved, envelope, item.fingerprint));
                continue;
            }
            KeyVerdict::Duplicate => {
                result.duplicate = Some(true);
                continue;
            }
            KeyVerdict::InFlight => ApiError::KeyInFlight {
                key: item.key.into(),
            },
            KeyVerdict::Conflict => ApiError::KeyReused {
                key: item.key.into(),
            },
        };
        result.status = refusal.status_code().as_u16();
        result.duplicate = None;
        result.error = Some(refusal.to_string());
    }

    // Every record is handed to the producer at once, so they share its batches, and the handler
    // is woken once, when the broker has answered for all of them.
    let outcomes = publish_all(
        &state,
        &to_publish
            .iter()
            .map(|(_, _, envelope, fingerprint)| (envelope, fingerprint))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut retry_after_secs = 0;
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for ((index, reserved, envelope, fingerprint), outcome) in to_publish.iter().zip(outcomes) {
        let reservation = (&tenant, &envelope.idempotency_key, fingerprint);
        match outcome {
            Ok(()) if *reserved => acknowledged.push(reservation),
            Ok(()) => {}
            Err(ApiError::Unavailable {
                reason,
                retry_after_secs: retry,
            }) => {
                if *reserved {
                    refused.push(reservation);
                }
                retry_after_secs = retry_after_secs.max(retry);
                let result = &mut results[*index];
                result.status = 503;
                result.duplicate = None;
                result.error = Some(format!(
                    "Kafka cannot take the activity right now ({reason}); retry later"
                ));
            }
            Err(other) => return Err(other),
        }
    }
    state.accepted.settle(&acknowledged, &refused).await;

    let count = |status: u16| results.iter().filter(|r| r.status == status).count();
    let (accepted, invalid, unavailable) = (count(202), count(400), count(503));
    let (conflicts, in_flight) = (count(422), count(409));
    let duplicates = results
        .iter()
        .filter(|result| result.duplicate == Some(true))
        .count();
    state.tally.add(
        &tenant,
        IntakeOutcome::Accepted,
        (accepted - duplicates) as u64,
    );
    state
        .tally
        .add(&tenant, IntakeOutcome::Duplicate, duplicates as u64);
    state.metrics.count_rejected("invalid", invalid as u64);
    state
        .metrics
        .count_rejected("kafka_unavailable", unavailable as u64);
    state.metrics.count_rejected("key_reused", conflicts as u64);
    state
        .metrics
        .count_rejected("key_in_flight", in_flight as u64);
    let items = results.len();
    let status = if accepted == items {
        StatusCode::ACCEPTED
    } else if accepted == 0 && unavailable > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if accepted == 0 && invalid == items {
        StatusCode::BAD_REQUEST
    } else if accepted == 0 && conflicts == items {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if accepted == 0 && in_flight == items {
        StatusCode::CONFLICT
    } else {
        StatusCode::MULTI_STATUS
    };
    let error = (accepted < items).then(|| {
        format!(
            "{} of {items} activities were not accepted ({invalid} invalid, {conflicts} with a reused key, \
             {in_flight} with a key in flight, {unavailable} not acknowledged by Kafka)",
            items - accepted,
        )
    });
    let mut response = HttpResponse::build(status);
    if unavailable > 0 {
        response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
    } else if in_flight > 0 {
        response.insert_header((header::RETRY_AFTER, "1"));
    }
    Ok(response.json(BatchOutcome {
        success: accepted == results.len(),
        error,
        accepted,
        duplicates,
        invalid,
        unavailable,
        conflicts,
        in_flight,
        results,
    }))
}

/// Publishes one envelope and records how long the broker took, by outcome.
async fn publish(
    state: &ApiState,
    envelope: &ActivityEnvelope,
    fingerprint: &PayloadFingerprint,
) -> Result<(), ApiError> {
    let mut outcomes = publish_all(state, &[(envelope, fingerprint)]).await;
    outcomes.pop().unwrap_or(Ok(()))
}

/// Publishes envelopes together and records how long the broker took for each, by outcome.
async fn publish_all(
    state: &ApiState,
    activities: &[(&ActivityEnvelope, &PayloadFingerprint)],
) -> Vec<Result<(), ApiError>> {
    let started = Instant::now();
    let results = state.publisher.publish_all(activities).await;
    results
        .into_iter()
        .map(|result| {
            let outcome = match &result {
                Ok(()) => "acked",
                Err(PublishError::QueueFull) => "queue_full",
                Err(PublishError::NotAcknowledged(_)) => "not_acknowledged",
            };
            state.metrics.observe_produce(outcome, started);
            if let Err(error) = &result {
                // Debug, not warn: with Kafka down this is every record; the metrics and /readyz
                // say it.
                tracing::debug!(%error, "record not acknowledged; answering 503");
            }
            result.map_err(ApiError::from)
        })
        .collect()
}

async fn rate_limit(
    state: &ApiState,
    tenant: &TenantId,
    activities: usize,
) -> Result<(), ApiError> {
    state
        .rate_limiter
        .check(tenant, activities)
        .await
        .map_err(|limited| {
            state.metrics.count_rate_limited(tenant.as_str());
            state
                .tally
                .add(tenant, IntakeOutcome::RateLimited, activities as u64);
            ApiError::TooManyRequests {
                message: format!("Rate limit exceeded for tenant {tenant}; retry later"),
                retry_after_secs: limited.retry_after_secs(),
            }
        })
}

pub(crate) fn require_json(request: &HttpRequest) -> Result<(), ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        });
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// The request's `X-Idempotency-Key`, if it sent one.
fn idempotency_key(request: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    match request.headers().get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|raw| IdempotencyKey::parse(raw).ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{IDEMPOTENCY_KEY_HEADER} {}",
                    crate::domain::InvalidIdempotencyKey
                ))
            }),
    }
}

/// Reads the body, refusing it as soon as it is known to exceed `limit`: from `Content-Length` before
/// reading anything, or while streaming a chunked body.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::BadRequest(format!("Could not read the request body: {error}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// OpenAPI stand-ins for bodies whose schema lives elsewhere or is built by hand.
/// Every error: `{"success": false, "error": "...", "details"?: [...], "idempotencyKey"?: "..."}`.
/// No other field, so a batch's 400 is exactly one of this or a `BatchOutcome`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes a body in the OpenAPI document; never built.
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// One sentence for humans.
    pub error: String,
    /// With 400: failing fields and rules, at most limits.max_reported_errors of them.
    pub details: Option<Vec<FieldErrorBody>>,
    /// With 400, when some failures are not in `details`: how many.
    pub details_omitted: Option<usize>,
    /// With 409 and 422: the idempotency key concerned.
    pub idempotency_key: Option<String>,
}

/// The two shapes of a batch's 400: the batch as a whole refused, or every item judged invalid.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes a body in the OpenAPI document; never built.
#[serde(untagged)]
pub enum BatchRefusal {
    Malformed(ErrorBody),
    EveryItemInvalid(BatchOutcome),
}

/// One reason a body was refused.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes a body in the OpenAPI document; never built.
pub struct FieldErrorBody {
    /// JSON pointer of the field (`/metadata/x`), `/` for the whole body, or a header name.
    pub field: String,
    /// The rule: a JSON Schema keyword (`required`, `maxLength`, ...) or `json`, `maxBytes`, `maxDepth`, ...
    pub rule: String,
    pub message: String,
}

/// An activity: see `/schemas/activity.v1.json`. In the served document this placeholder is replaced
/// by that schema itself (`openapi::document`).
pub struct ActivitySchemaRef;

impl utoipa::PartialSchema for ActivitySchemaRef {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::Object::new().into()
    }
}

impl utoipa::ToSchema for ActivitySchemaRef {}

/// `{"activities": [item, ...]}`, at most `intake.batch_max_items` items.
// `openapi::document` sets `maxItems` from the configuration.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes a body in the OpenAPI document; never built.
#[serde(deny_unknown_fields)]
pub struct BatchRequestSchema {
    /// Activities, or `{"idempotencyKey": "...", "activity": {...}}` wrappers.
    #[schema(min_items = 1)]
    pub activities: Vec<BatchItemSchema>,
}

/// One batch item: an activity, or a wrapper giving it its own idempotency key. An object with an
/// `activity` field is a wrapper; an activity has no such field, so an item matches one shape only.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes a body in the OpenAPI document; never built.
#[serde(untagged)]
pub enum BatchItemSchema {
    Activity(ActivitySchemaRef),
    Wrapped(WrappedActivitySchema),
}

/// `{"idempotencyKey": "...", "activity": {...}}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes a body in the OpenAPI document; never built.
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WrappedActivitySchema {
    pub activity: ActivitySchemaRef,
    /// The item's own key (else the batch key with `:<index>`, or a UUIDv7). Unique in the batch.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub idempotency_key: Option<String>,
}
