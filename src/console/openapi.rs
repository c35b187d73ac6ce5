//! The console API's OpenAPI 3.1 document, from the handlers' `#[utoipa::path]` annotations. A test
//! holds it to the registered routes ([`super::registered_api_routes`]).

use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{actions, api, consumers, dead_letters, error, jobs, overview, retries, tenants};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "activity-pipeline console API",
        description = "The operators' console: stage backlogs and lag history, dead letters and their \
            replay and purge. Authenticate with `Authorization: Bearer <operator token>` (tenants' API \
            keys are refused) or the session cookie from `POST /console/api/session`. Every POST (and \
            DELETE) carries `X-CSRF-Token` (from `GET /console/api/session`); replay and purge need the \
            `admin` role, are written to the audit log before they run, and (unless dry runs) run as jobs \
            followed under /console/api/jobs. Errors are `{\"error\": \"...\"}`."
    ),
    paths(
        api::session,
        api::log_in,
        api::log_out,
        api::overview,
        consumers::consumers,
        api::list_dead_letters,
        api::dead_letter,
        api::export_dead_letters,
        api::replay,
        api::purge,
        tenants::list,
        tenants::one,
        tenants::tail,
        retries::retries,
        api::list_jobs,
        api::job,
        api::audit,
        api::openapi,
    ),
    components(schemas(
        error::ConsoleErrorBody,
        api::SessionInfo,
        api::LoginRequest,
        api::AuditPage,
        api::AuditEntrySchema,
        overview::Overview,
        overview::StageBacklog,
        overview::PartitionLag,
        overview::LagPoint,
        consumers::ConsumersView,
        consumers::StageConsumers,
        consumers::InstanceView,
        dead_letters::DeadLetterPage,
        dead_letters::DeadLetterSummary,
        dead_letters::DeadLetterDetails,
        dead_letters::HeaderView,
        dead_letters::ReplayReport,
        dead_letters::PurgeSummary,
        dead_letters::DroppedPrefix,
        dead_letters::ActionItem,
        actions::ActionRequest,
        jobs::JobView,
        jobs::JobList,
        jobs::JobState,
        jobs::JobReport,
        tenants::TenantList,
        tenants::TenantCounts,
        tenants::TypeCount,
        retries::RetriesView,
        retries::RetryStep,
        retries::RetryPartition,
        retries::RetryHead,
    )),
    modifiers(&OperatorAuth),
    tags(
        (name = "session", description = "Logging in and out."),
        (name = "overview", description = "What each stage has waiting."),
        (name = "dead-letters", description = "The DLQ: listing, reading, exporting, replaying, purging."),
        (name = "tenants", description = "Per tenant: the stores' counts and a live tail of its events."),
        (name = "retries", description = "What waits in each retry topic, and when it is due."),
        (name = "jobs", description = "Replays and purges running as jobs: their progress and reports."),
        (name = "audit", description = "What operators did."),
        (name = "documents", description = "This document."),
    )
)]
struct ConsoleApiDoc;

struct OperatorAuth;

impl Modify for OperatorAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An operator's console token."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "The session cookie set by POST /console/api/session or the login page.",
            ))),
        );
    }
}

pub fn document() -> Value {
    serde_json::to_value(ConsoleApiDoc::openapi()).expect("the OpenAPI document serializes")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_document_describes_exactly_the_registered_api_routes() {
        let document = document();
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, operations)| {
                operations
                    .as_object()
                    .expect("operations")
                    .keys()
                    .map(|method| (path.clone(), method.to_uppercase()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let registered: BTreeSet<(String, String)> = super::super::registered_api_routes()
            .into_iter()
            .flat_map(|(path, methods)| {
                methods
                    .into_iter()
                    .map(move |method| (path.clone(), method))
            })
            .collect();
        assert_eq!(documented, registered);
    }
}
