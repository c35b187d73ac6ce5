//! The `produce` role: the HTTP API. Intake validates activities, authenticates the tenant,
//! publishes to Kafka and answers 202 only once the broker acknowledged; the read side serves the
//! tenant's stored activities, counters and live stream; operations endpoints serve health,
//! readiness, metrics and the API's documents.
//!
//! Architecture invariant: no handler answers 202 for a record whose delivery report it has not seen.
//!
//! # Layout
//! - `activities`: `POST /activities`, `POST /activities/batch`.
//! - `read`: `GET /activities`, `GET /activities/{idempotencyKey}`, `GET /analytics`.
//! - `stream` + `replay` + `fanout`: `GET /activities/stream` and the per-instance Redis Pub/Sub fan-out.
//! - `introspection`: `/healthz`, `/readyz`, `/metrics`, `/schemas/activity.v1.json`, `/openapi.json`.
//! - `auth`, `error`, `rate_limit`, `dedupe` (idempotency layer 2), `metrics`, `openapi`.

mod activities;
mod auth;
mod dedupe;
mod error;
mod fanout;
mod introspection;
mod metrics;
mod openapi;
mod pages;
mod rate_limit;
mod read;
mod replay;
mod shares;
mod skip;
mod stream;
mod tally;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio_util::sync::CancellationToken;

use crate::config::{ReadSettings, Settings, SseSettings};
use crate::domain::{ActivityValidator, TenantDirectory};
use crate::kafka::{ActivityPublisher, PartitionSpread};
use crate::routes::{self, RouteTable};
use crate::store::{ActivityRepository, RedisStore};

pub use activities::IDEMPOTENCY_KEY_HEADER;
pub use auth::TENANT_HEADER;
pub use error::ApiError;
/// The live fan-out, shared with the console's live tail (one implementation of the Pub/Sub side).
pub(crate) use fanout::{Fanout, JoinError, LiveFeed};
pub use metrics::NAMESPACE as METRICS_NAMESPACE;
pub use stream::{LAST_EVENT_ID_HEADER, REPLAY_TRUNCATED_EVENT};
pub use tally::{IntakeOutcome, IntakeTally, FLUSH_INTERVAL as INTAKE_FLUSH_INTERVAL};

/// What every handler shares.
pub(crate) struct ApiState {
    pub publisher: ActivityPublisher,
    pub validator: ActivityValidator,
    pub tenants: TenantDirectory,
    /// Bodies larger than this are refused (413) before they are read in full.
    pub max_body_bytes: usize,
    /// The same for batches, which are legitimately larger.
    pub batch_max_body_bytes: usize,
    pub batch_max_items: usize,
    /// Most failures described in one batch answer, all items together.
    pub batch_max_reported_errors: usize,
    pub repository: ActivityRepository,
    pub redis: RedisStore,
    /// Idempotency layer 2.
    pub accepted: dedupe::AcceptedMarkers,
    pub rate_limiter: rate_limit::TenantRateLimiter,
    /// Per-tenant intake counts, added to Redis every second for the console.
    pub tally: Arc<tally::IntakeTally>,
    pub fanout: fanout::Fanout,
    pub metrics: metrics::ApiMetrics,
    pub read: ReadSettings,
    pub sse: SseSettings,
    /// Bounds the SSE replays in memory at once (`sse.max_concurrent_replays`, and
    /// `sse.max_replays_per_tenant` of them for one tenant).
    pub replay_slots: replay::ReplaySlots,
    /// Bounds the store reads in flight at once (`read.max_concurrent`, and
    /// `read.max_concurrent_per_tenant` of them for one tenant).
    pub read_slots: shares::TenantShares,
    /// The read side's shortcuts through Redis (the recent-pages set, the idempotency marks) are
    /// skipped for a moment after Redis failed or was slow: MongoDB answers meanwhile.
    pub read_shortcuts: skip::SkipAfterFailure,
    pub readiness_timeout: Duration,
    /// The OpenAPI document, rendered once.
    pub openapi_json: String,
    /// Cancelled when shutdown begins: open SSE streams end so in-flight requests can finish.
    pub shutdown: CancellationToken,
}

