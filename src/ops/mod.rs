//! Operator verbs: inspecting and replaying the DLQ, rebuilding the analytics counters.

pub mod analytics;
pub mod dlq;
