//! The `console` role: the operators' web console and its JSON API, on an address of its own
//! (`console.listen`), never on the tenants' API.
//!
//! It shows what each stage has waiting (sampled by the console, with an hour of history drawn as a
//! chart) and the dead letters (held in its memory, following the DLQ), and acts on them (replay, purge, export) with the `dlq` verbs' own
//! code, and per tenant the stores' counts and a live tail. Pages are rendered on the server
//! (maud); the only scripts are a few compiled-in lines: the live tail's (EventSource) and the job
//! page's (polls the job's JSON); the JSON API under
//! `/console/api/` serves scripts and is described by `/console/api/openapi.json`.
//!
//! Architecture invariants:
//! - Only operators open it: configured token digests with a role; the operator directory does not
//!   hold tenants, so a tenant's API key is refused like any unknown token.
//! - It keeps no session of its own: login sessions are in Redis (under their id's SHA-256) and every
//!   CSRF token is checkable by any instance, so instances behind a load balancer share them, a
//!   restart ends none and a logout ends one everywhere; each request re-checks its session against
//!   the operator directory. A session that Redis cannot answer about is a 503, not a 401; bearer
//!   tokens need no Redis.
//! - Every POST carries the CSRF token of its session (or bearer token; the login form, of its
//!   pre-login cookie), and only `admin`s replay or purge.
//! - Every action is in the audit log before it runs (and its outcome after): if the audit log
//!   cannot be written, the action does not run. A job's entry is written before its task is
//!   spawned, and its task writes the outcome (also when shutdown stops it) before the job shows
//!   as ended.
//! - At most one replay or purge job runs at a time (a second gets 409 naming the first).
//! - Everything shown is escaped: payloads are tenants' data, and markup in them renders as text.
//! - The console reads Kafka without joining any consumer group and bounds every read by
//!   `console.read_timeout_ms`: it cannot slow the pipeline down or hang on it.
//!
//! # Layout
//! - `auth`: operators, sessions (in Redis, `store::ConsoleSessionStore`), CSRF. `error`: the error
//!   type and its answers.
//! - `overview`: the lag sampler and its bounded history, and the rates. `chart`: its SVG drawings.
//! - `consumers`: per stage, the `consume` instances' reports (partitions, breaker, last commit).
//! - `dead_letter_index`: the DLQ followed and held in memory for the dead-letters view.
//! - `dead_letters`: filters, pages, action reports. `actions`: the audited actions.
//! - `jobs`: real replays and purges run as jobs: the registry (memory only), their progress.
//! - `retries`: what waits in each retry topic and when its head is due.
//! - `tenants`: per-tenant counts from the stores, the live tail (the API's `Fanout`).
//! - `api`: the JSON API. `pages`: the HTML. `openapi`: the API's document.

mod actions;
mod api;
mod auth;
mod chart;
mod consumers;
mod dead_letter_index;
mod dead_letters;
mod error;
mod jobs;
mod openapi;
mod overview;
mod pages;
mod retries;
mod tenants;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::Method;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::OperatorDirectory;
use crate::produce::Fanout;
use crate::routes::{self, RouteTable};
use crate::store::{ActivityRepository, AuditLog, RedisStore};

pub use auth::{CSRF_HEADER, SESSION_COOKIE};
pub use error::ConsoleError;

/// What every handler shares.
pub(crate) struct ConsoleState {
    /// The whole tree: the `dlq` verbs take it as they do on the command line.
    pub settings: Settings,
    pub gate: auth::Gate,
    pub monitor: Arc<overview::LagMonitor>,
    /// The DLQ, followed and held in memory for the dead-letters view.
    pub dead_letters: Arc<dead_letter_index::DeadLetterIndex>,
    /// The purge log, copied and reloaded when a purge announces itself.
    pub purges: dead_letter_index::PurgeLogCopy,
    /// One MongoDB client for the console's life: the `dlq` code reads the purge and replay logs
    /// through it, rather than connecting for every page.
    pub repository: ActivityRepository,
    pub audit: AuditLog,
    /// The Redis counters (the tenants view).
    pub redis: RedisStore,
    /// The API's live fan-out, run by the console for its live tails: the same code, its own
    /// Pub/Sub connection.
    pub fanout: Fanout,
    /// Open live tails; the fan-out keeps it current (the console exports no metrics).
    pub tail_streams: prometheus::IntGauge,
    /// Ends the live tails when the console stops, so shutdown does not wait on them.
    pub shutdown: CancellationToken,
    /// The OpenAPI document, rendered once.
    pub openapi_json: String,
    /// The replays and purges running as jobs, and the last finished ones (memory only).
    pub jobs: Arc<jobs::JobRegistry>,
}

impl ConsoleState {
    pub fn read_timeout(&self) -> Duration {
        self.settings.console.read_timeout()
    }
}

