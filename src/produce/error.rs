use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::activities::IDEMPOTENCY_KEY_HEADER;
use crate::domain::ValidationFailure;
use crate::kafka::PublishError;

/// Every way a request can fail, each with its status. The body is always
/// `{"success": false, "error": "...", "details"?: [...], "detailsOmitted"?: n,
/// "idempotencyKey"?: "..."}` (the seed's contract, extended).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] ValidationFailure),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Not found")]
    NotFound,
    #[error("Activity not found: no activity with this key for this tenant, or not processed yet")]
    ActivityNotFound,
    #[error("Method not allowed")]
    MethodNotAllowed { allow: String },
    #[error("Request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The idempotency key was already used for an activity with another payload (422, per the
    /// IETF draft "The Idempotency-Key HTTP Header Field"): nothing was produced.
    #[error("{IDEMPOTENCY_KEY_HEADER} {key} was already used for a different activity; use a new key for a new activity")]
    KeyReused { key: String },
    /// Another request with this key and payload is being produced right now (409): retry shortly.
    #[error(
        "A request with {IDEMPOTENCY_KEY_HEADER} {key} is still being processed; retry shortly"
    )]
    KeyInFlight { key: String },
    #[error("Kafka cannot take the activity right now ({reason}); retry later")]
    Unavailable {
        reason: String,
        retry_after_secs: u32,
    },
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{reason}; retry later")]
    Busy {
        reason: &'static str,
        retry_after_secs: u32,
    },
    #[error("{store} is unavailable right now; retry later")]
    StoreUnavailable {
        store: &'static str,
        retry_after_secs: u32,
    },
    #[error("Internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// The `reason` label of the rejected-requests metric: a fixed, small set.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) | ApiError::BadRequest(_) => "invalid",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound | ApiError::ActivityNotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::KeyReused { .. } => "key_reused",
            ApiError::KeyInFlight { .. } => "key_in_flight",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Unavailable { .. } => "kafka_unavailable",
            ApiError::StoreUnavailable { .. } => "store_unavailable",
            ApiError::Busy { .. } => "busy",
            ApiError::Unexpected(_) => "internal",
        }
    }

    /// A store outage on the read side, logged here once.
    pub fn store_unavailable(outage: &crate::store::StoreOutage) -> ApiError {
        tracing::warn!(%outage, "read request failed");
        ApiError::StoreUnavailable {
            store: outage.store().name(),
            retry_after_secs: 1,
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> ApiError {
        let retry_after_secs = match error {
            PublishError::QueueFull => 1,
            PublishError::NotAcknowledged(_) => 5,
        };
        ApiError::Unavailable {
            reason: error.to_string(),
            retry_after_secs,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::ActivityNotFound => StatusCode::NOT_FOUND,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StoreUnavailable { .. } | ApiError::Busy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::KeyInFlight { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        let mut body = json!({ "success": false, "error": self.to_string() });
        match self {
            ApiError::Invalid(failure) => {
                body["details"] = json!(failure.errors);
                if failure.omitted > 0 {
                    body["detailsOmitted"] = json!(failure.omitted);
                }
            }
            ApiError::KeyReused { key } => body["idempotencyKey"] = json!(key),
            ApiError::KeyInFlight { key } => {
                body["idempotencyKey"] = json!(key);
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::StoreUnavailable {
                retry_after_secs, ..
            }
            | ApiError::Busy {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Unexpected(error) => {
                // The cause chain is logged once, here; the client gets no internals.
                tracing::error!(error = format!("{error:#}"), "request failed unexpectedly");
            }
            _ => {}
        }
        response.json(body)
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    #[test]
    fn busy_is_a_503_with_retry_after_and_its_reason() {
        let response = ApiError::Busy {
            reason: "too many SSE clients are resuming",
            retry_after_secs: 1,
        }
        .error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let body = response.into_body().try_into_bytes().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"success": false, "error": "too many SSE clients are resuming; retry later"})
        );
    }

    #[test]
    fn reused_and_in_flight_keys_name_the_key() {
        let response = ApiError::KeyReused {
            key: "order-42".to_owned(),
        }
        .error_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = response.into_body().try_into_bytes().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["idempotencyKey"], "order-42");
        assert_eq!(body["success"], false);

        let response = ApiError::KeyInFlight {
            key: "order-42".to_owned(),
        }
        .error_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }
}
