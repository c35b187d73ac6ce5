//! The bench's report: every round's raw figures, and per subject the table of medians, ratios and
//! targets. Written as JSON (everything) and Markdown (the table), and printed.

use serde::{Deserialize, Serialize};

use crate::ceilings::{KafkaCeiling, StoreCeiling};
use crate::e2e::{ConsumerBreakdown, E2eResult};
use crate::http::LoadResult;
use crate::latency::{median, Percentiles};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub started_at: String,
    pub finished_at: String,
    pub machine: Machine,
    pub setup: Setup,
    pub rounds: Vec<Round>,
    /// Per subject: the table.
    pub summary: Vec<SubjectSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// `private` (a stack started for the bench) or `shared`.
    pub stack: String,
    pub rounds: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub batch_connections: usize,
    pub batch_size: usize,
    pub drain_records: usize,
    pub kafka_records: u64,
    pub tenants: usize,
    pub partitions: i32,
    pub envelope_bytes: f64,
    pub producer_props: Vec<String>,
    pub subjects: Vec<String>,
    pub phases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub index: usize,
    pub load_before: f64,
    pub load_after: f64,
    pub kafka: Option<KafkaCeiling>,
    /// Phase 1b: the publish path alone and the floors under it (the bench's own code, so one per
    /// run, not per subject).
    #[serde(default)]
    pub publish: Option<PublishPath>,
    pub store: Option<StoreCeiling>,
    pub subjects: Vec<SubjectRound>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubjectRound {
    pub subject: String,
    pub single_max: Option<LoadResult>,
    pub single_half: Option<LoadResult>,
    /// Diagnostic: GET /healthz at the single 50% rate (no Kafka): the latency floor.
    #[serde(default)]
    pub http_floor: Option<LoadResult>,
    pub batch_max: Option<LoadResult>,
    pub batch_half: Option<LoadResult>,
    /// Why batch ingest was not measured (e.g. the endpoint is missing).
    pub batch_missing: Option<String>,
    pub publisher: Option<PublisherFigure>,
    pub drain: Option<DrainResult>,
    pub e2e: Option<E2eResult>,
    pub produce_peak_rss_mib: Option<f64>,
    pub consume_peak_rss_mib: Option<f64>,
    /// `produce`'s optional Redis calls that failed or passed their budget during the ingest phases
    /// (`activity_pipeline_redis_fallbacks_total`, every part; each is followed by up to a second
    /// without that part, and calls in flight together may fail together): more than 0 means some
    /// requests skipped the layer-2 markers or the shared rate limit. `None` for a binary without
    /// the metric.
    #[serde(default)]
    pub produce_redis_fallbacks: Option<f64>,
    /// Phase 8: reads at growing sizes of one tenant.
    #[serde(default)]
    pub reads: Option<ReadsResult>,
    /// One tenant's drain by 1 and 2 consumers (`--phases hot`).
    #[serde(default)]
    pub hot: Option<HotTenantResult>,
    /// Ingest and drain by 1 and 2 instances on the cluster profile (`--phases scaling`).
    #[serde(default)]
    pub scaling: Option<ScalingResult>,
}

/// One tenant's records alone in the topic, drained by each consumer count in turn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HotTenantResult {
    pub tenant: String,
    pub records: usize,
    pub drains: Vec<ScaledDrain>,
}

/// A drain by `instances` consumer processes in one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaledDrain {
    pub instances: usize,
    /// Partitions of the topic that held records.
    pub partitions_used: usize,
    /// Means over every consumer's batches (the consumers' own histograms).
    pub batch_partitions_mean: Option<f64>,
    pub batch_records_mean: Option<f64>,
    /// Records each consumer process processed (how the group shared the busy partitions).
    #[serde(default)]
    pub records_by_consumer: Vec<(String, f64)>,
    pub drain: DrainResult,
}

/// A closed-loop ingest run with the clients spread over `instances` API processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaledLoad {
    pub instances: usize,
    pub load: LoadResult,
}

/// The scaling phase: each figure with 1 and with 2 instances of the role that does the work.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScalingResult {
    /// The cluster the phase ran on, e.g. "3 Kafka brokers (RF 3, min.insync 2), Redis single node".
    pub stack: String,
    pub single: Vec<ScaledLoad>,
    pub batch: Vec<ScaledLoad>,
    pub drain: Vec<ScaledDrain>,
}

fn scaled_load(loads: &[ScaledLoad], instances: usize) -> Option<&LoadResult> {
    loads
        .iter()
        .find(|load| load.instances == instances)
        .map(|load| &load.load)
}

fn scaled_drain(drains: &[ScaledDrain], instances: usize) -> Option<&ScaledDrain> {
    drains.iter().find(|drain| drain.instances == instances)
}

fn hot_drain(subject: &SubjectRound, consumers: usize) -> Option<&ScaledDrain> {
    scaled_drain(&subject.hot.as_ref()?.drains, consumers)
}

fn scaling(subject: &SubjectRound) -> Option<&ScalingResult> {
    subject.scaling.as_ref()
}

/// CPU microseconds per activity of all observed processes over a drain.
fn drain_cpu_per_activity(drain: &DrainResult) -> Option<f64> {
    let cores: f64 = drain.cpu_cores.iter().map(|(_, c)| c).sum();
    (drain.records_per_s > 0.0 && !drain.cpu_cores.is_empty())
        .then(|| cores / drain.records_per_s * 1e6)
}

/// CPU microseconds per activity (not per request) of all observed processes over a load run.
fn load_cpu_per_activity(load: &LoadResult) -> Option<f64> {
    let cores: f64 = load.cpu_cores.iter().map(|(_, c)| c).sum();
    (load.items_per_s > 0.0 && !load.cpu_cores.is_empty()).then(|| cores / load.items_per_s * 1e6)
}

