use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::alerts::AlertSender;
use super::metrics::ConsumerMetrics;
use crate::config::Settings;
use crate::domain::{ActivityEnvelope, ActivityValidator, IdempotencyKey, TenantId};
use crate::kafka::{headers, ActivityPublisher, ConsumedRecord, Failure, PublishError};
use crate::store::{
    ActivityRepository, EffectRequest, InsertOutcome, RedisStore, StoreOutage, StoredActivity,
};

/// A dependency that failed as a whole: the batch is retried in place and no offset moves.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingOutage {
    #[error(transparent)]
    Store(#[from] StoreOutage),
    #[error("Kafka did not take a forwarded record: {0}")]
    Kafka(#[from] PublishError),
}

/// Which topic a batch came from: the main topic, or retry step `n` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Main,
    Retry(usize),
}

impl Stage {
    pub fn label(self) -> String {
        match self {
            Stage::Main => "main".to_owned(),
            Stage::Retry(step) => format!("retry.{step}"),
        }
    }
}

/// What a batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Stored by this batch.
    pub inserted: usize,
    /// Already stored by an earlier delivery (or twice in this batch): no new effect.
    pub duplicates: usize,
    /// Announced (counted and published) by this batch: `inserted` plus any earlier stored activity
    /// whose Redis step had not happened yet.
    pub announced: usize,
    /// Sent to a retry topic.
    pub retried: usize,
    pub dead_lettered: usize,
}

/// MongoDB error codes that fail the same way on every attempt: such a record goes to the DLQ at once.
/// Anything else refused for one document is treated as transient and retried on the schedule.
const DETERMINISTIC_WRITE_ERRORS: &[i32] = &[
    2,     // BadValue
    9,     // FailedToParse
    14,    // TypeMismatch
    52,    // DollarPrefixedFieldName
    55,    // InvalidDBRef
    56,    // EmptyFieldName
    57,    // DottedFieldName
    121,   // DocumentValidationFailure
    10334, // BSONObjectTooLarge
];

/// Applies a batch's effects in the order that makes redelivery harmless: MongoDB (unique key) first,
/// then the atomic Redis step, then forwards (retry topic, DLQ); the caller stores offsets after all
/// of it.
pub struct BatchProcessor {
    validator: ActivityValidator,
    repository: ActivityRepository,
    redis: RedisStore,
    publisher: ActivityPublisher,
    retry_delays: Vec<Duration>,
    retry_topics: Vec<String>,
    /// How long an idempotency mark lives: a document stored longer ago than this had its Redis step
    /// long ago (its mark has merely expired), so it must not be announced again.
    mark_ttl: chrono::Duration,
    metrics: Arc<ConsumerMetrics>,
    alerts: AlertSender,
}

