use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every way a console request fails, each with its status. The JSON API answers
/// `{"error": "..."}`; the pages render the same message as escaped text.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No credentials, or credentials that open nothing (a tenant's API key among them).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed: a viewer's action, a missing or wrong CSRF token.
    #[error("{0}")]
    Forbidden(String),
    /// A bad filter, page cursor, body or parameter; the message names it.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// An action while another job runs; the message names that job.
    #[error("{0}")]
    Conflict(String),
    /// A limit of this console reached (its live tails of one tenant).
    #[error("{0}")]
    TooMany(String),
    /// Kafka, MongoDB or Redis (the sessions, the counters) did not answer within
    /// `console.read_timeout_ms`, or failed.
    #[error("a dependency did not answer: {0:#}")]
    Unavailable(anyhow::Error),
    #[error("unexpected error: {0:#}")]
    Unexpected(#[from] anyhow::Error),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConsoleErrorBody {
    /// What went wrong, and for a 400 which parameter or field.
    pub error: String,
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(
            self,
            ConsoleError::Unavailable(_) | ConsoleError::Unexpected(_)
        ) {
            tracing::error!(error = %self, "console request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ConsoleError::Unauthorized(_)) {
            response.insert_header(("WWW-Authenticate", "Bearer realm=\"console\""));
        }
        response.json(ConsoleErrorBody {
            error: self.to_string(),
        })
    }
}
