//! Operations endpoints: liveness, readiness, metrics, and the published documents (the activity
//! schema and the OpenAPI description).

use std::collections::BTreeMap;
use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::ApiState;

/// `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub success: bool,
    /// `ready` or `not ready`.
    pub status: String,
    /// With 503: names the dependencies that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `kafka`, `redis`, `mongodb` -> `ok` or what went wrong.
    pub checks: BTreeMap<String, String>,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    description = "Liveness: answers while the process serves. Checks no dependency.",
    responses((status = 200, description = "Alive.", body = Health))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".to_owned(),
    })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    description = "Readiness: Kafka answers a metadata request and the topic exists, Redis answers PING, \
        MongoDB answers ping, each within readiness.timeout_ms.",
    responses(
        (status = 200, description = "Every dependency answered.", body = Readiness),
        (status = 503, description = "Some dependency did not; `error` names them, `checks` says why.", body = Readiness),
    )
)]
pub async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    let timeout = state.readiness_timeout;
    let publisher = state.publisher.clone();
    let kafka = async move {
        let topic = publisher.topic().to_owned();
        let fetched = tokio::task::spawn_blocking(move || publisher.fetch_metadata(timeout)).await;
        match fetched {
            Ok(Ok(summary)) if summary.brokers == 0 => Err("no broker answered".to_owned()),
            Ok(Ok(summary)) if summary.topic_partitions.is_none() => {
                Err(format!("topic {topic} does not exist"))
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("{error:#}")),
            Err(error) => Err(format!("the metadata request failed: {error}")),
        }
    };
    let redis = async {
        state
            .redis
            .ping()
            .await
            .map_err(|outage| outage.to_string())
    };
    let mongo = async {
        state
            .repository
            .ping()
            .await
            .map_err(|outage| outage.to_string())
    };
    let (kafka, redis, mongo) = futures::join!(
        within(timeout, kafka),
        within(timeout, redis),
        within(timeout, mongo)
    );
    let mut checks = BTreeMap::new();
    let mut failing = Vec::new();
    for (name, result) in [("kafka", kafka), ("redis", redis), ("mongodb", mongo)] {
        match result {
            Ok(()) => {
                checks.insert(name.to_owned(), "ok".to_owned());
            }
            Err(why) => {
                failing.push(name);
                checks.insert(name.to_owned(), why);
            }
        }
    }
    let ready = failing.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(Readiness {
        success: ready,
        status: if ready { "ready" } else { "not ready" }.to_owned(),
        error: (!ready).then(|| format!("not ready: {}", failing.join(", "))),
        checks,
    })
}

async fn within(
    timeout: std::time::Duration,
    check: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    description = "Prometheus text exposition format (version 0.0.4) of this instance's metrics.",
    responses((status = 200, description = "The metrics.", content_type = "text/plain; version=0.0.4", body = String))
)]
pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let depth = i64::from(state.publisher.in_flight());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(depth))
}

#[utoipa::path(
    get,
    path = "/schemas/activity.v1.json",
    tag = "operations",
    operation_id = "activitySchema",
    description = "The JSON Schema (draft 2020-12) every activity is validated against, with this \
        deployment's configured limits.",
    responses((status = 200, description = "The schema.", content_type = "application/schema+json", body = Object))
)]
pub async fn activity_schema(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/schema+json")
        .body(state.validator.schema_json().to_owned())
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    description = "This document.",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", content_type = "application/json", body = Object))
)]
pub async fn openapi(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi_json.clone())
}
