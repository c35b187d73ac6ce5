//! The JSON API under `/console/api/`: what the pages show, for scripts. Authenticate with
//! `Authorization: Bearer <operator token>` (or the session cookie); POSTs carry `X-CSRF-Token`.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::actions::{self, ActionAnswer, ActionRequest};
use super::dead_letter_index::Selection;
use super::dead_letters::{
    self, DeadLetterDetails, DeadLetterPage, ExportFormat, PurgeSummary, RawFilter, ReplayReport,
};
use super::error::{ConsoleError, ConsoleErrorBody};
use super::jobs::{JobList, JobView};
use super::overview::Overview;
use super::ConsoleState;
use crate::kafka::read_heads;
use crate::ops::dlq::{self, parse_position, DeadLetterFilter, DeadLetterView};
use crate::store::AuditEntry;

/// Who is logged in, and the CSRF token their POSTs must carry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub operator: String,
    /// `viewer` or `admin`.
    pub role: String,
    /// Send as `X-CSRF-Token` on every POST.
    pub csrf_token: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The operator's console token.
    pub token: String,
}

/// `GET /console/api/dead-letters`' parameters: the filter, and the page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The tenant (the record key).
    pub tenant: Option<String>,
    /// The error class: poison, rejected, conflict or transient.
    pub class: Option<String>,
    /// Last failed at or after this RFC 3339 time.
    pub from: Option<String>,
    /// Last failed before this RFC 3339 time.
    pub until: Option<String>,
    /// Case-insensitive text in the error, the key, the idempotency key or the payload.
    pub text: Option<String>,
    /// `partition:offset` positions, comma-separated.
    pub position: Option<String>,
    /// Page size, 1 to console.page_max_limit (default console.page_default_limit).
    pub limit: Option<String>,
    /// The previous page's `nextCursor`.
    pub cursor: Option<String>,
    /// Also list purged dead letters (`true`).
    pub include_purged: Option<bool>,
}

impl ListQuery {
    pub fn raw_filter(&self) -> RawFilter {
        RawFilter {
            tenant: self.tenant.clone(),
            class: self.class.clone(),
            from: self.from.clone(),
            until: self.until.clone(),
            text: self.text.clone(),
            position: self.position.clone(),
        }
    }
}

/// `GET /console/api/dead-letters/export`'s parameters: the filter, and the format.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// The tenant (the record key).
    pub tenant: Option<String>,
    /// The error class: poison, rejected, conflict or transient.
    pub class: Option<String>,
    /// Last failed at or after this RFC 3339 time.
    pub from: Option<String>,
    /// Last failed before this RFC 3339 time.
    pub until: Option<String>,
    /// Case-insensitive text in the error, the key, the idempotency key or the payload.
    pub text: Option<String>,
    /// `partition:offset` positions, comma-separated.
    pub position: Option<String>,
    /// `jsonl` (the default) or `csv`.
    pub format: Option<String>,
}

