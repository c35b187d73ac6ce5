use actix_web::http::header;
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::json;

use super::auth::authenticate;
use super::error::ApiError;
use super::ApiState;
use crate::domain::{ActivityEnvelope, IdempotencyKey};

/// The client's idempotency key header.
pub const IDEMPOTENCY_KEY_HEADER: &str = "X-Idempotency-Key";

/// `POST /activities`: validate, publish, and answer 202 once the broker acknowledged.
// A debug span: per request, an info span cost ~5% of the API's CPU at the default filter, formatting
// fields for log lines that are never written (BENCHMARKS.md).
#[tracing::instrument(level = "debug", skip_all, fields(tenant, key))]
pub async fn create(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&request, &state.tenants)?;
    require_json(&request)?;
    let key = idempotency_key(&request)?;
    tracing::Span::current()
        .record("tenant", tenant.as_str())
        .record("key", key.as_str());
    let body = read_body(&request, payload, state.max_body_bytes).await?;
    let activity = state.validator.parse_body(&body)?;
    let envelope = ActivityEnvelope::new(tenant, key, activity);
    state.publisher.publish(&envelope).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "success": true,
        "message": "Activity queued for processing",
        "idempotencyKey": envelope.idempotency_key,
    })))
}

fn require_json(request: &HttpRequest) -> Result<(), ApiError> {
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

fn idempotency_key(request: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
    match request.headers().get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(IdempotencyKey::generate()),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|raw| IdempotencyKey::parse(raw).ok())
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
