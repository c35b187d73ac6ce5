//! Per-tenant intake counts that add up across API instances: activities accepted (produced and
//! acknowledged), answered as duplicates (from the accepted marker, nothing produced) and refused
//! by the rate limit. Each instance counts in memory (an atomic add on the request path, no Redis
//! call) and adds its counts to one Redis hash per tenant every [`FLUSH_INTERVAL`]; the console
//! reads the hashes. A crash loses at most the counts of the last interval; a failed flush keeps
//! its counts for the next one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::TenantId;
use crate::store::RedisStore;

/// How often each instance adds its counts to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// What happened to an activity at intake; each is a field of the tenant's intake hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeOutcome {
    Accepted,
    Duplicate,
    RateLimited,
}

impl IntakeOutcome {
    pub const ALL: [IntakeOutcome; 3] = [
        IntakeOutcome::Accepted,
        IntakeOutcome::Duplicate,
        IntakeOutcome::RateLimited,
    ];

    /// The field in the Redis hash.
    pub fn field(self) -> &'static str {
        match self {
            IntakeOutcome::Accepted => "accepted",
            IntakeOutcome::Duplicate => "duplicate",
            IntakeOutcome::RateLimited => "rateLimited",
        }
    }
}

/// One instance's counts not yet added to Redis, per configured tenant.
pub struct IntakeTally {
    pending: HashMap<TenantId, [AtomicU64; 3]>,
}

impl IntakeTally {
    pub fn new(tenants: &[TenantId]) -> IntakeTally {
        IntakeTally {
            pending: tenants
                .iter()
                .map(|tenant| (tenant.clone(), Default::default()))
                .collect(),
        }
    }

    /// Counts `activities` with `outcome` for `tenant` (a tenant not configured is not counted:
    /// the API refuses it before anything is counted).
    pub fn add(&self, tenant: &TenantId, outcome: IntakeOutcome, activities: u64) {
        if activities == 0 {
            return;
        }
        if let Some(counts) = self.pending.get(tenant) {
            counts[outcome as usize].fetch_add(activities, Ordering::Relaxed);
        }
    }

    /// Adds the pending counts to Redis every [`FLUSH_INTERVAL`], and once more at shutdown.
    pub async fn run(self: Arc<IntakeTally>, redis: RedisStore, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = ticker.tick() => false,
            };
            self.flush(&redis).await;
            if stopping {
                return;
            }
        }
    }

    async fn flush(&self, redis: &RedisStore) {
        for (tenant, counts) in &self.pending {
            let taken: Vec<(IntakeOutcome, u64)> = IntakeOutcome::ALL
                .into_iter()
                .map(|outcome| (outcome, counts[outcome as usize].swap(0, Ordering::Relaxed)))
                .filter(|(_, amount)| *amount > 0)
                .collect();
            if taken.is_empty() {
                continue;
            }
            let fields: Vec<(&str, u64)> = taken
                .iter()
                .map(|(outcome, amount)| (outcome.field(), *amount))
                .collect();
            if let Err(outage) = redis.add_intake_counts(tenant, &fields).await {
                // Kept for the next flush: the counts are late, not lost.
                for (outcome, amount) in taken {
                    counts[outcome as usize].fetch_add(amount, Ordering::Relaxed);
                }
                tracing::debug!(%outage, %tenant, "intake counts not flushed; retrying");
            }
        }
    }
}
