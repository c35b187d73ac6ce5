//! A tiny circuit breaker for the API's optional Redis calls (the accepted markers, the shared rate
//! limit): after a failure or a call past its budget, Redis is not asked for a second, so a Redis
//! that is down costs each request nothing rather than a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// How long Redis is skipped after it failed or was too slow.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub struct SkipAfterFailure {
    /// Logged (at debug) on each failure: what the caller does without Redis.
    meanwhile: &'static str,
    /// Start of the clock `skip_until_ms` counts from.
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked.
    skip_until_ms: AtomicU64,
    /// Counts each failure (`activity_pipeline_redis_fallbacks_total`): without it, an API that
    /// keeps going without Redis looks healthy from outside.
    fallbacks: IntCounter,
}

impl SkipAfterFailure {
    pub fn new(meanwhile: &'static str, fallbacks: IntCounter) -> SkipAfterFailure {
        SkipAfterFailure {
            meanwhile,
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            fallbacks,
        }
    }

    pub fn skipping(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed)
    }

    pub fn failed(&self, why: &str) {
        let until = self.now_ms() + SKIP_AFTER_FAILURE.as_millis() as u64;
        self.skip_until_ms.store(until, Ordering::Relaxed);
        self.fallbacks.inc();
        tracing::debug!(why, "{}", self.meanwhile);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_skips_redis_for_a_moment_and_is_counted() {
        let fallbacks = IntCounter::new("fallbacks", "test").unwrap();
        let skip = SkipAfterFailure::new("test", fallbacks.clone());
        assert!(!skip.skipping());
        assert_eq!(fallbacks.get(), 0);
        skip.failed("down");
        assert!(skip.skipping());
        assert_eq!(fallbacks.get(), 1);
    }
}
