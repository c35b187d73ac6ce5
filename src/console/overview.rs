//! The overview: what each stage (main topic, each retry topic, the DLQ) has waiting, sampled by
//! the console itself every `console.lag_sample_interval_secs` and kept for
//! `console.lag_history_secs` in a bounded ring, so an operator can see when the lag started to
//! grow, not only what it is now. From consecutive samples it derives each stage's rates: records
//! appended per second (the end offsets' growth) and processed per second (the group's committed
//! offsets' growth); see [`stage_rates`] for the first sample, added partitions and retention.
//!
//! The readers never join a group: they read watermarks and the groups' committed offsets (see
//! `kafka::BacklogReader`), so sampling does not touch the pipeline's consumers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::kafka::{BacklogReader, PartitionBacklog};

/// One stage's backlog at one sample.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageBacklog {
    /// `main`, `retry.1`, ..., `dlq`.
    pub stage: String,
    pub topic: String,
    /// The consumer group whose commits count; none for the DLQ, which no group consumes.
    pub group: Option<String>,
    /// Records not yet committed by the group, all partitions together; for the DLQ, the records
    /// it holds (purged ones too, until their prefix is dropped).
    pub backlog: i64,
    /// Records appended to the topic per second since the stage's previous good sample (the end
    /// offsets' growth); null at the first sample.
    pub appended_per_sec: Option<f64>,
    /// Records the group processed per second since the previous good sample (its committed
    /// offsets' growth); null at the first sample and for the DLQ.
    pub processed_per_sec: Option<f64>,
    pub partitions: Vec<PartitionLag>,
    /// Why this stage could not be read at this sample, if it could not.
    pub error: Option<String>,
}

/// One partition of a stage.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLag {
    pub partition: i32,
    /// The oldest offset retained.
    pub low: i64,
    /// The end offset.
    pub high: i64,
    /// The group's committed offset, if it committed one.
    pub committed: Option<i64>,
    /// The end offset minus the committed one (or minus `low` when nothing is committed).
    pub lag: i64,
}

/// One point of the history: each stage's backlog at `at`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagPoint {
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// Backlog per stage, in the order of the overview's stages; null where the read failed.
    pub backlogs: Vec<Option<i64>>,
    /// Records appended per second per stage, in the same order; null where there is no rate.
    pub appended_per_sec: Vec<Option<f64>>,
    /// Records processed per second per stage, in the same order; null where there is no rate
    /// (and always for the DLQ).
    pub processed_per_sec: Vec<Option<f64>>,
}

/// Records appended and processed per second between two samples of one stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageRates {
    pub appended_per_sec: f64,
    /// None for a topic without a group (the DLQ).
    pub processed_per_sec: Option<f64>,
}

/// The rates between two good samples of one stage, `elapsed_secs` apart (none if no time
/// passed). Counts are per partition and never negative:
/// - appended: the end offset's growth. A partition absent before (added since) counts the records
///   it retains now, all written after the previous sample. An end offset that went back (the topic
///   was recreated) counts nothing.
/// - processed: the committed offset's growth, from where the group stood before: its committed
///   offset, or the oldest retained record when it had none (its reset policy starts there). A
///   prefix dropped by retention meanwhile is not counted: those records expired, the group skipped
///   them. A partition without a commit now processed nothing we can see.
pub fn stage_rates(
    previous: &[PartitionBacklog],
    now: &[PartitionBacklog],
    elapsed_secs: f64,
    has_group: bool,
) -> Option<StageRates> {
    if elapsed_secs <= 0.0 {
        return None;
    }
    let mut appended = 0i64;
    let mut processed = 0i64;
    for partition in now {
        let before = previous
            .iter()
            .find(|before| before.partition == partition.partition);
        appended += match before {
            Some(before) => (partition.high - before.high).max(0),
            None => partition.retained(),
        };
        if let Some(committed) = partition.committed {
            let start = match before {
                Some(before) => before.committed.unwrap_or(before.low),
                None => partition.low,
            }
            .max(partition.low);
            processed += (committed - start).max(0);
        }
    }
    Some(StageRates {
        appended_per_sec: appended as f64 / elapsed_secs,
        processed_per_sec: has_group.then(|| processed as f64 / elapsed_secs),
    })
}

/// The latest sample and the history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// When the latest sample was taken; null before the first one.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sampled_at: Option<DateTime<Utc>>,
    pub sample_interval_secs: u64,
    pub stages: Vec<StageBacklog>,
    /// Oldest first, at most `console.lag_history_secs` of it.
    pub history: Vec<LagPoint>,
}

