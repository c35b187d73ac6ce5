//! The API's Prometheus metrics, in a registry the application owns (not the process-global default),
//! so several applications can run in one process (the tests) without sharing counters.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use super::error::ApiError;
use super::ApiState;

/// Every metric name starts with this.
pub const NAMESPACE: &str = "activity_pipeline";

/// Request latencies span sub-millisecond reads to multi-second timeouts.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The API's metrics. Each field is one metric family; label values are bounded (route patterns,
/// not raw paths; configured tenants; a fixed set of reasons).
#[derive(Clone)]
pub struct ApiMetrics {
    registry: Registry,
    /// Requests by route pattern, method and status.
    http_requests: IntCounterVec,
    /// Request latency by route pattern, method and status.
    http_duration: HistogramVec,
    /// Time from handing a record to the producer to its delivery report, by outcome.
    produce_duration: HistogramVec,
    /// Records the producer holds that the broker has not acknowledged yet (set at scrape time).
    producer_queue_depth: IntGauge,
    /// Open SSE streams on this instance.
    sse_clients: IntGauge,
    /// Requests refused with 429 by the per-tenant token bucket.
    rate_limited: IntCounterVec,
    /// Requests and batch items refused, by reason.
    rejected: IntCounterVec,
    /// SSE resumes (Last-Event-ID) by where the replay came from: `redis` or `mongodb`.
    sse_replays: IntCounterVec,
    /// SSE replays that ended before they were complete, by reason (their streams ended).
    sse_replays_cut: IntCounterVec,
    /// Pages of `GET /activities` by source: `redis`, `mongodb` or `both`.
    activity_pages: IntCounterVec,
    /// Lookups of `GET /activities/{key}` by how they found the document: `mark` or `query`.
    activity_lookups: IntCounterVec,
    /// Times an optional Redis part failed or was too slow and was skipped for a moment, by part.
    redis_fallbacks: IntCounterVec,
}

