//! The per-tenant rate limit of intake: a token bucket per tenant (GCRA, from `governor`), counted in
//! activities, so a batch of 500 costs 500. Tenants are known from the configuration, so every bucket
//! is made up front and the map never grows.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitSettings;
use crate::domain::TenantId;

/// Per-tenant token buckets; `None` when the limit is off (`rate_limit.per_tenant_per_sec = 0`).
pub struct TenantRateLimiter {
    buckets: Option<HashMap<TenantId, DefaultDirectRateLimiter>>,
    clock: DefaultClock,
}

/// Over the limit: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub retry_after: Duration,
}

impl RateLimited {
    /// `Retry-After` in whole seconds, at least 1 (the header has no fractions).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl TenantRateLimiter {
    pub fn new<'a>(
        settings: &RateLimitSettings,
        tenants: impl IntoIterator<Item = &'a TenantId>,
    ) -> TenantRateLimiter {
        let buckets = NonZeroU32::new(settings.per_tenant_per_sec).map(|rate| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
            let quota = Quota::per_second(rate).allow_burst(burst);
            tenants
                .into_iter()
                .map(|tenant| (tenant.clone(), RateLimiter::direct(quota)))
                .collect()
        });
        TenantRateLimiter {
            buckets,
            clock: DefaultClock::default(),
        }
    }

    /// Takes `activities` tokens from the tenant's bucket, or says how long until it could.
    pub fn check(&self, tenant: &TenantId, activities: usize) -> Result<(), RateLimited> {
        let Some(bucket) = self
            .buckets
            .as_ref()
            .and_then(|buckets| buckets.get(tenant))
        else {
            return Ok(());
        };
        let Some(cost) = u32::try_from(activities).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match bucket.check_n(cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            // More than the bucket can ever hold: configuration validation makes burst at least a
            // full batch, so this is only reachable with a larger batch, which is refused before.
            Err(_insufficient) => Err(RateLimited {
                retry_after: Duration::from_secs(1),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sec: u32, burst: u32) -> (TenantRateLimiter, TenantId, TenantId) {
        let acme = TenantId::parse("acme").unwrap();
        let globex = TenantId::parse("globex").unwrap();
        let limiter = TenantRateLimiter::new(
            &RateLimitSettings {
                per_tenant_per_sec: per_sec,
                burst,
            },
            [&acme, &globex],
        );
        (limiter, acme, globex)
    }

    #[test]
    fn a_tenant_over_its_burst_waits_and_others_do_not() {
        let (limiter, acme, globex) = limiter(1, 3);
        assert!(limiter.check(&acme, 2).is_ok());
        assert!(limiter.check(&acme, 1).is_ok());
        let limited = limiter.check(&acme, 1).unwrap_err();
        assert!(limited.retry_after > Duration::ZERO);
        assert_eq!(limited.retry_after_secs(), 1);
        assert!(limiter.check(&globex, 3).is_ok(), "buckets are per tenant");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let (limiter, acme, _) = limiter(0, 0);
        for _ in 0..1000 {
            assert!(limiter.check(&acme, 1000).is_ok());
        }
    }

    #[test]
    fn a_cost_above_the_burst_is_refused() {
        let (limiter, acme, _) = limiter(10, 10);
        assert!(limiter.check(&acme, 11).is_err());
    }
}
