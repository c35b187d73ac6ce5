//! Idempotency layer 2 at the API: Redis "accepted" markers, set after the broker acknowledged, so a
//! client retry of an acknowledged key is answered 202 `duplicate: true` without producing again.
//!
//! Never a reason to fail a request: every call is bounded by `intake.dedupe_timeout_ms`, and after a
//! failure the markers are skipped for a short while instead of making every request wait for a
//! Redis that is down. Without them, a retry is produced again and the consumer deduplicates it
//! (layer 3), so correctness never depends on this layer; it saves work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::domain::{IdempotencyKey, TenantId};
use crate::store::RedisStore;

/// How long the markers are skipped after Redis failed or was too slow.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub struct AcceptedMarkers {
    redis: RedisStore,
    timeout: Duration,
    /// Start of the clock `skip_until_ms` counts from.
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked (a tiny circuit breaker).
    skip_until_ms: AtomicU64,
}

impl AcceptedMarkers {
    pub fn new(redis: RedisStore, timeout: Duration) -> AcceptedMarkers {
        AcceptedMarkers {
            redis,
            timeout,
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        }
    }

    /// Which of `pairs` were already accepted; all `false` when Redis cannot tell in time.
    pub async fn accepted(&self, pairs: &[(&TenantId, &IdempotencyKey)]) -> Vec<bool> {
        if pairs.is_empty() || self.skipping() {
            return vec![false; pairs.len()];
        }
        match tokio::time::timeout(self.timeout, self.redis.accepted(pairs)).await {
            Ok(Ok(found)) => found,
            Ok(Err(outage)) => {
                self.fail(&outage.to_string());
                vec![false; pairs.len()]
            }
            Err(_) => {
                self.fail("timed out");
                vec![false; pairs.len()]
            }
        }
    }

    /// Marks `pairs` accepted, best effort.
    pub async fn mark(&self, pairs: &[(&TenantId, &IdempotencyKey)]) {
        if pairs.is_empty() || self.skipping() {
            return;
        }
        match tokio::time::timeout(self.timeout, self.redis.mark_accepted(pairs)).await {
            Ok(Ok(())) => {}
            Ok(Err(outage)) => self.fail(&outage.to_string()),
            Err(_) => self.fail("timed out"),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn skipping(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn fail(&self, why: &str) {
        let until = self.now_ms() + SKIP_AFTER_FAILURE.as_millis() as u64;
        self.skip_until_ms.store(until, Ordering::Relaxed);
        tracing::debug!(
            why,
            "accepted markers unavailable; producing without them for a moment"
        );
    }
}
