use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::base_client_config;
use crate::config::KafkaSettings;

/// A record taken from Kafka, owned so it can outlive the consumer's buffer while its batch is
/// processed.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A consumer-group member reading the activities topic, with offsets stored by hand: an offset is
/// stored only when the caller says every effect of the records up to it happened, and librdkafka's
/// auto-commit then commits only stored offsets.
pub struct ActivityConsumer {
    consumer: StreamConsumer<RebalanceLogger>,
}

/// Logs rebalances and commits: the moments an operator needs when reading about redelivery.
struct RebalanceLogger;

impl ClientContext for RebalanceLogger {}

impl ConsumerContext for RebalanceLogger {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked")
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = %describe(offsets), "offsets committed"),
            Err(error) => {
                tracing::warn!(%error, offsets = %describe(offsets), "offset commit failed")
            }
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => {
                format!("{}[{}]@{offset}", element.topic(), element.partition())
            }
            _ => format!("{}[{}]", element.topic(), element.partition()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl ActivityConsumer {
    /// Joins `settings.consumer_group` and subscribes to `topics`.
    pub fn subscribe(
        settings: &KafkaSettings,
        topics: &[&str],
    ) -> anyhow::Result<ActivityConsumer> {
        let consumer: StreamConsumer<RebalanceLogger> = base_client_config(settings)
            .set("group.id", &settings.consumer_group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by `store_processed`, never by librdkafka on delivery to us.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.partition.eof", "false")
            .create_with_context(RebalanceLogger)
            .map_err(|error| anyhow::anyhow!("creating the Kafka consumer: {error}"))?;
        consumer
            .subscribe(topics)
            .map_err(|error| anyhow::anyhow!("subscribing to {topics:?}: {error}"))?;
        Ok(ActivityConsumer { consumer })
    }

    /// Waits for at least one record, then takes more until `max_records` or `max_wait` is reached.
    /// Cancel-safe: dropping the future loses no record.
    pub async fn next_batch(&self, max_records: usize, max_wait: Duration) -> Vec<ConsumedRecord> {
        let mut batch = Vec::with_capacity(max_records.min(1024));
        loop {
            match self.consumer.recv().await {
                Ok(message) => {
                    batch.push(own(&message));
                    break;
                }
                Err(error) => {
                    // Transport errors are reported here and retried by librdkafka on its own.
                    tracing::warn!(%error, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_records {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(own(&message)),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "Kafka consumer error");
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        batch
    }

    /// Marks `records` as fully processed: the next commit covers them. Records of a partition that
    /// was revoked meanwhile are refused by librdkafka, which is right: the new owner redelivers them.
    pub fn store_processed(&self, records: &[ConsumedRecord]) -> anyhow::Result<()> {
        let mut next_offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for record in records {
            let next = next_offsets
                .entry((&record.topic, record.partition))
                .or_insert(record.offset + 1);
            *next = (*next).max(record.offset + 1);
        }
        let mut list = TopicPartitionList::with_capacity(next_offsets.len());
        for ((topic, partition), offset) in next_offsets {
            list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        self.consumer
            .store_offsets(&list)
            .map_err(|error| anyhow::anyhow!("storing offsets {}: {error}", describe(&list)))
    }

    /// Commits the stored offsets now and waits for the answer (shutdown).
    pub fn commit_stored(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("stored offsets committed"),
            // "No offset stored" is the normal answer when nothing new was processed.
            Err(error) => tracing::debug!(%error, "final commit"),
        }
    }
}

fn own<M: Message>(message: &M) -> ConsumedRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    ConsumedRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}