/// Phase 8: one tenant seeded in steps as the consumer leaves it, and at each step the read API's
/// latency, one sequential client, a bounded number of requests per kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadsResult {
    /// `limit` of the page requests.
    pub page_limit: usize,
    /// `redis.recent_events_per_tenant`: SSE resumes start within this many newest documents.
    pub recent_events_per_tenant: usize,
    /// `redis.recent_pages_per_tenant`: the deep page's cursor is older than this many documents.
    pub recent_pages_per_tenant: usize,
    /// `read.timeout_ms`: past it the API answers 503.
    pub read_timeout_ms: u64,
    /// Documents of the second, small tenant.
    pub small_documents: usize,
    pub steps: Vec<ReadStep>,
    /// The store's `explain` (queryPlanner) of the newest-page and the filtered query at the largest
    /// size, as relaxed extended JSON: (query, plan).
    pub explain: Vec<(String, String)>,
    pub produce_peak_rss_mib: Option<f64>,
}

/// One size of the big tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadStep {
    /// The big tenant's documents.
    pub documents: usize,
    /// Seeded in this step (store and Redis), and how fast.
    pub seeded: usize,
    pub seed_documents_per_s: f64,
    pub load_before: f64,
    pub load_after: f64,
    /// Resident memory of the API and the stack's processes after the step's reads.
    pub rss_mib: Vec<(String, f64)>,
    pub queries: Vec<ReadFigure>,
}

/// One kind of read at one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadFigure {
    pub query: String,
    /// Requests measured (answered or not) and those answered 200.
    pub requests: u64,
    pub ok: u64,
    /// Everything but 200, by status (or `io: <kind>`), with counts.
    pub statuses: Vec<(String, u64)>,
    pub seconds: f64,
    /// Time to the answer, whatever it was (a 503 counts with its time): what a client waits.
    pub latency: Percentiles,
    /// The 200 answers only.
    pub latency_ok: Percentiles,
    pub cpu_busy_percent: Option<f64>,
    /// CPU of the API, the bench and the stack's processes over the kind's requests, in cores.
    pub cpu_cores: Vec<(String, f64)>,
}

/// Phase 1b: records per second over the same timed records, each on a topic of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishPath {
    pub records: usize,
    /// `ActivityPublisher::publish`: the code a single POST calls, a record at a time.
    pub publisher_per_s: f64,
    /// `ActivityPublisher::publish_all` with batches of 100: the code the batch endpoint calls.
    /// Absent from reports made before it was measured.
    #[serde(default)]
    pub publisher_batches_per_s: Option<f64>,
    /// The bare rdkafka `FutureProducer`, pre-encoded records, no headers.
    pub future_producer_per_s: f64,
    /// librdkafka through `ThreadedProducer`, a delivery callback, no futures.
    pub threaded_producer_per_s: f64,
}

/// The drain's pre-fill, timed: our `ActivityPublisher` in-process (no HTTP), all records in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublisherFigure {
    pub records: usize,
    pub records_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainResult {
    pub records: usize,
    pub records_per_s: f64,
    /// From the first processed record to the last.
    pub seconds: f64,
    /// Documents found in MongoDB afterwards (must equal `records`).
    pub stored: u64,
    /// CPU the consumer process used while draining, in cores.
    pub consumer_cores: f64,
    /// CPU of the consumer and the stack's processes while draining, in cores.
    #[serde(default)]
    pub cpu_cores: Vec<(String, f64)>,
}

