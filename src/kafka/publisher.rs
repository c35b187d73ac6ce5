use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use tokio::sync::{oneshot, OnceCell};

use super::consumer::ConsumedRecord;
use super::spread::PartitionSpread;
use super::{base_client_config, headers};
use crate::config::KafkaSettings;
use crate::domain::{ActivityEnvelope, PayloadFingerprint, ACTIVITY_SCHEMA_ID};
use crate::failures::{headers as failure_headers, Failure};

/// Why a record was not acknowledged. Either way the API must not answer 202.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The producer's in-memory queue is full: the broker is slower than the intake. Retry later.
    #[error("the producer queue is full")]
    QueueFull,
    /// The broker did not acknowledge within `kafka.delivery_timeout_ms`, or refused the record.
    #[error("the broker did not acknowledge the record: {0}")]
    NotAcknowledged(String),
}

/// Publishes to Kafka with an idempotent, `acks=all` producer and waits for the delivery report:
/// a successful `publish` means the record is durably in the topic.
///
/// A batch's records are sent together (`publish_all`) and its caller is woken once, when the last
/// one of them is reported, instead of a channel and a wake-up per record as rdkafka's
/// `FutureProducer` does: in batches of 100 the publish path made 1.00-1.28x the records of one at a
/// time (BENCHMARKS.md, "One completion per batch").
#[derive(Clone)]
pub struct ActivityPublisher {
    producer: Arc<ThreadedProducer<DeliveryReports>>,
    topic: String,
    dlq_topic: String,
    /// Hot tenants whose records this publisher places on partitions itself (`publish`).
    spread: Arc<PartitionSpread>,
    /// The main topic's partition count, fetched the first time a spread tenant publishes.
    partitions: Arc<OnceCell<u32>>,
    metadata_timeout: Duration,
    /// The datacenter stamped on every published activity (`headers::ACCEPTED_DC`).
    accepted_dc: Arc<str>,
}

