//! Per-tenant intake counts that add up across API instances: activities accepted (produced and
//! acknowledged), answered as duplicates (from the accepted marker, nothing produced) and refused
//! by the rate limit. Each instance counts in memory (an atomic add on the request path, no Redis
//! call) and adds its counts to one Redis hash per tenant every [`FLUSH_INTERVAL`]; the console
//! reads the hashes. A crash loses at most the counts of the last interval. A failed flush is sent
//! again as it was, under the same flush id, and Redis adds a flush id's counts once: a flush that
//! timed out after its write landed is not counted twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::TenantId;
use crate::store::{IntakeFlushId, RedisStore};

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
    /// Names this process's flushes; see [`IntakeFlushId`].
    instance: uuid::Uuid,
    pending: HashMap<TenantId, TenantTally>,
}

#[derive(Default)]
struct TenantTally {
    /// Counted since the last flush took them, per [`IntakeOutcome`].
    counts: [AtomicU64; 3],
    /// The flush in flight or failed: retried as it was (same id, same amounts) until Redis
    /// answers, so a retry of a flush that had in fact landed adds nothing.
    unconfirmed: Mutex<Option<PendingFlush>>,
    /// The sequence number of the tenant's next flush.
    next_sequence: AtomicU64,
}

#[derive(Debug, Clone)]
struct PendingFlush {
    id: IntakeFlushId,
    amounts: Vec<(IntakeOutcome, u64)>,
}

impl IntakeTally {
    pub fn new(tenants: &[TenantId]) -> IntakeTally {
        IntakeTally {
            instance: uuid::Uuid::now_v7(),
            pending: tenants
                .iter()
                .map(|tenant| (tenant.clone(), TenantTally::default()))
                .collect(),
        }
    }

    /// Counts `activities` with `outcome` for `tenant` (a tenant not configured is not counted:
    /// the API refuses it before anything is counted).
    pub fn add(&self, tenant: &TenantId, outcome: IntakeOutcome, activities: u64) {
        if activities == 0 {
            return;
        }
        if let Some(tally) = self.pending.get(tenant) {
            tally.counts[outcome as usize].fetch_add(activities, Ordering::Relaxed);
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

    /// Adds to Redis, per tenant, the flush that has not been confirmed yet, or else what was
    /// counted since the last flush. Only [`IntakeTally::run`] calls it (and tests): two flushes
    /// at once would each send the same unconfirmed flush, which is harmless but wasted.
    pub async fn flush(&self, redis: &RedisStore) {
        for (tenant, tally) in &self.pending {
            let Some(flush) = self.flush_to_send(tally) else {
                continue;
            };
            let fields: Vec<(&str, u64)> = flush
                .amounts
                .iter()
                .map(|(outcome, amount)| (outcome.field(), *amount))
                .collect();
            match redis.add_intake_counts(tenant, &flush.id, &fields).await {
                Ok(_added_now_or_before) => {
                    *tally.unconfirmed.lock().expect("unconfirmed flush lock") = None;
                }
                Err(outage) => {
                    // Kept as it is for the next flush: the counts are late, not lost, and not
                    // added twice if this one reached Redis after all.
                    tracing::debug!(%outage, %tenant, "intake counts not flushed; retrying");
                }
            }
        }
    }

    /// The id of the tenant's flush not confirmed by Redis yet, if one is (the last attempt
    /// failed or is in flight).
    pub fn unconfirmed_flush(&self, tenant: &TenantId) -> Option<IntakeFlushId> {
        let tally = self.pending.get(tenant)?;
        let unconfirmed = tally.unconfirmed.lock().expect("unconfirmed flush lock");
        unconfirmed.as_ref().map(|flush| flush.id)
    }

    /// The unconfirmed flush again, or a new one of the counts taken now (none when nothing was
    /// counted). The new one is recorded as unconfirmed before it is sent.
    fn flush_to_send(&self, tally: &TenantTally) -> Option<PendingFlush> {
        let mut unconfirmed = tally.unconfirmed.lock().expect("unconfirmed flush lock");
        if let Some(flush) = unconfirmed.as_ref() {
            return Some(flush.clone());
        }
        let amounts: Vec<(IntakeOutcome, u64)> = IntakeOutcome::ALL
            .into_iter()
            .map(|outcome| {
                let amount = tally.counts[outcome as usize].swap(0, Ordering::Relaxed);
                (outcome, amount)
            })
            .filter(|(_, amount)| *amount > 0)
            .collect();
        if amounts.is_empty() {
            return None;
        }
        let flush = PendingFlush {
            id: IntakeFlushId {
                instance: self.instance,
                sequence: tally.next_sequence.fetch_add(1, Ordering::Relaxed),
            },
            amounts,
        };
        *unconfirmed = Some(flush.clone());
        Some(flush)
    }
}
