//! The `consume` role: the consumer-group runtime. For each batch of records it stores the activities
//! in MongoDB, runs the atomic Redis step (mark, count, publish), forwards failed records (retry topic
//! or DLQ), and only then stores the offsets.
//!
//! One process runs the main stage (the activities topic) and one stage per retry step (each retry
//! topic with its own consumer group), unless `--stage` picks one.
//!
//! Architecture invariant: an offset is stored only after every effect of its record, and of every
//! record before it in the partition, happened (or the record was forwarded).

pub mod alerts;
pub mod instances;
pub mod metrics;
mod processor;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerSettings, Settings};
use crate::kafka::{ActivityConsumer, ActivityPublisher, ConsumedRecord};
use crate::store::{ActivityRepository, RedisStore};

pub use instances::InstanceReport;
pub use metrics::ConsumerMetrics;
use processor::ProcessingOutage;
pub use processor::{BatchProcessor, BatchReport, Stage};

/// How long a stopping stage waits for its partitions' revocation after leaving the group; the
/// coordinator answers within a round trip unless it is down, and then the close goes on without it.
const LEAVE_GROUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which stages a `consume` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stages {
    /// The main topic and every retry topic.
    All,
    /// The main topic only.
    Main,
    /// The retry topics only.
    Retry,
}

/// A running consumer: its stages' tasks and its metrics endpoint.
pub struct ConsumerRuntime {
    metrics_port: u16,
    metrics: Arc<ConsumerMetrics>,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Writes the stages' instance reports for the console; removes them once the stages stopped.
    reporter: Option<tokio::task::JoinHandle<()>>,
    metrics_server: actix_web::dev::ServerHandle,
}

