//! The `consume` role: the consumer-group runtime. For each batch of records it stores the activities
//! in MongoDB, runs the atomic Redis step (mark, count, publish) and only then stores the offsets.
//!
//! Architecture invariant: an offset is stored only after every effect of its record, and of every
//! record before it in the partition, happened (or the record was dead-lettered).

mod processor;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::kafka::{ActivityConsumer, ActivityPublisher};
use crate::store::{ActivityRepository, RedisStore};

pub use processor::{BatchProcessor, BatchReport};

/// Runs the consumer until `shutdown` is cancelled: then it finishes the batch in hand, commits and
/// leaves the group.
pub async fn run(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let repository = ActivityRepository::connect(&settings.mongo).await?;
    let redis = RedisStore::connect(&settings.redis)?;
    let dead_letters = ActivityPublisher::new(&settings.kafka)?;
    let processor = BatchProcessor::new(settings, repository.clone(), redis, dead_letters);

    let mut backoff = OutageBackoff::new(&settings.consumer);
    // Indexes first: without the unique index, redelivery could store duplicates.
    loop {
        match repository.ensure_indexes().await {
            Ok(()) => break,
            Err(outage) => {
                tracing::warn!(%outage, "cannot create the MongoDB indexes yet; retrying");
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
            }
        }
    }

    let consumer = ActivityConsumer::subscribe(&settings.kafka, &[&settings.kafka.topic])?;
    tracing::info!(
        topic = %settings.kafka.topic,
        group = %settings.kafka.consumer_group,
        "consumer started"
    );
    let max_records = settings.consumer.batch_max_records;
    let max_wait = settings.consumer.batch_max_wait();
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = consumer.next_batch(max_records, max_wait) => batch,
        };
        backoff.reset();
        loop {
            match processor.process(&batch).await {
                Ok(report) => {
                    tracing::debug!(?report, "batch processed");
                    if let Err(error) = consumer.store_processed(&batch) {
                        // The partition was revoked meanwhile; its new owner redelivers, which the
                        // idempotent effects make harmless.
                        tracing::warn!(error = format!("{error:#}"), "offsets not stored");
                    }
                    break;
                }
                Err(outage) => {
                    tracing::warn!(%outage, records = batch.len(), "dependency outage; retrying the batch in place");
                    if !backoff.wait(&shutdown).await {
                        // Shutting down mid-outage: nothing of this batch is stored, so it is redelivered.
                        consumer.commit_stored();
                        return Ok(());
                    }
                }
            }
        }
    }
    consumer.commit_stored();
    tracing::info!("consumer stopped");
    Ok(())
}

/// Capped exponential backoff while a dependency is down.
struct OutageBackoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl OutageBackoff {
    fn new(settings: &crate::config::ConsumerSettings) -> OutageBackoff {
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

    /// Sleeps for the current delay and doubles it; `false` if shutdown came first.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