/// A target: the median must be at least / at most this.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(bound) => value >= bound,
            Target::AtMost(bound) => value <= bound,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Target::AtLeast(bound) => format!(">= {}", format_value(bound, unit)),
            Target::AtMost(bound) => format!("<= {}", format_value(bound, unit)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub label: String,
    pub unit: String,
    pub values: Vec<Option<f64>>,
    pub median: Option<f64>,
    pub target: Option<Target>,
    pub met: Option<bool>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectSummary {
    pub subject: String,
    pub figures: Vec<Figure>,
}

type Extract = fn(&Round, &SubjectRound) -> Option<f64>;

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The consumer's breakdown of a round's end-to-end phase, if it was measured.
fn e2e_breakdown(subject: &SubjectRound) -> Option<&ConsumerBreakdown> {
    subject.e2e.as_ref()?.breakdown.as_ref()
}

/// The rows of the table, in order: label, unit, how to read it from a round, target.
fn rows() -> Vec<(&'static str, &'static str, Extract, Option<Target>)> {
    vec![
        (
            "1. Kafka ceiling: ProducerPerformance",
            "records/s",
            |round, _| round.kafka.as_ref().map(|k| k.records_per_s),
            None,
        ),
        (
            "2. Store ceiling: raw insert_many",
            "docs/s",
            |round, _| round.store.as_ref().map(|s| s.documents_per_s),
            None,
        ),
        (
            "3. Single: max rate",
            "req/s",
            |_, s| s.single_max.as_ref().map(|l| l.requests_per_s),
            Some(Target::AtLeast(25_000.0)),
        ),
        (
            "3. Single @max: p50",
            "ms",
            |_, s| s.single_max.as_ref().map(|l| l.latency.p50_ms),
            None,
        ),
        (
            "3. Single @max: p99",
            "ms",
            |_, s| s.single_max.as_ref().map(|l| l.latency.p99_ms),
            None,
        ),
        (
            "3. Single @max: p99.9",
            "ms",
            |_, s| s.single_max.as_ref().map(|l| l.latency.p999_ms),
            None,
        ),
        (
            "3. Single @max: CPU per request, produce",
            "us",
            |_, s| {
                s.single_max
                    .as_ref()
                    .and_then(|l| cpu_per_item(l, Some("produce")))
            },
            None,
        ),
        (
            "3. Single @max: CPU per request, all processes",
            "us",
            |_, s| s.single_max.as_ref().and_then(|l| cpu_per_item(l, None)),
            None,
        ),
        (
            "3. Single @50%: rate",
            "req/s",
            |_, s| s.single_half.as_ref().map(|l| l.requests_per_s),
            None,
        ),
        (
            "3. Single @50%: p50",
            "ms",
            |_, s| s.single_half.as_ref().map(|l| l.latency.p50_ms),
            None,
        ),
        (
            "3. Single @50%: p99",
            "ms",
            |_, s| s.single_half.as_ref().map(|l| l.latency.p99_ms),
            Some(Target::AtMost(10.0)),
        ),
        (
            "3. Single @50%: p99.9",
            "ms",
            |_, s| s.single_half.as_ref().map(|l| l.latency.p999_ms),
            None,
        ),
        (
            "3. Floor: GET /healthz @50% rate, p99",
            "ms",
            |_, s| s.http_floor.as_ref().map(|l| l.latency.p99_ms),
            None,
        ),
        (
            "4. Batch of 100: max rate",
            "activities/s",
            |_, s| s.batch_max.as_ref().map(|l| l.items_per_s),
            Some(Target::AtLeast(100_000.0)),
        ),
        (
            "4. Batch @max: p50 per request",
            "ms",
            |_, s| s.batch_max.as_ref().map(|l| l.latency.p50_ms),
            None,
        ),
        (
            "4. Batch @max: p99 per request",
            "ms",
            |_, s| s.batch_max.as_ref().map(|l| l.latency.p99_ms),
            None,
        ),
        (
            "4. Batch @50%: p50 per request",
            "ms",
            |_, s| s.batch_half.as_ref().map(|l| l.latency.p50_ms),
            None,
        ),
        (
            "4. Batch @50%: p99 per request",
            "ms",
            |_, s| s.batch_half.as_ref().map(|l| l.latency.p99_ms),
            None,
        ),
        (
            "4. Batch @50%: p99.9 per request",
            "ms",
            |_, s| s.batch_half.as_ref().map(|l| l.latency.p999_ms),
            None,
        ),
        (
            "5. Drain: Kafka -> MongoDB + Redis",
            "activities/s",
            |_, s| s.drain.as_ref().map(|d| d.records_per_s),
            None,
        ),
        (
            "5. Drain: CPU per activity, all processes",
            "us",
            |_, s| {
                s.drain.as_ref().and_then(|d| {
                    let cores: f64 = d.cpu_cores.iter().map(|(_, c)| c).sum();
                    (d.records_per_s > 0.0 && !d.cpu_cores.is_empty())
                        .then(|| cores / d.records_per_s * 1e6)
                })
            },
            None,
        ),
        (
            "6. End to end @50%: rate",
            "activities/s",
            |_, s| s.e2e.as_ref().map(|e| e.rate),
            None,
        ),
        (
            "6. End to end @50%: p50 (202 -> event)",
            "ms",
            |_, s| s.e2e.as_ref().map(|e| e.latency.p50_ms),
            None,
        ),
        (
            "6. End to end @50%: p99 (202 -> event)",
            "ms",
            |_, s| s.e2e.as_ref().map(|e| e.latency.p99_ms),
            Some(Target::AtMost(100.0)),
        ),
        (
            "6. of which: enqueued -> consumer's store step, mean",
            "ms",
            |_, s| e2e_breakdown(s).map(|b| b.to_store_mean_ms),
            None,
        ),
        (
            "6. of which: consumer batch apply (Redis, MongoDB, Redis), mean",
            "ms",
            |_, s| e2e_breakdown(s).map(|b| b.apply_mean_ms),
            None,
        ),
        (
            "6. consumer batch size during end to end, mean",
            "records",
            |_, s| e2e_breakdown(s).map(|b| b.records_per_batch),
            None,
        ),
        (
            "7. Peak RSS: produce",
            "MiB",
            |_, s| s.produce_peak_rss_mib,
            Some(Target::AtMost(100.0)),
        ),
        (
            "7. Redis fallbacks of produce in ingest (calls failed or past budget)",
            "count",
            |_, s| s.produce_redis_fallbacks,
            None,
        ),
        (
            "7. Peak RSS: consume",
            "MiB",
            |_, s| s.consume_peak_rss_mib,
            Some(Target::AtMost(200.0)),
        ),
        (
            "Ratio 3/1: single max / Kafka ceiling",
            "ratio",
            |round, s| {
                ratio(
                    s.single_max.as_ref().map(|l| l.requests_per_s),
                    round.kafka.as_ref().map(|k| k.records_per_s),
                )
            },
            None,
        ),
        (
            "Ratio 4/1: batch max / Kafka ceiling",
            "ratio",
            |round, s| {
                ratio(
                    s.batch_max.as_ref().map(|l| l.items_per_s),
                    round.kafka.as_ref().map(|k| k.records_per_s),
                )
            },
            Some(Target::AtLeast(0.5)),
        ),
        (
            "Ratio 5/2: drain / store ceiling",
            "ratio",
            |round, s| {
                ratio(
                    s.drain.as_ref().map(|d| d.records_per_s),
                    round.store.as_ref().map(|c| c.documents_per_s),
                )
            },
            Some(Target::AtLeast(0.7)),
        ),
        (
            "H. Hot tenant drain, 1 consumer",
            "activities/s",
            |_, s| hot_drain(s, 1).map(|d| d.drain.records_per_s),
            None,
        ),
        (
            "H. Hot tenant drain, 2 consumers",
            "activities/s",
            |_, s| hot_drain(s, 2).map(|d| d.drain.records_per_s),
            None,
        ),
        (
            "H. partitions holding the tenant",
            "partitions",
            |_, s| hot_drain(s, 1).map(|d| d.partitions_used as f64),
            None,
        ),
        (
            "H. partitions per batch, 1 consumer, mean",
            "ratio",
            |_, s| hot_drain(s, 1).and_then(|d| d.batch_partitions_mean),
            None,
        ),
        (
            "H. partitions per batch, 2 consumers, mean",
            "ratio",
            |_, s| hot_drain(s, 2).and_then(|d| d.batch_partitions_mean),
            None,
        ),
        (
            "H. records per batch, 1 consumer, mean",
            "records",
            |_, s| hot_drain(s, 1).and_then(|d| d.batch_records_mean),
            None,
        ),
        (
            "H. CPU per activity, 1 consumer, all processes",
            "us",
            |_, s| hot_drain(s, 1).and_then(|d| drain_cpu_per_activity(&d.drain)),
            None,
        ),
        (
            "H. CPU per activity, 2 consumers, all processes",
            "us",
            |_, s| hot_drain(s, 2).and_then(|d| drain_cpu_per_activity(&d.drain)),
            None,
        ),
        (
            "S. Single, 1 API: max rate",
            "req/s",
            |_, s| scaled_load(&scaling(s)?.single, 1).map(|l| l.requests_per_s),
            None,
        ),
        (
            "S. Single, 2 APIs: max rate",
            "req/s",
            |_, s| scaled_load(&scaling(s)?.single, 2).map(|l| l.requests_per_s),
            None,
        ),
        (
            "S. Single, 1 API: CPU per activity, all processes",
            "us",
            |_, s| scaled_load(&scaling(s)?.single, 1).and_then(load_cpu_per_activity),
            None,
        ),
        (
            "S. Single, 2 APIs: CPU per activity, all processes",
            "us",
            |_, s| scaled_load(&scaling(s)?.single, 2).and_then(load_cpu_per_activity),
            None,
        ),
        (
            "S. Batch of 100, 1 API: max rate",
            "activities/s",
            |_, s| scaled_load(&scaling(s)?.batch, 1).map(|l| l.items_per_s),
            None,
        ),
        (
            "S. Batch of 100, 2 APIs: max rate",
            "activities/s",
            |_, s| scaled_load(&scaling(s)?.batch, 2).map(|l| l.items_per_s),
            None,
        ),
        (
            "S. Batch, 1 API: CPU per activity, all processes",
            "us",
            |_, s| scaled_load(&scaling(s)?.batch, 1).and_then(load_cpu_per_activity),
            None,
        ),
        (
            "S. Batch, 2 APIs: CPU per activity, all processes",
            "us",
            |_, s| scaled_load(&scaling(s)?.batch, 2).and_then(load_cpu_per_activity),
            None,
        ),
        (
            "S. Drain, 1 consumer",
            "activities/s",
            |_, s| scaled_drain(&scaling(s)?.drain, 1).map(|d| d.drain.records_per_s),
            None,
        ),
        (
            "S. Drain, 2 consumers",
            "activities/s",
            |_, s| scaled_drain(&scaling(s)?.drain, 2).map(|d| d.drain.records_per_s),
            None,
        ),
        (
            "S. Drain, 1 consumer: CPU per activity, all processes",
            "us",
            |_, s| {
                scaled_drain(&scaling(s)?.drain, 1).and_then(|d| drain_cpu_per_activity(&d.drain))
            },
            None,
        ),
        (
            "S. Drain, 2 consumers: CPU per activity, all processes",
            "us",
            |_, s| {
                scaled_drain(&scaling(s)?.drain, 2).and_then(|d| drain_cpu_per_activity(&d.drain))
            },
            None,
        ),
        (
            "1b. Publish path: ActivityPublisher::publish_all, batches of 100 (no HTTP)",
            "records/s",
            |round, _| {
                round
                    .publish
                    .as_ref()
                    .and_then(|p| p.publisher_batches_per_s)
            },
            None,
        ),
        (
            "1b. Publish path: ActivityPublisher::publish, one at a time (no HTTP)",
            "records/s",
            |round, _| round.publish.as_ref().map(|p| p.publisher_per_s),
            None,
        ),
        (
            "1b. Floor: rdkafka FutureProducer, bare",
            "records/s",
            |round, _| round.publish.as_ref().map(|p| p.future_producer_per_s),
            None,
        ),
        (
            "1b. Floor: librdkafka (ThreadedProducer, callback)",
            "records/s",
            |round, _| round.publish.as_ref().map(|p| p.threaded_producer_per_s),
            None,
        ),
        (
            "Ratio 1b/1: publish path (batches) / Kafka ceiling",
            "ratio",
            |round, _| {
                ratio(
                    round
                        .publish
                        .as_ref()
                        .and_then(|p| p.publisher_batches_per_s),
                    round.kafka.as_ref().map(|k| k.records_per_s),
                )
            },
            Some(Target::AtLeast(0.7)),
        ),
        (
            "Ratio: publish path (one at a time) / Kafka ceiling",
            "ratio",
            |round, _| {
                ratio(
                    round.publish.as_ref().map(|p| p.publisher_per_s),
                    round.kafka.as_ref().map(|k| k.records_per_s),
                )
            },
            None,
        ),
        (
            "Ratio: librdkafka floor / Kafka ceiling",
            "ratio",
            |round, _| {
                ratio(
                    round.publish.as_ref().map(|p| p.threaded_producer_per_s),
                    round.kafka.as_ref().map(|k| k.records_per_s),
                )
            },
            None,
        ),
        (
            "Extra: ActivityPublisher in-process (no HTTP)",
            "records/s",
            |_, s| s.publisher.as_ref().map(|p| p.records_per_s),
            None,
        ),
        (
            "Extra: publisher / Kafka ceiling",
            "ratio",
            |round, s| {
                ratio(
                    s.publisher.as_ref().map(|p| p.records_per_s),
                    round.kafka.as_ref().map(|k| k.records_per_s),
                )
            },
            None,
        ),
    ]
}

/// CPU microseconds per request of one observed process (`Some(name)`) or of all of them: robust
/// to other work on the machine, unlike rates, which show how much of the cores we were given.
fn cpu_per_item(load: &LoadResult, process: Option<&str>) -> Option<f64> {
    if load.requests_per_s <= 0.0 || load.cpu_cores.is_empty() {
        return None;
    }
    let cores: f64 = load
        .cpu_cores
        .iter()
        .filter(|(name, _)| process.is_none_or(|wanted| name == wanted))
        .map(|(_, cores)| cores)
        .sum();
    Some(cores / load.requests_per_s * 1e6)
}

/// The table of one subject: each row's per-round values, median (ratios: the median of the
/// per-round ratios) and whether the target is met.
pub fn summarize(rounds: &[Round], subject: &str) -> SubjectSummary {
    let figures = rows()
        .into_iter()
        .map(|(label, unit, extract, target)| {
            let values: Vec<Option<f64>> = rounds
                .iter()
                .map(|round| {
                    round
                        .subjects
                        .iter()
                        .find(|s| s.subject == subject)
                        .and_then(|s| extract(round, s))
                })
                .collect();
            let present: Vec<f64> = values.iter().flatten().copied().collect();
            let median = median(&present);
            let note = if label.starts_with("4.") {
                rounds
                    .iter()
                    .flat_map(|round| round.subjects.iter())
                    .find(|s| s.subject == subject)
                    .and_then(|s| s.batch_missing.clone())
            } else {
                None
            };
            Figure {
                label: label.to_owned(),
                unit: unit.to_owned(),
                met: target.zip(median).map(|(target, value)| target.met(value)),
                values,
                median,
                target,
                note,
            }
        })
        .collect();
    SubjectSummary {
        subject: subject.to_owned(),
        figures,
    }
}

pub fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{value:.2}"),
        "us" => format!("{value:.1}"),
        "ratio" => format!("{value:.2}"),
        "MiB" => format!("{value:.1}"),
        _ => group_thousands(value.round() as i64),
    }
}

fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 {
        out.insert(0, '-');
    }
    out
}

/// The Markdown table of one subject.
pub fn markdown_table(summary: &SubjectSummary) -> String {
    let rounds = summary
        .figures
        .first()
        .map(|figure| figure.values.len())
        .unwrap_or(0);
    let mut out = String::new();
    out.push_str("| figure | unit |");
    for round in 1..=rounds {
        out.push_str(&format!(" run {round} |"));
    }
    out.push_str(" **median** | target | met |\n|---|---|");
    for _ in 0..rounds {
        out.push_str("---:|");
    }
    out.push_str("---:|---|---|\n");
    for figure in &summary.figures {
        out.push_str(&format!("| {} | {} |", figure.label, figure.unit));
        for value in &figure.values {
            match value {
                Some(value) => out.push_str(&format!(" {} |", format_value(*value, &figure.unit))),
                None => out.push_str(" – |"),
            }
        }
        let median = match (figure.median, &figure.note) {
            (Some(value), _) => format!("**{}**", format_value(value, &figure.unit)),
            (None, Some(note)) => note.clone(),
            (None, None) => "–".to_owned(),
        };
        let target = figure
            .target
            .map(|target| target.text(&figure.unit))
            .unwrap_or_default();
        let met = match figure.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None if figure.target.is_some() => "n/a",
            None => "",
        };
        out.push_str(&format!(" {median} | {target} | {met} |\n"));
    }
    out
}