impl ExportQuery {
    pub fn raw_filter(&self) -> RawFilter {
        RawFilter {
            tenant: self.tenant.clone(),
            class: self.class.clone(),
            from: self.from.clone(),
            until: self.until.clone(),
            text: self.text.clone(),
            position: self.position.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntrySchema>,
}

/// One audit entry (the schema of [`AuditEntry`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntrySchema {
    pub operator: String,
    pub action: String,
    pub at: String,
    pub filter: String,
    pub outcome: String,
}

/// The audit entries shown at once.
pub const AUDIT_PAGE: i64 = 200;

fn session_info(state: &ConsoleState, operator: &super::auth::Operator) -> SessionInfo {
    SessionInfo {
        operator: operator.name.to_string(),
        role: operator.role.to_string(),
        csrf_token: state.gate.csrf_token(operator),
    }
}

#[utoipa::path(
    get,
    path = "/console/api/session",
    tag = "session",
    operation_id = "getSession",
    description = "Who the credentials belong to, and the CSRF token their POSTs carry.",
    responses(
        (status = 200, description = "The operator.", body = SessionInfo),
        (status = 401, description = "No, malformed or unknown credentials (a tenant's API key among them).", body = ConsoleErrorBody),
        (status = 503, description = "Redis, where sessions are kept, did not answer (bearer tokens need no Redis).", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn session(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = state.gate.authenticate(&request).await?;
    Ok(HttpResponse::Ok().json(session_info(&state, &operator)))
}

#[utoipa::path(
    post,
    path = "/console/api/session",
    tag = "session",
    operation_id = "logIn",
    description = "Logs in with an operator token: sets the session cookie (HttpOnly, SameSite=Strict, \
        path /console) and answers the CSRF token of the session. Audited.",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in.", body = SessionInfo),
        (status = 400, description = "Not a JSON login request.", body = ConsoleErrorBody),
        (status = 401, description = "Unknown token.", body = ConsoleErrorBody),
        (status = 503, description = "Redis, where sessions are kept, did not answer (bearer tokens need no Redis).", body = ConsoleErrorBody),
    )
)]
pub async fn log_in(
    state: web::Data<ConsoleState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ConsoleError> {
    match state.gate.log_in(&body.token).await {
        Ok((operator, cookie, csrf_token)) => {
            actions::audit(&state, operator.name.as_str(), "login", "", "ok").await?;
            Ok(HttpResponse::Ok().cookie(cookie).json(SessionInfo {
                operator: operator.name.to_string(),
                role: operator.role.to_string(),
                csrf_token,
            }))
        }
        Err(error) => {
            actions::audit(&state, "-", "login", "", &login_refusal(&error)).await?;
            Err(error)
        }
    }
}

/// The audit log's outcome of a login that did not open a session.
pub(super) fn login_refusal(error: &ConsoleError) -> String {
    match error {
        ConsoleError::Unauthorized(_) => "refused: unknown token".to_owned(),
        other => format!("failed: {other}"),
    }
}

#[utoipa::path(
    delete,
    path = "/console/api/session",
    tag = "session",
    operation_id = "logOut",
    description = "Ends the session (needs X-CSRF-Token) and clears its cookie.",
    responses(
        (status = 204, description = "Logged out."),
        (status = 401, description = "Not logged in.", body = ConsoleErrorBody),
        (status = 403, description = "Missing or wrong CSRF token.", body = ConsoleErrorBody),
        (status = 503, description = "Redis, where sessions are kept, did not answer (bearer tokens need no Redis).", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn log_out(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = state.gate.authenticate(&request).await?;
    state.gate.check_csrf(&request, &operator, None)?;
    let cookie = state.gate.log_out(&operator).await?;
    Ok(HttpResponse::NoContent().cookie(cookie).finish())
}

#[utoipa::path(
    get,
    path = "/console/api/overview",
    tag = "overview",
    operation_id = "getOverview",
    description = "Per stage (main topic, each retry topic, the DLQ) the backlog: end offsets minus the \
        stage's consumer group's committed offsets, per partition (for the DLQ, the records it holds). \
        Sampled by the console every console.lag_sample_interval_secs, with console.lag_history_secs \
        of history. Rates per stage from consecutive samples: appendedPerSec (the end offsets' growth) \
        and processedPerSec (the committed offsets' growth; null for the DLQ); null at the first sample.",
    responses(
        (status = 200, description = "The latest sample and the history.", body = Overview),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn overview(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    Ok(HttpResponse::Ok().json(state.monitor.overview()))
}

/// What a caller needs of each dead letter it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detail {
    /// What listings, filters and counts use: the facts, the key and the payload. The index holds
    /// no more (the headers would double what it costs).
    Summary,
    /// The whole record, every header included (a record's page, an export): read from Kafka.
    Record,
}

/// The dead letters `filter` selects, newest first, within the console's read budget: from the
/// console's [`DeadLetterIndex`](super::dead_letter_index::DeadLetterIndex), with whole records read
/// by position when `detail` asks for them; or, for a DLQ larger than the index may hold (or whole
/// records of several dead letters in one partition), read from the topic.
pub(super) async fn selected_dead_letters(
    state: &ConsoleState,
    filter: &DeadLetterFilter,
    include_purged: bool,
    detail: Detail,
) -> Result<Vec<Arc<DeadLetterView>>, ConsoleError> {
    let timeout = state.read_timeout();
    let indexed = state
        .dead_letters
        .select(filter, timeout)
        .await
        .map_err(ConsoleError::Unavailable)?;
    match indexed {
        // Whole records are read by position when there is at most one per partition (a record's
        // page); more (an export) read the DLQ once, as the `dlq` verbs do.
        Selection::Found(views) if detail == Detail::Summary || one_per_partition(&views) => {
            let views = with_purges(state, views, include_purged).await?;
            match detail {
                Detail::Summary => Ok(views),
                Detail::Record => whole_records(state, views).await,
            }
        }
        _ => {
            let mut views: Vec<Arc<DeadLetterView>> = tokio::time::timeout(
                timeout,
                dlq::list_matching(&state.settings, &state.repository, filter, timeout),
            )
            .await
            .map_err(|_| over_budget(timeout, "reading the DLQ"))?
            .map_err(ConsoleError::Unavailable)?
            .into_iter()
            .filter(|view| include_purged || view.purged.is_none())
            .map(Arc::new)
            .collect();
            dead_letters::sort_newest_first(&mut views);
            Ok(views)
        }
    }
}

fn one_per_partition(views: &[Arc<DeadLetterView>]) -> bool {
    let mut partitions = std::collections::HashSet::new();
    views
        .iter()
        .all(|view| partitions.insert(view.record.partition))
}

fn over_budget(timeout: std::time::Duration, what: &str) -> ConsoleError {
    ConsoleError::Unavailable(anyhow::anyhow!(
        "{what} took longer than console.read_timeout_ms ({} ms)",
        timeout.as_millis()
    ))
}

/// Marks the purged ones among `views` with their purge (and drops them unless `include_purged`),
/// from the console's copy of the purge log.
async fn with_purges(
    state: &ConsoleState,
    views: Vec<Arc<DeadLetterView>>,
    include_purged: bool,
) -> Result<Vec<Arc<DeadLetterView>>, ConsoleError> {
    let purged = state
        .purges
        .current(
            &state.redis,
            &state.repository,
            &state.settings.kafka.dlq_topic,
            state.read_timeout(),
        )
        .await
        .map_err(ConsoleError::Unavailable)?;
    if purged.is_empty() {
        return Ok(views);
    }
    Ok(views
        .into_iter()
        .filter_map(
            |view| match purged.get(&(view.record.partition, view.record.offset)) {
                None => Some(view),
                Some(purge) => include_purged.then(|| {
                    let mut marked = DeadLetterView::clone(&view);
                    marked.purged = Some(purge.clone());
                    Arc::new(marked)
                }),
            },
        )
        .collect())
}

/// `views` again, each read whole from the DLQ by its position (in the same order, with the same
/// purge marks). One Kafka dropped since is left out.
async fn whole_records(
    state: &ConsoleState,
    views: Vec<Arc<DeadLetterView>>,
) -> Result<Vec<Arc<DeadLetterView>>, ConsoleError> {
    if views.is_empty() {
        return Ok(views);
    }
    let timeout = state.read_timeout();
    let positions: Vec<(i32, i64)> = views
        .iter()
        .map(|view| (view.record.partition, view.record.offset))
        .collect();
    let kafka = state.settings.kafka.clone();
    let topic = kafka.dlq_topic.clone();
    let records = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || read_heads(&kafka, &topic, &positions, timeout)),
    )
    .await
    .map_err(|_| over_budget(timeout, "reading dead letters by position"))?
    .map_err(|error| ConsoleError::Unexpected(error.into()))?
    .map_err(ConsoleError::Unavailable)?;
    let mut by_position: HashMap<(i32, i64), _> = records
        .into_iter()
        .map(|record| ((record.partition, record.offset), record))
        .collect();
    Ok(views
        .into_iter()
        .filter_map(|held| {
            let record = by_position.remove(&(held.record.partition, held.record.offset))?;
            let mut view = DeadLetterView::from_record(record);
            view.purged = held.purged.clone();
            Some(Arc::new(view))
        })
        .collect())
}

/// The page a query asks for (shared with the HTML page).
pub(super) async fn dead_letter_page(
    state: &ConsoleState,
    query: &ListQuery,
) -> Result<DeadLetterPage, ConsoleError> {
    let filter = query.raw_filter().parse()?;
    let console = &state.settings.console;
    let limit = dead_letters::parse_limit(
        query.limit.as_deref(),
        console.page_default_limit,
        console.page_max_limit,
    )?;
    let views = selected_dead_letters(
        state,
        &filter,
        query.include_purged.unwrap_or(false),
        Detail::Summary,
    )
    .await?;
    dead_letters::page(&views, query.cursor.as_deref(), limit)
}

#[utoipa::path(
    get,
    path = "/console/api/dead-letters",
    tag = "dead-letters",
    operation_id = "listDeadLetters",
    description = "Dead letters, newest first (by last failure), filtered, one page at a time. Purged \
        ones only with includePurged=true.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page.", body = DeadLetterPage),
        (status = 400, description = "A bad filter field, limit or cursor (the message names it), or an unknown parameter.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 503, description = "Kafka or MongoDB did not answer within console.read_timeout_ms.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn list_dead_letters(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    Ok(HttpResponse::Ok().json(dead_letter_page(&state, &query).await?))
}

/// One dead letter by position (shared with the HTML page).
pub(super) async fn find_dead_letter(
    state: &ConsoleState,
    raw_position: &str,
) -> Result<Arc<DeadLetterView>, ConsoleError> {
    let position = parse_position(raw_position)
        .map_err(|error| ConsoleError::BadRequest(format!("`position`: {error}")))?;
    let filter = DeadLetterFilter {
        positions: [position].into(),
        ..DeadLetterFilter::default()
    };
    selected_dead_letters(state, &filter, true, Detail::Record)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ConsoleError::NotFound(format!(
                "no dead letter at {raw_position} in {}",
                state.settings.kafka.dlq_topic
            ))
        })
}