impl ActivityPublisher {
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<ActivityPublisher> {
        let producer: ThreadedProducer<DeliveryReports> = base_client_config(settings)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", settings.linger_ms.to_string())
            .set("compression.type", settings.compression.as_librdkafka())
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                settings.queue_max_messages.to_string(),
            )
            .create_with_context(DeliveryReports)
            .map_err(|error| anyhow::anyhow!("creating the Kafka producer: {error}"))?;
        Ok(ActivityPublisher {
            producer: Arc::new(producer),
            topic: settings.topic.clone(),
            dlq_topic: settings.dlq_topic.clone(),
            spread: Arc::new(PartitionSpread::default()),
            partitions: Arc::new(OnceCell::new()),
            metadata_timeout: Duration::from_millis(settings.delivery_timeout_ms),
            accepted_dc: Arc::from("local"),
        })
    }

    /// Stamps `dc` (`dc.name`) as the accepting datacenter on every activity this publisher
    /// publishes; without it, `local` (the default of `dc.name`).
    pub fn accepting_in(mut self, dc: &str) -> ActivityPublisher {
        self.accepted_dc = Arc::from(dc);
        self
    }

    /// Places the records of `spread`'s tenants on their partitions (`tenants.<id>.partition_spread`).
    pub fn with_partition_spread(mut self, spread: PartitionSpread) -> ActivityPublisher {
        self.spread = Arc::new(spread);
        self
    }

    /// The main topic's partition count, fetched once (a topic only ever grows; one that grew since
    /// keeps its spread tenants on the partitions they had until the API restarts).
    async fn partition_count(&self) -> Result<u32, PublishError> {
        self.partitions
            .get_or_try_init(|| async {
                let publisher = self.clone();
                let timeout = self.metadata_timeout;
                let summary =
                    tokio::task::spawn_blocking(move || publisher.fetch_metadata(timeout))
                        .await
                        .map_err(|error| PublishError::NotAcknowledged(error.to_string()))?
                        .map_err(|error| PublishError::NotAcknowledged(error.to_string()))?;
                summary
                    .topic_partitions
                    .and_then(|count| u32::try_from(count).ok())
                    .filter(|count| *count > 0)
                    .ok_or_else(|| {
                        PublishError::NotAcknowledged(format!(
                            "topic {} has no partitions in the cluster's metadata",
                            self.topic
                        ))
                    })
            })
            .await
            .copied()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes one activity keyed by tenant (per-tenant order on the main path; a spread tenant's
    /// record goes to its bucket's partition, see `PartitionSpread`) and waits for the broker's
    /// acknowledgement.
    // A debug span: at the default `info` filter an info span per record cost ~5% of the API's CPU
    // (formatting its fields for a log line that is never written; BENCHMARKS.md).
    #[tracing::instrument(level = "debug", skip_all, fields(tenant = %envelope.tenant_id, key = %envelope.idempotency_key))]
    pub async fn publish(
        &self,
        envelope: &ActivityEnvelope,
        fingerprint: &PayloadFingerprint,
    ) -> Result<(), PublishError> {
        let partition = if self.spread.spreads(&envelope.tenant_id) {
            // Boxed: awaited once per process in practice, and inline its state would make every
            // publish's future as large as the metadata fetch's.
            let partitions = Box::pin(self.partition_count()).await?;
            self.spread.partition(envelope, partitions)
        } else {
            None
        };
        let payload = envelope.encode();
        let (reported, report) = oneshot::channel();
        let record = self.activity_record(
            envelope,
            fingerprint,
            &payload,
            partition,
            Box::new(PendingAck::Alone(reported)),
        );
        self.send(record)?;
        drop(payload);
        acknowledged(report).await
    }

    /// Publishes `activities` together and waits until the broker has answered for every one of
    /// them: one outcome per activity, in order. They share the producer's batches, and the caller
    /// is woken once, after the last report, instead of once per record (what rdkafka's
    /// `FutureProducer` does, and `publish` still does for a lone record).
    #[tracing::instrument(level = "debug", skip_all, fields(records = activities.len()))]
    pub async fn publish_all(
        &self,
        activities: &[(&ActivityEnvelope, &PayloadFingerprint)],
    ) -> Vec<Result<(), PublishError>> {
        if let [(envelope, fingerprint)] = activities {
            return vec![self.publish(envelope, fingerprint).await];
        }
        let acks = BatchAcks::new(activities.len());
        // Asked once for the whole batch: a metadata fetch that fails takes up to the delivery
        // timeout, which a batch must not pay per record.
        let partitions = if activities
            .iter()
            .any(|(envelope, _)| self.spread.spreads(&envelope.tenant_id))
        {
            Some(Box::pin(self.partition_count()).await)
        } else {
            None
        };
        // librdkafka copies the value when it takes a record, so one buffer serves the whole batch.
        let mut payload = Vec::with_capacity(512);
        for (index, (envelope, fingerprint)) in activities.iter().enumerate() {
            let partition = match &partitions {
                Some(count) if self.spread.spreads(&envelope.tenant_id) => match count {
                    Ok(count) => self.spread.partition(envelope, *count),
                    Err(error) => {
                        acks.refused(index, error.clone());
                        continue;
                    }
                },
                _ => None,
            };
            payload.clear();
            envelope.encode_into(&mut payload);
            let record = self.activity_record(
                envelope,
                fingerprint,
                &payload,
                partition,
                acks.pending(index),
            );
            if let Err(error) = self.send(record) {
                // The record, and its claim on the batch, were dropped unsent.
                acks.refused(index, error);
            }
        }
        acks.wait().await
    }

    /// The record of an activity: keyed by tenant, with the pipeline's four headers.
    fn activity_record<'a>(
        &'a self,
        envelope: &'a ActivityEnvelope,
        fingerprint: &'a PayloadFingerprint,
        payload: &'a [u8],
        partition: Option<i32>,
        pending: Box<PendingAck>,
    ) -> BaseRecord<'a, str, [u8], Box<PendingAck>> {
        let record_headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: headers::IDEMPOTENCY_KEY,
                value: Some(envelope.idempotency_key.as_str()),
            })
            .insert(Header {
                key: headers::SCHEMA,
                value: Some(ACTIVITY_SCHEMA_ID),
            })
            .insert(Header {
                key: headers::PAYLOAD_FINGERPRINT,
                value: Some(fingerprint.as_str()),
            })
            .insert(Header {
                key: headers::ACCEPTED_DC,
                value: Some(&*self.accepted_dc),
            });
        let record = BaseRecord::with_opaque_to(&self.topic, pending)
            .key(envelope.tenant_id.as_str())
            .payload(payload)
            .headers(record_headers);
        match partition {
            Some(partition) => record.partition(partition),
            None => record,
        }
    }

    /// Writes a dead letter: the original key, value and headers, plus the failure's facts and where
    /// the record was first consumed.
    pub async fn dead_letter(
        &self,
        record: &ConsumedRecord,
        failure: &Failure,
    ) -> Result<(), PublishError> {
        self.forward(&self.dlq_topic, record, &failure.dead_letter_headers())
            .await
    }

    /// Sends a record to a retry topic, due at `due_at`.
    pub async fn retry_later(
        &self,
        retry_topic: &str,
        record: &ConsumedRecord,
        failure: &Failure,
        due_at: DateTime<Utc>,
    ) -> Result<(), PublishError> {
        self.forward(retry_topic, record, &failure.retry_headers(due_at))
            .await
    }

    /// Republishes a dead letter to the main topic with its original key, value and headers, so the
    /// consumer processes it again under the same idempotency key.
    pub async fn replay(&self, dead_letter: &ConsumedRecord) -> Result<(), PublishError> {
        let replayed_from = format!("{}:{}", dead_letter.partition, dead_letter.offset);
        self.forward(
            &self.topic,
            dead_letter,
            &[(failure_headers::REPLAYED_FROM, replayed_from)],
        )
        .await
    }

    /// Writes `record`'s key, value and own headers to `topic`, with the pipeline's headers replaced by
    /// `facts`.
    async fn forward(
        &self,
        topic: &str,
        record: &ConsumedRecord,
        facts: &[(&str, String)],
    ) -> Result<(), PublishError> {
        let mut record_headers =
            OwnedHeaders::new_with_capacity(record.headers.len() + facts.len());
        for (name, value) in &record.headers {
            if !failure_headers::is_pipeline_header(name) {
                record_headers = record_headers.insert(Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
        }
        for (name, value) in facts {
            record_headers = record_headers.insert(Header {
                key: name,
                value: Some(value.as_str()),
            });
        }
        let (reported, report) = oneshot::channel();
        let mut forwarded = BaseRecord::<[u8], [u8], _>::with_opaque_to(
            topic,
            Box::new(PendingAck::Alone(reported)),
        )
        .headers(record_headers);
        if let Some(key) = &record.key {
            forwarded = forwarded.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            forwarded = forwarded.payload(payload.as_slice());
        }
        self.send(forwarded)?;
        acknowledged(report).await
    }

    /// Waits up to `timeout` for queued records to be delivered (graceful shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(%error, "records were still unacknowledged when the producer was flushed");
        }
    }

    /// Fetches cluster metadata over the producer's own connections (readiness: proves the brokers
    /// this producer talks to answer, and that the topic exists). Blocking: call it off the runtime.
    pub fn fetch_metadata(&self, timeout: Duration) -> anyhow::Result<super::ClusterSummary> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|error| anyhow::anyhow!("fetching Kafka metadata: {error}"))?;
        let topic_partitions = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == self.topic && topic.error().is_none())
            .map(|topic| topic.partitions().len());
        Ok(super::ClusterSummary {
            brokers: metadata.brokers().len(),
            topic_partitions,
        })
    }

    /// Records waiting in the producer queue, for metrics and readiness.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    pub fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }

    /// Hands `record` to librdkafka now. When the queue is full this fails at once (503) instead
    /// of blocking a worker.
    fn send<K, P>(&self, record: BaseRecord<'_, K, P, Box<PendingAck>>) -> Result<(), PublishError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        self.producer
            .send(record)
            .map_err(|(error, _unsent)| match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    PublishError::QueueFull
                }
                error => PublishError::NotAcknowledged(error.to_string()),
            })
    }
}

