//! activity-pipeline: a Kafka-native activity ingestion pipeline.
//!
//! Tenants' applications POST activities to the `produce` role (an actix-web API), which validates
//! them, authenticates the tenant and publishes them to a partitioned Kafka topic keyed by tenant,
//! answering 202 once the broker acknowledged. The `consume` role reads the topic in a consumer group
//! and, per record, stores the activity in MongoDB exactly once, marks its idempotency key in Redis,
//! counts it and publishes it to the tenant's live channel, committing offsets only after all of that.
//!
//! # Layout
//! - [`domain`]: pure types (tenants, idempotency keys, activities, the Kafka envelope); no I/O.
//! - [`config`]: the typed settings tree and its layering (defaults, files, environment, flags).
//! - [`failures`]: record failure classes and the retry/DLQ header protocol (pure).
//! - [`kafka`]: the only module that speaks Kafka (publisher, consumer, admin).
//! - [`store`]: the only module that speaks MongoDB and Redis.
//! - [`produce`]: the HTTP API role.
//! - [`consume`]: the consumer runtime role.
//! - [`console`]: the operators' web console role (pages and JSON API).
//! - [`ops`]: operator verbs (DLQ list/show/replay/purge, analytics rebuild).
//! - [`cli`]: the command line, used by `main.rs`.
//! - [`telemetry`]: logging set-up.

pub mod cli;
pub mod config;
pub mod console;
pub mod consume;
pub mod domain;
pub mod failures;
pub mod kafka;
pub mod ops;
pub mod produce;
mod routes;
pub mod store;
pub mod telemetry;

#[cfg(test)]
mod fast_path_props;
#[cfg(test)]
mod validator_props;
