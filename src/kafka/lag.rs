//! What each stage has waiting: end offsets against a consumer group's committed offsets, read
//! without joining the group (an OffsetFetch and ListOffsets, nothing the group's members notice).
//! The console samples it; nothing here commits, subscribes or seeks.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::base_client_config;
use crate::config::KafkaSettings;

/// One partition of a stage's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBacklog {
    pub partition: i32,
    /// The oldest offset still in the partition (retention or DeleteRecords moved it).
    pub low: i64,
    /// The end offset: the next record written gets it.
    pub high: i64,
    /// The group's committed offset, if it committed one.
    pub committed: Option<i64>,
}

impl PartitionBacklog {
    /// Records written and not yet committed by the group: the end offset minus the committed
    /// offset, or minus the oldest retained offset when the group never committed (its reset
    /// policy, `earliest`, would start there). Never negative.
    pub fn lag(&self) -> i64 {
        let from = self.committed.unwrap_or(self.low).max(self.low);
        (self.high - from).max(0)
    }

    /// Records retained in the partition now.
    pub fn retained(&self) -> i64 {
        (self.high - self.low).max(0)
    }
}

/// Reads the backlog of one topic against one group. One reader per (topic, group): librdkafka
/// takes the group id from the client's configuration, so the reader keeps its client and reuses
/// it for every sample.
pub struct BacklogReader {
    consumer: BaseConsumer,
    topic: String,
    /// `None` for a topic no group consumes (the DLQ): only the watermarks are read.
    group: Option<String>,
}

impl BacklogReader {
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        group: Option<&str>,
    ) -> anyhow::Result<BacklogReader> {
        // A client needs some group id to fetch committed offsets; for a topic without a group it
        // is never used to join or commit anything.
        let group_id = group.map_or_else(
            || format!("{}.console-watermarks", settings.consumer_group),
            str::to_owned,
        );
        let consumer: BaseConsumer = base_client_config(settings)
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(|error| anyhow::anyhow!("creating a Kafka lag reader: {error}"))?;
        Ok(BacklogReader {
            consumer,
            topic: topic.to_owned(),
            group: group.map(str::to_owned),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Every partition's watermarks and committed offset, each call bounded by `timeout`.
    /// Blocking: call it from a blocking thread.
    pub fn read(&self, timeout: Duration) -> anyhow::Result<Vec<PartitionBacklog>> {
        let topic = &self.topic;
        let partitions = super::topic_reader::partitions_of(&self.consumer, topic, timeout)?;
        let mut committed = std::collections::HashMap::new();
        if self.group.is_some() && !partitions.is_empty() {
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                list.add_partition(topic, *partition);
            }
            let offsets = self
                .consumer
                .committed_offsets(list, timeout)
                .map_err(|error| {
                    anyhow::anyhow!("reading the committed offsets of {topic}: {error}")
                })?;
            for element in offsets.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    committed.insert(element.partition(), offset);
                }
            }
        }
        let mut backlog = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (low, high) =
                super::topic_reader::watermarks(&self.consumer, topic, partition, timeout)?;
            backlog.push(PartitionBacklog {
                partition,
                low,
                high,
                committed: committed.get(&partition).copied(),
            });
        }
        backlog.sort_by_key(|partition| partition.partition);
        Ok(backlog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_commit_or_the_oldest_retained_record() {
        let partition = |low, high, committed| PartitionBacklog {
            partition: 0,
            low,
            high,
            committed,
        };
        assert_eq!(partition(0, 10, Some(4)).lag(), 6);
        assert_eq!(partition(0, 10, None).lag(), 10);
        // Records before `low` are gone: a commit older than them cannot be behind by them.
        assert_eq!(partition(8, 10, Some(4)).lag(), 2);
        assert_eq!(partition(0, 10, Some(12)).lag(), 0);
        assert_eq!(partition(3, 10, None).retained(), 7);
    }
}
