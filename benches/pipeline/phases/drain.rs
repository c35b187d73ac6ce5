//! Phase 5: pre-fill a topic through the in-process publisher, then time a consumer process draining
//! it into MongoDB and Redis.

use std::time::{Duration, Instant};

use activity_pipeline::config::Settings;
use activity_pipeline::domain::PayloadFingerprint;
use activity_pipeline::kafka::{create_topics, ActivityPublisher};
use futures::StreamExt as _;

use super::{describe_cores, max_mib, Names, STOP_GRACE};
use crate::options::Subject;
use crate::processes::{self, free_port, wait_ready};
use crate::report::{DrainResult, PublisherFigure, SubjectRound};
use crate::{workload, Bench};

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
        let metrics_port = free_port()?;
        let overrides = self.overrides(
            Some(subject),
            &names,
            &[format!("consumer.metrics_listen=127.0.0.1:{metrics_port}")],
        );
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let outcome = self
            .drain_topic(
                round,
                subject,
                &names,
                &settings,
                &overrides,
                metrics_port,
                result,
            )
            .await;
        self.cleanup(&settings, &names).await;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn drain_topic(
        &self,
        round: usize,
        subject: &Subject,
        names: &Names,
        settings: &Settings,
        overrides: &[String],
        metrics_port: u16,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let records = self.options.drain_records;
        let envelopes = workload::envelopes(&self.tenants, &names.key_prefix, records);
        let publisher = ActivityPublisher::new(&settings.kafka)?;
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
        drop(publisher);
        let publisher = PublisherFigure {
            records,
            records_per_s: records as f64 / elapsed,
        };
        println!(
            "  +  [{}] pre-fill through ActivityPublisher (in-process, no HTTP): {:.0} records/s",
            subject.name, publisher.records_per_s
        );
        result.publisher = Some(publisher);

        let mut consume = self.spawn_role(
            "consume",
            subject,
            overrides,
            &["consume"],
            self.out
                .join(format!("r{round}-{}-drain-consume.log", subject.name)),
        )?;
        let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
        wait_ready(
            &self.http,
            &mut consume,
            &format!("http://127.0.0.1:{metrics_port}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let observed = self.observed(&[&consume]);
        let mut first: Option<(Instant, f64, Vec<Option<f64>>)> = None;
        let finished = loop {
            consume.ensure_running()?;
            let text = self.http.get(&metrics_url).send().await?.text().await?;
            let now = Instant::now();
            let processed =
                processes::metric_sum(&text, "activity_pipeline_consumer_records_total");
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
        let peak = consume.stop(STOP_GRACE).await;
        result.consume_peak_rss_mib = max_mib(result.consume_peak_rss_mib, peak);
        let stored = self
            .mongo
            .database(&names.database)
            .collection::<mongodb::bson::Document>(&settings.mongo.collection)
            .count_documents(mongodb::bson::doc! {})
            .await?;
        let drain = DrainResult {
            records,
            records_per_s: (records as f64 - processed_at_start) / seconds,
            seconds,
            stored,
            consumer_cores: cpu_cores
                .iter()
                .find(|(name, _)| name == "consume")
                .map_or(0.0, |(_, cores)| *cores),
            cpu_cores,
        };
        println!(
            "  5. [{}] drain: {:.0} activities/s ({} records in {:.2} s; {} stored) [cores: {}]",
            subject.name,
            drain.records_per_s,
            records,
            drain.seconds,
            stored,
            describe_cores(&drain.cpu_cores)
        );
        anyhow::ensure!(
            stored as usize == records,
            "drain: {stored} documents stored, {records} expected"
        );
        let counted = self.counted(&names.prefix).await?;
        anyhow::ensure!(
            counted as usize == records,
            "drain: the Redis counters hold {counted} activities, {records} expected"
        );
        result.drain = Some(drain);
        Ok(())
    }
}
