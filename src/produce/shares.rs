//! A bound on concurrent work of one kind on an instance, with a fair share per tenant: the pool of
//! SSE replays (`replay.rs`) and the pool of store reads (`read.rs`) are both one of these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::TenantId;

/// Permits of one instance: at most `instance` held at once, at most `per_tenant` of them by one
/// tenant, so one tenant's burst cannot take the pool from the others.
pub struct TenantShares {
    instance: Arc<Semaphore>,
    /// One semaphore per tenant that asked here, made on first use. Tenants are configured, so the
    /// map is as small as the tenant list.
    tenants: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
    per_tenant: usize,
    /// How long a caller queues for a permit before it is refused (and answered 503 Retry-After).
    wait: Duration,
}

/// Why no permit was free within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareRefusal {
    /// The tenant holds its whole share.
    TenantShare,
    /// The tenant has room but the instance's pool is taken.
    Instance,
}

/// One permit of the tenant's share and one of the instance's pool, both given back when dropped.
#[derive(Debug)]
pub struct SharePermit {
    _tenant: OwnedSemaphorePermit,
    _instance: OwnedSemaphorePermit,
}

impl TenantShares {
    pub fn new(instance: usize, per_tenant: usize, wait: Duration) -> TenantShares {
        TenantShares {
            instance: Arc::new(Semaphore::new(instance)),
            tenants: Mutex::new(HashMap::new()),
            per_tenant,
            wait,
        }
    }

    /// A permit for `tenant`, queueing at most the configured wait. The tenant's share is taken
    /// first, so a tenant over its share waits without holding one of the instance's permits.
    pub async fn take(&self, tenant: &TenantId) -> Result<SharePermit, ShareRefusal> {
        let share = self
            .tenants
            .lock()
            .expect("tenant shares lock")
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone();
        let deadline = tokio::time::Instant::now() + self.wait;
        let tenant_permit = tokio::time::timeout_at(deadline, share.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(ShareRefusal::TenantShare)?;
        let instance_permit =
            tokio::time::timeout_at(deadline, self.instance.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(ShareRefusal::Instance)?;
        Ok(SharePermit {
            _tenant: tenant_permit,
            _instance: instance_permit,
        })
    }
}
