//! The stores: MongoDB (the source of truth for activities) and Redis (idempotency marks, per-tenant
//! counters, the live fan-out channel, the console's login sessions).
//!
//! Architecture invariant: this is the only module that imports `mongodb` or `redis`. Errors are
//! classified here into what the caller branches on: an outage of the whole store (retry the batch in
//! place) versus a failure of one record (retry topic or DLQ).

mod console_sessions;
mod keys;
mod mongo;
mod pubsub;
mod redis_connection;
mod redis_store;

pub use console_sessions::ConsoleSessionStore;
pub use keys::{IntakeFlushId, RedisKeys};
pub use mongo::{
    ActivityCursor, ActivityFilter, ActivityRepository, AuditEntry, AuditLog, CorruptDocument,
    InsertOutcome, PurgeLog, PurgedDeadLetter, ReplayLog, StoredActivity, StoredByKey,
    SupersededActivity,
};
pub use pubsub::{open_live_connection, LiveMessage, LiveMessages, LiveSubscriptions};
pub use redis_connection::RedisConnection;
pub use redis_store::{
    AcceptedState, EffectRequest, IdempotencyMark, RecentEvent, RecentPagesSlice, RedisStore,
    TokensTaken,
};

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    MongoDB,
    Redis,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::MongoDB => "MongoDB",
            Store::Redis => "Redis",
        }
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A store that did not answer as a whole: nothing about any single record is known to be wrong.
/// Built only through its constructors, so every outage names its store the same way.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store} is unavailable: {message}")]
pub struct StoreOutage {
    store: Store,
    message: String,
}

impl StoreOutage {
    pub fn mongo(error: impl std::fmt::Display) -> StoreOutage {
        StoreOutage {
            store: Store::MongoDB,
            message: error.to_string(),
        }
    }

    pub fn redis(error: impl std::fmt::Display) -> StoreOutage {
        StoreOutage {
            store: Store::Redis,
            message: error.to_string(),
        }
    }

    /// `store` did not answer within the budget set by the configuration key `budget_key`.
    pub fn timed_out(store: Store, budget_key: &str) -> StoreOutage {
        StoreOutage {
            store,
            message: format!("no answer within {budget_key}"),
        }
    }

    pub fn store(&self) -> Store {
        self.store
    }
}