/// The whole report as Markdown: setup, per-subject tables, per-round load.
pub fn markdown(report: &Report) -> String {
    let setup = &report.setup;
    let mut out = format!(
        "## Pipeline bench, {}\n\n\
         Machine: {} ({} cores), {:.1} GiB, kernel {}. Stack: {}. {} run(s) of {} s (+{} s warm-up) per load \
         figure; {} tenants over {} partitions; envelopes of {:.0} bytes; producer {}.\n\
         Single: {} connections; batch: {} connections x {} activities; drain: {} records; Kafka ceiling: {} records.\n\n",
        report.started_at,
        report.machine.cpu_model,
        report.machine.cores,
        report.machine.memory_gib,
        report.machine.kernel,
        setup.stack,
        setup.rounds,
        setup.duration_s,
        setup.warmup_s,
        setup.tenants,
        setup.partitions,
        setup.envelope_bytes,
        setup.producer_props.join(" "),
        setup.connections,
        setup.batch_connections,
        setup.batch_size,
        setup.drain_records,
        setup.kafka_records,
    );
    for summary in &report.summary {
        // A run of phases without figures in the table (`--phases reads`) has its own tables below.
        let measured = summary
            .figures
            .iter()
            .any(|figure| figure.values.iter().any(Option::is_some));
        if !measured {
            continue;
        }
        out.push_str(&format!("### Subject `{}`\n\n", summary.subject));
        out.push_str(&markdown_table(summary));
        out.push('\n');
    }
    for summary in &report.summary {
        out.push_str(&scaling_markdown(&report.rounds, &summary.subject));
    }
    for round in &report.rounds {
        for subject in &round.subjects {
            if let Some(reads) = &subject.reads {
                out.push_str(&reads_markdown(&subject.subject, round.index, reads));
            }
        }
    }
    out.push_str("Load average (1 min) before/after each run: ");
    let loads: Vec<String> = report
        .rounds
        .iter()
        .map(|round| {
            format!(
                "run {}: {:.2}/{:.2}",
                round.index, round.load_before, round.load_after
            )
        })
        .collect();
    out.push_str(&loads.join(", "));
    out.push('\n');
    out
}

/// The CPU of each observed process over a figure's window, in cores.
type CoresByProcess = Vec<(String, f64)>;
/// Per process group, one value per round.
type GroupFigures = std::collections::BTreeMap<String, Vec<f64>>;

/// Activities/s of a figure and the CPU of each observed process, if measured in that round.
type ScalingExtract = dyn Fn(&ScalingResult) -> Option<(f64, CoresByProcess)>;

