//! The stores: MongoDB (the source of truth for activities) and Redis (idempotency marks, per-tenant
//! counters, the live fan-out channel).
//!
//! Architecture invariant: this is the only module that imports `mongodb` or `redis`. Errors are
//! classified here into what the caller branches on: an outage of the whole store (retry the batch in
//! place) versus a failure of one record (retry topic or DLQ).

mod keys;
mod live;
mod mongo;
mod redis_store;

pub use keys::RedisKeys;
pub use live::{open_live_connection, LiveMessage, LiveMessages, LiveSubscriptions};
pub use mongo::{
    ActivityCursor, ActivityFilter, ActivityRepository, CorruptDocument, InsertOutcome, PurgeLog,
    PurgedDeadLetter, ReplayLog, StoredActivity, StoredByKey,
};
pub use redis_store::{AcceptedState, EffectRequest, IdempotencyMark, RecentEvent, RedisStore};

/// A store that did not answer as a whole: nothing about any single record is known to be wrong.
#[derive(Debug, thiserror::Error)]
#[error("{store} is unavailable: {message}")]
pub struct StoreOutage {
    pub store: &'static str,
    pub message: String,
}

impl StoreOutage {
    fn mongo(error: impl std::fmt::Display) -> StoreOutage {
        StoreOutage {
            store: "MongoDB",
            message: error.to_string(),
        }
    }

    fn redis(error: impl std::fmt::Display) -> StoreOutage {
        StoreOutage {
            store: "Redis",
            message: error.to_string(),
        }
    }
}
