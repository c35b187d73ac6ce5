use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::base_client_config;
use super::consumer::ConsumedRecord;
use crate::config::KafkaSettings;

/// Reads every record of `topic` present now (up to each partition's high watermark), oldest first
/// per partition, without joining a group or committing anything: the DLQ tools only look.
pub fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<ConsumedRecord>> {
    let consumer = reader(settings, "dlq-reader")?;
    let mut ranges = Vec::new();
    for partition in partitions_of(&consumer, topic, timeout)? {
        let (low, high) = watermarks(&consumer, topic, partition, timeout)?;
        if high > low {
            ranges.push((partition, low, high));
        }
    }
    read_ranges(&consumer, topic, &ranges, timeout)
}

/// The record at each `(partition, offset)` of `topic` (the first one after it, when retention or
/// DeleteRecords dropped it): what a stage's consumer group reads next. A partition with nothing at
/// or after its offset has no record in the answer. Reads without joining a group or committing;
/// gives up after `timeout`. Blocking.
pub fn read_heads(
    settings: &KafkaSettings,
    topic: &str,
    heads: &[(i32, i64)],
    timeout: Duration,
) -> anyhow::Result<Vec<ConsumedRecord>> {
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    let consumer = reader(settings, "console-head-reader")?;
    let mut ranges = Vec::new();
    for &(partition, offset) in heads {
        let (_, high) = watermarks(&consumer, topic, partition, timeout)?;
        if offset < high {
            ranges.push((partition, offset, offset + 1));
        }
    }
    read_ranges(&consumer, topic, &ranges, timeout)
}

/// A consumer that only reads: its group id (`<consumer_group>.<name>`) is never joined, nothing
/// is committed.
fn reader(settings: &KafkaSettings, name: &str) -> anyhow::Result<BaseConsumer> {
    base_client_config(settings)
        .set("group.id", format!("{}.{name}", settings.consumer_group))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|error| anyhow::anyhow!("creating a Kafka reader: {error}"))
}

/// The low and high watermarks of `topic[partition]`, within `timeout`. For a moment after a leader
/// change, or after partitions were added, the broker answers "not leader" or "leader not
/// available" although nothing is wrong: those answers are asked again until `timeout`, the way
/// librdkafka itself retries a produce request, instead of failing a console page or a DLQ tool.
/// Blocking.
pub(super) fn watermarks<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.fetch_watermarks(topic, partition, left) {
            Ok(watermarks) => return Ok(watermarks),
            Err(error) if is_leadership_moving(&error) && left > LEADERSHIP_RETRY_PAUSE => {
                tracing::debug!(topic, partition, %error, "partition leadership moving; asking again");
                std::thread::sleep(LEADERSHIP_RETRY_PAUSE);
            }
            Err(error) => {
                return Err(anyhow::anyhow!(
                    "reading watermarks of {topic}[{partition}]: {error}"
                ))
            }
        }
    }
}

/// How long to wait before asking again a broker that said leadership is moving: about one
/// metadata round trip, so a brief election costs a few asks and not the whole timeout.
const LEADERSHIP_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Whether `error` says the partition's leadership is moving (it will answer shortly), not that
/// the partition or the cluster is wrong.
fn is_leadership_moving(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable)
    )
}

/// Reads each `(partition, start, end)` range of `topic`: its records from `start` until one at or
/// past `end - 1` (records removed by retention are skipped over), sorted by partition and, within
/// one, by offset. Gives up after `timeout`.
fn read_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    timeout: Duration,
) -> anyhow::Result<Vec<ConsumedRecord>> {
    let mut records = Vec::new();
    if ranges.is_empty() {
        return Ok(records);
    }
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &(partition, start, end) in ranges {
        remaining.insert(partition, end);
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + timeout;
    while !remaining.is_empty() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "reading {topic} timed out with {} partition(s) unread",
                remaining.len()
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|error| anyhow::anyhow!("reading {topic}: {error}"))?;
        let record = ConsumedRecord::from_message(&message);
        if let Some(end) = remaining.get(&record.partition) {
            if record.offset + 1 >= *end {
                remaining.remove(&record.partition);
            }
            records.push(record);
        }
    }
    records.sort_by_key(|record| (record.partition, record.offset));
    Ok(records)
}

/// The partition ids of `topic`, from the cluster's metadata; an error that says to create it when
/// it does not exist. Blocking.
pub(super) fn partitions_of<
    X: rdkafka::consumer::ConsumerContext,
    C: rdkafka::consumer::Consumer<X>,
>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|error| anyhow::anyhow!("fetching metadata of {topic}: {error}"))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic && found.error().is_none())
        .ok_or_else(|| anyhow::anyhow!("topic {topic} does not exist (run `topics create`)"))?
        .partitions()
        .iter()
        .map(|partition| partition.id())
        .collect())
}