/// The console's server, bound and ready to run (port 0 in tests, like the API's `Application`).
pub struct Console {
    server: Server,
    port: u16,
    shutdown: CancellationToken,
    /// Shutdown waits for a running job to stop between two dead letters and record its outcome.
    jobs: Arc<jobs::JobRegistry>,
    /// How long shutdown waits for that (`http.shutdown_timeout_secs`).
    jobs_stop_timeout: Duration,
}

impl Console {
    /// Binds `console.listen`, starts the lag sampler and the server. Cancelling `shutdown` stops
    /// both.
    pub async fn build(
        settings: &Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Console> {
        let listener = TcpListener::bind(settings.console.listen).map_err(|error| {
            anyhow::anyhow!(
                "binding console.listen = {}: {error}",
                settings.console.listen
            )
        })?;
        let port = listener.local_addr()?.port();
        let operators = OperatorDirectory::new(settings.operator_credentials()?);
        if operators.is_empty() {
            tracing::warn!(
                "no operators are configured ([operators.<name>]): nobody can open the console"
            );
        }
        let shutdown = shutdown.child_token();
        let monitor = Arc::new(overview::LagMonitor::new(settings)?);
        tokio::spawn(Arc::clone(&monitor).run(shutdown.clone()));
        let dead_letters = dead_letter_index::DeadLetterIndex::start(settings, shutdown.clone())?;
        let repository = ActivityRepository::connect(&settings.mongo).await?;
        let redis = RedisStore::connect(&settings.redis)?;
        let fanout = Fanout::start(
            &settings.redis,
            settings.sse.max_connections_per_tenant,
            settings.sse.buffer_events,
            Duration::from_secs(settings.sse.heartbeat_secs),
            shutdown.clone(),
        );
        let tail_streams =
            prometheus::IntGauge::new("console_tail_streams", "Open live tails of the console.")?;
        // `build` runs on the runtime that runs the console (main's, or a test's): jobs run there.
        let jobs = Arc::new(jobs::JobRegistry::new(tokio::runtime::Handle::current()));
        let state = web::Data::new(ConsoleState {
            settings: settings.clone(),
            gate: auth::Gate::new(
                operators,
                redis.console_sessions(settings.console.read_timeout()),
                Duration::from_secs(settings.console.session_ttl_secs),
                settings.console.max_sessions,
                settings.console.secure_cookie,
            ),
            monitor,
            dead_letters,
            purges: dead_letter_index::PurgeLogCopy::default(),
            audit: repository.audit_log(),
            repository,
            redis,
            fanout,
            tail_streams,
            shutdown: shutdown.clone(),
            openapi_json: openapi::document().to_string(),
            jobs: Arc::clone(&jobs),
        });
        let server =
            HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .app_data(web::JsonConfig::default().limit(64 * 1024).error_handler(
                        |error, _| {
                            ConsoleError::BadRequest(format!("invalid JSON body: {error}")).into()
                        },
                    ))
                    .app_data(web::FormConfig::default().limit(64 * 1024).error_handler(
                        |error, _| {
                            ConsoleError::BadRequest(format!("invalid form: {error}")).into()
                        },
                    ))
                    .app_data(web::QueryConfig::default().error_handler(|error, _| {
                        ConsoleError::BadRequest(format!("invalid query: {error}")).into()
                    }))
                    .wrap(security_headers())
                    .configure(routes)
                    .default_service(web::to(|| async {
                        Err::<HttpResponse, _>(ConsoleError::NotFound(
                            "no such console page; the console is under /console".to_owned(),
                        ))
                    }))
            })
            .disable_signals()
            .workers(2)
            .shutdown_timeout(settings.http.shutdown_timeout_secs)
            .listen(listener)?
            .run();
        tracing::info!(port, "console listening");
        Ok(Console {
            server,
            port,
            shutdown,
            jobs,
            jobs_stop_timeout: Duration::from_secs(settings.http.shutdown_timeout_secs),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// While a test holds this for writing, console jobs wait before each dead letter: a test
    /// sees a job running (and a second one refused) without racing it. Not for anything else.
    #[doc(hidden)]
    pub fn job_hold(&self) -> Arc<tokio::sync::RwLock<()>> {
        self.jobs.hold()
    }

    /// Serves until the shutdown token is cancelled (or `handle().stop(..)`); then a running job
    /// stops between two dead letters and records its outcome (waited for up to
    /// `http.shutdown_timeout_secs`).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = routes::serve_until_cancelled(self.server, &self.shutdown).await;
        // serve_until_cancelled cancels the token on its way out, which tells the jobs to stop.
        self.jobs.wait_finished(self.jobs_stop_timeout).await;
        served?;
        Ok(())
    }
}

/// Headers on every answer: only the console's own compiled-in script may run (no inline script,
/// so injected markup cannot run either) and it may connect only to the console (the live tail),
/// no framing (clickjacking of the action buttons), no caching of tenants' data, no sniffing a
/// payload into HTML.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cache-Control", "no-store"))
}

