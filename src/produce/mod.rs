//! The `produce` role: the HTTP API. It validates activities, authenticates the tenant, publishes to
//! Kafka and answers 202 only once the broker acknowledged.
//!
//! Architecture invariant: no handler answers 202 for a record whose delivery report it has not seen.

mod activities;
mod auth;
mod error;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpResponse, HttpServer};

use crate::config::Settings;
use crate::domain::{ActivityValidator, TenantDirectory, ACTIVITY_SCHEMA_JSON};
use crate::kafka::ActivityPublisher;

pub use auth::TENANT_HEADER;
pub use error::ApiError;

/// What every handler shares.
pub(crate) struct ApiState {
    pub publisher: ActivityPublisher,
    pub validator: ActivityValidator,
    pub tenants: TenantDirectory,
    /// Bodies larger than this are refused (413) before they are read in full.
    pub max_body_bytes: usize,
}

/// The HTTP server, bound and ready to run. Binding happens in `build` so a caller (a test) can bind
/// port 0 and learn the port before running.
pub struct Application {
    server: Server,
    port: u16,
    publisher: ActivityPublisher,
    shutdown_timeout: Duration,
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.http.listen).map_err(|error| {
            anyhow::anyhow!("binding http.listen = {}: {error}", settings.http.listen)
        })?;
        let port = listener.local_addr()?.port();
        let publisher = ActivityPublisher::new(&settings.kafka)?;
        let state = web::Data::from(Arc::new(ApiState {
            publisher: publisher.clone(),
            validator: ActivityValidator::new(
                settings.limits.metadata_max_bytes,
                settings.limits.metadata_max_depth,
            ),
            tenants: TenantDirectory::new(settings.tenant_credentials()?),
            max_body_bytes: settings.http.max_body_bytes,
        }));
        if state.tenants.is_empty() {
            tracing::warn!("no tenants are configured: every request will be refused with 401");
        }
        let shutdown_timeout = Duration::from_secs(settings.http.shutdown_timeout_secs);
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(routes)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::NotFound)
                }))
        })
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
            shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully (tests; signals are handled by actix itself).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop(true)`): then stops accepting, lets in-flight
    /// requests finish and flushes the producer.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        tracing::info!("HTTP server stopped; flushing the producer");
        let publisher = self.publisher;
        let timeout = self.shutdown_timeout;
        tokio::task::spawn_blocking(move || publisher.flush(timeout)).await?;
        Ok(())
    }
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/activities")
                .route(web::post().to(activities::create))
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "POST" })
                })),
        )
        .service(
            web::resource("/healthz")
                .route(
                    web::get().to(|| async {
                        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
                    }),
                )
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "GET" })
                })),
        )
        .service(
            web::resource("/schemas/activity.v1.json")
                .route(web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("application/schema+json")
                        .body(ACTIVITY_SCHEMA_JSON)
                }))
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "GET" })
                })),
        );
}
