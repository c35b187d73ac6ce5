//! The overview: what each stage (main topic, each retry topic, the DLQ) has waiting, sampled by
//! the console itself every `console.lag_sample_interval_secs` and kept for
//! `console.lag_history_secs` in a bounded ring, so an operator can see when the lag started to
//! grow, not only what it is now.
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
        Ok(LagMonitor {
            stages,
            samples: Mutex::new(Samples {
                latest: None,
                history: VecDeque::with_capacity(capacity),
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
        let stages: Vec<StageBacklog> = self
            .stages
            .iter()
            .map(|stage| match stage.reader.read(self.read_timeout) {
                Ok(partitions) => describe(stage, &partitions, None),
                Err(error) => {
                    tracing::warn!(stage = %stage.label, error = format!("{error:#}"), "lag sample failed");
                    describe(stage, &[], Some(format!("{error:#}")))
                }
            })
            .collect();
        let point = LagPoint {
            at,
            backlogs: stages
                .iter()
                .map(|stage| stage.error.is_none().then_some(stage.backlog))
                .collect(),
        };
        let mut samples = self.samples.lock().expect("samples lock");
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
                    .map(|stage| describe(stage, &[], Some("not sampled yet".to_owned())))
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

fn describe(stage: &Stage, partitions: &[PartitionBacklog], error: Option<String>) -> StageBacklog {
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
        partitions,
        error,
    }
}
