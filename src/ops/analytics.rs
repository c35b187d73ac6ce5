//! `analytics rebuild`: recompute the Redis counters from MongoDB, the source of truth, for when Redis
//! lost them (a flush, a failover without persistence).

use std::collections::BTreeMap;

use crate::config::Settings;
use crate::domain::TenantId;
use crate::store::{ActivityRepository, RedisStore};

/// The rebuild's aggregates run without a server-side budget (`maxTimeMS`): they read a tenant's
/// whole history, which takes as long as it is big, and the operator's command waits for them with no
/// deadline of its own; any budget would only make the biggest tenants impossible to rebuild. It is
/// an operator's command run once in a while, not a request path that clients can repeat in a burst;
/// like any scan of a whole collection it loads the store while it runs (README: run it off-peak).
const WHOLE_COLLECTION: Option<std::time::Duration> = None;

/// Rebuilds the counters of `tenant`, or of every tenant with stored activities. Returns the counts
/// written per tenant.
///
/// Activities stored while the rebuild runs may be counted twice or not at all for that moment; run it
/// with the consumers stopped, or run it again after they drained, for exact figures.
pub async fn rebuild(
    settings: &Settings,
    tenant: Option<&TenantId>,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, i64>>> {
    let repository = ActivityRepository::connect(&settings.mongo).await?;
    let redis = RedisStore::connect(&settings.redis)?;
    let tenants: Vec<TenantId> = match tenant {
        Some(tenant) => vec![tenant.clone()],
        None => repository
            .tenants(WHOLE_COLLECTION)
            .await?
            .iter()
            .filter_map(|tenant| TenantId::parse(tenant).ok())
            .collect(),
    };
    let mut rebuilt = BTreeMap::new();
    for tenant in tenants {
        let counts = repository.count_by_type(&tenant, WHOLE_COLLECTION).await?;
        redis.replace_analytics(&tenant, &counts).await?;
        tracing::info!(%tenant, types = counts.len(), "analytics rebuilt");
        rebuilt.insert(tenant.to_string(), counts);
    }
    Ok(rebuilt)
}
