//! The per-tenant rate limit of intake: a token bucket per tenant (GCRA), counted in activities, so
//! a batch of 500 costs 500.
//!
//! With `rate_limit.shared` (the default) the bucket lives in Redis and every API instance takes
//! from it, so a tenant's limit holds however its clients spread over the instances (one script
//! call per lease, within `intake.dedupe_timeout_ms`). A call takes `rate_limit.lease_ms` worth of
//! the tenant's rate, or what the request needs if more, and the instance spends it before calling
//! again (with a call per request, single-request intake made 0.6–0.8 of the rate it makes with
//! leases; BENCHMARKS.md). What an instance holds unspent (less than one lease) was taken from the
//! shared bucket already, so the instances never admit more than the bucket gave; a lease taken
//! while the tenant was quiet can add to its next burst, by at most a lease per instance, and a
//! lease lost with a call that timed out or a request that was dropped is never admitted. When
//! Redis fails or is slower than that,
//! each instance falls back to a bucket of its own (`governor`) for a moment: Redis never fails
//! intake, and during a Redis outage a tenant may get up to its limit from each instance. Tenants
//! are known from the configuration, so every local bucket is made up front and the map never grows.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::skip::SkipAfterFailure;
use crate::config::RateLimitSettings;
use crate::domain::TenantId;
use crate::store::{RedisStore, TokensTaken};

/// Per-tenant token buckets; `None` when the limit is off (`rate_limit.per_tenant_per_sec = 0`).
pub struct TenantRateLimiter {
    buckets: Option<HashMap<TenantId, DefaultDirectRateLimiter>>,
    clock: DefaultClock,
    /// The buckets in Redis that all instances share, when `rate_limit.shared`.
    shared: Option<SharedBuckets>,
}

/// The Redis side of the limit: the same GCRA, one bucket per tenant for all instances.
struct SharedBuckets {
    redis: RedisStore,
    /// Time per activity at the sustained rate.
    interval: Duration,
    /// How far ahead of now the bucket may run: `interval` x burst.
    tolerance: Duration,
    timeout: Duration,
    skip: SkipAfterFailure,
    /// Activities one call takes beyond what the request needs (`rate_limit.lease_tokens`).
    lease: u64,
    /// What this instance holds of each tenant's bucket; empty without leases (`lease` 0). The lock
    /// is held across the call that refills it, so one request per tenant and instance calls Redis
    /// while the others wait for its lease instead of each taking one.
    leases: HashMap<TenantId, tokio::sync::Mutex<Lease>>,
}

/// What this instance holds of one tenant's shared bucket.
#[derive(Default)]
struct Lease {
    /// Activities taken from the shared bucket and not spent yet.
    unspent: u64,
    /// The bucket's last refusal: before this instant it cannot give this many activities (other
    /// instances only take from it), so a request missing as many is refused without a call: a
    /// tenant over its limit costs Redis a call per refusal period, not one per request.
    refused: Option<(Instant, u64)>,
}

