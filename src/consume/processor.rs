use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::alerts::AlertSender;
use super::metrics::ConsumerMetrics;
use crate::config::{is_valid_dc_name, Settings};
use crate::domain::{
    AcceptanceRank, ActivityEnvelope, ActivityValidator, IdempotencyKey, PayloadFingerprint,
    TenantId, ACTIVITY_SCHEMA_ID,
};
use crate::failures::{retry_due_at, Failure, RecordFailure};
use crate::kafka::{headers, ActivityPublisher, ConsumedRecord, PublishError};
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

impl ProcessingOutage {
    /// Which dependency is down, as the console shows it: `mongodb`, `redis` or `kafka`.
    pub fn class(&self) -> &'static str {
        match self {
            ProcessingOutage::Store(outage) => match outage.store() {
                crate::store::Store::MongoDB => "mongodb",
                crate::store::Store::Redis => "redis",
            },
            ProcessingOutage::Kafka(_) => "kafka",
        }
    }
}

/// Which topic a batch came from: the main topic, or retry step `n` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Main,
    Retry(usize),
}

impl Stage {
    /// The retry step this stage consumes, `None` for the main topic.
    pub fn retry_step(self) -> Option<usize> {
        match self {
            Stage::Main => None,
            Stage::Retry(step) => Some(step),
        }
    }

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
    /// Stored in the place of an activity accepted later under the same key (the conflict rule); the
    /// replaced one is among `dead_lettered`.
    pub superseded: usize,
    /// Sent to a retry topic.
    pub retried: usize,
    pub dead_lettered: usize,
}

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
    /// This datacenter (`dc.name`): the origin of a record that carries no `accepted-dc` header
    /// (written by an API from before datacenters, or by another producer of this datacenter).
    local_dc: String,
}

/// A record that will not be stored by this attempt, and why.
struct Refusal<'a> {
    record: &'a ConsumedRecord,
    failure: RecordFailure,
}

/// A record that decoded, with the fingerprint of what the tenant sent (recomputed here rather than
/// read from its header, so records from any producer are judged alike).
struct Decoded<'a> {
    record: &'a ConsumedRecord,
    envelope: ActivityEnvelope,
    fingerprint: PayloadFingerprint,
    /// The datacenter that accepted it.
    origin_dc: String,
}

impl Decoded<'_> {
    fn rank(&self) -> AcceptanceRank<'_> {
        AcceptanceRank::new(
            self.envelope.enqueued_at,
            &self.origin_dc,
            &self.fingerprint,
        )
    }
}

/// Why a record is looked up in MongoDB before its fate is known.
enum Lookup {
    /// Its insert hit the unique (tenant, key) index.
    DuplicateKey,
    /// Redis marks its key with another payload: the stored document decides, by the conflict rule.
    MarkedWithAnotherPayload(Option<PayloadFingerprint>),
}

/// The datacenter that accepted `record`: its `accepted-dc` header, else `local_dc`. A header that
/// names no datacenter is refused like a malformed value (the same bytes fail on every attempt).
fn accepting_dc(record: &ConsumedRecord, local_dc: &str) -> Result<String, String> {
    match record.header(headers::ACCEPTED_DC) {
        None => Ok(local_dc.to_owned()),
        Some(dc) if is_valid_dc_name(dc) => Ok(dc.to_owned()),
        Some(dc) => Err(format!(
            "header {} is {dc:?}, not a datacenter name (1-32 characters of [a-z0-9-], starting \
             with a letter)",
            headers::ACCEPTED_DC
        )),
    }
}

/// The DLQ error of a record whose key is already stored (or marked) with another payload that the
/// conflict rule keeps.
fn conflict(
    envelope: &ActivityEnvelope,
    stored: Option<&PayloadFingerprint>,
    fingerprint: &PayloadFingerprint,
    where_found: &str,
) -> RecordFailure {
    RecordFailure::conflict(format!(
        "idempotency key {} of tenant {} is already {where_found} with a different payload \
         (stored fingerprint {}, this record {fingerprint}); the key was reused for another \
         activity, and the one accepted first (then by datacenter name) is kept",
        envelope.idempotency_key,
        envelope.tenant_id,
        stored.map_or("-", PayloadFingerprint::as_str),
    ))
}