/// A record that will not be stored by this attempt, and why.
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
        publisher: ActivityPublisher,
        metrics: Arc<ConsumerMetrics>,
        alerts: AlertSender,
    ) -> anyhow::Result<BatchProcessor> {
        // The API's limits, so the consumer never dead-letters what the API accepted.
        let validator = ActivityValidator::with_limits(&settings.limits.activity_limits())
            .map_err(|error| anyhow::anyhow!("configuration key `limits.{error}`"))?;
        Ok(BatchProcessor {
            validator,
            repository,
            redis,
            publisher,
            retry_delays: settings
                .retry
                .delays_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            retry_topics: (1..=settings.retry.delays_ms.len())
                .map(|step| settings.kafka.retry_topic_for(step))
                .collect(),
            mark_ttl: chrono::Duration::seconds(
                settings.redis.idempotency_ttl_secs.min(i64::MAX as u64) as i64,
            ),
            metrics,
            alerts,
        })
    }

    pub async fn process(
        &self,
        batch: &[ConsumedRecord],
        stage: Stage,
    ) -> Result<BatchReport, ProcessingOutage> {
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

        // 3. Store. Duplicates are fine; a document the server refuses is retried or dead-lettered.
        let outcomes = self.repository.insert_unordered(&documents).await?;
        let mut to_announce: Vec<StoredActivity> = Vec::new();
        let mut reported_duplicates: BTreeMap<&TenantId, Vec<(&ConsumedRecord, &IdempotencyKey)>> =
            BTreeMap::new();
        for (((record, envelope), document), outcome) in pending.iter().zip(documents).zip(outcomes)
        {
            match outcome {
                InsertOutcome::Inserted => {
                    report.inserted += 1;
                    let latency = (now - envelope.enqueued_at).to_std().unwrap_or_default();
                    self.metrics
                        .end_to_end_latency
                        .observe(latency.as_secs_f64());
                    to_announce.push(document);
                }
                InsertOutcome::AlreadyStored => reported_duplicates
                    .entry(&envelope.tenant_id)
                    .or_default()
                    .push((record, &envelope.idempotency_key)),
                InsertOutcome::Rejected { code, message } => refusals.push(Refusal {
                    record,
                    error: format!("MongoDB refused the document (code {code}): {message}"),
                    class: if DETERMINISTIC_WRITE_ERRORS.contains(&code) {
                        "rejected"
                    } else {
                        "transient"
                    },
                }),
            }
        }
        // A duplicate-key error is "already stored" only if our (tenant, key) is what is stored: a
        // conflict on any other unique index is a failure of this record. A stored one may have been
        // stored by a delivery that died before its Redis step: announce the stored document (the
        // Redis step is a no-op if it did happen).
        for (tenant, records) in reported_duplicates {
            let keys: Vec<&IdempotencyKey> = records.iter().map(|(_, key)| *key).collect();
            let stored = self.repository.find_by_keys(tenant, &keys).await?;
            for (record, key) in records {
                if stored
                    .iter()
                    .any(|document| document.idempotency_key == key.as_str())
                {
                    report.duplicates += 1;
                } else {
                    refusals.push(Refusal {
                        record,
                        error: "MongoDB reported a duplicate key, but not on (tenantId, idempotencyKey)".to_owned(),
                        class: "transient",
                    });
                }
            }
            // Stored within the mark's lifetime: its Redis step may not have happened, so announce it
            // (a no-op if it did). Stored before that: the step happened long ago and the mark just
            // expired; announcing again would count it twice (a replay of an old dead letter).
            let marks_live_since = now - self.mark_ttl;
            to_announce.extend(
                stored
                    .into_iter()
                    .filter(|document| document.created_at_utc() > marks_live_since),
            );
        }

        // 4. Mark, count, publish: atomically per record, and only once per key.
        report.announced = self.announce(&to_announce).await?;

        // 5. Forwards, acknowledged before the offsets move past them.
        for refusal in &refusals {
            if self.forward(refusal, stage).await? {
                report.retried += 1;
            } else {
                report.dead_lettered += 1;
            }
        }
        Ok(report)
    }

    async fn announce(&self, stored: &[StoredActivity]) -> Result<usize, StoreOutage> {
        let mut identities = Vec::with_capacity(stored.len());
        for document in stored {
            let tenant = TenantId::parse(&document.tenant_id);
            let key = IdempotencyKey::parse(&document.idempotency_key);
            match (tenant, key) {
                (Ok(tenant), Ok(key)) => identities.push((tenant, key)),
                _ => {
                    return Err(StoreOutage {
                        store: "MongoDB",
                        message: format!(
                            "stored document {} has an invalid tenant or key",
                            document.id
                        ),
                    })
                }
            }
        }
        let requests: Vec<EffectRequest<'_>> = stored
            .iter()
            .zip(&identities)
            .map(|(document, (tenant, key))| EffectRequest {
                tenant,
                key,
                document_id: document.id.to_hex(),
                activity_type: &document.activity_type,
                event: document.to_json().to_string(),
            })
            .collect();
        let newly_marked = self.redis.apply_effects(&requests).await?;
        Ok(newly_marked.iter().filter(|newly| **newly).count())
    }

    /// Sends a refused record on: to the next retry topic if its failure may pass and retries remain,
    /// else to the DLQ. `true` if it went to a retry topic.
    async fn forward(&self, refusal: &Refusal<'_>, stage: Stage) -> Result<bool, PublishError> {
        let record = refusal.record;
        let now = Utc::now();
        let attempts_before = match stage {
            Stage::Main => 0,
            Stage::Retry(_) => record
                .header(headers::RETRY_ATTEMPTS)
                .and_then(|attempts| attempts.parse::<u32>().ok())
                .unwrap_or(0),
        };
        let first_failure_at = record
            .header(headers::RETRY_FIRST_FAILURE_AT)
            .filter(|_| stage != Stage::Main)
            .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
            .map_or(now, |time| time.with_timezone(&Utc));
        let failure = Failure {
            error: refusal.error.clone(),
            class: refusal.class,
            attempts: attempts_before + 1,
            first_failure_at,
            last_failure_at: now,
        };
        let next_step = failure.attempts as usize;
        let span = tracing::warn_span!(
            "record",
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            tenant = record.key.as_deref().map(String::from_utf8_lossy).as_deref().unwrap_or("-"),
            key = record.header(headers::IDEMPOTENCY_KEY).unwrap_or("-"),
        );
        let _entered = span.enter();
        if refusal.class == "transient" && next_step <= self.retry_topics.len() {
            let delay = self.retry_delays[next_step - 1];
            let due_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            tracing::warn!(attempts = failure.attempts, error = %failure.error, retry_topic = %self.retry_topics[next_step - 1], ?delay, "record failed; retrying later");
            self.publisher
                .retry_later(&self.retry_topics[next_step - 1], record, &failure, due_at)
                .await?;
            self.metrics.records.with_label_values(&["retried"]).inc();
            Ok(true)
        } else {
            tracing::warn!(attempts = failure.attempts, class = failure.class, error = %failure.error, "record dead-lettered");
            self.publisher.dead_letter(record, &failure).await?;
            self.metrics
                .records
                .with_label_values(&["dead_lettered"])
                .inc();
            self.alerts.dead_lettered(failure.class, &failure.error);
            Ok(false)
        }
    }
}

/// When a record from a retry topic is due; a record without a readable due time is due now.
pub fn due_at(record: &ConsumedRecord) -> DateTime<Utc> {
    record
        .header(headers::RETRY_DUE_AT)
        .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
        .map_or_else(Utc::now, |time| time.with_timezone(&Utc))
}