struct Stage {
    label: String,
    reader: BacklogReader,
}

struct Samples {
    latest: Option<(DateTime<Utc>, Vec<StageBacklog>)>,
    history: VecDeque<LagPoint>,
    /// Per stage, its last good read and when: the rates' starting point. A failed read keeps the
    /// one before, so the next good read gives the average over the gap rather than no rate.
    last_good: Vec<Option<(DateTime<Utc>, Vec<PartitionBacklog>)>>,
}

/// Samples the stages in the background and answers the overview from memory, so a page view
/// costs no Kafka call and many open pages cost the cluster nothing more.
pub struct LagMonitor {
    stages: Vec<Stage>,
    samples: Mutex<Samples>,
    capacity: usize,
    interval: Duration,
    read_timeout: Duration,
}

impl LagMonitor {
    pub fn new(settings: &Settings) -> anyhow::Result<LagMonitor> {
        let kafka = &settings.kafka;
        let mut stages = vec![Stage {
            label: "main".to_owned(),
            reader: BacklogReader::new(kafka, &kafka.topic, Some(&kafka.consumer_group))?,
        }];
        // The main stage's group also reads the topics mirrored from other datacenters: each is a
        // backlog of its own (the mirror may deliver in bursts). Those named by a `^` pattern are
        // not sampled: which topics match is the consumer's business (librdkafka's regex dialect).
        for mirrored in kafka
            .mirrored_topics
            .iter()
            .filter(|topic| !topic.starts_with('^'))
        {
            stages.push(Stage {
                label: format!("main:{mirrored}"),
                reader: BacklogReader::new(kafka, mirrored, Some(&kafka.consumer_group))?,
            });
        }
        for step in 1..=settings.retry.delays_ms.len() {
            // The retry stages' groups, as `consume` names them.
            let group = format!("{}.retry.{step}", kafka.consumer_group);
            stages.push(Stage {
                label: format!("retry.{step}"),
                reader: BacklogReader::new(kafka, &kafka.retry_topic_for(step), Some(&group))?,
            });
        }
        stages.push(Stage {
            label: "dlq".to_owned(),
            reader: BacklogReader::new(kafka, &kafka.dlq_topic, None)?,
        });
        let capacity = settings.console.lag_history_samples().max(1);
        let stage_count = stages.len();
        Ok(LagMonitor {
            stages,
            samples: Mutex::new(Samples {
                latest: None,
                history: VecDeque::with_capacity(capacity),
                last_good: vec![None; stage_count],
            }),
            capacity,
            interval: settings.console.lag_sample_interval(),
            read_timeout: settings.console.read_timeout(),
        })
    }

    /// Samples now, then every interval until `shutdown`.
    pub async fn run(self: Arc<LagMonitor>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let monitor = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || monitor.sample_now()).await {
                Ok(()) => {}
                Err(error) => tracing::error!(%error, "the lag sampler panicked"),
            }
        }
    }

    /// Reads every stage once (blocking) and records the sample.
    fn sample_now(&self) {
        let at = Utc::now();
        let reads: Vec<anyhow::Result<Vec<PartitionBacklog>>> = self
            .stages
            .iter()
            .map(|stage| stage.reader.read(self.read_timeout))
            .collect();
        let mut samples = self.samples.lock().expect("samples lock");
        let mut stages = Vec::with_capacity(reads.len());
        for ((stage, read), last_good) in self
            .stages
            .iter()
            .zip(reads)
            .zip(samples.last_good.iter_mut())
        {
            match read {
                Ok(partitions) => {
                    let rates = last_good.as_ref().and_then(|(then, previous)| {
                        let elapsed_secs = (at - *then).num_milliseconds() as f64 / 1000.0;
                        stage_rates(
                            previous,
                            &partitions,
                            elapsed_secs,
                            stage.reader.group().is_some(),
                        )
                    });
                    stages.push(describe(stage, &partitions, rates, None));
                    *last_good = Some((at, partitions));
                }
                Err(error) => {
                    tracing::warn!(stage = %stage.label, error = format!("{error:#}"), "lag sample failed");
                    stages.push(describe(stage, &[], None, Some(format!("{error:#}"))));
                }
            }
        }
        let point = LagPoint {
            at,
            backlogs: stages
                .iter()
                .map(|stage| stage.error.is_none().then_some(stage.backlog))
                .collect(),
            appended_per_sec: stages.iter().map(|stage| stage.appended_per_sec).collect(),
            processed_per_sec: stages.iter().map(|stage| stage.processed_per_sec).collect(),
        };
        if samples.history.len() == self.capacity {
            samples.history.pop_front();
        }
        samples.history.push_back(point);
        samples.latest = Some((at, stages));
    }

    pub fn overview(&self) -> Overview {
        let samples = self.samples.lock().expect("samples lock");
        let (sampled_at, stages) = match &samples.latest {
            Some((at, stages)) => (Some(*at), stages.clone()),
            None => (
                None,
                self.stages
                    .iter()
                    .map(|stage| describe(stage, &[], None, Some("not sampled yet".to_owned())))
                    .collect(),
            ),
        };
        Overview {
            sampled_at,
            sample_interval_secs: self.interval.as_secs(),
            stages,
            history: samples.history.iter().cloned().collect(),
        }
    }
}