/// A lone record's outcome, once its delivery report came.
async fn acknowledged(
    report: oneshot::Receiver<Result<(), PublishError>>,
) -> Result<(), PublishError> {
    report.await.unwrap_or_else(|_| Err(went_away()))
}

fn went_away() -> PublishError {
    PublishError::NotAcknowledged("the producer went away before the broker answered".to_owned())
}

/// The producer's context: a delivery report settles its record's place in the batch it was sent
/// with. Reports arrive on the producer's polling thread.
pub struct DeliveryReports;

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Box<PendingAck>;

    fn delivery(&self, report: &DeliveryResult<'_>, pending: Box<PendingAck>) {
        let outcome = match report {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(PublishError::NotAcknowledged(error.to_string())),
        };
        pending.report(outcome);
    }
}

/// Who waits for a record's delivery report, handed to librdkafka with the record.
pub enum PendingAck {
    /// A record sent on its own: its sender waits for this one report.
    Alone(oneshot::Sender<Result<(), PublishError>>),
    /// A record of a batch: its report fills in place `index` of the batch's outcomes.
    InBatch {
        batch: Arc<BatchShared>,
        index: usize,
    },
}

impl PendingAck {
    fn report(self, outcome: Result<(), PublishError>) {
        match self {
            // The waiter may be gone (its request cancelled): nobody left to tell.
            PendingAck::Alone(reported) => drop(reported.send(outcome)),
            PendingAck::InBatch { batch, index } => batch.settle(index, outcome),
        }
    }
}