/// The HTTP server, bound and ready to run. Binding happens in `build` so a caller (a test) can bind
/// port 0 and learn the port before running.
///
/// The application does not listen for signals: its caller hands it the shutdown trigger (as
/// mini-redis's `run(listener, shutdown)`), so `cli` turns SIGTERM/SIGINT into it and a test cancels
/// it directly, and this module never calls back up into `cli`.
pub struct Application {
    server: Server,
    port: u16,
    publisher: ActivityPublisher,
    shutdown_timeout: Duration,
    /// A child of the caller's token: the caller's cancel reaches every part of the application,
    /// while the application cancelling it (when the server stopped by other means) ends its own
    /// SSE streams and subscriber without cancelling whatever else the caller shares its token with.
    shutdown: CancellationToken,
}

impl Application {
    /// Binds `http.listen`, connects and starts the server. Cancelling `shutdown` shuts the
    /// application down gracefully (see [`Application::run_until_stopped`]).
    pub async fn build(
        settings: &Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.http.listen).map_err(|error| {
            anyhow::anyhow!("binding http.listen = {}: {error}", settings.http.listen)
        })?;
        let port = listener.local_addr()?.port();
        let publisher = ActivityPublisher::new(&settings.kafka)?
            .accepting_in(&settings.dc.name)
            .with_partition_spread(PartitionSpread::from_settings(settings));
        let validator = ActivityValidator::with_limits(&settings.limits.activity_limits())
            .map_err(|error| anyhow::anyhow!("configuration key `limits.{error}`"))?;
        let tenants = TenantDirectory::new(settings.tenant_credentials()?);
        if tenants.is_empty() {
            tracing::warn!("no tenants are configured: every request will be refused with 401");
        }
        let tenant_ids: Vec<_> = settings
            .tenant_credentials()?
            .into_iter()
            .map(|(tenant, _)| tenant)
            .collect();
        let redis = RedisStore::connect(&settings.redis)?;
        let api_metrics = metrics::ApiMetrics::new();
        let rate_limiter = rate_limit::TenantRateLimiter::new(&settings.rate_limit, &tenant_ids)
            .shared_through(
                &settings.rate_limit,
                redis.clone(),
                settings.intake.dedupe_timeout(),
                api_metrics.redis_fallbacks("rate_limit"),
            );
        let shutdown = shutdown.child_token();
        let tally = Arc::new(tally::IntakeTally::new(&tenant_ids));
        tokio::spawn(Arc::clone(&tally).run(redis.clone(), shutdown.clone()));
        let openapi_json =
            openapi::document(validator.schema_json(), settings.intake.batch_max_items).to_string();
        let state = web::Data::from(Arc::new(ApiState {
            publisher: publisher.clone(),
            validator,
            tenants,
            max_body_bytes: settings.http.max_body_bytes,
            batch_max_body_bytes: settings.intake.batch_max_body_bytes,
            batch_max_items: settings.intake.batch_max_items,
            batch_max_reported_errors: settings.intake.batch_max_reported_errors,
            repository: ActivityRepository::connect(&settings.mongo).await?,
            accepted: dedupe::AcceptedMarkers::new(
                redis.clone(),
                settings.intake.dedupe_timeout(),
                settings.kafka.delivery_timeout(),
                api_metrics.redis_fallbacks("accepted_markers"),
            ),
            redis,
            rate_limiter,
            tally,
            fanout: fanout::Fanout::start(
                &settings.redis,
                settings.sse.max_connections_per_tenant,
                settings.sse.buffer_events,
                Duration::from_secs(settings.sse.heartbeat_secs),
                shutdown.clone(),
            ),
            metrics: api_metrics.clone(),
            read: settings.read.clone(),
            sse: settings.sse.clone(),
            replay_slots: replay::ReplaySlots::new(
                settings.sse.max_concurrent_replays,
                settings.sse.max_replays_per_tenant,
                settings.sse.replay_wait(),
            ),
            read_slots: shares::TenantShares::new(
                settings.read.max_concurrent,
                settings.read.max_concurrent_per_tenant,
                settings.read.queue_wait(),
            ),
            read_shortcuts: skip::SkipAfterFailure::new(
                "the read side's Redis shortcuts are unavailable; reads go to MongoDB for a moment",
                api_metrics.redis_fallbacks("read_shortcuts"),
            ),
            readiness_timeout: settings.readiness.timeout(),
            openapi_json,
            shutdown: shutdown.clone(),
        }));
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(metrics::track_requests))
                .configure(routes)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::NotFound)
                }))
        })
        // The caller's shutdown token stops the server, in `run_until_stopped`, which first ends
        // the SSE streams (actix's own signal handling would not).
        .disable_signals()
        .shutdown_timeout(settings.http.shutdown_timeout_secs);
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(port, topic = publisher.topic(), "produce API listening");
        Ok(Application {
            server,
            port,
            publisher,
            shutdown_timeout: Duration::from_secs(settings.http.shutdown_timeout_secs),
            shutdown,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully (tests). Prefer cancelling the shutdown token given to
    /// [`Application::build`], which also ends open SSE streams first.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the shutdown token is cancelled (or `handle().stop(true)`): then ends the SSE
    /// streams, stops accepting, lets in-flight requests finish and flushes the producer.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        routes::serve_until_cancelled(self.server, &self.shutdown).await?;
        tracing::info!("HTTP server stopped; flushing the producer");
        let publisher = self.publisher;
        let timeout = self.shutdown_timeout;
        tokio::task::spawn_blocking(move || publisher.flush(timeout)).await?;
        Ok(())
    }
}

