use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::kafka::ConsumerObserver;

/// The consumer's Prometheus metrics, in a registry of its own (not the global default), so several
/// runtimes can live in one process (tests) without clashing.
pub struct ConsumerMetrics {
    registry: Registry,
    /// Records by outcome: inserted, duplicate, retried, dead_lettered.
    pub records: IntCounterVec,
    pub batch_size: Histogram,
    /// Partitions in one processed batch: how many parts `consumer.partition_parallelism` had to
    /// apply concurrently. A hot tenant's spread pays inside one consumer only when its batches
    /// hold several partitions.
    pub batch_partitions: Histogram,
    /// Time to apply one batch's effects, by stage (main, retry.N).
    pub batch_duration: HistogramVec,
    /// From `enqueuedAt` (the API's acceptance) to the MongoDB insert.
    pub end_to_end_latency: Histogram,
    pub lag: IntGaugeVec,
    /// 0 closed (processing), 1 open (a dependency is down; partitions paused), by stage.
    pub breaker_state: IntGaugeVec,
    pub commits: IntCounterVec,
    /// Webhook alerts by result: sent, failed, dropped (queue full).
    pub alerts: IntCounterVec,
}

const NAMESPACE: &str = "activity_pipeline";

impl ConsumerMetrics {
    pub fn new() -> ConsumerMetrics {
        let registry = Registry::new();
        let records = IntCounterVec::new(
            Opts::new(
                "consumer_records_total",
                "Records processed by the consumer, by outcome.",
            )
            .namespace(NAMESPACE),
            &["outcome"],
        )
        .expect("valid metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("consumer_batch_records", "Records per processed batch.")
                .namespace(NAMESPACE)
                .buckets(exponential_buckets(1.0, 2.0, 12).expect("valid buckets")),
        )
        .expect("valid metric");
        let batch_partitions = Histogram::with_opts(
            HistogramOpts::new(
                "consumer_batch_partitions",
                "Partitions in one processed batch (parts that can be applied concurrently).",
            )
            .namespace(NAMESPACE)
            .buckets(exponential_buckets(1.0, 2.0, 8).expect("valid buckets")),
        )
        .expect("valid metric");
        let batch_duration = HistogramVec::new(
            HistogramOpts::new(
                "consumer_batch_duration_seconds",
                "Time to apply a batch's effects.",
            )
            .namespace(NAMESPACE)
            .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
            &["stage"],
        )
        .expect("valid metric");
        let end_to_end_latency = Histogram::with_opts(
            HistogramOpts::new(
                "end_to_end_latency_seconds",
                "From the API's acceptance (enqueuedAt) to the MongoDB insert.",
            )
            .namespace(NAMESPACE)
            .buckets(exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        let lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_records",
                "Records behind the partition's high watermark.",
            )
            .namespace(NAMESPACE),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "consumer_breaker_open",
                "1 while a dependency outage holds the stage's partitions paused, else 0.",
            )
            .namespace(NAMESPACE),
            &["stage"],
        )
        .expect("valid metric");
        let commits = IntCounterVec::new(
            Opts::new("consumer_commits_total", "Offset commits, by result.").namespace(NAMESPACE),
            &["result"],
        )
        .expect("valid metric");
        let alerts = IntCounterVec::new(
            Opts::new("alerts_total", "Dead-letter webhook alerts, by result.")
                .namespace(NAMESPACE),
            &["result"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batch_size.clone()),
            Box::new(batch_partitions.clone()),
            Box::new(batch_duration.clone()),
            Box::new(end_to_end_latency.clone()),
            Box::new(lag.clone()),
            Box::new(breaker_state.clone()),
            Box::new(commits.clone()),
            Box::new(alerts.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Zero series for every outcome, so dashboards and alerts see them before the first event.
        for outcome in [
            "inserted",
            "duplicate",
            "superseded",
            "retried",
            "dead_lettered",
        ] {
            records.with_label_values(&[outcome]);
        }
        ConsumerMetrics {
            registry,
            records,
            batch_size,
            batch_partitions,
            batch_duration,
            end_to_end_latency,
            lag,
            breaker_state,
            commits,
            alerts,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsumerObserver for ConsumerMetrics {
    fn committed(&self, ok: bool) {
        self.commits
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    fn revoked(&self, topic: &str, partition: i32) {
        let _ = self
            .lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_the_namespace() {
        let metrics = ConsumerMetrics::new();
        metrics.records.with_label_values(&["inserted"]).inc_by(3);
        metrics.lag("activities", 2, 7);
        metrics.breaker_state.with_label_values(&["main"]).set(1);
        let text = metrics.render();
        assert!(
            text.contains("activity_pipeline_consumer_records_total{outcome=\"inserted\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("activity_pipeline_consumer_records_total{outcome=\"dead_lettered\"} 0")
        );
        assert!(text.contains(
            "activity_pipeline_consumer_lag_records{partition=\"2\",topic=\"activities\"} 7"
        ));
        assert!(text.contains("activity_pipeline_consumer_breaker_open{stage=\"main\"} 1"));
        metrics.revoked("activities", 2);
        assert!(!metrics.render().contains("consumer_lag_records{"));
    }
}
