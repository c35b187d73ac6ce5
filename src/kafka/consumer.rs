use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::base_client_config;
use crate::config::KafkaSettings;
use crate::failures::{HeaderSource, Origin};

impl HeaderSource for ConsumedRecord {
    fn header(&self, name: &str) -> Option<&str> {
        ConsumedRecord::header(self, name)
    }
}

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
    /// The partition's assignment epoch when the record was received; a revoke bumps the epoch, and
    /// a record from an older epoch must not be processed.
    epoch: u64,
}

impl ConsumedRecord {
    /// The value of the first header called `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Where the record was first consumed (its `origin-*` headers after a retry hop).
    pub fn origin(&self) -> Origin {
        Origin::of(self, &self.topic, self.partition, self.offset)
    }

    /// A record built by hand (tools and tests); it belongs to no assignment.
    pub fn from_parts(
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
    ) -> ConsumedRecord {
        ConsumedRecord {
            topic: topic.to_owned(),
            partition,
            offset,
            key,
            payload,
            headers: Vec::new(),
            epoch: 0,
        }
    }

    /// A record read outside any group assignment (the DLQ tools).
    pub(super) fn from_message<M: Message>(message: &M) -> ConsumedRecord {
        ConsumedRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            epoch: 0,
        }
    }
}

/// What the consumer reports as it runs, for metrics; the runtime implements it, so this module
/// needs to know nothing of Prometheus.
pub trait ConsumerObserver: Send + Sync + 'static {
    /// An offset commit finished (`ok` false: it failed and will be retried by the next commit).
    fn committed(&self, ok: bool);
    /// Lag of one partition, from librdkafka's statistics.
    fn lag(&self, topic: &str, partition: i32, lag: i64);
    /// Partitions were revoked: their lag is no longer ours to report.
    fn revoked(&self, topic: &str, partition: i32);
    /// A partition was assigned to this member (cooperative rebalances add partitions one
    /// assignment at a time; `revoked` takes them away).
    fn assigned(&self, _topic: &str, _partition: i32) {}
}

/// A consumer-group member with offsets stored by hand: an offset is stored only when the caller says
/// every effect of the records up to it happened; librdkafka's auto-commit then commits only stored
/// offsets, and a revoke commits them at once.
pub struct ActivityConsumer {
    consumer: StreamConsumer<GroupContext>,
    epochs: Arc<Mutex<HashMap<(String, i32), u64>>>,
    /// Shared with the context, which applies it to partitions as they are assigned.
    paused: Arc<AtomicBool>,
    /// Records received while the partitions were paused (during an outage); they come first in the
    /// next batch, in order.
    carried: VecDeque<ConsumedRecord>,
}

