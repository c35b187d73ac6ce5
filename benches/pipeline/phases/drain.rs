//! Phase 5: pre-fill a topic through the in-process publisher, then time consumer processes draining
//! it into MongoDB and Redis. `drain_records` is also what the hot-tenant and scaling phases drain
//! with, with one consumer process or several in one group.

use std::time::{Duration, Instant};

use activity_pipeline::config::Settings;
use activity_pipeline::domain::{ActivityEnvelope, PayloadFingerprint};
use activity_pipeline::kafka::{create_topics, ActivityPublisher, PartitionSpread};
use futures::StreamExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;

use super::{describe_cores, max_mib, Names, STOP_GRACE};
use crate::options::Subject;
use crate::processes::{self, free_port, wait_ready, HistogramSample, Role};
use crate::report::{DrainResult, PublisherFigure, SubjectRound};
use crate::{workload, Bench};

/// When the consumers start, relative to the pre-fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStart {
    /// Pre-fill, then start the one consumer (phase 5, as it always was measured).
    AfterPrefill,
    /// Start every consumer, wait until the group is stable with all of them, then pre-fill: with
    /// several consumers, none drains alone while the others are still joining.
    BeforePrefill,
}

/// One drain: the records, how many consumer processes, which processes' CPU to report.
pub struct DrainPlan<'a> {
    /// Names the consumers' logs: `r<round>-<subject>-<label>-consume[-i].log`.
    pub label: &'a str,
    pub envelopes: Vec<ActivityEnvelope>,
    pub consumers: usize,
    pub start: DrainStart,
    /// Stack processes whose CPU is reported next to the consumers' and the bench's.
    pub watched: Vec<(String, u32)>,
}

/// What one drain measured.
pub struct DrainRun {
    pub publisher: PublisherFigure,
    pub drain: DrainResult,
    /// Highest peak RSS of the consumer processes, in KiB.
    pub peak_rss_kib: Option<u64>,
    /// Partitions of the main topic that received records.
    pub partitions_used: usize,
    /// Means over every consumer's batches: partitions per batch, records per batch.
    pub batch_partitions_mean: Option<f64>,
    pub batch_records_mean: Option<f64>,
    /// Records each consumer processed: how the group shared the partitions that held records.
    pub records_by_consumer: Vec<(String, f64)>,
}

impl Bench {
    /// Pre-fills a topic (timed: the in-process publisher figure), then times a consumer process
    /// draining it into MongoDB and Redis.
    pub async fn drain(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let names = self.names(round, &subject.name, "dr");
        let overrides = self.overrides(Some(subject), &names, &[]);
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let plan = DrainPlan {
            label: "drain",
            envelopes: workload::envelopes(
                &self.tenants,
                &names.key_prefix,
                self.options.drain_records,
            ),
            consumers: 1,
            start: DrainStart::AfterPrefill,
            watched: self.watched.clone(),
        };
        let outcome = self
            .drain_records(round, subject, &names, &settings, &overrides, plan)
            .await;
        self.cleanup(&settings, &names).await;
        let run = outcome?;
        println!(
            "  +  [{}] pre-fill through ActivityPublisher (in-process, no HTTP): {:.0} records/s",
            subject.name, run.publisher.records_per_s
        );
        result.publisher = Some(run.publisher);
        result.consume_peak_rss_mib = max_mib(result.consume_peak_rss_mib, run.peak_rss_kib);
        result.drain = Some(run.drain);
        Ok(())
    }