/// The records of a batch that were not acknowledged, by place in the batch, with why; every other
/// one was.
type BatchFailures = Vec<(usize, PublishError)>;

/// What the delivery reports of a batch fill in, shared with the polling thread.
pub struct BatchShared {
    /// Records not yet reported, plus one held by the sender until every record is enqueued (so
    /// an early report cannot complete a batch still being sent).
    outstanding: AtomicUsize,
    /// The records that were not acknowledged, with why; every other one was.
    failures: Mutex<BatchFailures>,
    done: Mutex<Option<oneshot::Sender<BatchFailures>>>,
}

impl BatchShared {
    fn settle(&self, index: usize, outcome: Result<(), PublishError>) {
        if let Err(error) = outcome {
            lock(&self.failures).push((index, error));
        }
        self.release();
    }

    fn release(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let failures = std::mem::take(&mut *lock(&self.failures));
            if let Some(done) = lock(&self.done).take() {
                // The waiter may be gone (its request cancelled): nobody left to tell.
                let _ = done.send(failures);
            }
        }
    }
}

/// The sender's side of a batch: hands out a `PendingAck` per record and waits for all of them.
struct BatchAcks {
    shared: Arc<BatchShared>,
    records: usize,
    done: oneshot::Receiver<BatchFailures>,
}

impl BatchAcks {
    fn new(records: usize) -> BatchAcks {
        let (done, receiver) = oneshot::channel();
        BatchAcks {
            shared: Arc::new(BatchShared {
                outstanding: AtomicUsize::new(records + 1),
                failures: Mutex::new(Vec::new()),
                done: Mutex::new(Some(done)),
            }),
            records,
            done: receiver,
        }
    }

    fn pending(&self, index: usize) -> Box<PendingAck> {
        Box::new(PendingAck::InBatch {
            batch: Arc::clone(&self.shared),
            index,
        })
    }