fn describe(
    stage: &Stage,
    partitions: &[PartitionBacklog],
    rates: Option<StageRates>,
    error: Option<String>,
) -> StageBacklog {
    let is_dlq = stage.reader.group().is_none();
    let partitions: Vec<PartitionLag> = partitions
        .iter()
        .map(|partition| PartitionLag {
            partition: partition.partition,
            low: partition.low,
            high: partition.high,
            committed: partition.committed,
            lag: if is_dlq {
                partition.retained()
            } else {
                partition.lag()
            },
        })
        .collect();
    StageBacklog {
        stage: stage.label.clone(),
        topic: stage.reader.topic().to_owned(),
        group: stage.reader.group().map(str::to_owned),
        backlog: partitions.iter().map(|partition| partition.lag).sum(),
        appended_per_sec: rates.map(|rates| rates.appended_per_sec),
        processed_per_sec: rates.and_then(|rates| rates.processed_per_sec),
        partitions,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: i32, low: i64, high: i64, committed: Option<i64>) -> PartitionBacklog {
        PartitionBacklog {
            partition,
            low,
            high,
            committed,
        }
    }

    #[test]
    fn rates_are_the_offsets_growth_per_second() {
        let before = [partition(0, 0, 10, Some(4)), partition(1, 0, 5, None)];
        let now = [partition(0, 0, 30, Some(14)), partition(1, 0, 9, Some(3))];
        let rates = stage_rates(&before, &now, 2.0, true).unwrap();
        // 20 + 4 appended, 10 + 3 processed (a first commit counts from the oldest record).
        assert_eq!(rates.appended_per_sec, 12.0);
        assert_eq!(rates.processed_per_sec, Some(6.5));
    }

    #[test]
    fn a_stage_without_a_group_has_no_processed_rate() {
        let before = [partition(0, 0, 10, None)];
        let now = [partition(0, 0, 11, None)];
        let rates = stage_rates(&before, &now, 1.0, false).unwrap();
        assert_eq!(rates.appended_per_sec, 1.0);
        assert_eq!(rates.processed_per_sec, None);
    }

    #[test]
    fn a_partition_added_since_counts_what_it_holds() {
        let before = [partition(0, 0, 10, Some(10))];
        let now = [partition(0, 0, 10, Some(10)), partition(1, 0, 6, Some(2))];
        let rates = stage_rates(&before, &now, 1.0, true).unwrap();
        assert_eq!(rates.appended_per_sec, 6.0);
        assert_eq!(rates.processed_per_sec, Some(2.0));
    }

    #[test]
    fn a_prefix_dropped_by_retention_is_not_processed() {
        // The group stood at 100; retention dropped everything below 500, and the group, reset to
        // 500, committed 520: it processed 20 records, not 420.
        let before = [partition(0, 0, 600, Some(100))];
        let now = [partition(0, 500, 610, Some(520))];
        let rates = stage_rates(&before, &now, 1.0, true).unwrap();
        assert_eq!(rates.appended_per_sec, 10.0);
        assert_eq!(rates.processed_per_sec, Some(20.0));
    }

    #[test]
    fn offsets_that_went_back_count_nothing() {
        // The topic was recreated and an operator reset the group: no negative rates.
        let before = [partition(0, 0, 600, Some(500))];
        let now = [partition(0, 0, 3, Some(1))];
        let rates = stage_rates(&before, &now, 1.0, true).unwrap();
        assert_eq!(rates.appended_per_sec, 0.0);
        assert_eq!(rates.processed_per_sec, Some(0.0));
    }

    #[test]
    fn no_time_no_rate() {
        let sample = [partition(0, 0, 1, None)];
        assert_eq!(stage_rates(&sample, &sample, 0.0, true), None);
    }
}