    /// Pre-fills `settings`' main topic (which must exist) with `plan.envelopes` through
    /// `ActivityPublisher` (with the settings' partition spread, as the API places records), runs
    /// `plan.consumers` consumer processes in one group, and times them from the first processed
    /// record to the last. Checks that every record was stored and counted once.
    pub async fn drain_records(
        &self,
        round: usize,
        subject: &Subject,
        names: &Names,
        settings: &Settings,
        overrides: &[String],
        plan: DrainPlan<'_>,
    ) -> anyhow::Result<DrainRun> {
        let records = plan.envelopes.len();
        let mut consumers = Vec::with_capacity(plan.consumers);
        let publisher_figure;
        match plan.start {
            DrainStart::AfterPrefill => {
                publisher_figure = prefill(settings, &plan.envelopes).await?;
                consumers.push(
                    self.start_consumer(round, subject, overrides, &plan, 0)
                        .await?,
                );
            }
            DrainStart::BeforePrefill => {
                for index in 0..plan.consumers {
                    consumers.push(
                        self.start_consumer(round, subject, overrides, &plan, index)
                            .await?,
                    );
                }
                wait_for_stable_group(settings, plan.consumers).await?;
                publisher_figure = prefill(settings, &plan.envelopes).await?;
            }
        }
        let partitions_used = partitions_with_records(settings).await?;

        let deadline = Instant::now() + Duration::from_secs(300);
        let roles: Vec<&Role> = consumers.iter().map(|(role, _)| role).collect();
        let mut observed: Vec<(String, u32)> = roles
            .iter()
            .map(|role| (role.name.clone(), role.pid))
            .collect();
        observed.push(("bench".to_owned(), std::process::id()));
        observed.extend(plan.watched.iter().cloned());
        let mut first: Option<(Instant, f64, Vec<Option<f64>>)> = None;
        let finished = loop {
            for (role, _) in &mut consumers {
                role.ensure_running()?;
            }
            let mut processed = 0.0;
            for (_, metrics_url) in &consumers {
                let text = self.http.get(metrics_url).send().await?.text().await?;
                processed +=
                    processes::metric_sum(&text, "activity_pipeline_consumer_records_total");
            }
            let now = Instant::now();
            if first.is_none() && processed > 0.0 {
                first = Some((now, processed, processes::cpu_of(&observed)));
            }
            if processed >= records as f64 {
                break now;
            }
            anyhow::ensure!(
                now < deadline,
                "drain: {processed} of {records} records processed after 300 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let (started, processed_at_start, cpu_start) = first.expect("set before finishing");
        let seconds = finished.duration_since(started).as_secs_f64().max(1e-3);
        let cpu_cores =
            processes::cores_since(&observed, &cpu_start, finished.duration_since(started));
        let mut partitions_per_batch = HistogramSample::default();
        let mut records_per_batch = HistogramSample::default();
        let mut records_by_consumer = Vec::new();
        for (role, metrics_url) in &consumers {
            if let Some(text) = self.scrape(metrics_url).await {
                records_by_consumer.push((
                    role.name.clone(),
                    processes::metric_sum(&text, "activity_pipeline_consumer_records_total"),
                ));
                let partitions =
                    HistogramSample::read(&text, "activity_pipeline_consumer_batch_partitions");
                partitions_per_batch.count += partitions.count;
                partitions_per_batch.sum += partitions.sum;
                let batch =
                    HistogramSample::read(&text, "activity_pipeline_consumer_batch_records");
                records_per_batch.count += batch.count;
                records_per_batch.sum += batch.sum;
            }
        }
        let mut peak_rss_kib: Option<u64> = None;
        for (role, _) in consumers {
            let peak = role.stop(STOP_GRACE).await;
            peak_rss_kib = peak_rss_kib.max(peak);
        }
        let stored = self
            .mongo
            .database(&names.database)
            .collection::<mongodb::bson::Document>(&settings.mongo.collection)
            .count_documents(mongodb::bson::doc! {})
            .await?;
        let consumer_cores = cpu_cores
            .iter()
            .filter(|(name, _)| name.starts_with("consume"))
            .map(|(_, cores)| cores)
            .sum();
        let drain = DrainResult {
            records,
            records_per_s: (records as f64 - processed_at_start) / seconds,
            seconds,
            stored,
            consumer_cores,
            cpu_cores,
        };
        println!(
            "  5. [{}] {} with {} consumer(s): {:.0} activities/s ({} records in {:.2} s over {} partition(s); {} stored; {:.1} partitions and {:.0} records per batch; processed by {}) [cores: {}]",
            subject.name,
            plan.label,
            plan.consumers,
            drain.records_per_s,
            records,
            drain.seconds,
            partitions_used,
            stored,
            partitions_per_batch.mean().unwrap_or(f64::NAN),
            records_per_batch.mean().unwrap_or(f64::NAN),
            records_by_consumer
                .iter()
                .map(|(name, records)| format!("{name} {records:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            describe_cores(&drain.cpu_cores)
        );
        anyhow::ensure!(
            stored as usize == records,
            "drain: {stored} documents stored, {records} expected"
        );
        let counted = self.counted(settings).await?;
        anyhow::ensure!(
            counted as usize == records,
            "drain: the Redis counters hold {counted} activities, {records} expected"
        );
        Ok(DrainRun {
            publisher: publisher_figure,
            drain,
            peak_rss_kib,
            partitions_used,
            batch_partitions_mean: partitions_per_batch.mean(),
            batch_records_mean: records_per_batch.mean(),
            records_by_consumer,
        })
    }

    /// Starts consumer number `index` of `plan` with a metrics port of its own and waits until it
    /// answers; returns it with its metrics URL.
    async fn start_consumer(
        &self,
        round: usize,
        subject: &Subject,
        overrides: &[String],
        plan: &DrainPlan<'_>,
        index: usize,
    ) -> anyhow::Result<(Role, String)> {
        let metrics_port = free_port()?;
        let mut overrides = overrides.to_vec();
        overrides.push(format!("consumer.metrics_listen=127.0.0.1:{metrics_port}"));
        // One consumer keeps the name the report has always used for it.
        let name = if plan.consumers == 1 {
            "consume".to_owned()
        } else {
            format!("consume-{}", index + 1)
        };
        let mut consume = self.spawn_role(
            &name,
            subject,
            &overrides,
            &["consume"],
            self.out.join(format!(
                "r{round}-{}-{}-{name}.log",
                subject.name, plan.label
            )),
        )?;
        wait_ready(
            &self.http,
            &mut consume,
            &format!("http://127.0.0.1:{metrics_port}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        Ok((consume, format!("http://127.0.0.1:{metrics_port}/metrics")))
    }
}

/// Publishes every envelope (all in flight at once), timed.
async fn prefill(
    settings: &Settings,
    envelopes: &[ActivityEnvelope],
) -> anyhow::Result<PublisherFigure> {
    let publisher = ActivityPublisher::new(&settings.kafka)?
        .with_partition_spread(PartitionSpread::from_settings(settings));
    let started = Instant::now();
    let failures = futures::stream::iter(envelopes.iter())
        .map(|envelope| {
            let publisher = &publisher;
            let fingerprint = PayloadFingerprint::of(&envelope.activity);
            async move { publisher.publish(envelope, &fingerprint).await }
        })
        .buffer_unordered(20_000)
        .filter(|outcome| futures::future::ready(outcome.is_err()))
        .count()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        failures == 0,
        "pre-fill: {failures} records not acknowledged"
    );
    Ok(PublisherFigure {
        records: envelopes.len(),
        records_per_s: envelopes.len() as f64 / elapsed,
    })
}

/// A client for the bench's own looks at the cluster (group state, watermarks), never a member.
fn looker(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set(
            "group.id",
            format!("{}.bench-look", settings.kafka.consumer_group),
        )
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Waits until the main stage's group is `Stable` with `members` members (every consumer joined and
/// the assignment settled), for at most 60 s.
async fn wait_for_stable_group(settings: &Settings, members: usize) -> anyhow::Result<()> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let looker = looker(&settings)?;
        let group = settings.kafka.consumer_group.as_str();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::from("nothing yet");
        // Stable twice in a row, 500 ms apart: cooperative rebalancing may take a second round.
        let mut stable_in_a_row = 0;
        while Instant::now() < deadline {
            if let Ok(list) = looker.fetch_group_list(Some(group), Duration::from_secs(5)) {
                if let Some(info) = list.groups().iter().find(|info| info.name() == group) {
                    seen = format!("{} with {} member(s)", info.state(), info.members().len());
                    let assigned = info
                        .members()
                        .iter()
                        .filter(|member| member.assignment().is_some_and(|a| a.len() > 16))
                        .count();
                    if info.state() == "Stable" && assigned == members {
                        stable_in_a_row += 1;
                        if stable_in_a_row == 2 {
                            return Ok(());
                        }
                    } else {
                        stable_in_a_row = 0;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        anyhow::bail!(
            "group {group}: not stable with {members} assigned member(s) within 60 s ({seen})"
        )
    })
    .await?
}

/// Partitions of the main topic holding records (high watermark above 0).
async fn partitions_with_records(settings: &Settings) -> anyhow::Result<usize> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let looker = looker(&settings)?;
        let topic = settings.kafka.topic.as_str();
        let mut used = 0;
        for partition in 0..settings.kafka.partitions {
            let (_, high) = looker.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            if high > 0 {
                used += 1;
            }
        }
        Ok(used)
    })
    .await?
}
