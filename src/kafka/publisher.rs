use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use tokio::sync::OnceCell;

use super::consumer::ConsumedRecord;
use super::spread::PartitionSpread;
use super::{base_client_config, headers};
use crate::config::KafkaSettings;
use crate::domain::{ActivityEnvelope, PayloadFingerprint, ACTIVITY_SCHEMA_ID};
use crate::failures::{headers as failure_headers, Failure};

/// Why a record was not acknowledged. Either way the API must not answer 202.
#[derive(Debug, thiserror::Error)]
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
#[derive(Clone)]
pub struct ActivityPublisher {
    producer: FutureProducer,
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
        let producer: FutureProducer = base_client_config(settings)
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
            .create()
            .map_err(|error| anyhow::anyhow!("creating the Kafka producer: {error}"))?;
        Ok(ActivityPublisher {
            producer,
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
        let payload = envelope.encode();
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
        let partition = if self.spread.spreads(&envelope.tenant_id) {
            // Boxed: awaited once per process in practice, and inline its state would make every
            // publish's future as large as the metadata fetch's.
            let partitions = Box::pin(self.partition_count()).await?;
            self.spread.partition(envelope, partitions)
        } else {
            None
        };
        let mut record = FutureRecord::to(&self.topic)
            .key(envelope.tenant_id.as_str())
            .payload(&payload)
            .headers(record_headers);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let acknowledged = self.enqueue(record)?;
        drop(payload);
        acknowledged.await
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
        let mut forwarded = FutureRecord::<[u8], [u8]>::to(topic).headers(record_headers);
        if let Some(key) = &record.key {
            forwarded = forwarded.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            forwarded = forwarded.payload(payload.as_slice());
        }
        self.deliver(forwarded).await
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

    /// Hands `record` to librdkafka now and returns what waits for its acknowledgement. Enqueued
    /// synchronously (`send_result`), so the future a caller awaits holds only the delivery report's
    /// receiver, not the record and the enqueueing: at 10^5 records/s the size of that future showed
    /// in the publish path's profile.
    fn enqueue<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
    ) -> Result<impl std::future::Future<Output = Result<(), PublishError>>, PublishError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        // When the queue is full, fail now (503) instead of blocking a worker.
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(error, _)| match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    PublishError::QueueFull
                }
                error => PublishError::NotAcknowledged(error.to_string()),
            })?;
        Ok(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(PublishError::NotAcknowledged(error.to_string())),
                Err(_) => Err(PublishError::NotAcknowledged(
                    "the producer went away before the broker answered".to_owned(),
                )),
            }
        })
    }

    async fn deliver<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<(), PublishError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        self.enqueue(record)?.await
    }
}