#[utoipa::path(
    get,
    path = "/console/api/dead-letters/{position}",
    tag = "dead-letters",
    operation_id = "getDeadLetter",
    description = "One dead letter: its facts, headers and payload (pretty-printed when JSON).",
    params(("position" = String, Path, description = "`partition:offset` in the DLQ.")),
    responses(
        (status = 200, description = "The dead letter.", body = DeadLetterDetails),
        (status = 400, description = "Not a `partition:offset`.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 404, description = "No dead letter there.", body = ConsoleErrorBody),
        (status = 503, description = "Kafka or MongoDB did not answer within console.read_timeout_ms.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn dead_letter(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    let view = find_dead_letter(&state, &path).await?;
    Ok(HttpResponse::Ok().json(DeadLetterDetails::of(&view)))
}

#[utoipa::path(
    get,
    path = "/console/api/dead-letters/export",
    tag = "dead-letters",
    operation_id = "exportDeadLetters",
    description = "Every dead letter the filter selects (not paged), newest first: as JSON lines \
        (format=jsonl, the default; application/x-ndjson, one DeadLetterDetails per line) or as CSV \
        (format=csv; text/csv with a header row: position, tenant, idempotencyKey, errorClass, error, \
        attempts, firstFailureAt, lastFailureAt, source, purgedAt, topic, headers (a JSON array of \
        [name, value]), payload (the value as the DLQ holds it); RFC 4180 quoting). Audited.",
    params(ExportQuery),
    responses(
        (status = 200, description = "JSON lines, or CSV.", content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        )),
        (status = 400, description = "A bad filter field or format, or an unknown parameter.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 503, description = "Kafka or MongoDB did not answer within console.read_timeout_ms.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn export_dead_letters(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = state.gate.authenticate(&request).await?;
    let format = ExportFormat::parse(query.format.as_deref())?;
    let filter = query.raw_filter().parse()?;
    // One path for both formats: the same selection, only the writing differs.
    let views = selected_dead_letters(&state, &filter, false, Detail::Record).await?;
    let body = format.write(&views)?;
    actions::audit(
        &state,
        operator.name.as_str(),
        "export",
        &filter.describe(),
        &format!("ok: {} dead letter(s) as {}", views.len(), format.as_str()),
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"dead-letters.{}\"", format.as_str()),
        ))
        .body(body))
}