impl ApiMetrics {
    pub fn new() -> ApiMetrics {
        let registry = Registry::new_custom(Some(NAMESPACE.to_owned()), None)
            .expect("a valid metric namespace");
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered."),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer an HTTP request (to the response head for streams).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let produce_duration = HistogramVec::new(
            HistogramOpts::new(
                "produce_duration_seconds",
                "Time from handing a record to the Kafka producer to its delivery report.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let producer_queue_depth = IntGauge::new(
            "producer_queue_depth",
            "Records in the Kafka producer not yet acknowledged by the broker.",
        )
        .expect("valid metric");
        let sse_clients =
            IntGauge::new("sse_clients", "Open Server-Sent Events streams.").expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused with 429 by the per-tenant rate limit.",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "rejected_total",
                "Requests, and batch items, refused by the API, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let sse_replays = IntCounterVec::new(
            Opts::new(
                "sse_replays_total",
                "SSE resumes with Last-Event-ID, by replay source (redis: the recent-events buffer; mongodb: a gap older than it).",
            ),
            &["source"],
        )
        .expect("valid metric");
        let sse_replays_cut = IntCounterVec::new(
            Opts::new(
                "sse_replays_cut_total",
                "SSE replays ended before they were complete, by reason (send_deadline: the client did not take it within sse.replay_send_timeout_ms; buffer_trimmed: the recent-events stream was trimmed past it; store: Redis or MongoDB failed part-way).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let activity_pages = IntCounterVec::new(
            Opts::new(
                "activity_pages_total",
                "Pages of GET /activities by source (redis: the recent-pages set; mongodb: a plain query; both: the newest part from redis, the rest from mongodb).",
            ),
            &["source"],
        )
        .expect("valid metric");
        let activity_lookups = IntCounterVec::new(
            Opts::new(
                "activity_lookups_total",
                "Lookups of GET /activities/{key} by path (mark: the idempotency mark's document id, then a lookup by id; query: the (tenantId, idempotencyKey) query).",
            ),
            &["path"],
        )
        .expect("valid metric");
        let redis_fallbacks = IntCounterVec::new(
            Opts::new(
                "redis_fallbacks_total",
                "Times an optional Redis call failed or passed its budget, so the API went without that part for a second, by part (accepted_markers: idempotency layer 2, the consumer deduplicates; rate_limit: each instance's own bucket decides; read_shortcuts: reads go to MongoDB).",
            ),
            &["part"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(produce_duration.clone()),
            Box::new(producer_queue_depth.clone()),
            Box::new(sse_clients.clone()),
            Box::new(rate_limited.clone()),
            Box::new(rejected.clone()),
            Box::new(sse_replays.clone()),
            Box::new(sse_replays_cut.clone()),
            Box::new(activity_pages.clone()),
            Box::new(activity_lookups.clone()),
            Box::new(redis_fallbacks.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        ApiMetrics {
            registry,
            http_requests,
            http_duration,
            produce_duration,
            producer_queue_depth,
            sse_clients,
            rate_limited,
            rejected,
            sse_replays,
            activity_pages,
            activity_lookups,
            sse_replays_cut,
            redis_fallbacks,
        }
    }

    /// The fallback counter of one optional Redis part (`accepted_markers`, `rate_limit`,
    /// `read_shortcuts`), for its `SkipAfterFailure`.
    pub fn redis_fallbacks(&self, part: &str) -> IntCounter {
        self.redis_fallbacks.with_label_values(&[part])
    }

    /// Observes one delivery: `outcome` is `acked`, `queue_full` or `not_acknowledged`.
    pub fn observe_produce(&self, outcome: &str, started: Instant) {
        self.produce_duration
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn count_rejected(&self, reason: &str, count: u64) {
        self.rejected.with_label_values(&[reason]).inc_by(count);
    }

    pub fn count_rate_limited(&self, tenant: &str) {
        self.rate_limited.with_label_values(&[tenant]).inc();
    }

    /// One SSE resume replayed from `source` (`redis` or `mongodb`).
    pub fn count_sse_replay(&self, source: &str) {
        self.sse_replays.with_label_values(&[source]).inc();
    }

    /// One page of `GET /activities` served from `source` (`PageSource::label`).
    pub fn page_served(&self, source: &str) {
        self.activity_pages.with_label_values(&[source]).inc();
    }

    /// One lookup by key answered by `path` (`mark` or `query`).
    pub fn lookup_served(&self, path: &str) {
        self.activity_lookups.with_label_values(&[path]).inc();
    }

    /// The counter of replays cut short; streams hold a clone, as they outlive any one handler call.
    pub fn sse_replays_cut(&self) -> &IntCounterVec {
        &self.sse_replays_cut
    }

    pub fn sse_clients(&self) -> &IntGauge {
        &self.sse_clients
    }

    /// The exposition text, with `producer_queue_depth` refreshed to `queue_depth`.
    pub fn render(&self, queue_depth: i64) -> String {
        self.producer_queue_depth.set(queue_depth);
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }

    fn observe_request(&self, route: &str, method: &str, status: u16, started: Instant) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for ApiMetrics {
    fn default() -> ApiMetrics {
        ApiMetrics::new()
    }
}

/// Middleware: counts and times every request by route pattern (`/activities/{idempotencyKey}`, not
/// the raw path, to bound cardinality; `unmatched` for 404s), and counts refusals by reason.
pub async fn track_requests(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = request.app_data::<web::Data<ApiState>>().cloned();
    let method = request.method().as_str().to_owned();
    let response = next.call(request).await?;
    if let Some(state) = state {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let method = if KNOWN_METHODS.contains(&method.as_str()) {
            method
        } else {
            "other".to_owned()
        };
        if let Some(error) = response
            .response()
            .error()
            .and_then(|error| error.as_error::<ApiError>())
        {
            state.metrics.count_rejected(error.reason(), 1);
        }
        state
            .metrics
            .observe_request(&route, &method, response.status().as_u16(), started);
    }
    Ok(response)
}

/// Methods reported as themselves; anything else is `other`, so clients cannot invent label values.
const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
