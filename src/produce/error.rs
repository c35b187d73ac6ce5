use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::domain::ValidationFailure;
use crate::kafka::PublishError;

/// Every way a request can fail, each with its status. The body is always
/// `{"success": false, "error": "...", "details"?: [...]}` (the seed's contract, extended).
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
    #[error("Method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("Request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Kafka cannot take the activity right now ({reason}); retry later")]
    Unavailable {
        reason: String,
        retry_after_secs: u32,
    },
    #[error("Internal error")]
    Unexpected(#[from] anyhow::Error),
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
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        let mut body = json!({ "success": false, "error": self.to_string() });
        match self {
            ApiError::Invalid(failure) => body["details"] = json!(failure.errors),
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::Unavailable {
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
