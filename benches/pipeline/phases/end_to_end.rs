//! Phase 6: 202 -> live event through both roles, at half of the sustainable rate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use activity_pipeline::kafka::create_topics;
use anyhow::Context as _;

use super::{describe_cpu, max_mib, Names, STOP_GRACE};
use crate::http::{self, LoadPlan, Pacing};
use crate::options::Subject;
use crate::processes::{free_port, wait_ready};
use crate::report::SubjectRound;
use crate::{e2e, Bench};

impl Bench {
    /// 202 -> live event, at 50% of the sustainable rate (the lower of single max and drain).
    pub async fn end_to_end(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let sustainable = match (&result.single_max, &result.drain) {
            (Some(single), Some(drain)) => Some(single.requests_per_s.min(drain.records_per_s)),
            (Some(single), None) => Some(single.requests_per_s),
            (None, Some(drain)) => Some(drain.records_per_s),
            (None, None) => None,
        };
        let rate = sustainable.map_or(self.options.e2e_rate, |rate| rate * 0.5);
        let names = self.names(round, &subject.name, "e2");
        let port = free_port()?;
        let metrics_port = free_port()?;
        let overrides = self.overrides(
            Some(subject),
            &names,
            &[
                format!("http.listen=127.0.0.1:{port}"),
                format!("consumer.metrics_listen=127.0.0.1:{metrics_port}"),
            ],
        );
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let outcome = self
            .end_to_end_at(
                round,
                subject,
                &names,
                port,
                metrics_port,
                &overrides,
                rate,
                result,
            )
            .await;
        self.cleanup(&settings, &names).await;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn end_to_end_at(
        &self,
        round: usize,
        subject: &Subject,
        names: &Names,
        port: u16,
        metrics_port: u16,
        overrides: &[String],
        rate: f64,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = |role: &str| {
            self.out
                .join(format!("r{round}-{}-e2e-{role}.log", subject.name))
        };
        let mut consume =
            self.spawn_role("consume", subject, overrides, &["consume"], log("consume"))?;
        let mut produce =
            self.spawn_role("produce", subject, overrides, &["produce"], log("produce"))?;
        wait_ready(
            &self.http,
            &mut consume,
            &format!("http://127.0.0.1:{metrics_port}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        wait_ready(
            &self.http,
            &mut produce,
            &format!("http://{address}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        let tracker = e2e::Tracker::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let source = e2e::listen(
            address,
            &self.tenants.api_keys,
            &self.options.redis_url,
            &format!("{}activities:*", names.prefix),
            tracker.clone(),
            stop.clone(),
        )
        .await?;
        let observer: Arc<http::AcceptObserver> = {
            let tracker = tracker.clone();
            Arc::new(move |key: &str, at: Instant| tracker.accepted(key, at))
        };
        // Warm-up: the consumer joins its group and the first events flow before measuring.
        let warmup = LoadPlan {
            addresses: vec![address],
            connections: 16,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
            pacing: Pacing::Open { rate: 200.0 },
            items_per_request: 1,
            make_request: self.single_maker(format!("{}-warm", names.key_prefix)),
            on_accepted: Some(observer.clone()),
            observed: vec![],
        };
        http::run(warmup).await;
        if let Err(error) = wait_matched(&tracker, Duration::from_secs(60)).await {
            let missing = self
                .describe_unmatched(&tracker, &self.settings(overrides)?)
                .await;
            return Err(error).with_context(|| {
                format!(
                    "end to end: the warm-up's events did not all arrive ({source}); {missing}; consumer log {:?}",
                    log("consume")
                )
            });
        }
        tracker.reset();
        let mut plan = self.plan(
            address,
            self.options.connections,
            Pacing::Open { rate },
            1,
            self.single_maker(format!("{}-e2e", names.key_prefix)),
            self.observed(&[&produce, &consume]),
            Some(observer),
        );
        plan.warmup = Duration::ZERO;
        let consumer_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
        let metrics_before = self.scrape(&consumer_metrics).await;
        let load = http::run(plan).await;
        let _ = wait_matched(&tracker, Duration::from_secs(15)).await;
        let metrics_after = self.scrape(&consumer_metrics).await;
        stop.cancel();
        let mut e2e = tracker.result(source, rate);
        e2e.breakdown = match (metrics_before, metrics_after) {
            (Some(before), Some(after)) => e2e::ConsumerBreakdown::between(&before, &after),
            _ => None,
        };
        println!(
            "  6. [{}] end to end at {:.0}/s via {source}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} matched, {} missing; HTTP p99 {:.2} ms; cpu {})",
            subject.name,
            rate,
            e2e.latency.p50_ms,
            e2e.latency.p99_ms,
            e2e.latency.p999_ms,
            e2e.latency.max_ms,
            e2e.matched,
            e2e.missing,
            load.latency.p99_ms,
            describe_cpu(&load),
        );
        if let Some(breakdown) = &e2e.breakdown {
            println!(
                "     consumer: enqueued -> store step mean {:.1} ms (p50 <= {}, p99 <= {}); {:.0} batches of {:.0} records, applied in {:.1} ms mean (p99 <= {})",
                breakdown.to_store_mean_ms,
                describe_bound(breakdown.to_store_p50_bound_ms),
                describe_bound(breakdown.to_store_p99_bound_ms),
                breakdown.batches,
                breakdown.records_per_batch,
                breakdown.apply_mean_ms,
                describe_bound(breakdown.apply_p99_bound_ms),
            );
        }
        result.e2e = Some(e2e);
        let produce_peak = produce.stop(STOP_GRACE).await;
        let consume_peak = consume.stop(STOP_GRACE).await;
        result.produce_peak_rss_mib = max_mib(result.produce_peak_rss_mib, produce_peak);
        result.consume_peak_rss_mib = max_mib(result.consume_peak_rss_mib, consume_peak);
        Ok(())
    }

    /// Which accepted activities have no event yet, and whether each was stored: tells a lost
    /// activity from a lost event.
    async fn describe_unmatched(
        &self,
        tracker: &e2e::Tracker,
        settings: &activity_pipeline::config::Settings,
    ) -> String {
        let collection = self
            .mongo
            .database(&settings.mongo.database)
            .collection::<mongodb::bson::Document>(&settings.mongo.collection);
        let mut described = Vec::new();
        for key in tracker.unmatched(5) {
            let stored = collection
                .find_one(mongodb::bson::doc! { "idempotencyKey": &key })
                .await;
            described.push(match stored {
                Ok(Some(document)) => format!(
                    "{key}: stored as {} (tenant {})",
                    document
                        .get("_id")
                        .map_or("?".to_owned(), ToString::to_string),
                    document.get_str("tenantId").unwrap_or("?")
                ),
                Ok(None) => format!("{key}: not stored"),
                Err(error) => format!("{key}: store not read ({error})"),
            });
        }
        format!("unmatched: [{}]", described.join("; "))
    }
}

/// A histogram bucket bound in milliseconds, or `?` past the last finite bucket.
fn describe_bound(bound_ms: Option<f64>) -> String {
    bound_ms.map_or_else(|| "?".to_owned(), |ms| format!("{ms:.0} ms"))
}

async fn wait_matched(tracker: &e2e::Tracker, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (accepted, matched) = tracker.counts();
        if accepted > 0 && matched >= accepted {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{matched} of {accepted} events arrived within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
