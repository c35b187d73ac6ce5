//! Operator verbs: inspecting, replaying and purging the DLQ, rebuilding the analytics counters.

pub mod analytics;
pub mod dlq;
pub mod dlq_purge;
pub mod progress;