    /// Record `index` was not handed to librdkafka (its `PendingAck`, if any, was dropped unsent).
    fn refused(&self, index: usize, error: PublishError) {
        self.shared.settle(index, Err(error));
    }

    /// Every record's outcome, once the broker has answered for the last one.
    async fn wait(self) -> Vec<Result<(), PublishError>> {
        let BatchAcks {
            shared,
            records,
            done,
        } = self;
        shared.release();
        // The polling thread holds the other references; dropping ours lets a batch whose reports
        // never come (the producer destroyed first) end in an error instead of waiting forever.
        drop(shared);
        let mut outcomes: Vec<Result<(), PublishError>> = (0..records).map(|_| Ok(())).collect();
        match done.await {
            Ok(failures) => {
                for (index, error) in failures {
                    outcomes[index] = Err(error);
                }
            }
            Err(_) => {
                for outcome in &mut outcomes {
                    *outcome = Err(went_away());
                }
            }
        }
        outcomes
    }
}

/// A poisoned lock only means a delivery report panicked while holding it; the outcomes it guards
/// are still whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(outcomes: &[Result<(), PublishError>]) -> Vec<&'static str> {
        outcomes
            .iter()
            .map(|outcome| match outcome {
                Ok(()) => "acked",
                Err(PublishError::QueueFull) => "queue full",
                Err(PublishError::NotAcknowledged(_)) => "not acknowledged",
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_ends_when_its_last_record_is_reported_with_each_outcome_in_place() {
        let acks = BatchAcks::new(4);
        let pending: Vec<_> = (0..3).map(|index| acks.pending(index)).collect();
        // Record 3 never reached librdkafka; records 0 and 2 are reported before the sender waits.
        acks.refused(3, PublishError::QueueFull);
        let mut pending = pending.into_iter();
        pending.next().unwrap().report(Ok(()));
        let (second, third) = (pending.next().unwrap(), pending.next().unwrap());
        third.report(Err(PublishError::NotAcknowledged("timed out".into())));
        let waiting = tokio::spawn(acks.wait());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "record 1 is not reported yet");
        second.report(Ok(()));
        let outcomes = waiting.await.unwrap();
        assert_eq!(
            kinds(&outcomes),
            ["acked", "acked", "not acknowledged", "queue full"]
        );
    }

    #[tokio::test]
    async fn every_report_before_the_wait_still_completes_the_batch() {
        let acks = BatchAcks::new(2);
        for index in 0..2 {
            acks.pending(index).report(Ok(()));
        }
        assert_eq!(kinds(&acks.wait().await), ["acked", "acked"]);
    }

    #[tokio::test]
    async fn a_lone_record_is_told_its_own_outcome_or_that_the_producer_went_away() {
        let (reported, report) = oneshot::channel();
        PendingAck::Alone(reported).report(Err(PublishError::QueueFull));
        assert!(matches!(
            acknowledged(report).await,
            Err(PublishError::QueueFull)
        ));
        let (reported, report) = oneshot::channel();
        drop(Box::new(PendingAck::Alone(reported)));
        assert!(matches!(
            acknowledged(report).await,
            Err(PublishError::NotAcknowledged(reason)) if reason.contains("went away")
        ));
    }

    #[tokio::test]
    async fn an_empty_batch_is_answered_at_once() {
        assert!(BatchAcks::new(0).wait().await.is_empty());
    }

    #[tokio::test]
    async fn records_whose_reports_never_come_end_as_not_acknowledged() {
        let acks = BatchAcks::new(2);
        let lost = (acks.pending(0), acks.pending(1));
        let waiting = tokio::spawn(acks.wait());
        // The producer destroyed without reporting: its claims on the batch are dropped.
        drop(lost);
        let outcomes = waiting.await.unwrap();
        assert_eq!(kinds(&outcomes), ["not acknowledged", "not acknowledged"]);
    }
}