/// What [`TopicFollower::poll`] saw.
#[derive(Debug)]
pub enum FollowEvent {
    /// The next record of one partition.
    Record(ConsumedRecord),
    /// A partition was read to its end: its next record will be at `next_offset`.
    CaughtUp { partition: i32, next_offset: i64 },
    /// Nothing within the poll's timeout.
    Idle,
}

/// Follows every partition of a topic from its first record on, without joining a group or
/// committing: a reader that stays, for a view kept current (the console's dead letters). It also
/// says when a partition is read to its end, so a caller can tell "nothing new" from "not read yet".
/// Blocking; one thread owns it.
pub struct TopicFollower {
    consumer: BaseConsumer<FollowerContext>,
    topic: String,
    assigned: std::collections::BTreeSet<i32>,
}

impl TopicFollower {
    pub fn new(settings: &KafkaSettings, topic: &str, name: &str) -> anyhow::Result<TopicFollower> {
        let consumer: BaseConsumer<FollowerContext> = base_client_config(settings)
            .set("group.id", format!("{}.{name}", settings.consumer_group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // What it reads is kept by the caller; librdkafka's own read-ahead need not be large
            // too (its default is 64 MiB).
            .set("queued.max.messages.kbytes", "8192")
            .create_with_context(FollowerContext)
            .map_err(|error| anyhow::anyhow!("creating a Kafka follower: {error}"))?;
        Ok(TopicFollower {
            consumer,
            topic: topic.to_owned(),
            assigned: std::collections::BTreeSet::new(),
        })
    }

    /// Starts reading the partitions that appeared since the last call (all of them, the first
    /// time), each from its first record. Returns the partitions now followed.
    pub fn follow_new_partitions(&mut self, timeout: Duration) -> anyhow::Result<Vec<i32>> {
        let partitions = partitions_of(&self.consumer, &self.topic, timeout)?;
        let mut added = TopicPartitionList::new();
        for &partition in &partitions {
            if !self.assigned.contains(&partition) {
                added.add_partition_offset(&self.topic, partition, Offset::Beginning)?;
            }
        }
        if added.count() > 0 {
            self.consumer
                .incremental_assign(&added)
                .map_err(|error| anyhow::anyhow!("following {}: {error}", self.topic))?;
            self.assigned.extend(
                added
                    .elements()
                    .iter()
                    .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition),
            );
        }
        Ok(partitions)
    }

    pub fn poll(&self, timeout: Duration) -> anyhow::Result<FollowEvent> {
        match self.consumer.poll(timeout) {
            None => Ok(FollowEvent::Idle),
            Some(Ok(message)) => Ok(FollowEvent::Record(ConsumedRecord::from_message(&message))),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                let next_offset = self
                    .consumer
                    .position()
                    .ok()
                    .and_then(|positions| {
                        positions
                            .find_partition(&self.topic, partition)
                            .and_then(|element| element.offset().to_raw())
                    })
                    .unwrap_or(-1);
                Ok(FollowEvent::CaughtUp {
                    partition,
                    next_offset,
                })
            }
            Some(Err(error)) => Err(anyhow::anyhow!("reading {}: {error}", self.topic)),
        }
    }
}

/// librdkafka also reports every end of partition as a client error, which the default context logs
/// as one; for a follower that is the expected news [`TopicFollower::poll`] returns.
struct FollowerContext;

impl rdkafka::ClientContext for FollowerContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        // Reported either way: as the partition's event, or as a global error.
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(%error, reason, "Kafka follower");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for FollowerContext {}

/// Each partition of `topic` with its low and high watermarks: where its records begin (retention
/// and DeleteRecords move it) and where the next one will be written. Blocking.
pub struct TopicWatermarks {
    consumer: BaseConsumer,
    topic: String,
}

impl TopicWatermarks {
    pub fn new(settings: &KafkaSettings, topic: &str, name: &str) -> anyhow::Result<Self> {
        Ok(TopicWatermarks {
            consumer: reader(settings, name)?,
            topic: topic.to_owned(),
        })
    }

    /// `(partition, low, high)` for every partition, within `timeout` per request.
    pub fn read(&self, timeout: Duration) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        partitions_of(&self.consumer, &self.topic, timeout)?
            .into_iter()
            .map(|partition| {
                let (low, high) = watermarks(&self.consumer, &self.topic, partition, timeout)?;
                Ok((partition, low, high))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_moving_leadership_is_asked_again() {
        for moving in [
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
        ] {
            assert!(is_leadership_moving(&KafkaError::MetadataFetch(moving)));
        }
        for settled in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert!(!is_leadership_moving(&KafkaError::MetadataFetch(settled)));
        }
        assert!(!is_leadership_moving(&KafkaError::Canceled));
    }
}
