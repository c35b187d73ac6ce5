//! Hot tenants: a tenant with `partition_spread = N` has its records spread over N partitions by a
//! bucket of its `entityId` (or `actorId`), so N consumers can drain it, where keying by tenant puts
//! all of it on one partition and one consumer.
//!
//! The record key stays the tenant id (the DLQ tools and the logs read it as the tenant); the
//! partition is chosen here instead. Bucket 0 is the partition Kafka's partitioner gives the tenant's
//! key (librdkafka's `consistent_random`: CRC-32 of the key modulo the partition count), and bucket b
//! lies b strides after it, a stride being `partitions / N`: the N buckets land on N distinct
//! partitions spaced evenly round the topic, and a tenant moved from 1 to N keeps a share of its
//! records where they were. Spaced, not neighbouring: a consumer group hands each member a
//! contiguous range of partitions (the cooperative-sticky assignor did, in the hot-tenant bench), so
//! neighbouring buckets all fell to one consumer and the spread bought nothing (BENCHMARKS.md, "Hot
//! tenant"). Activities with the same bucket field share a partition and keep their order; the
//! tenant as a whole does not.

use std::collections::HashMap;

use crate::config::{Settings, SpreadBy};
use crate::domain::{ActivityEnvelope, TenantId};

/// The spread tenants and how each spreads.
#[derive(Debug, Clone, Default)]
pub struct PartitionSpread {
    tenants: HashMap<TenantId, TenantSpread>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TenantSpread {
    buckets: u32,
    by: SpreadBy,
}

impl PartitionSpread {
    /// The tenants configured with `partition_spread` above 1 (the settings are validated: ids
    /// parse, spreads are within `kafka.partitions`).
    pub fn from_settings(settings: &Settings) -> PartitionSpread {
        let tenants = settings
            .tenants
            .iter()
            .filter(|(_, tenant)| tenant.partition_spread > 1)
            .filter_map(|(id, tenant)| {
                Some((
                    TenantId::parse(id).ok()?,
                    TenantSpread {
                        buckets: tenant.partition_spread,
                        by: tenant.spread_by,
                    },
                ))
            })
            .collect();
        PartitionSpread { tenants }
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Whether `tenant`'s records need a partition chosen here (it is spread).
    pub fn spreads(&self, tenant: &TenantId) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// The partition of `envelope`'s record in a topic of `partitions` partitions; `None` for a
    /// tenant that is not spread (Kafka's partitioner places its records by key).
    pub fn partition(&self, envelope: &ActivityEnvelope, partitions: u32) -> Option<i32> {
        let spread = self.tenants.get(&envelope.tenant_id)?;
        if partitions == 0 {
            return None;
        }
        let activity = &envelope.activity;
        let field = match spread.by {
            SpreadBy::Entity => activity.entity_id.as_deref().unwrap_or(&activity.actor_id),
            SpreadBy::Actor => activity.actor_id.as_str(),
        };
        // Validation keeps the spread within kafka.partitions, but the topic itself may have been
        // made by hand with fewer: its records still go to partitions that exist.
        let buckets = spread.buckets.min(partitions);
        let bucket = crc32fast::hash(field.as_bytes()) % buckets;
        // bucket × stride < buckets × stride ≤ partitions: distinct buckets, distinct partitions.
        let stride = partitions / buckets;
        let partition =
            (key_partition(envelope.tenant_id.as_str(), partitions) + bucket * stride) % partitions;
        i32::try_from(partition).ok()
    }
}

/// The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty key.
fn key_partition(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use chrono::Utc;

    use super::*;
    use crate::domain::{IdempotencyKey, NewActivity, ACTIVITY_SCHEMA_ID};

    fn envelope(tenant: &str, actor: &str, entity: Option<&str>) -> ActivityEnvelope {
        ActivityEnvelope {
            schema: ACTIVITY_SCHEMA_ID.to_owned(),
            tenant_id: TenantId::parse(tenant).unwrap(),
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            enqueued_at: Utc::now(),
            activity: NewActivity {
                actor_id: actor.to_owned(),
                actor_name: "A".to_owned(),
                activity_type: "t".to_owned(),
                entity_id: entity.map(str::to_owned),
                metadata: None,
            },
        }
    }

    fn spread(tenant: &str, buckets: u32, by: SpreadBy) -> PartitionSpread {
        PartitionSpread {
            tenants: HashMap::from([(
                TenantId::parse(tenant).unwrap(),
                TenantSpread { buckets, by },
            )]),
        }
    }

    #[test]
    fn the_key_partition_is_librdkafkas_crc32_of_the_key() {
        // CRC-32 (IEEE) of "acme" is 0x05c4ba3e (Python's zlib.crc32 agrees); librdkafka's
        // consistent_random takes it modulo the partition count.
        assert_eq!(crc32fast::hash(b"acme"), 0x05c4_ba3e);
        assert_eq!(key_partition("acme", 12), 0x05c4_ba3e % 12);
    }

    #[test]
    fn a_spread_tenant_covers_exactly_its_buckets_a_stride_apart_from_its_key_partition() {
        let spread = spread("acme", 4, SpreadBy::Entity);
        let partitions: HashSet<i32> = (0..200)
            .filter_map(|n| spread.partition(&envelope("acme", "u", Some(&format!("e{n}"))), 12))
            .collect();
        let base = key_partition("acme", 12);
        let expected: HashSet<i32> = (0..4).map(|b| ((base + b * 3) % 12) as i32).collect();
        assert_eq!(partitions, expected);
    }

    /// A consumer group gives each member a contiguous range of partitions (seen with librdkafka's
    /// cooperative-sticky assignor in the hot-tenant bench: 0-5 to one consumer, 6-11 to the other).
    /// Neighbouring buckets would all sit in one member's range, and the spread would buy nothing.
    #[test]
    fn a_spread_tenants_partitions_are_spaced_so_contiguous_ranges_share_them_out() {
        for tenant in ["acme", "bench00", "globex"] {
            let spread = spread(tenant, 4, SpreadBy::Entity);
            let partitions: HashSet<i32> = (0..400)
                .filter_map(|n| {
                    spread.partition(&envelope(tenant, "u", Some(&format!("e{n}"))), 12)
                })
                .collect();
            assert_eq!(partitions.len(), 4, "{tenant}: {partitions:?}");
            for consumers in [2, 4] {
                let range = 12 / consumers;
                for member in 0..consumers {
                    let owned = partitions
                        .iter()
                        .filter(|&&p| (member * range..(member + 1) * range).contains(&p))
                        .count();
                    assert_eq!(
                        owned,
                        (4 / consumers) as usize,
                        "{tenant}: {consumers} consumers, member {member} owns {owned} of {partitions:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_entity_always_goes_to_one_partition_and_other_tenants_are_not_placed() {
        let spread = spread("acme", 4, SpreadBy::Entity);
        let first = spread.partition(&envelope("acme", "u1", Some("doc-7")), 12);
        for actor in ["u2", "u3", "u4"] {
            assert_eq!(
                spread.partition(&envelope("acme", actor, Some("doc-7")), 12),
                first
            );
        }
        assert_eq!(
            spread.partition(&envelope("globex", "u1", Some("doc-7")), 12),
            None
        );
        // Without an entity, the actor picks the bucket.
        assert_eq!(
            spread.partition(&envelope("acme", "doc-7", None), 12),
            first,
            "an activity without entityId goes by its actorId"
        );
    }

    #[test]
    fn spread_by_actor_keeps_an_actors_activities_together() {
        let spread = spread("acme", 3, SpreadBy::Actor);
        let first = spread.partition(&envelope("acme", "u1", Some("e1")), 6);
        assert_eq!(
            spread.partition(&envelope("acme", "u1", Some("e2")), 6),
            first
        );
        assert!(first.is_some_and(|partition| (0..6).contains(&partition)));
    }

    #[test]
    fn a_topic_smaller_than_the_spread_still_gets_valid_partitions() {
        let spread = spread("acme", 8, SpreadBy::Entity);
        for n in 0..50 {
            let partition = spread
                .partition(&envelope("acme", "u", Some(&format!("e{n}"))), 3)
                .unwrap();
            assert!((0..3).contains(&partition));
        }
    }
}