/// Every route of the API: its path and, per method, its handler. `routes` registers exactly this,
/// and the OpenAPI test compares it with the document.
fn route_table() -> RouteTable {
    vec![
        (
            "/activities",
            vec![
                (Method::POST, web::post().to(activities::create)),
                (Method::GET, web::get().to(read::list)),
            ],
        ),
        (
            "/activities/batch",
            vec![(Method::POST, web::post().to(activities::create_batch))],
        ),
        (
            "/activities/stream",
            vec![(Method::GET, web::get().to(stream::stream))],
        ),
        (
            "/activities/{idempotencyKey}",
            vec![(Method::GET, web::get().to(read::get_one))],
        ),
        (
            "/analytics",
            vec![(Method::GET, web::get().to(read::analytics))],
        ),
        (
            "/healthz",
            vec![(Method::GET, web::get().to(introspection::healthz))],
        ),
        (
            "/readyz",
            vec![(Method::GET, web::get().to(introspection::readyz))],
        ),
        (
            "/metrics",
            vec![(Method::GET, web::get().to(introspection::metrics))],
        ),
        (
            "/schemas/activity.v1.json",
            vec![(Method::GET, web::get().to(introspection::activity_schema))],
        ),
        (
            "/openapi.json",
            vec![(Method::GET, web::get().to(introspection::openapi))],
        ),
    ]
}

/// The registered routes as (path, methods), for tests and tools.
pub fn registered_routes() -> Vec<(String, Vec<String>)> {
    routes::listed(route_table())
}

/// The OpenAPI document this build serves with the default configuration (bundled schema, default
/// limits).
pub fn openapi_document() -> serde_json::Value {
    let defaults = crate::config::Settings::from_files(&[]).expect("the defaults load");
    openapi::document(
        crate::domain::ACTIVITY_SCHEMA_JSON,
        defaults.intake.batch_max_items,
    )
}

fn routes(config: &mut web::ServiceConfig) {
    routes::register(config, route_table(), |allow| {
        actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed { allow })
    });
}