impl ConsumerRuntime {
    /// Connects, creates the MongoDB indexes (waiting out an outage), binds the metrics endpoint and
    /// starts the stages. They stop when `shutdown` is cancelled: each finishes the batch in hand,
    /// commits and leaves its group.
    pub async fn start(
        settings: &Settings,
        stages: Stages,
        shutdown: CancellationToken,
    ) -> anyhow::Result<ConsumerRuntime> {
        let repository = ActivityRepository::connect(&settings.mongo).await?;
        let redis = RedisStore::connect(&settings.redis)?;
        let publisher = ActivityPublisher::new(&settings.kafka)?;
        let metrics = Arc::new(ConsumerMetrics::new());

        let listener = TcpListener::bind(settings.consumer.metrics_listen).map_err(|error| {
            anyhow::anyhow!(
                "binding consumer.metrics_listen = {}: {error}",
                settings.consumer.metrics_listen
            )
        })?;
        let metrics_port = listener.local_addr()?.port();
        let served = metrics.clone();
        let metrics_server = HttpServer::new(move || {
            let served = served.clone();
            App::new()
                .route(
                    "/metrics",
                    web::get().to(move || {
                        let text = served.render();
                        async move {
                            HttpResponse::Ok()
                                .content_type("text/plain; version=0.0.4")
                                .body(text)
                        }
                    }),
                )
                .route(
                    "/healthz",
                    web::get().to(|| async {
                        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let metrics_handle = metrics_server.handle();
        tokio::spawn(metrics_server);
        tracing::info!(port = metrics_port, "consumer metrics listening");

        let mut backoff = OutageBackoff::new(&settings.consumer);
        // Indexes first: without the unique index, redelivery could store duplicates.
        loop {
            match repository.ensure_indexes().await {
                Ok(()) => break,
                Err(outage) => {
                    tracing::warn!(%outage, "cannot create the MongoDB indexes yet; retrying");
                    if !backoff.sleep(&shutdown).await {
                        // Shut down before MongoDB ever answered: there is nothing to stop.
                        return Ok(ConsumerRuntime {
                            metrics_port,
                            metrics,
                            tasks: JoinSet::new(),
                            reporter: None,
                            metrics_server: metrics_handle,
                        });
                    }
                }
            }
        }

        let alerts = alerts::spawn(
            &settings.alerts,
            &settings.kafka.dlq_topic,
            metrics.clone(),
            shutdown.clone(),
        );
        let reporter_redis = redis.clone();
        let processor = Arc::new(BatchProcessor::new(
            settings,
            repository,
            redis,
            publisher,
            metrics.clone(),
            alerts,
        )?);
        let mut plan: Vec<(Stage, String, String)> = Vec::new();
        if matches!(stages, Stages::All | Stages::Main) {
            plan.push((
                Stage::Main,
                settings.kafka.topic.clone(),
                settings.kafka.consumer_group.clone(),
            ));
        }
        if matches!(stages, Stages::All | Stages::Retry) {
            for step in 1..=settings.retry.delays_ms.len() {
                plan.push((
                    Stage::Retry(step),
                    settings.kafka.retry_topic_for(step),
                    format!("{}.retry.{step}", settings.kafka.consumer_group),
                ));
            }
        }
        let mut tasks = JoinSet::new();
        let mut reported = Vec::new();
        for (stage, topic, group) in plan {
            let status = Arc::new(instances::StageStatus::default());
            let observer = Arc::new(instances::StageObserver {
                metrics: metrics.clone(),
                status: status.clone(),
            });
            // The main stage also reads what MirrorMaker 2 copied from the other datacenters: one
            // group, so a mirrored record gets the same effects, once, as a local one. Retry stages
            // read only their local topic (failures are never mirrored).
            let mut topics: Vec<&str> = vec![&topic];
            if stage == Stage::Main {
                topics.extend(settings.kafka.mirrored_topics.iter().map(String::as_str));
            }
            let consumer = ActivityConsumer::subscribe(&settings.kafka, &group, &topics, observer)
                .map_err(|error| {
                    error.context("configuration keys `kafka.topic` and `kafka.mirrored_topics`")
                })?;
            tracing::info!(stage = %stage.label(), topics = ?topics, %group, "consumer stage started");
            let stage_loop = StageLoop {
                stage,
                consumer,
                processor: processor.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                settings: settings.consumer.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(stage_loop.run());
            reported.push(instances::ReportedStage {
                label: stage.label(),
                topic: topic.clone(),
                group,
                status,
            });
        }
        // It stops writing when `shutdown` comes and removes this instance's fields; `wait` waits
        // for that, so a clean stop leaves nothing behind for the console to call stale.
        let reporter = tokio::spawn(instances::report_until_stopped(
            reporter_redis,
            instances::InstanceIdentity::of_this_process(),
            reported,
            settings.consumer.instance_report_interval(),
            shutdown.clone(),
        ));
        Ok(ConsumerRuntime {
            metrics_port,
            metrics,
            tasks,
            reporter: Some(reporter),
            metrics_server: metrics_handle,
        })
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn metrics(&self) -> &ConsumerMetrics {
        &self.metrics
    }

    /// Waits for every stage to stop; the first error wins.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = joined.map_err(anyhow::Error::from).and_then(|stage| stage);
            if let Err(error) = outcome {
                tracing::error!(error = format!("{error:#}"), "a consumer stage failed");
                if result.is_ok() {
                    result = Err(error);
                }
            }
        }
        if let Some(reporter) = self.reporter.take() {
            if let Err(error) = reporter.await {
                tracing::error!(%error, "the instance reporter panicked");
            }
        }
        // Nothing to finish gracefully on a metrics endpoint.
        self.metrics_server.stop(false).await;
        tracing::info!("consumer stopped");
        result
    }
}

/// Runs the consumer until `shutdown` is cancelled.
pub async fn run(
    settings: &Settings,
    stages: Stages,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ConsumerRuntime::start(settings, stages, shutdown)
        .await?
        .wait()
        .await
}

/// One stage: a consumer on one topic, processing batch after batch.
struct StageLoop {
    stage: Stage,
    consumer: ActivityConsumer,
    processor: Arc<BatchProcessor>,
    metrics: Arc<ConsumerMetrics>,
    /// What the instance reporter tells the console: breaker transitions, records processed.
    status: Arc<instances::StageStatus>,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
}

impl StageLoop {
    async fn run(mut self) -> anyhow::Result<()> {
        let label = self.stage.label();
        // The breaker's state lives here; the gauge only reports it.
        let breaker_gauge = self.metrics.breaker_state.with_label_values(&[&label]);
        let mut breaker_open = false;
        breaker_gauge.set(0);
        let mut backoff = OutageBackoff::new(&self.settings);
        let max_wait = self.settings.batch_max_wait();
        'batches: loop {
            let mut batch = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                batch = self.consumer.next_batch(self.settings.batch_max_records, max_wait) => batch,
            };
            if let Stage::Retry(_) = self.stage {
                // Records of one retry topic share one delay, so due times rise along a partition:
                // waiting for the batch's latest keeps a record due sooner waiting at most one step.
                let due_at = |record| self.processor.due_at(record, self.stage);
                if let Some(latest) = batch.iter().map(due_at).max() {
                    if let Ok(wait) = (latest - Utc::now()).to_std() {
                        self.consumer.pause();
                        tokio::select! {
                            _ = self.shutdown.cancelled() => break,
                            _ = self.consumer.keep_alive(wait) => {}
                        }
                        self.consumer.resume();
                        self.consumer.retain_assigned(&mut batch);
                    }
                }
            }
            backoff.reset();
            // Partitions whose records in this batch were applied: an outage of another part does
            // not apply them again (their dead letters would be written twice).
            let mut applied = HashSet::new();
            let mut report = BatchReport::default();
            loop {
                if batch.is_empty() {
                    // A rebalance during an outage took every record of the batch away: the new
                    // owners redeliver them. Resume, or the paused partitions would never be fetched.
                    if breaker_open {
                        self.consumer.resume();
                        breaker_open = false;
                        breaker_gauge.set(0);
                        self.status.breaker_closed();
                    }
                    continue 'batches;
                }
                let started = std::time::Instant::now();
                match self.apply(&batch, &mut applied, &mut report).await {
                    Ok(()) => {
                        self.record(&report, &batch, started.elapsed());
                        if let Err(error) = self.consumer.store_processed(&batch) {
                            // The partition was revoked meanwhile; its new owner redelivers, which
                            // the idempotent effects make harmless.
                            tracing::warn!(error = format!("{error:#}"), "offsets not stored");
                        } else {
                            self.status.processed(batch.len());
                        }
                        if breaker_open {
                            tracing::info!(stage = %label, "dependency back; resuming partitions");
                            self.consumer.resume();
                            breaker_open = false;
                            breaker_gauge.set(0);
                            self.status.breaker_closed();
                        }
                        break;
                    }
                    Err(outage) => {
                        if !breaker_open {
                            tracing::warn!(stage = %label, %outage, records = batch.len(), "dependency outage: pausing partitions, retrying the batch in place");
                            self.consumer.pause();
                            breaker_open = true;
                            breaker_gauge.set(1);
                            self.status.breaker_opened(outage.class());
                        } else {
                            tracing::debug!(stage = %label, %outage, "still down");
                        }
                        let delay = backoff.next_delay();
                        tokio::select! {
                            // Shutting down mid-outage: nothing of this batch is stored, so it is
                            // redelivered after the restart.
                            _ = self.shutdown.cancelled() => break 'batches,
                            _ = self.consumer.keep_alive(delay) => {}
                        }
                        // A rebalance while paused may have taken partitions away.
                        self.consumer.retain_assigned(&mut batch);
                    }
                }
            }
        }
        // Committing and closing block on the broker: keep them off the async workers, which the
        // other stages are still using to shut down. In between, the stage leaves the group and
        // serves its revocation itself, so the close has nothing left to revoke.
        let consumer = self.consumer;
        let mut consumer = tokio::task::spawn_blocking(move || {
            consumer.commit_stored();
            consumer
        })
        .await?;
        consumer.leave_group(LEAVE_GROUP_TIMEOUT).await;
        tokio::task::spawn_blocking(move || drop(consumer)).await?;
        tracing::info!(stage = %label, "consumer stage stopped");
        Ok(())
    }

    /// Applies the batch's effects: split into up to `partition_parallelism` parts of whole
    /// partitions (balanced by record count), applied concurrently. Per-partition order holds, as a
    /// partition's records are applied in order by one part. The first outage is returned once every
    /// part has finished; the parts that succeeded are in `applied` and not applied again.
    async fn apply(
        &self,
        batch: &[ConsumedRecord],
        applied: &mut HashSet<(String, i32)>,
        total: &mut BatchReport,
    ) -> Result<(), ProcessingOutage> {
        let pending: Vec<&ConsumedRecord> = batch
            .iter()
            .filter(|record| !applied.contains(&(record.topic.clone(), record.partition)))
            .collect();
        let parts = split_by_partition(&pending, self.settings.partition_parallelism);
        let outcomes = futures::future::join_all(
            parts
                .iter()
                .map(|part| self.processor.process(part, self.stage)),
        )
        .await;
        let mut first_outage = None;
        for (part, outcome) in parts.iter().zip(outcomes) {
            match outcome {
                Ok(report) => {
                    add_report(total, &report);
                    applied.extend(
                        part.iter()
                            .map(|record| (record.topic.clone(), record.partition)),
                    );
                }
                Err(outage) => {
                    first_outage.get_or_insert(outage);
                }
            }
        }
        first_outage.map_or(Ok(()), Err)
    }

    fn record(&self, report: &BatchReport, batch: &[ConsumedRecord], elapsed: Duration) {
        let metrics = &self.metrics;
        metrics.batch_size.observe(batch.len() as f64);
        let partitions: HashSet<(&str, i32)> = batch
            .iter()
            .map(|record| (record.topic.as_str(), record.partition))
            .collect();
        metrics.batch_partitions.observe(partitions.len() as f64);
        metrics
            .batch_duration
            .with_label_values(&[&self.stage.label()])
            .observe(elapsed.as_secs_f64());
        metrics
            .records
            .with_label_values(&["inserted"])
            .inc_by(report.inserted as u64);
        metrics
            .records
            .with_label_values(&["duplicate"])
            .inc_by(report.duplicates as u64);
        tracing::debug!(stage = %self.stage.label(), ?report, "batch processed");
    }
}

fn add_report(total: &mut BatchReport, part: &BatchReport) {
    total.inserted += part.inserted;
    total.duplicates += part.duplicates;
    total.announced += part.announced;
    total.superseded += part.superseded;
    total.retried += part.retried;
    total.dead_lettered += part.dead_lettered;
}

/// Splits `records` into at most `parts` groups of whole partitions, in their order, balancing the
/// record counts (largest partition first into the smallest group).
fn split_by_partition(records: &[&ConsumedRecord], parts: usize) -> Vec<Vec<ConsumedRecord>> {
    let mut partitions: Vec<((&str, i32), Vec<ConsumedRecord>)> = Vec::new();
    for record in records {
        let id = (record.topic.as_str(), record.partition);
        match partitions.iter_mut().find(|(key, _)| *key == id) {
            Some((_, list)) => list.push((*record).clone()),
            None => partitions.push((id, vec![(*record).clone()])),
        }
    }
    partitions.sort_by_key(|(_, list)| std::cmp::Reverse(list.len()));
    let mut groups: Vec<Vec<ConsumedRecord>> = Vec::new();
    for (_, list) in partitions {
        if groups.len() < parts.max(1) {
            groups.push(list);
        } else if let Some(smallest) = groups.iter_mut().min_by_key(|group| group.len()) {
            smallest.extend(list);
        }
    }
    groups
}

/// Capped exponential backoff while a dependency is down.
struct OutageBackoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl OutageBackoff {
    fn new(settings: &ConsumerSettings) -> OutageBackoff {
        let initial = Duration::from_millis(settings.outage_backoff_initial_ms);
        OutageBackoff {
            initial,
            max: Duration::from_millis(settings.outage_backoff_max_ms),
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The delay to wait now; the next one doubles, up to the cap.
    fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Sleeps for the next delay; `false` if shutdown came first.
    async fn sleep(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_into_whole_partitions_in_order() {
        let records: Vec<ConsumedRecord> = [(0, 10), (1, 20), (0, 11), (2, 30), (0, 12), (3, 40)]
            .iter()
            .map(|&(partition, offset)| {
                ConsumedRecord::from_parts("t", partition, offset, None, None)
            })
            .collect();
        let refs: Vec<&ConsumedRecord> = records.iter().collect();
        let positions = |groups: &[Vec<ConsumedRecord>]| -> Vec<Vec<(i32, i64)>> {
            groups
                .iter()
                .map(|group| group.iter().map(|r| (r.partition, r.offset)).collect())
                .collect()
        };
        // Partition 0 (3 records) alone; the others balanced over the remaining part.
        assert_eq!(
            positions(&split_by_partition(&refs, 2)),
            [
                vec![(0, 10), (0, 11), (0, 12)],
                vec![(1, 20), (2, 30), (3, 40)]
            ]
        );
        // One part: everything, each partition's records in order.
        let one = positions(&split_by_partition(&refs, 1));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].len(), 6);
        let partition_zero: Vec<i64> = one[0]
            .iter()
            .filter(|(p, _)| *p == 0)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(partition_zero, [10, 11, 12]);
        // More parts than partitions: one part per partition.
        assert_eq!(split_by_partition(&refs, 16).len(), 4);
        assert!(split_by_partition(&[], 4).is_empty());
    }

    #[test]
    fn outage_backoff_doubles_up_to_the_cap_and_resets() {
        let settings = Settings::from_files(&[]).unwrap().consumer;
        let mut backoff = OutageBackoff::new(&settings);
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
    }
}