/// The DLQ error of a stored activity that an activity accepted earlier under the same key replaced.
fn superseded(loser: &StoredActivity, winner: &Decoded<'_>) -> RecordFailure {
    RecordFailure::conflict(format!(
        "idempotency key {} of tenant {} was stored with a different payload (fingerprint {}) \
         than an activity accepted earlier under the same key (fingerprint {}, accepted in {} at \
         {}), which replaced it: the key was reused for another activity, and the one accepted \
         first (then by datacenter name) is kept",
        loser.idempotency_key,
        loser.tenant_id,
        loser
            .payload_fingerprint
            .as_ref()
            .map_or("-", PayloadFingerprint::as_str),
        winner.fingerprint,
        winner.origin_dc,
        winner
            .envelope
            .enqueued_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    ))
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
            local_dc: settings.dc.name.clone(),
        })
    }

    pub async fn process(
        &self,
        batch: &[ConsumedRecord],
        stage: Stage,
    ) -> Result<BatchReport, ProcessingOutage> {
        let mut report = BatchReport::default();
        let mut refusals = Vec::new();

        // 1. Decode. A record that cannot be decoded never will be: it is poison, for the DLQ. The
        // same key twice in one batch is a duplicate when the payloads match, else the later one is
        // a conflict: the first occurrence is the one that may be stored.
        let mut first_seen: HashMap<(TenantId, IdempotencyKey), usize> = HashMap::new();
        let mut decoded: Vec<Decoded<'_>> = Vec::with_capacity(batch.len());
        for record in batch {
            let envelope = match &record.payload {
                None => Err("record has no value".to_owned()),
                Some(payload) => ActivityEnvelope::decode(payload, &self.validator)
                    .map_err(|error| error.to_string()),
            };
            let decoded_parts = envelope.and_then(|envelope| {
                accepting_dc(record, &self.local_dc).map(|origin_dc| (envelope, origin_dc))
            });
            let (envelope, origin_dc) = match decoded_parts {
                Ok(parts) => parts,
                Err(error) => {
                    refusals.push(Refusal {
                        record,
                        failure: RecordFailure::poison(error),
                    });
                    continue;
                }
            };
            let item = Decoded {
                record,
                fingerprint: PayloadFingerprint::of(&envelope.activity),
                envelope,
                origin_dc,
            };
            let identity = (
                item.envelope.tenant_id.clone(),
                item.envelope.idempotency_key.clone(),
            );
            match first_seen.entry(identity) {
                Entry::Vacant(entry) => {
                    entry.insert(decoded.len());
                    decoded.push(item);
                }
                Entry::Occupied(entry) => {
                    let kept = &mut decoded[*entry.get()];
                    if kept.fingerprint == item.fingerprint {
                        report.duplicates += 1;
                        continue;
                    }
                    // The conflict rule: the one accepted first stays in the batch.
                    let loser = if item.rank().wins_over(&kept.rank()) {
                        std::mem::replace(kept, item)
                    } else {
                        item
                    };
                    refusals.push(Refusal {
                        record: loser.record,
                        failure: conflict(
                            &loser.envelope,
                            Some(&kept.fingerprint),
                            &loser.fingerprint,
                            "in this batch",
                        ),
                    });
                }
            }
        }

        // 2. Skip what Redis already marked with the same payload. A mark with another payload is a
        // conflict, which the stored document decides (the record may be the one the conflict rule
        // keeps). Without Redis, skip the check: the unique key dedupes and the stored fingerprint
        // tells conflicts apart.
        let pairs: Vec<(&TenantId, &IdempotencyKey)> = decoded
            .iter()
            .map(|item| (&item.envelope.tenant_id, &item.envelope.idempotency_key))
            .collect();
        let marks = match self.redis.already_marked(&pairs).await {
            Ok(marks) => marks,
            Err(outage) => {
                tracing::warn!(%outage, "idempotency pre-check skipped");
                vec![None; pairs.len()]
            }
        };
        let now = Utc::now();
        let mut pending: Vec<&Decoded<'_>> = Vec::new();
        let mut documents = Vec::new();
        let mut to_look_up: Vec<(&Decoded<'_>, Lookup)> = Vec::new();
        for (item, mark) in decoded.iter().zip(marks) {
            match mark {
                Some(mark) if mark.matches(&item.fingerprint) => {
                    report.duplicates += 1;
                    continue;
                }
                Some(mark) => {
                    to_look_up.push((item, Lookup::MarkedWithAnotherPayload(mark.fingerprint)));
                    continue;
                }
                None => {}
            }
            match StoredActivity::from_envelope(&item.envelope, &item.fingerprint, now) {
                Ok(document) => {
                    let document = document.accepted_in(&item.origin_dc);
                    pending.push(item);
                    documents.push(document);
                }
                Err(error) => refusals.push(Refusal {
                    record: item.record,
                    failure: RecordFailure::rejected(error),
                }),
            }
        }

        // 3. Store. Duplicates are fine; a document the server refuses is retried or dead-lettered.
        let outcomes = self.repository.insert_unordered(&documents).await?;
        let mut to_announce: Vec<StoredActivity> = Vec::new();
        for ((item, document), outcome) in pending.into_iter().zip(documents).zip(outcomes) {
            match outcome {
                InsertOutcome::Inserted => {
                    report.inserted += 1;
                    let latency = (now - item.envelope.enqueued_at)
                        .to_std()
                        .unwrap_or_default();
                    self.metrics
                        .end_to_end_latency
                        .observe(latency.as_secs_f64());
                    to_announce.push(document);
                }
                InsertOutcome::AlreadyStored => to_look_up.push((item, Lookup::DuplicateKey)),
                InsertOutcome::Refused(failure) => refusals.push(Refusal {
                    record: item.record,
                    failure,
                }),
            }
        }
        // A duplicate-key error is "already stored" only if our (tenant, key) is what is stored, and
        // the same activity only if the stored fingerprint matches: a conflict on any other unique
        // index is a failure of this record, and a reused key is a conflict, which the conflict
        // rule decides. A stored one may have been stored by a delivery that died before its Redis
        // step: announce the stored document (the Redis step is a no-op if it did happen).
        let mut to_supersede: Vec<(&Decoded<'_>, StoredActivity)> = Vec::new();
        if !to_look_up.is_empty() {
            let keys: Vec<(&TenantId, &IdempotencyKey)> = to_look_up
                .iter()
                .map(|(item, _)| (&item.envelope.tenant_id, &item.envelope.idempotency_key))
                .collect();
            let mut found = self.repository.find_stored(&keys).await?;
            // Stored within the mark's lifetime: its Redis step may not have happened, so announce
            // it (a no-op if it did). Stored before that: the step happened long ago and the mark
            // just expired; announcing again would count it twice (a replay of an old dead letter).
            let marks_live_since = now - self.mark_ttl;
            for (item, lookup) in to_look_up {
                let identity = (
                    item.envelope.tenant_id.clone(),
                    item.envelope.idempotency_key.clone(),
                );
                // A key twice in this batch was settled in step 1: one record of it is looked up.
                let failure = match (found.remove(&identity), lookup) {
                    (None, Lookup::DuplicateKey) => Some(RecordFailure::transient(
                        "MongoDB reported a duplicate key, but not on (tenantId, idempotencyKey)",
                    )),
                    // Marked but not stored (the document was deleted by hand): the mark decides.
                    (None, Lookup::MarkedWithAnotherPayload(marked)) => Some(conflict(
                        &item.envelope,
                        marked.as_ref(),
                        &item.fingerprint,
                        "marked",
                    )),
                    (Some(Err(corrupt)), _) => Some(RecordFailure::rejected(corrupt.to_string())),
                    (Some(Ok(stored)), _) => {
                        let winner = !stored.matches(&item.fingerprint)
                            && stored
                                .rank(&self.local_dc)
                                .is_some_and(|kept| item.rank().wins_over(&kept));
                        if winner {
                            to_supersede.push((item, stored));
                            continue;
                        }
                        let failure = (!stored.matches(&item.fingerprint)).then(|| {
                            conflict(
                                &item.envelope,
                                stored.payload_fingerprint.as_ref(),
                                &item.fingerprint,
                                "stored",
                            )
                        });
                        if stored.created_at_utc() > marks_live_since {
                            to_announce.push(stored);
                        }
                        failure
                    }
                };
                match failure {
                    None => report.duplicates += 1,
                    Some(failure) => refusals.push(Refusal {
                        record: item.record,
                        failure,
                    }),
                }
            }
        }

        // 4. The conflict rule, where a record accepted earlier than the stored activity under its key
        // arrived second: the stored one is dead-lettered (rebuilt from its document: no record of it
        // is at hand), then replaced while it is still what is stored; step 5 moves its mark and
        // count. A crash between the two leaves the loser stored and dead-lettered; the redelivery
        // dead-letters it again and replaces it.
        for (item, loser) in to_supersede {
            let winner = match StoredActivity::from_envelope(&item.envelope, &item.fingerprint, now)
            {
                Ok(document) => document.accepted_in(&item.origin_dc).superseding(&loser),
                Err(error) => {
                    refusals.push(Refusal {
                        record: item.record,
                        failure: RecordFailure::rejected(error),
                    });
                    continue;
                }
            };
            let loser_record = self.rebuilt_record(&loser, item.record);
            let dead_letter = Refusal {
                record: &loser_record,
                failure: superseded(&loser, item),
            };
            // The loser's own retry history is gone with its record: its failure is a first one.
            self.forward(&dead_letter, Stage::Main).await?;
            report.dead_lettered += 1;
            if self.repository.supersede(&loser, &winner).await? {
                report.superseded += 1;
                self.metrics
                    .records
                    .with_label_values(&["superseded"])
                    .inc();
                to_announce.push(winner);
            } else {
                refusals.push(Refusal {
                    record: item.record,
                    failure: RecordFailure::transient(
                        "the activity stored under this key changed while the conflict rule was \
                         replacing it by this one; decided again on the next attempt",
                    ),
                });
            }
        }

        // 5. Mark, count, publish: atomically per record, and only once per key.
        report.announced = self.announce(&to_announce).await?;

        // 6. Forwards, acknowledged before the offsets move past them. Handed to the producer
        // together (in order, so a partition's forwards keep their order) and awaited together, so
        // the batch waits for one delivery round, not one per refused record.
        let forwarded =
            futures::future::join_all(refusals.iter().map(|refusal| self.forward(refusal, stage)))
                .await;
        for outcome in forwarded {
            if outcome? {
                report.retried += 1;
            } else {
                report.dead_lettered += 1;
            }
        }
        Ok(report)
    }

    /// A record of the activity `stored` holds, as the API would have published it, positioned where
    /// `replacing` (the record that superseded it) was read: its dead letter says where it was found.
    fn rebuilt_record(
        &self,
        stored: &StoredActivity,
        replacing: &ConsumedRecord,
    ) -> ConsumedRecord {
        let mut record = ConsumedRecord::from_parts(
            &replacing.topic,
            replacing.partition,
            replacing.offset,
            Some(stored.tenant_id.as_str().as_bytes().to_vec()),
            Some(stored.to_envelope().encode()),
        );
        let header = |name: &str, value: &str| (name.to_owned(), Some(value.as_bytes().to_vec()));
        record.headers = vec![
            header(headers::IDEMPOTENCY_KEY, stored.idempotency_key.as_str()),
            header(headers::SCHEMA, ACTIVITY_SCHEMA_ID),
            header(
                headers::ACCEPTED_DC,
                stored.origin_dc.as_deref().unwrap_or(&self.local_dc),
            ),
        ];
        if let Some(fingerprint) = &stored.payload_fingerprint {
            record
                .headers
                .push(header(headers::PAYLOAD_FINGERPRINT, fingerprint.as_str()));
        }
        record
    }

    async fn announce(&self, stored: &[StoredActivity]) -> Result<usize, StoreOutage> {
        let requests: Vec<EffectRequest<'_>> =
            stored.iter().map(EffectRequest::announcing).collect();
        let newly_marked = self.redis.apply_effects(&requests).await?;
        Ok(newly_marked.iter().filter(|newly| **newly).count())
    }

    /// Sends a refused record on: to the next retry topic if its failure may pass and retries remain,
    /// else to the DLQ. `true` if it went to a retry topic.
    async fn forward(&self, refusal: &Refusal<'_>, stage: Stage) -> Result<bool, PublishError> {
        let record = refusal.record;
        let now = Utc::now();
        let failure = Failure::after(
            record,
            stage.retry_step(),
            refusal.failure.clone(),
            record.origin(),
            now,
        );
        let span = tracing::warn_span!(
            "record",
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            tenant = record.key.as_deref().map(String::from_utf8_lossy).as_deref().unwrap_or("-"),
            key = record.header(headers::IDEMPOTENCY_KEY).unwrap_or("-"),
        );
        let _entered = span.enter();
        match failure.next_retry_step(self.retry_topics.len()) {
            Some(step) => {
                let delay = self.retry_delays[step - 1];
                let due_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                let retry_topic = &self.retry_topics[step - 1];
                tracing::warn!(attempts = failure.attempts, error = %failure.error, %retry_topic, ?delay, "record failed; retrying later");
                self.publisher
                    .retry_later(retry_topic, record, &failure, due_at)
                    .await?;
                self.metrics.records.with_label_values(&["retried"]).inc();
                Ok(true)
            }
            None => {
                tracing::warn!(attempts = failure.attempts, class = %failure.class, error = %failure.error, "record dead-lettered");
                self.publisher.dead_letter(record, &failure).await?;
                self.metrics
                    .records
                    .with_label_values(&["dead_lettered"])
                    .inc();
                self.alerts
                    .dead_lettered(failure.class.as_str(), &failure.error);
                Ok(false)
            }
        }
    }

    /// When a record read from `stage`'s retry topic is due: its `retry-due-at`, but never later than
    /// the step's own delay from now (`failures::retry_due_at`).
    pub fn due_at(&self, record: &ConsumedRecord, stage: Stage) -> DateTime<Utc> {
        let delay = stage
            .retry_step()
            .and_then(|step| self.retry_delays.get(step - 1))
            .copied()
            .unwrap_or_default();
        retry_due_at(record, delay, Utc::now())
    }
}