/// One column of the scaling table: a figure with an instance count, read from a round.
struct ScalingColumn {
    title: String,
    extract: Box<ScalingExtract>,
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// The process group a CPU figure counts under: every instance of a role together, others by name.
fn process_group(name: &str) -> String {
    if name.starts_with("produce") {
        "produce (all instances)".to_owned()
    } else if name.starts_with("consume") {
        "consume (all instances)".to_owned()
    } else if name == "bench" {
        "bench (load generator, pre-fill)".to_owned()
    } else {
        name.to_owned()
    }
}

/// The scaling phase of one subject: per figure and instance count, the median rate and the median
/// CPU per activity of each process group (µs of user+sys time from /proc per activity).
pub fn scaling_markdown(rounds: &[Round], subject: &str) -> String {
    let results: Vec<&ScalingResult> = rounds
        .iter()
        .filter_map(|round| round.subjects.iter().find(|s| s.subject == subject))
        .filter_map(|s| s.scaling.as_ref())
        .collect();
    let Some(first) = results.first() else {
        return String::new();
    };
    let mut columns: Vec<ScalingColumn> = Vec::new();
    for (kind, title) in [("single", "single"), ("batch", "batch of 100")] {
        let mut counts: Vec<usize> = results
            .iter()
            .flat_map(|r| {
                if kind == "single" {
                    &r.single
                } else {
                    &r.batch
                }
            })
            .map(|l| l.instances)
            .collect();
        counts.sort_unstable();
        counts.dedup();
        for instances in counts {
            columns.push(ScalingColumn {
                title: format!("{title}, {instances} API{}", plural(instances)),
                extract: Box::new(move |r: &ScalingResult| {
                    let loads = if kind == "single" {
                        &r.single
                    } else {
                        &r.batch
                    };
                    scaled_load(loads, instances).map(|l| (l.items_per_s, l.cpu_cores.clone()))
                }),
            });
        }
    }
    let mut counts: Vec<usize> = results
        .iter()
        .flat_map(|r| &r.drain)
        .map(|d| d.instances)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    for instances in counts {
        columns.push(ScalingColumn {
            title: format!("drain, {instances} consumer{}", plural(instances)),
            extract: Box::new(move |r: &ScalingResult| {
                scaled_drain(&r.drain, instances)
                    .map(|d| (d.drain.records_per_s, d.drain.cpu_cores.clone()))
            }),
        });
    }
    // Per column: the rounds' rates, and per group the rounds' µs per activity.
    let mut groups: Vec<String> = Vec::new();
    let mut cells: Vec<(Vec<f64>, GroupFigures)> = Vec::new();
    for column in &columns {
        let mut rates = Vec::new();
        let mut per_group = GroupFigures::new();
        for result in &results {
            let Some((rate, cores)) = (column.extract)(result) else {
                continue;
            };
            if rate <= 0.0 {
                continue;
            }
            rates.push(rate);
            let mut summed: std::collections::BTreeMap<String, f64> = Default::default();
            for (name, cores) in &cores {
                let group = process_group(name);
                if !groups.contains(&group) {
                    groups.push(group.clone());
                }
                *summed.entry(group).or_insert(0.0) += cores;
            }
            let all: f64 = summed.values().sum();
            summed.insert("all processes".to_owned(), all);
            for (group, cores) in summed {
                per_group.entry(group).or_default().push(cores / rate * 1e6);
            }
        }
        cells.push((rates, per_group));
    }
    groups.sort_by_key(|group| {
        let rank = ["produce", "consume", "kafka", "redis", "ferretdb", "bench"]
            .iter()
            .position(|prefix| group.starts_with(prefix))
            .unwrap_or(6);
        (rank, group.clone())
    });
    groups.push("all processes".to_owned());
    let mut out = format!(
        "### Scaling, subject `{subject}`: CPU per activity by process (medians of {} run(s))\n\n\
         On {}. Microseconds of CPU (user+sys, /proc) per activity over each figure's window; \
         clients spread evenly over the API instances.\n\n| | ",
        results.len(),
        first.stack
    );
    out.push_str(
        &columns
            .iter()
            .map(|c| c.title.clone())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" |\n|---|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push_str("\n| activities/s |");
    for (rates, _) in &cells {
        match median(rates) {
            Some(rate) => out.push_str(&format!(" {} |", format_value(rate, "activities/s"))),
            None => out.push_str(" – |"),
        }
    }
    out.push('\n');
    for group in &groups {
        out.push_str(&format!("| {group}, µs/activity |"));
        for (_, per_group) in &cells {
            match per_group.get(group).and_then(|values| median(values)) {
                Some(us) => out.push_str(&format!(" {us:.1} |")),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The reads of one subject in one run: a row per size and kind, the seeding, the store's plans.
pub fn reads_markdown(subject: &str, round: usize, reads: &ReadsResult) -> String {
    let mut out = format!(
        "### Reads, subject `{subject}`, run {round}\n\n\
         One sequential client; `limit={}`; recent-events stream {} and recent-pages set {} per tenant; read.timeout_ms {}; \
         a second tenant of {} documents. Latency in ms to the answer, whatever it was (503s \
         included); \"200 only\" leaves the others out.\n\n\
         | documents | query | requests | 200 | other answers | p50 | p99 | max | p50, 200 only | p99, 200 only | cores |\n\
         |---:|---|---:|---:|---|---:|---:|---:|---:|---:|---|\n",
        reads.page_limit,
        reads.recent_events_per_tenant,
        reads.recent_pages_per_tenant,
        reads.read_timeout_ms,
        reads.small_documents
    );
    let ms = |count: u64, value: f64| {
        if count == 0 {
            "–".to_owned()
        } else {
            format_value(value, "ms")
        }
    };
    for step in &reads.steps {
        for query in &step.queries {
            let others = if query.statuses.is_empty() {
                "–".to_owned()
            } else {
                query
                    .statuses
                    .iter()
                    .map(|(status, count)| format!("{status} x{count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let cores = query
                .cpu_cores
                .iter()
                .filter(|(_, cores)| *cores >= 0.01)
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect::<Vec<_>>()
                .join(", ");
            out.push_str(&format!(
                "| {} | {} | {} | {} | {others} | {} | {} | {} | {} | {} | {cores} |\n",
                group_thousands(step.documents as i64),
                query.query,
                query.requests,
                query.ok,
                ms(query.latency.count, query.latency.p50_ms),
                ms(query.latency.count, query.latency.p99_ms),
                ms(query.latency.count, query.latency.max_ms),
                ms(query.latency_ok.count, query.latency_ok.p50_ms),
                ms(query.latency_ok.count, query.latency_ok.p99_ms),
            ));
        }
    }
    out.push('\n');
    for step in &reads.steps {
        let rss = step
            .rss_mib
            .iter()
            .map(|(name, mib)| format!("{name} {mib:.0} MiB"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "- {} documents: {} seeded at {} docs/s (store and Redis, as the consumer leaves them); \
             load {:.2}/{:.2} before/after; RSS after: {rss}\n",
            group_thousands(step.documents as i64),
            group_thousands(step.seeded as i64),
            group_thousands(step.seed_documents_per_s.round() as i64),
            step.load_before,
            step.load_after,
        ));
    }
    for (query, plan) in &reads.explain {
        out.push_str(&format!(
            "\nThe store's `explain` of {query}:\n\n```json\n{plan}\n```\n"
        ));
    }
    out.push('\n');
    out
}

pub mod checks {
    use super::*;

    fn load(rps: f64, p99: f64) -> LoadResult {
        LoadResult {
            pacing: "closed".to_owned(),
            target_rate: None,
            connections: 1,
            duration_s: 1.0,
            requests_ok: rps as u64,
            requests_failed: 0,
            failures: vec![],
            items_per_request: 1,
            requests_per_s: rps,
            items_per_s: rps,
            latency: Percentiles {
                p99_ms: p99,
                ..Percentiles::default()
            },
            latency_uncorrected: Percentiles::default(),
            cpu_busy_percent: None,
            cpu_cores: vec![("produce".to_owned(), 0.3), ("bench".to_owned(), 0.15)],
        }
    }

    fn round(index: usize, kafka: f64, single: f64, p99: f64) -> Round {
        Round {
            index,
            load_before: 0.5,
            load_after: 1.0,
            kafka: Some(KafkaCeiling {
                records: 1,
                records_per_s: kafka,
                mb_per_s: 1.0,
                avg_latency_ms: 1.0,
                p99_latency_ms: 1.0,
                producer_props: vec![],
            }),
            publish: None,
            store: None,
            subjects: vec![SubjectRound {
                subject: "current".to_owned(),
                single_max: Some(load(single, 30.0)),
                single_half: Some(load(single / 2.0, p99)),
                batch_missing: Some("n/a: endpoint missing (404)".to_owned()),
                ..SubjectRound::default()
            }],
        }
    }

    /// The scaling table: one column per figure and instance count, every instance of a role in
    /// one row, µs per activity = cores / activities per second, medians over the rounds.
    pub fn scaling_is_tabulated_per_process_group() {
        let scaled = |instances: usize, rate: f64, cores: &[(&str, f64)]| ScaledLoad {
            instances,
            load: LoadResult {
                cpu_cores: cores.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
                ..load(rate, 1.0)
            },
        };
        let rounds: Vec<Round> = [1_000.0, 2_000.0, 4_000.0]
            .iter()
            .enumerate()
            .map(|(index, &rate)| {
                let mut round = round(index + 1, 1.0, 1.0, 1.0);
                round.subjects[0].scaling = Some(ScalingResult {
                    stack: "3 brokers".to_owned(),
                    single: vec![
                        scaled(1, rate, &[("produce", 0.3), ("kafka-1", 0.1)]),
                        scaled(
                            2,
                            rate,
                            &[("produce-1", 0.2), ("produce-2", 0.2), ("kafka-1", 0.1)],
                        ),
                    ],
                    ..ScalingResult::default()
                });
                round
            })
            .collect();
        let table = scaling_markdown(&rounds, "current");
        assert!(
            table.contains("| | single, 1 API | single, 2 APIs |"),
            "{table}"
        );
        assert!(
            table.contains("| activities/s | 2,000 | 2,000 |"),
            "{table}"
        );
        // 0.3 cores at 1,000/s, 2,000/s, 4,000/s: 300, 150, 75 µs -> median 150; two instances of
        // 0.2 cores each: 400, 200, 100 -> 200.
        assert!(
            table.contains("| produce (all instances), µs/activity | 150.0 | 200.0 |"),
            "{table}"
        );
        assert!(
            table.contains("| kafka-1, µs/activity | 50.0 | 50.0 |"),
            "{table}"
        );
        assert!(
            table.contains("| all processes, µs/activity | 200.0 | 250.0 |"),
            "{table}"
        );
        assert!(scaling_markdown(&rounds, "other").is_empty());
    }

    pub fn summary_takes_medians_of_values_and_ratios() {
        let rounds = vec![
            round(1, 100_000.0, 30_000.0, 8.0),
            round(2, 200_000.0, 20_000.0, 12.0),
            round(3, 150_000.0, 26_000.0, 9.0),
        ];
        let summary = summarize(&rounds, "current");
        let figure = |label: &str| {
            summary
                .figures
                .iter()
                .find(|f| f.label == label)
                .unwrap()
                .clone()
        };
        let single = figure("3. Single: max rate");
        assert_eq!(single.median, Some(26_000.0));
        assert_eq!(single.met, Some(true));
        let p99 = figure("3. Single @50%: p99");
        assert_eq!(p99.median, Some(9.0));
        assert_eq!(p99.met, Some(true));
        // Ratios per round: 0.3, 0.1, 0.1733 -> median 0.1733 (not 26000/150000 by chance).
        let ratio = figure("Ratio 3/1: single max / Kafka ceiling");
        assert!((ratio.median.unwrap() - 26_000.0 / 150_000.0).abs() < 1e-9);
        // 0.3 cores at 30,000 req/s is 10 us per request; all processes 0.45 cores, 15 us.
        let cpu = figure("3. Single @max: CPU per request, produce");
        assert!((cpu.values[0].unwrap() - 10.0).abs() < 1e-9, "{cpu:?}");
        let cpu = figure("3. Single @max: CPU per request, all processes");
        assert!((cpu.values[0].unwrap() - 15.0).abs() < 1e-9, "{cpu:?}");
        let batch = figure("4. Batch of 100: max rate");
        assert_eq!(batch.median, None);
        assert_eq!(batch.met, None);
        assert_eq!(batch.note.as_deref(), Some("n/a: endpoint missing (404)"));
        let table = markdown_table(&summary);
        assert!(table.contains("| 3. Single: max rate | req/s | 30,000 | 20,000 | 26,000 | **26,000** | >= 25,000 | yes |"), "{table}");
        assert!(table.contains("| 4. Batch of 100: max rate | activities/s | – | – | – | n/a: endpoint missing (404) | >= 100,000 | n/a |"), "{table}");
        let report = Report {
            started_at: "t".to_owned(),
            finished_at: "t".to_owned(),
            machine: Machine {
                cpu_model: "cpu".to_owned(),
                cores: 2,
                memory_gib: 24.0,
                kernel: "k".to_owned(),
            },
            setup: Setup {
                stack: "private".to_owned(),
                rounds: 3,
                duration_s: 8.0,
                warmup_s: 2.0,
                connections: 256,
                batch_connections: 16,
                batch_size: 100,
                drain_records: 1,
                kafka_records: 1,
                tenants: 12,
                partitions: 12,
                envelope_bytes: 300.0,
                producer_props: vec!["acks=all".to_owned()],
                subjects: vec!["current".to_owned()],
                phases: vec![],
            },
            rounds,
            summary: vec![summary],
        };
        // The JSON round-trips, and the Markdown holds the table.
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.rounds.len(), 3);
        assert!(markdown(&back).contains("### Subject `current`"));
        // Without a figure of the table (a reads-only run), no table of dashes.
        let mut reads_only = back.clone();
        for round in &mut reads_only.rounds {
            round.kafka = None;
            round.subjects = vec![SubjectRound {
                subject: "current".to_owned(),
                ..SubjectRound::default()
            }];
        }
        reads_only.summary = vec![summarize(&reads_only.rounds, "current")];
        assert!(!markdown(&reads_only).contains("### Subject"));
    }

    pub fn values_are_formatted_for_humans() {
        assert_eq!(format_value(1_234_567.4, "req/s"), "1,234,567");
        assert_eq!(format_value(999.0, "req/s"), "999");
        assert_eq!(format_value(-1000.0, "x"), "-1,000");
        assert_eq!(format_value(1.23456, "ms"), "1.23");
        assert_eq!(format_value(0.4567, "ratio"), "0.46");
        assert_eq!(Target::AtLeast(0.5).text("ratio"), ">= 0.50");
        assert!(Target::AtMost(10.0).met(10.0));
        assert!(!Target::AtLeast(10.0).met(9.9));
    }

    pub fn reads_are_tabulated() {
        let figure = |query: &str, ok: u64, statuses: Vec<(String, u64)>| ReadFigure {
            query: query.to_owned(),
            requests: ok + statuses.iter().map(|(_, count)| count).sum::<u64>(),
            ok,
            statuses,
            seconds: 1.0,
            latency: Percentiles {
                count: 5,
                p50_ms: 3001.5,
                p99_ms: 3010.0,
                max_ms: 3010.0,
                ..Percentiles::default()
            },
            latency_ok: Percentiles::default(),
            cpu_busy_percent: Some(50.0),
            cpu_cores: vec![("produce".to_owned(), 0.02), ("redis".to_owned(), 0.001)],
        };
        let reads = ReadsResult {
            page_limit: 50,
            recent_events_per_tenant: 5000,
            recent_pages_per_tenant: 5000,
            read_timeout_ms: 3000,
            small_documents: 1000,
            steps: vec![ReadStep {
                documents: 1_000_000,
                seeded: 900_000,
                seed_documents_per_s: 2890.4,
                load_before: 1.0,
                load_after: 2.0,
                rss_mib: vec![("ferretdb".to_owned(), 812.3)],
                queries: vec![figure(
                    "newest page",
                    0,
                    vec![("503".to_owned(), 5), ("io: TimedOut".to_owned(), 1)],
                )],
            }],
            explain: vec![("the newest page".to_owned(), "{\"x\": 1}".to_owned())],
            produce_peak_rss_mib: None,
        };
        let text = reads_markdown("current", 1, &reads);
        assert!(
            text.contains("| 1,000,000 | newest page | 6 | 0 | 503 x5, io: TimedOut x1 | 3001.50 | 3010.00 | 3010.00 | – | – | produce 0.02 |"),
            "{text}"
        );
        assert!(text.contains("900,000 seeded at 2,890 docs/s"), "{text}");
        assert!(text.contains("ferretdb 812 MiB"), "{text}");
        assert!(text.contains("```json\n{\"x\": 1}\n```"), "{text}");
        // Reports written before the phase existed still read.
        let old: SubjectRound = serde_json::from_str(r#"{"subject":"s","single_max":null,"single_half":null,"batch_max":null,"batch_half":null,"batch_missing":null,"publisher":null,"drain":null,"e2e":null,"produce_peak_rss_mib":null,"consume_peak_rss_mib":null}"#).unwrap();
        assert!(old.reads.is_none());
    }
}
