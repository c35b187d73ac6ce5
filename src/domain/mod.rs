//! Pure types of the product: tenants, the console's operators, idempotency keys, activities and the
//! Kafka envelope.
//!
//! Architecture invariant: nothing here does I/O or knows about Kafka, MongoDB, Redis or HTTP; the
//! roles translate these types to and from their wire formats.

mod activity;
mod batch;
mod conflict;
mod envelope;
mod fast_path;
mod fingerprint;
mod idempotency;
mod operator;
mod tenant;

pub use activity::{
    ActivityLimits, ActivityValidator, FieldError, InvalidLimit, NewActivity, ValidationFailure,
    ACTIVITY_SCHEMA_ID, ACTIVITY_SCHEMA_JSON, FIELD_ERROR_MAX_TEXT,
};
#[cfg(test)]
pub(crate) use batch::parse_batch_fast;
pub use batch::{limit_batch_details, parse_batch, parse_batch_by_schema, BatchItem};
pub use conflict::AcceptanceRank;
pub use envelope::{ActivityEnvelope, EnvelopeError};
pub use fingerprint::{InvalidFingerprint, PayloadFingerprint};
pub use idempotency::{IdempotencyKey, InvalidIdempotencyKey};
pub use operator::{InvalidOperatorName, OperatorDirectory, OperatorName, OperatorRole};
pub use tenant::{ApiKeyDigest, InvalidTenant, TenantDirectory, TenantId};