#[utoipa::path(
    post,
    path = "/console/api/dead-letters/replay",
    tag = "dead-letters",
    operation_id = "replayDeadLetters",
    description = "Replays the dead letters the filter selects (the code of `dlq replay`): each is \
        republished to the main topic under its idempotency key, so one already stored changes nothing. \
        With dryRun=true, says at once what would happen (how many, which skipped as already replayed \
        or purged). Without, starts a job: answers 202 with it (its total known) and a Location to \
        follow (GET /console/api/jobs/{id}) until it has succeeded, failed or stopped. One replay or \
        purge job runs at a time. Admins only; needs X-CSRF-Token; audited before it runs.",
    request_body = ActionRequest,
    responses(
        (status = 200, description = "The preview (dryRun=true): what would be replayed.", body = ReplayReport),
        (status = 202, description = "The job that replays them, running (or already ended).", body = JobView,
            headers(("Location" = String, description = "The job: /console/api/jobs/{id}."))),
        (status = 400, description = "Bad JSON, a bad filter field, no selection without `all`.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 403, description = "A viewer, or a missing or wrong CSRF token.", body = ConsoleErrorBody),
        (status = 409, description = "Another replay or purge job is running; the message names it.", body = ConsoleErrorBody),
        (status = 503, description = "Kafka or MongoDB (or the audit log) failed.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn replay(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    body: web::Json<ActionRequest>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = state.gate.authenticate(&request).await?;
    Ok(action_answer(
        actions::replay(&state, &request, &operator, &body).await?,
    ))
}

/// 200 with a preview's report, or 202 with the started job and where to follow it.
fn action_answer<T: Serialize>(answer: ActionAnswer<T>) -> HttpResponse {
    match answer {
        ActionAnswer::Previewed(report) => HttpResponse::Ok().json(report),
        ActionAnswer::Started(job) => HttpResponse::Accepted()
            .insert_header(("Location", format!("/console/api/jobs/{}", job.id)))
            .json(job),
    }
}

#[utoipa::path(
    post,
    path = "/console/api/dead-letters/purge",
    tag = "dead-letters",
    operation_id = "purgeDeadLetters",
    description = "Purges the dead letters the filter selects (the code of `dlq purge`): records them \
        in the purge log (hidden, never replayed) and drops each partition's all-purged prefix from \
        Kafka. With dryRun=true, says at once what would happen. Without, starts a job: answers 202 \
        with it (its total known) and a Location to follow (GET /console/api/jobs/{id}). One replay \
        or purge job runs at a time. Admins only; needs X-CSRF-Token; audited before it runs.",
    request_body = ActionRequest,
    responses(
        (status = 200, description = "The preview (dryRun=true): what would be purged and dropped.", body = PurgeSummary),
        (status = 202, description = "The job that purges them, running (or already ended).", body = JobView,
            headers(("Location" = String, description = "The job: /console/api/jobs/{id}."))),
        (status = 400, description = "Bad JSON, a bad filter field, no selection without `all`, a position without a dead letter.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 403, description = "A viewer, or a missing or wrong CSRF token.", body = ConsoleErrorBody),
        (status = 409, description = "Another replay or purge job is running; the message names it.", body = ConsoleErrorBody),
        (status = 503, description = "Kafka or MongoDB (or the audit log) failed.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn purge(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    body: web::Json<ActionRequest>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = state.gate.authenticate(&request).await?;
    Ok(action_answer(
        actions::purge(&state, &request, &operator, &body).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/console/api/jobs",
    tag = "jobs",
    operation_id = "listJobs",
    description = "The replay and purge jobs this console runs or ran, newest first: the running one \
        and the last 50 finished. Jobs live in the console's memory only (a restart forgets them); \
        the audit log keeps who did what and the outcome.",
    responses(
        (status = 200, description = "The jobs.", body = JobList),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn list_jobs(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    Ok(HttpResponse::Ok().json(JobList {
        jobs: state.jobs.list(),
    }))
}

#[utoipa::path(
    get,
    path = "/console/api/jobs/{id}",
    tag = "jobs",
    operation_id = "getJob",
    description = "One job: its state (running, succeeded, failed, stopped), `done` of `total` dead \
        letters, and at the end its outcome and report (or error). Poll it to follow a job.",
    params(("id" = String, Path, description = "The job's id (a UUID), from the 202 or its Location.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 400, description = "Not a job id.", body = ConsoleErrorBody),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 404, description = "No such job in this console (or forgotten: restarted, or older than the last 50).", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn job(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    Ok(HttpResponse::Ok().json(state.jobs.find(&path)?))
}

/// The newest audit entries (shared with the HTML page).
pub(super) async fn newest_audit_entries(
    state: &ConsoleState,
) -> Result<Vec<AuditEntry>, ConsoleError> {
    state
        .audit
        .newest(AUDIT_PAGE, state.read_timeout())
        .await
        .map_err(|error| ConsoleError::Unavailable(anyhow::anyhow!("the audit log: {error}")))
}

#[utoipa::path(
    get,
    path = "/console/api/audit",
    tag = "audit",
    operation_id = "getAudit",
    description = "The newest 200 audit entries, newest first: who did what, when, to which filter, \
        with what outcome (refusals included).",
    responses(
        (status = 200, description = "The entries.", body = AuditPage),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 503, description = "MongoDB did not answer within console.read_timeout_ms.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn audit(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    let entries = newest_audit_entries(&state).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "entries": entries })))
}

#[utoipa::path(
    get,
    path = "/console/api/openapi.json",
    tag = "documents",
    operation_id = "consoleOpenapi",
    description = "This document. No credentials needed.",
    responses((status = 200, description = "The OpenAPI 3.1 description of the console API.", content_type = "application/json", body = Object))
)]
pub async fn openapi(state: web::Data<ConsoleState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi_json.clone())
}
