use std::collections::{BTreeMap, HashSet};

use chrono::Utc;

use crate::config::Settings;
use crate::domain::{ActivityEnvelope, ActivityValidator, IdempotencyKey, TenantId};
use crate::kafka::{ActivityPublisher, ConsumedRecord, DeadLetter, PublishError};
use crate::store::{
    ActivityRepository, EffectRequest, InsertOutcome, RedisStore, StoreOutage, StoredActivity,
};

/// A dependency that failed as a whole: the batch is retried in place and no offset moves.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingOutage {
    #[error(transparent)]
    Store(#[from] StoreOutage),
    #[error("Kafka did not take a dead letter: {0}")]
    Kafka(#[from] PublishError),
}

/// What a batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Stored by this batch.
    pub inserted: usize,
    /// Already stored by an earlier delivery (or twice in this batch): no new effect.
    pub duplicates: usize,
    /// Announced (counted and published) by this batch: equals `inserted` plus any earlier stored
    /// activity whose Redis step had not happened yet.
    pub announced: usize,
    pub dead_lettered: usize,
}

/// Applies a batch's effects in the order that makes redelivery harmless: MongoDB (unique key) first,
/// then the atomic Redis step, then dead letters; the caller stores offsets after all of it.
pub struct BatchProcessor {
    validator: ActivityValidator,
    repository: ActivityRepository,
    redis: RedisStore,
    dead_letters: ActivityPublisher,
}

/// A record that will not be stored, and why.
struct Refusal<'a> {
    record: &'a ConsumedRecord,
    error: String,
    class: &'static str,
}

impl BatchProcessor {
    pub fn new(
        settings: &Settings,
        repository: ActivityRepository,
        redis: RedisStore,
        dead_letters: ActivityPublisher,
    ) -> BatchProcessor {
        BatchProcessor {
            validator: ActivityValidator::new(
                settings.limits.metadata_max_bytes,
                settings.limits.metadata_max_depth,
            ),
            repository,
            redis,
            dead_letters,
        }
    }

    pub async fn process(&self, batch: &[ConsumedRecord]) -> Result<BatchReport, ProcessingOutage> {
        let mut report = BatchReport::default();
        let mut refusals = Vec::new();

        // 1. Decode. A record that cannot be decoded never will be: it is poison, for the DLQ.
        let mut seen = HashSet::new();
        let mut envelopes: Vec<(&ConsumedRecord, ActivityEnvelope)> =
            Vec::with_capacity(batch.len());
        for record in batch {
            let decoded = match &record.payload {
                None => Err("record has no value".to_owned()),
                Some(payload) => ActivityEnvelope::decode(payload, &self.validator)
                    .map_err(|error| error.to_string()),
            };
            match decoded {
                Ok(envelope) => {
                    if seen.insert((envelope.tenant_id.clone(), envelope.idempotency_key.clone())) {
                        envelopes.push((record, envelope));
                    } else {
                        report.duplicates += 1;
                    }
                }
                Err(error) => refusals.push(Refusal {
                    record,
                    error,
                    class: "poison",
                }),
            }
        }

        // 2. Skip what Redis already marked. Without Redis, skip the check: the unique key dedupes.
        let pairs: Vec<(&TenantId, &IdempotencyKey)> = envelopes
            .iter()
            .map(|(_, envelope)| (&envelope.tenant_id, &envelope.idempotency_key))
            .collect();
        let marked = match self.redis.already_marked(&pairs).await {
            Ok(marked) => marked,
            Err(outage) => {
                tracing::warn!(%outage, "idempotency pre-check skipped");
                vec![false; pairs.len()]
            }
        };
        let now = Utc::now();
        let mut pending: Vec<(&ConsumedRecord, &ActivityEnvelope)> = Vec::new();
        let mut documents = Vec::new();
        for ((record, envelope), already) in envelopes.iter().zip(marked) {
            if already {
                report.duplicates += 1;
                continue;
            }
            match StoredActivity::from_envelope(envelope, now) {
                Ok(document) => {
                    pending.push((record, envelope));
                    documents.push(document);
                }
                Err(error) => refusals.push(Refusal {
                    record,
                    error,
                    class: "rejected",
                }),
            }
        }

        // 3. Store. Duplicates are fine; a document the server refuses is dead-lettered.
        let outcomes = self.repository.insert_unordered(&documents).await?;
        let mut to_announce: Vec<StoredActivity> = Vec::new();
        let mut stored_earlier: BTreeMap<&TenantId, Vec<&IdempotencyKey>> = BTreeMap::new();
        for (((record, envelope), document), outcome) in pending.iter().zip(documents).zip(outcomes)
        {
            match outcome {
                InsertOutcome::Inserted => {
                    report.inserted += 1;
                    to_announce.push(document);
                }
                InsertOutcome::AlreadyStored => {
                    report.duplicates += 1;
                    stored_earlier
                        .entry(&envelope.tenant_id)
                        .or_default()
                        .push(&envelope.idempotency_key);
                }
                InsertOutcome::Rejected { code, message } => refusals.push(Refusal {
                    record,
                    error: format!("MongoDB refused the document (code {code}): {message}"),
                    class: "rejected",
                }),
            }
        }
        // Stored by an earlier delivery that may have died before its Redis step: announce the stored
        // document (the Redis step is a no-op if it did happen).
        for (tenant, keys) in stored_earlier {
            to_announce.extend(self.repository.find_by_keys(tenant, &keys).await?);
        }

        // 4. Mark, count, publish: atomically per record, and only once per key.
        let tenants: Vec<TenantId> = to_announce
            .iter()
            .map(|stored| TenantId::parse(&stored.tenant_id))
            .collect::<Result<_, _>>()
            .map_err(|error| StoreOutage {
                store: "MongoDB",
                message: format!("a stored document has an invalid tenant: {error}"),
            })?;
        let keys: Vec<IdempotencyKey> = to_announce
            .iter()
            .map(|stored| IdempotencyKey::parse(&stored.idempotency_key))
            .collect::<Result<_, _>>()
            .map_err(|error| StoreOutage {
                store: "MongoDB",
                message: format!("a stored document has an invalid idempotency key: {error}"),
            })?;
        let requests: Vec<EffectRequest<'_>> = to_announce
            .iter()
            .zip(tenants.iter().zip(&keys))
            .map(|(stored, (tenant, key))| EffectRequest {
                tenant,
                key,
                document_id: stored.id.to_hex(),
                activity_type: &stored.activity_type,
                event: stored.to_json().to_string(),
            })
            .collect();
        let newly_marked = self.redis.apply_effects(&requests).await?;
        report.announced = newly_marked.iter().filter(|newly| **newly).count();

        // 5. Dead letters, acknowledged before the offsets move past them.
        for refusal in &refusals {
            let failed_at = Utc::now();
            tracing::warn!(
                topic = %refusal.record.topic,
                partition = refusal.record.partition,
                offset = refusal.record.offset,
                class = refusal.class,
                error = %refusal.error,
                "record dead-lettered"
            );
            self.dead_letters
                .dead_letter(&DeadLetter {
                    record: refusal.record,
                    error: refusal.error.clone(),
                    error_class: refusal.class,
                    attempts: 1,
                    first_failure_at: failed_at,
                    last_failure_at: failed_at,
                })
                .await?;
        }
        report.dead_lettered = refusals.len();
        Ok(report)
    }
}