/// Tracks assignment epochs, commits on revoke, keeps the pause state right across rebalances, and
/// forwards commit results and lag to the observer.
struct GroupContext {
    epochs: Arc<Mutex<HashMap<(String, i32), u64>>>,
    /// Whether the stage wants its partitions paused (a dependency is down).
    paused: Arc<AtomicBool>,
    observer: Arc<dyn ConsumerObserver>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                // librdkafka reports the internal partition -1 and unassigned ones with lag -1.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.observer
                        .lag(topic_name, *partition, stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked");
                // Everything processed so far has its offset stored: commit it before the partitions
                // go, so the next owner starts right after it. Asynchronously: this callback runs
                // inside `recv()`, on an async worker thread, and a synchronous commit would block
                // that thread (and every task queued on it: the other stages) for as long as the
                // coordinator takes to answer, up to librdkafka's request timeout when it is down.
                // The order still holds: the commit request leaves before this member rejoins the
                // group on the same coordinator connection, so it is applied before the partitions
                // can be handed to their next owner. Partitions already lost (the coordinator gave
                // them away, e.g. after a session timeout) cannot be committed for at all.
                if consumer.assignment_lost() {
                    tracing::warn!("assignment lost: its uncommitted records are redelivered to the next owner");
                } else if let Err(error) = consumer.commit_consumer_state(CommitMode::Async) {
                    tracing::debug!(%error, "commit before revoke");
                }
                // librdkafka keeps a partition's pause flag after it is revoked: paused now and
                // assigned back after the stage resumed, it would never be fetched again (found by
                // the faults suite: both consumers stalled with lag after a broker restart). Clear
                // it on the way out; `post_rebalance` sets the stage's state on the way in.
                if let Err(error) = consumer.resume(partitions) {
                    tracing::debug!(%error, "clearing the pause of revoked partitions");
                }
                let mut epochs = self.epochs.lock().expect("epoch lock");
                for element in partitions.elements() {
                    *epochs
                        .entry((element.topic().to_owned(), element.partition()))
                        .or_default() += 1;
                    self.observer.revoked(element.topic(), element.partition());
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            if partitions.count() == 0 {
                return;
            }
            for element in partitions.elements() {
                self.observer.assigned(element.topic(), element.partition());
            }
            // New partitions take the stage's state: paused during an outage, fetching otherwise
            // (whatever flag a partition kept from an earlier assignment).
            let result = if self.paused.load(Ordering::SeqCst) {
                consumer.pause(partitions)
            } else {
                consumer.resume(partitions)
            };
            if let Err(error) = result {
                tracing::warn!(%error, "setting the pause state of assigned partitions");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::debug!(offsets = %describe(offsets), "offsets committed");
                self.observer.committed(true);
            }
            // "No offset stored" only says there was nothing new to commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(error) => {
                tracing::warn!(%error, offsets = %describe(offsets), "offset commit failed");
                self.observer.committed(false);
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
    /// Joins `group` and subscribes to `topics`.
    pub fn subscribe(
        settings: &KafkaSettings,
        group: &str,
        topics: &[&str],
        observer: Arc<dyn ConsumerObserver>,
    ) -> anyhow::Result<ActivityConsumer> {
        let epochs = Arc::new(Mutex::new(HashMap::new()));
        let paused = Arc::new(AtomicBool::new(false));
        let context = GroupContext {
            epochs: epochs.clone(),
            paused: paused.clone(),
            observer,
        };
        let mut config = base_client_config(settings);
        if !settings.mirrored_topics.is_empty() {
            // A mirrored topic appears when MirrorMaker 2 first sees its source, possibly after this
            // consumer subscribed; librdkafka notices new topics (and pattern matches) only at a
            // metadata refresh, every 5 minutes by default.
            config.set("topic.metadata.refresh.interval.ms", "5000");
        }
        let consumer: StreamConsumer<GroupContext> = config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by `store_processed`, never by librdkafka on delivery to us.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "5000")
            .set(
                "queued.max.messages.kbytes",
                settings.consumer_queue_max_kb.to_string(),
            )
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set(
                "max.poll.interval.ms",
                settings.max_poll_interval_ms.to_string(),
            )
            .create_with_context(context)
            .map_err(|error| anyhow::anyhow!("creating the Kafka consumer: {error}"))?;
        consumer
            .subscribe(topics)
            .map_err(|error| anyhow::anyhow!("subscribing to {topics:?}: {error}"))?;
        Ok(ActivityConsumer {
            consumer,
            epochs,
            paused,
            carried: VecDeque::new(),
        })
    }

    /// Waits for at least one record, then takes more until `max_records` or `max_wait` is reached
    /// (with `max_wait` zero: takes the records already received, without waiting).
    /// Records of partitions revoked meanwhile are left out. Cancel-safe: dropping the future loses
    /// no record (an unreturned record is redelivered after a restart, as nothing stored its offset).
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Vec<ConsumedRecord> {
        let mut batch: Vec<ConsumedRecord> = Vec::with_capacity(max_records.min(1024));
        while batch.len() < max_records {
            match self.carried.pop_front() {
                Some(record) => batch.push(record),
                None => break,
            }
        }
        if batch.is_empty() {
            loop {
                match self.consumer.recv().await {
                    Ok(message) => {
                        batch.push(self.own(&message));
                        break;
                    }
                    Err(error) => {
                        // Transport errors are reported here and retried by librdkafka on its own.
                        tracing::warn!(%error, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_records {
            let received = if max_wait.is_zero() {
                // Only what librdkafka has already fetched: a pending receive is dropped unfinished,
                // which takes no record from its queue.
                self.consumer.recv().now_or_never()
            } else {
                tokio::time::timeout_at(deadline, self.consumer.recv())
                    .await
                    .ok()
            };
            match received {
                Some(Ok(message)) => batch.push(self.own(&message)),
                Some(Err(error)) => {
                    tracing::warn!(%error, "Kafka consumer error");
                    break;
                }
                None => break,
            }
        }
        self.retain_assigned(&mut batch);
        batch
    }

    /// Drops records of partitions revoked since they were received: their new owner has them.
    pub fn retain_assigned(&self, records: &mut Vec<ConsumedRecord>) {
        let epochs = self.epochs.lock().expect("epoch lock");
        let before = records.len();
        records.retain(|record| {
            epochs
                .get(&(record.topic.clone(), record.partition))
                .copied()
                .unwrap_or(0)
                == record.epoch
        });
        if records.len() < before {
            tracing::info!(
                dropped = before - records.len(),
                "records of revoked partitions dropped"
            );
        }
    }

    /// The partitions assigned to this member now, as (topic, partition).
    pub fn assigned_partitions(&self) -> Vec<(String, i32)> {
        self.consumer
            .assignment()
            .map(|assignment| {
                assignment
                    .elements()
                    .iter()
                    .map(|element| (element.topic().to_owned(), element.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops fetching from every assigned partition (a dependency is down), and from partitions
    /// assigned later until `resume`.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        if let Ok(assignment) = self.consumer.assignment() {
            if let Err(error) = self.consumer.pause(&assignment) {
                tracing::warn!(%error, "pausing partitions");
            }
        }
    }

    /// Fetches again from every assigned partition, and from partitions assigned later.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        if let Ok(assignment) = self.consumer.assignment() {
            if let Err(error) = self.consumer.resume(&assignment) {
                tracing::warn!(%error, "resuming partitions");
            }
        }
    }

    /// Keeps the group membership alive while paused: polls for `duration`, serving rebalances; any
    /// record that still arrives is kept for the next batch, in order.
    pub async fn keep_alive(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Ok(result) = tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            match result {
                Ok(message) => {
                    let record = self.own(&message);
                    self.carried.push_back(record);
                }
                Err(error) => {
                    tracing::debug!(%error, "Kafka consumer error while paused");
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
            }
        }
        let mut carried: Vec<ConsumedRecord> = self.carried.drain(..).collect();
        self.retain_assigned(&mut carried);
        self.carried.extend(carried);
        // Partitions assigned meanwhile took the paused state in `post_rebalance`; pausing the whole
        // assignment again costs nothing and does not depend on it.
        self.pause();
    }

    /// Marks `records` as fully processed: the next commit covers them. Records of a partition that
    /// was revoked meanwhile are refused by librdkafka, which is right: the new owner redelivers them.
    pub fn store_processed(&self, records: &[ConsumedRecord]) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
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
    /// Blocks: call it from the blocking pool. A failed commit is tried again a few times; closing the
    /// consumer commits once more, and whatever is still uncommitted is redelivered to the next owner,
    /// which the idempotent effects make safe.
    pub fn commit_stored(&self) {
        for attempt in 1..=5 {
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {
                    tracing::info!("stored offsets committed");
                    return;
                }
                // "No offset stored": nothing new was processed since the last commit.
                Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                )) => return,
                Err(error) => {
                    tracing::warn!(%error, attempt, "final offset commit failed");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Leaves the group before the consumer is dropped (shutdown, after `commit_stored`):
    /// unsubscribes, then serves the revocation that follows (a rebalance is served only inside a
    /// receive) until no partition is assigned or `timeout` passes. A consumer dropped while it still
    /// holds partitions has them revoked inside librdkafka's close, where the callback's
    /// `incremental_unassign` can wait forever on a group that no longer answers (librdkafka
    /// #4884; CI hung there once, at a test pipeline's stop). Records received meanwhile are
    /// dropped without storing their offsets: the partitions' next owner gets them.
    pub async fn leave_group(&mut self, timeout: Duration) {
        self.carried.clear();
        self.consumer.unsubscribe();
        let deadline = Instant::now() + timeout;
        while !self.assigned_partitions().is_empty() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    partitions = ?self.assigned_partitions(),
                    "the revocation after unsubscribing did not come in time; closing with these"
                );
                return;
            }
            // A receive serves the revocation but returns only with a record: ask it in short
            // slices and look at the assignment in between.
            let slice_end = deadline.min(Instant::now() + Duration::from_millis(50));
            if let Ok(Err(error)) = tokio::time::timeout_at(slice_end, self.consumer.recv()).await {
                tracing::debug!(%error, "Kafka consumer error while leaving the group");
                tokio::time::sleep_until(slice_end).await;
            }
        }
    }

    fn own<M: Message>(&self, message: &M) -> ConsumedRecord {
        let epoch = self
            .epochs
            .lock()
            .expect("epoch lock")
            .get(&(message.topic().to_owned(), message.partition()))
            .copied()
            .unwrap_or(0);
        ConsumedRecord {
            epoch,
            ..ConsumedRecord::from_message(message)
        }
    }
}