/// The JSON API's routes; the OpenAPI test holds the document to this list.
fn api_route_table() -> RouteTable {
    vec![
        (
            "/console/api/session",
            vec![
                (Method::GET, web::get().to(api::session)),
                (Method::POST, web::post().to(api::log_in)),
                (Method::DELETE, web::delete().to(api::log_out)),
            ],
        ),
        (
            "/console/api/overview",
            vec![(Method::GET, web::get().to(api::overview))],
        ),
        (
            "/console/api/consumers",
            vec![(Method::GET, web::get().to(consumers::consumers))],
        ),
        (
            "/console/api/dead-letters",
            vec![(Method::GET, web::get().to(api::list_dead_letters))],
        ),
        (
            "/console/api/dead-letters/export",
            vec![(Method::GET, web::get().to(api::export_dead_letters))],
        ),
        (
            "/console/api/dead-letters/replay",
            vec![(Method::POST, web::post().to(api::replay))],
        ),
        (
            "/console/api/dead-letters/purge",
            vec![(Method::POST, web::post().to(api::purge))],
        ),
        (
            "/console/api/dead-letters/{position}",
            vec![(Method::GET, web::get().to(api::dead_letter))],
        ),
        (
            "/console/api/tenants",
            vec![(Method::GET, web::get().to(tenants::list))],
        ),
        (
            "/console/api/tenants/{tenant}",
            vec![(Method::GET, web::get().to(tenants::one))],
        ),
        (
            "/console/api/tenants/{tenant}/tail",
            vec![(Method::GET, web::get().to(tenants::tail))],
        ),
        (
            "/console/api/retries",
            vec![(Method::GET, web::get().to(retries::retries))],
        ),
        (
            "/console/api/jobs",
            vec![(Method::GET, web::get().to(api::list_jobs))],
        ),
        (
            "/console/api/jobs/{id}",
            vec![(Method::GET, web::get().to(api::job))],
        ),
        (
            "/console/api/audit",
            vec![(Method::GET, web::get().to(api::audit))],
        ),
        (
            "/console/api/openapi.json",
            vec![(Method::GET, web::get().to(api::openapi))],
        ),
    ]
}

/// The HTML pages' routes.
fn page_route_table() -> RouteTable {
    vec![
        (
            "/console",
            vec![(Method::GET, web::get().to(pages::overview))],
        ),
        (
            "/console/login",
            vec![
                (Method::GET, web::get().to(pages::login_form)),
                (Method::POST, web::post().to(pages::log_in)),
            ],
        ),
        (
            "/console/logout",
            vec![(Method::POST, web::post().to(pages::log_out))],
        ),
        (
            "/console/dead-letters",
            vec![(Method::GET, web::get().to(pages::dead_letters))],
        ),
        (
            "/console/dead-letters/replay",
            vec![(Method::POST, web::post().to(pages::replay))],
        ),
        (
            "/console/dead-letters/purge",
            vec![(Method::POST, web::post().to(pages::purge))],
        ),
        (
            "/console/dead-letters/{position}",
            vec![(Method::GET, web::get().to(pages::dead_letter))],
        ),
        (
            "/console/tenants",
            vec![(Method::GET, web::get().to(pages::tenants))],
        ),
        (
            "/console/tenants/{tenant}",
            vec![(Method::GET, web::get().to(pages::tenant))],
        ),
        (
            "/console/retries",
            vec![(Method::GET, web::get().to(pages::retries))],
        ),
        (
            "/console/audit",
            vec![(Method::GET, web::get().to(pages::audit))],
        ),
        (
            "/console/jobs",
            vec![(Method::GET, web::get().to(pages::jobs))],
        ),
        (
            "/console/jobs/{id}",
            vec![(Method::GET, web::get().to(pages::job))],
        ),
        (
            "/console/assets/tail.js",
            vec![(Method::GET, web::get().to(pages::tail_script))],
        ),
        (
            "/console/assets/job.js",
            vec![(Method::GET, web::get().to(pages::job_script))],
        ),
        (
            "/console/assets/console.css",
            vec![(Method::GET, web::get().to(pages::stylesheet))],
        ),
    ]
}

/// The JSON API's routes as (path, methods), for the OpenAPI test.
pub fn registered_api_routes() -> Vec<(String, Vec<String>)> {
    routes::listed(api_route_table())
}

/// The console API's OpenAPI document.
pub fn openapi_document() -> serde_json::Value {
    openapi::document()
}

fn routes(config: &mut web::ServiceConfig) {
    let mut table = api_route_table();
    table.extend(page_route_table());
    routes::register(config, table, |allow| {
        HttpResponse::MethodNotAllowed()
            .insert_header(("Allow", allow.clone()))
            .json(error::ConsoleErrorBody {
                error: format!("method not allowed; allowed: {allow}"),
            })
    });
}