/// What the shared bucket decided for one request.
enum SharedDecision {
    Admit,
    Refuse(Duration),
    /// Redis failed, was too slow, or is being skipped: the local bucket decides.
    Unavailable,
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
            shared: None,
        }
    }

    /// Takes from the tenant's bucket in Redis, shared by every instance, when the limit is on and
    /// `rate_limit.shared`; `timeout` bounds each call (past it, or on a failure, this instance's own
    /// bucket decides for a moment, counted in `fallbacks`).
    pub fn shared_through(
        mut self,
        settings: &RateLimitSettings,
        redis: RedisStore,
        timeout: Duration,
        fallbacks: prometheus::IntCounter,
    ) -> TenantRateLimiter {
        if settings.shared && settings.per_tenant_per_sec > 0 {
            let interval = Duration::from_secs_f64(1.0 / f64::from(settings.per_tenant_per_sec));
            let burst = settings.burst.max(1);
            let lease = settings.lease_tokens();
            let leases = match lease {
                0 => HashMap::new(),
                _ => self
                    .buckets
                    .iter()
                    .flat_map(HashMap::keys)
                    .map(|tenant| (tenant.clone(), tokio::sync::Mutex::default()))
                    .collect(),
            };
            self.shared = Some(SharedBuckets {
                redis,
                interval,
                tolerance: interval * burst,
                timeout,
                skip: SkipAfterFailure::new(
                    "the shared rate limit is unavailable; this instance's own bucket decides for a moment",
                    fallbacks,
                ),
                lease,
                leases,
            });
        }
        self
    }

    /// Takes `activities` tokens from the tenant's bucket (the shared one when it answers in time),
    /// or says how long until it could.
    pub async fn check(&self, tenant: &TenantId, activities: usize) -> Result<(), RateLimited> {
        if self.buckets.is_none() || activities == 0 {
            return Ok(());
        }
        if let Some(shared) = &self.shared {
            match shared.take(tenant, activities as u64).await {
                SharedDecision::Admit => return Ok(()),
                SharedDecision::Refuse(retry_after) => return Err(RateLimited { retry_after }),
                SharedDecision::Unavailable => {}
            }
        }
        self.check_locally(tenant, activities)
    }

    /// Takes from this instance's own bucket.
    fn check_locally(&self, tenant: &TenantId, activities: usize) -> Result<(), RateLimited> {
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

impl SharedBuckets {
    /// Spends `cost` from what this instance holds of the tenant's shared bucket, first taking a
    /// lease from Redis when that is not enough.
    async fn take(&self, tenant: &TenantId, cost: u64) -> SharedDecision {
        if self.skip.skipping() {
            return SharedDecision::Unavailable;
        }
        let Some(lease) = self.leases.get(tenant) else {
            // No leases (`lease_ms` 0), or not a configured tenant (authentication refuses those
            // first): exactly the cost, concurrent requests each with a call of their own.
            return self.call(tenant, cost, cost).await.0;
        };
        let mut lease = lease.lock().await;
        if lease.unspent >= cost {
            lease.unspent -= cost;
            return SharedDecision::Admit;
        }
        let missing = cost - lease.unspent;
        if let Some((until, at_least)) = lease.refused {
            let now = Instant::now();
            if now < until && missing >= at_least {
                return SharedDecision::Refuse(until - now);
            }
        }
        // Asked again after the wait for the lock: the request before may have found Redis down.
        if self.skip.skipping() {
            return SharedDecision::Unavailable;
        }
        let asked_at = Instant::now();
        let (decision, taken) = self.call(tenant, missing, missing.max(self.lease)).await;
        match decision {
            SharedDecision::Admit => {
                lease.unspent = (lease.unspent + taken).saturating_sub(cost);
                lease.refused = None;
            }
            // Redis answered at or after `asked_at`, so `until` is at or before the moment the
            // bucket could give `missing`: refusing until then never refuses what it would admit.
            SharedDecision::Refuse(retry_after) => {
                lease.refused = Some((asked_at + retry_after, missing));
            }
            SharedDecision::Unavailable => {}
        }
        decision
    }

    /// One call to the tenant's bucket in Redis for at least `fewest` and at most `most` activities:
    /// the decision and how many it took.
    async fn call(&self, tenant: &TenantId, fewest: u64, most: u64) -> (SharedDecision, u64) {
        let call = self
            .redis
            .take_tokens(tenant, fewest, most, self.interval, self.tolerance);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(TokensTaken::Taken(taken))) => (SharedDecision::Admit, taken),
            Ok(Ok(TokensTaken::NotBefore(retry_after))) => (SharedDecision::Refuse(retry_after), 0),
            Ok(Err(outage)) => {
                self.skip.failed(&outage.to_string());
                (SharedDecision::Unavailable, 0)
            }
            Err(_) => {
                self.skip.failed("timed out");
                (SharedDecision::Unavailable, 0)
            }
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
                shared: false,
                lease_ms: 0,
            },
            [&acme, &globex],
        );
        (limiter, acme, globex)
    }

    #[test]
    fn a_tenant_over_its_burst_waits_and_others_do_not() {
        let (limiter, acme, globex) = limiter(1, 3);
        assert!(limiter.check_locally(&acme, 2).is_ok());
        assert!(limiter.check_locally(&acme, 1).is_ok());
        let limited = limiter.check_locally(&acme, 1).unwrap_err();
        assert!(limited.retry_after > Duration::ZERO);
        assert_eq!(limited.retry_after_secs(), 1);
        assert!(
            limiter.check_locally(&globex, 3).is_ok(),
            "buckets are per tenant"
        );
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let (limiter, acme, _) = limiter(0, 0);
        for _ in 0..1000 {
            assert!(limiter.check_locally(&acme, 1000).is_ok());
        }
    }

    #[test]
    fn a_cost_above_the_burst_is_refused() {
        let (limiter, acme, _) = limiter(10, 10);
        assert!(limiter.check_locally(&acme, 11).is_err());
    }
}
