//! The console's HTML pages, rendered on the server with maud: every value is escaped (a payload
//! holding markup shows as text), the stylesheet is compiled into the binary, and the only scripts
//! are a few compiled-in lines: the live tail's (`assets/tail.js`; it adds events as text) and the
//! job page's (`assets/job.js`; it polls the job and updates its progress). Actions are forms that
//! POST with the session's CSRF token; a real replay or purge redirects to its job's page.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use super::actions::{self, ActionAnswer, ActionRequest};
use super::api::{self, ListQuery};
use super::auth::Operator;
use super::chart::{lag_chart, rate_chart};
use super::consumers::{consumers_now, consumers_section, ConsumerSources};
use super::dead_letters::{
    ActionItem, DeadLetterDetails, DeadLetterSummary, PurgeSummary, RawFilter, ReplayReport,
};
use super::error::ConsoleError;
use super::jobs::{JobReport, JobState, JobView};
use super::retries::retries_now;
use super::tenants::{self, TailQuery};
use super::ConsoleState;

const STYLESHEET: &str = include_str!("assets/console.css");
const TAIL_SCRIPT: &str = include_str!("assets/tail.js");
const JOB_SCRIPT: &str = include_str!("assets/job.js");

/// A page's failure: to the login page when not logged in, else an HTML page with the message.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PageError(#[from] ConsoleError);

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self.0, ConsoleError::Unauthorized(_)) {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/login"))
                .finish();
        }
        // Logs and picks the status as the API does.
        let status = self.0.error_response().status();
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(
                layout(
                    "Error",
                    None,
                    html! {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                        p.error { (self.0) }
                        p { a href="/console" { "Back to the overview" } }
                    },
                )
                .into_string(),
            )
    }
}

fn page(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

fn layout(title: &str, session: Option<(&Operator, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · activity-pipeline console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    strong { "activity-pipeline console" }
                    @if let Some((operator, csrf)) = session {
                        nav {
                            a href="/console" { "Overview" }
                            a href="/console/dead-letters" { "Dead letters" }
                            a href="/console/tenants" { "Tenants" }
                            a href="/console/retries" { "Retries" }
                            a href="/console/jobs" { "Jobs" }
                            a href="/console/audit" { "Audit log" }
                        }
                        form.logout method="post" action="/console/logout" {
                            span.muted { (operator.name) " (" (operator.role) ")" }
                            input type="hidden" name="csrfToken" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(STYLESHEET)
}

pub async fn tail_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(TAIL_SCRIPT)
}

pub async fn job_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(JOB_SCRIPT)
}

pub async fn login_form(state: web::Data<ConsoleState>) -> HttpResponse {
    login_answer(&state, StatusCode::OK, None)
}

/// The login page with a fresh pre-login cookie and the CSRF token bound to it.
fn login_answer(state: &ConsoleState, status: StatusCode, error: Option<&str>) -> HttpResponse {
    let (cookie, csrf) = state.gate.login_challenge();
    HttpResponse::build(status)
        .cookie(cookie)
        .content_type("text/html; charset=utf-8")
        .body(login_page(&csrf, error).into_string())
}

fn login_page(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action="/console/login" {
                input type="hidden" name="csrfToken" value=(csrf);
                label { "Operator token " input type="password" name="token" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
            p.muted { "Operators' tokens are configured as [operators.<name>]; tenants' API keys do not open the console." }
        },
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginForm {
    token: String,
    /// Bound to the pre-login cookie the login page set.
    csrf_token: Option<String>,
}

pub async fn log_in(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, PageError> {
    // Before the token is even looked at: a forged post learns nothing and opens nothing.
    if let Err(error) = state
        .gate
        .check_login_csrf(&request, form.csrf_token.as_deref())
    {
        actions::audit(&state, "-", "login", "", &format!("refused: {error}")).await?;
        return Ok(login_answer(
            &state,
            StatusCode::FORBIDDEN,
            Some(&error.to_string()),
        ));
    }
    match state.gate.log_in(&form.token).await {
        Ok((operator, cookie, _)) => {
            actions::audit(&state, operator.name.as_str(), "login", "", "ok").await?;
            Ok(HttpResponse::SeeOther()
                .cookie(cookie)
                .cookie(state.gate.spent_login_cookie())
                .insert_header((header::LOCATION, "/console"))
                .finish())
        }
        Err(error) => {
            actions::audit(&state, "-", "login", "", &super::api::login_refusal(&error)).await?;
            Ok(login_answer(
                &state,
                error.status_code(),
                Some(&error.to_string()),
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsrfForm {
    csrf_token: Option<String>,
}

pub async fn log_out(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    state
        .gate
        .check_csrf(&request, &operator, form.csrf_token.as_deref())?;
    Ok(HttpResponse::SeeOther()
        .cookie(state.gate.log_out(&operator).await?)
        .insert_header((header::LOCATION, "/console/login"))
        .finish())
}

pub async fn overview(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let overview = state.monitor.overview();
    // Without Redis the consumers section says so; the backlog (from Kafka) still shows.
    let consumers = consumers_now(&ConsumerSources::of(&state, &overview)).await;
    Ok(page(layout(
        "Overview",
        Some((&operator, &csrf)),
        html! {
            h1 { "Overview" }
            p.muted {
                @match overview.sampled_at {
                    Some(at) => { "Sampled " (at.format("%Y-%m-%d %H:%M:%S UTC")) ", every " (overview.sample_interval_secs) " s." }
                    None => { "Not sampled yet." }
                }
            }
            table #stages {
                thead { tr { th { "Stage" } th { "Topic" } th { "Consumer group" } th.num { "Backlog" } th.num { "Appended/s" } th.num { "Processed/s" } th { "Per partition (lag)" } } }
                tbody {
                    @for stage in &overview.stages {
                        tr data-stage=(stage.stage) {
                            td { (stage.stage) }
                            td { code { (stage.topic) } }
                            td { code { (stage.group.as_deref().unwrap_or("—")) } }
                            td.num.backlog { (stage.backlog) }
                            td.num.appended { (rate(stage.appended_per_sec)) }
                            td.num.processed { (rate(stage.processed_per_sec)) }
                            td {
                                @if let Some(error) = &stage.error { span.error { (error) } }
                                @for partition in &stage.partitions {
                                    span.partition title=(format!("offsets {}..{}, committed {}", partition.low, partition.high, partition.committed.map_or("none".to_owned(), |c| c.to_string()))) {
                                        (partition.partition) ": " (partition.lag)
                                    }
                                    " "
                                }
                            }
                        }
                    }
                }
            }
            p.muted { "Rates are the end offsets' (appended) and the group's committed offsets' (processed) growth since the previous sample; — before the second sample, and for the DLQ, which no group consumes." }
            h2 { "Consumers" }
            (consumers_section(&consumers))
            h2 { "Backlog over time" }
            (lag_chart(&overview))
            h2 { "Records per second over time" }
            (rate_chart(&overview))
        },
    )))
}

/// A rate as the overview shows it: one decimal, or a dash when there is none.
fn rate(per_sec: Option<f64>) -> String {
    per_sec.map_or_else(|| "—".to_owned(), |rate| format!("{rate:.1}"))
}

fn filter_fields(filter: &RawFilter) -> Markup {
    html! {
        label { "Tenant " input name="tenant" value=(filter.tenant.as_deref().unwrap_or("")); }
        label { "Error class "
            select name="class" {
                option value="" { "any" }
                @for class in crate::failures::FailureClass::ALL {
                    option value=(class.as_str()) selected[filter.class.as_deref() == Some(class.as_str())] { (class.as_str()) }
                }
            }
        }
        label { "From " input name="from" placeholder="2026-12-02T10:00:00Z" value=(filter.from.as_deref().unwrap_or("")); }
        label { "Until " input name="until" placeholder="2026-12-02T11:00:00Z" value=(filter.until.as_deref().unwrap_or("")); }
        label { "Text " input name="text" value=(filter.text.as_deref().unwrap_or("")); }
    }
}

fn hidden_filter(filter: &RawFilter) -> Markup {
    html! {
        @for (name, value) in [("tenant", &filter.tenant), ("class", &filter.class), ("from", &filter.from), ("until", &filter.until), ("text", &filter.text), ("position", &filter.position)] {
            @if let Some(value) = value.as_deref().filter(|value| !value.trim().is_empty()) {
                input type="hidden" name=(name) value=(value);
            }
        }
    }
}

/// The replay and purge forms for `filter` (every dead letter it selects).
fn action_forms(filter: &RawFilter, csrf: &str, operator: &Operator) -> Markup {
    let everything = filter
        .parse()
        .map(|parsed| parsed.is_empty())
        .unwrap_or(false);
    html! {
        @if operator.role.may_act() {
            div.actions {
                form method="post" action="/console/dead-letters/replay" {
                    (hidden_filter(filter))
                    input type="hidden" name="csrfToken" value=(csrf);
                    @if everything { input type="hidden" name="all" value="true"; }
                    button type="submit" name="dryRun" value="true" { "Preview replay" }
                    button type="submit" name="dryRun" value="false" { "Replay" }
                }
                form method="post" action="/console/dead-letters/purge" {
                    (hidden_filter(filter))
                    input type="hidden" name="csrfToken" value=(csrf);
                    @if everything { input type="hidden" name="all" value="true"; }
                    input name="reason" placeholder="reason (kept in the purge log)";
                    button type="submit" name="dryRun" value="true" { "Preview purge" }
                    button.danger type="submit" name="dryRun" value="false" { "Purge" }
                }
            }
        } @else {
            p.muted { "Viewers look; replay and purge need the admin role." }
        }
    }
}

/// The export of `filter`'s selection in `format`.
fn export_link(filter: &RawFilter, format: &str) -> String {
    let mut query = filter.to_query();
    if !query.is_empty() {
        query.push('&');
    }
    format!("/console/api/dead-letters/export?{query}format={format}")
}

fn summary_row(dead: &DeadLetterSummary) -> Markup {
    html! {
        tr {
            td { a href=(format!("/console/dead-letters/{}", dead.position)) { (dead.position) } }
            td { (dead.tenant.as_deref().unwrap_or("—")) }
            td { code { (dead.idempotency_key.as_deref().unwrap_or("—")) } }
            td { (dead.error_class) }
            td.num { (dead.attempts) }
            td { (dead.last_failure_at) }
            td.error-text { (dead.error) }
        }
    }
}

pub async fn dead_letters(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let page_data = api::dead_letter_page(&state, &query).await?;
    let filter = query.raw_filter();
    let next = page_data.next_cursor.as_ref().map(|cursor| {
        let mut query = filter.to_query();
        if !query.is_empty() {
            query.push('&');
        }
        format!(
            "/console/dead-letters?{query}cursor={}",
            serde_urlencoded::to_string([("", cursor)])
                .unwrap_or_default()
                .trim_start_matches('=')
        )
    });
    Ok(page(layout(
        "Dead letters",
        Some((&operator, &csrf)),
        html! {
            h1 { "Dead letters" }
            form.filter method="get" action="/console/dead-letters" {
                (filter_fields(&filter))
                button type="submit" { "Filter" }
                a href="/console/dead-letters" { "Clear" }
            }
            p { (page_data.total) " dead letter(s) match, newest first. "
                a href=(format!("/console/api/dead-letters/export?{}", filter.to_query())) { "Export as JSON lines" }
                " · "
                a href=(export_link(&filter, "csv")) { "as CSV" } }
            (action_forms(&filter, &csrf, &operator))
            table #dead-letters {
                thead { tr { th { "Position" } th { "Tenant" } th { "Idempotency key" } th { "Class" } th.num { "Attempts" } th { "Last failure" } th { "Error" } } }
                tbody {
                    @for dead in &page_data.dead_letters { (summary_row(dead)) }
                }
            }
            @if let Some(next) = next { p { a rel="next" href=(next) { "Next page →" } } }
        },
    )))
}

pub async fn dead_letter(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let view = api::find_dead_letter(&state, &path).await?;
    let details = DeadLetterDetails::of(&view);
    let summary = &details.summary;
    let one = RawFilter {
        position: Some(summary.position.clone()),
        ..RawFilter::default()
    };
    Ok(page(layout(
        &format!("Dead letter {}", summary.position),
        Some((&operator, &csrf)),
        html! {
            h1 { "Dead letter " (summary.position) }
            dl.facts {
                dt { "Tenant" } dd { (summary.tenant.as_deref().unwrap_or("—")) }
                dt { "Idempotency key" } dd { code { (summary.idempotency_key.as_deref().unwrap_or("—")) } }
                dt { "Error class" } dd { (summary.error_class) }
                dt { "Error" } dd.error-text { (summary.error) }
                dt { "Attempts" } dd { (summary.attempts) }
                dt { "First failure" } dd { (summary.first_failure_at) }
                dt { "Last failure" } dd { (summary.last_failure_at) }
                dt { "Source" } dd { code { (summary.source) } }
                dt { "In" } dd { code { (details.topic) } }
                @if let Some(purged_at) = summary.purged_at {
                    dt { "Purged" } dd { (purged_at.to_rfc3339()) " (" (details.purge_selection.as_deref().unwrap_or("")) ")" @if let Some(reason) = &details.purge_reason { ": " (reason) } }
                }
            }
            (action_forms(&one, &csrf, &operator))
            h2 { "Headers" }
            table #headers {
                tbody {
                    @for header in &details.headers {
                        tr { th { code { (header.name) } } td { code { (header.value.as_deref().unwrap_or("(null)")) } } }
                    }
                }
            }
            h2 { "Payload" @if !details.payload_is_json { " (not JSON)" } }
            pre #payload { (details.payload.as_deref().unwrap_or("(none)")) }
        },
    )))
}

fn action_result(title: &str, counts: Markup, items: &[ActionItem]) -> Markup {
    html! {
        h1 { (title) }
        (counts)
        (outcomes_table(items))
        p { a href="/console/dead-letters" { "Back to the dead letters" } }
    }
}

fn outcomes_table(items: &[ActionItem]) -> Markup {
    html! {
        table #outcomes {
            thead { tr { th { "Position" } th { "Tenant" } th { "Idempotency key" } th { "Outcome" } } }
            tbody {
                @for item in items {
                    tr {
                        td { a href=(format!("/console/dead-letters/{}", item.position)) { (item.position) } }
                        td { (item.tenant.as_deref().unwrap_or("—")) }
                        td { code { (item.idempotency_key.as_deref().unwrap_or("—")) } }
                        td { (item.outcome) }
                    }
                }
            }
        }
    }
}

/// A replay's counts, for its preview and its job's page.
fn replay_counts(report: &ReplayReport) -> Markup {
    html! {
        p.counts {
            (report.matched) " selected: "
            @if report.dry_run { (report.would_replay) " would be replayed" } @else { (report.replayed) " replayed" }
            ", " (report.skipped_already_replayed) " skipped as already replayed, "
            (report.skipped_purged) " skipped as purged."
        }
    }
}

/// A purge's counts, for its preview and its job's page.
fn purge_counts(summary: &PurgeSummary) -> Markup {
    html! {
        p.counts {
            (summary.matched) " selected: "
            @if summary.dry_run { (summary.would_purge) " would be purged" } @else { (summary.purged) " purged" }
            ", " (summary.skipped_already_purged) " already purged; "
            (summary.dropped.len()) " partition prefix(es) dropped from Kafka."
        }
    }
}

/// Where a started job's page is.
fn to_job_page(job: &JobView) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/console/jobs/{}", job.id)))
        .finish()
}

pub async fn replay(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    form: web::Form<ActionRequest>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let report = match actions::replay(&state, &request, &operator, &form).await? {
        ActionAnswer::Previewed(report) => report,
        ActionAnswer::Started(job) => return Ok(to_job_page(&job)),
    };
    let title = "Replay preview";
    let counts = html! {
        (replay_counts(&report))
        @if report.would_replay > 0 {
            form method="post" action="/console/dead-letters/replay" {
                (hidden_filter(&form.raw_filter()))
                input type="hidden" name="csrfToken" value=(csrf);
                @if form.all { input type="hidden" name="all" value="true"; }
                @if form.again { input type="hidden" name="again" value="true"; }
                button type="submit" name="dryRun" value="false" { "Replay these " (report.would_replay) }
            }
        }
    };
    Ok(page(layout(
        title,
        Some((&operator, &csrf)),
        action_result(title, counts, &report.items),
    )))
}

pub async fn purge(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    form: web::Form<ActionRequest>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let summary = match actions::purge(&state, &request, &operator, &form).await? {
        ActionAnswer::Previewed(summary) => summary,
        ActionAnswer::Started(job) => return Ok(to_job_page(&job)),
    };
    let title = "Purge preview";
    let counts = html! {
        (purge_counts(&summary))
        @if summary.would_purge > 0 {
            form method="post" action="/console/dead-letters/purge" {
                (hidden_filter(&form.raw_filter()))
                input type="hidden" name="csrfToken" value=(csrf);
                @if form.all { input type="hidden" name="all" value="true"; }
                @if let Some(reason) = &form.reason { input type="hidden" name="reason" value=(reason); }
                button.danger type="submit" name="dryRun" value="false" { "Purge these " (summary.would_purge) }
            }
        }
    };
    Ok(page(layout(
        title,
        Some((&operator, &csrf)),
        action_result(title, counts, &summary.items),
    )))
}

fn done_of_total(job: &JobView) -> String {
    match job.total {
        Some(total) => format!("{} / {total}", job.done),
        None => format!("{} / ?", job.done),
    }
}

fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub async fn jobs(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let jobs = state.jobs.list();
    Ok(page(layout(
        "Jobs",
        Some((&operator, &csrf)),
        html! {
            h1 { "Jobs" }
            p.muted { "Replays and purges run as jobs, one at a time; newest first. This console keeps them in memory only (a restart forgets them, and only the last " (super::jobs::FINISHED_JOBS_KEPT) " finished are kept): the " a href="/console/audit" { "audit log" } " keeps who did what and the outcome." }
            @if jobs.is_empty() {
                p { "No job since this console started." }
            } @else {
                table #jobs {
                    thead { tr { th { "Started" } th { "Action" } th { "Selection" } th { "Operator" } th { "State" } th.num { "Done / total" } th { "Finished" } } }
                    tbody {
                        @for job in &jobs {
                            tr {
                                td { a href=(format!("/console/jobs/{}", job.id)) { (time(job.started_at)) } }
                                td { (job.action) }
                                td { code { (job.filter) } }
                                td { (job.operator) }
                                td class=(format!("job-{}", job.state.as_str())) { (job.state.as_str()) }
                                td.num { (done_of_total(job)) }
                                td { (job.finished_at.map(time).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        },
    )))
}

pub async fn job(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let job = state.jobs.find(&path)?;
    let running = job.state == JobState::Running;
    let title = format!(
        "{} job",
        if job.action == "purge" {
            "Purge"
        } else {
            "Replay"
        }
    );
    Ok(page(layout(
        &title,
        Some((&operator, &csrf)),
        html! {
            h1 { (title) }
            dl.facts #job data-source=(format!("/console/api/jobs/{}", job.id)) {
                dt { "State" } dd #job-state class=(format!("job-{}", job.state.as_str())) { (job.state.as_str()) }
                dt { "Selection" } dd { code { (job.filter) } }
                dt { "Operator" } dd { (job.operator) }
                dt { "Started" } dd { (time(job.started_at)) }
                dt { "Finished" } dd #job-finished { (job.finished_at.map(time).unwrap_or_else(|| "—".to_owned())) }
                dt { "Progress" } dd {
                    progress #job-progress max=(job.total.unwrap_or(0).max(1)) value=(if job.total == Some(0) { 1 } else { job.done }) {}
                    " " span #job-count { (done_of_total(&job)) } " dead letter(s)"
                }
            }
            @if let Some(outcome) = &job.outcome { p.muted #job-outcome { "In the audit log: " (outcome) } }
            @if let Some(error) = &job.error { p.error { (error) } }
            @match &job.report {
                Some(JobReport::Replay(report)) => { (replay_counts(report)) (outcomes_table(&report.items)) }
                Some(JobReport::Purge(summary)) => { (purge_counts(summary)) (outcomes_table(&summary.items)) }
                None => {}
            }
            @if running {
                // Without script, the reload link (and the browser's own refresh) follow it.
                p #job-follow { "Running: this page follows it. " a href=(format!("/console/jobs/{}", job.id)) { "Reload" } }
                noscript { meta http-equiv="refresh" content="2"; }
                script src="/console/assets/job.js" {}
            }
            p { a href="/console/jobs" { "All jobs" } " · " a href="/console/dead-letters" { "Back to the dead letters" } }
        },
    )))
}

pub async fn audit(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let entries = api::newest_audit_entries(&state).await?;
    Ok(page(layout(
        "Audit log",
        Some((&operator, &csrf)),
        html! {
            h1 { "Audit log" }
            p.muted { "The newest " (api::AUDIT_PAGE) " entries, newest first." }
            table #audit {
                thead { tr { th { "When" } th { "Operator" } th { "Action" } th { "Filter" } th { "Outcome" } } }
                tbody {
                    @for entry in &entries {
                        tr {
                            td { (entry.at.format("%Y-%m-%d %H:%M:%S UTC")) }
                            td { (entry.operator) }
                            td { (entry.action) }
                            td { code { (entry.filter) } }
                            td { (entry.outcome) }
                        }
                    }
                }
            }
        },
    )))
}

/// What each number of the tenants' pages is, and where it comes from.
fn counts_legend() -> Markup {
    html! {
        h2 { "Where each number comes from" }
        dl.facts.legend {
            dt { "Accepted" } dd { "Activities the API acknowledged (Kafka took them), every API instance together: each adds its counts to a Redis hash every second, so the last second may be missing, and a crashed instance's last second is lost." }
            dt { "Duplicate" } dd { "Activities the API answered " code { "duplicate: true" } " (already accepted under that key): nothing produced. Same source as Accepted." }
            dt { "Rate-limited" } dd { "Activities the API refused with 429 (the tenant's rate limit). Same source as Accepted." }
            dt { "Stored" } dd { "Activities in MongoDB, one document per idempotency key: the source of truth." }
            dt { "Counted" } dd { "The Redis analytics counters summed (what GET /analytics answers); the consumer counts each key once as it stores it, so it equals Stored unless Redis lost data (then run " code { "analytics rebuild" } ")." }
            dt { "Dead-lettered" } dd { "The tenant's records now in the DLQ (their Kafka key), purged ones not included." }

        }
    }
}

pub async fn tenants(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let counts = tenants::counts_of(&state, &tenants::configured_tenants(&state)).await?;
    Ok(page(layout(
        "Tenants",
        Some((&operator, &csrf)),
        html! {
            h1 { "Tenants" }
            table #tenants {
                thead { tr { th { "Tenant" } th.num { "Accepted" } th.num { "Duplicate" } th.num { "Rate-limited" } th.num { "Stored" } th.num { "Counted" } th.num { "Dead-lettered" } th { "Activity types" } } }
                tbody {
                    @for tenant in &counts {
                        tr data-tenant=(tenant.tenant) {
                            td { a href=(format!("/console/tenants/{}", tenant.tenant)) { (tenant.tenant) } }
                            td.num.accepted { (tenant.accepted) }
                            td.num.duplicate { (tenant.duplicate) }
                            td.num.rate-limited { (tenant.rate_limited) }
                            td.num.stored { (tenant.stored) }
                            td.num.counted { (tenant.counted) }
                            td.num.dead-lettered { a href=(format!("/console/dead-letters?tenant={}", tenant.tenant)) { (tenant.dead_lettered) } }
                            td { (tenant.types.len()) }
                        }
                    }
                }
            }
            (counts_legend())
        },
    )))
}

pub async fn tenant(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
    path: web::Path<String>,
    query: web::Query<TailQuery>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let tenant = tenants::configured_tenant(&state, &path)?;
    // Checked here too, so a bad filter is a 400 page rather than a tail that never connects.
    tenants::parse_types(query.activity_type.as_deref())?;
    let wanted = query.activity_type.as_deref().map(str::trim).unwrap_or("");
    let counts = tenants::counts_of(&state, std::slice::from_ref(&tenant))
        .await?
        .pop()
        .ok_or_else(|| ConsoleError::Unexpected(anyhow::anyhow!("no counts for {tenant}")))?;
    let mut source = format!("/console/api/tenants/{tenant}/tail");
    if !wanted.is_empty() {
        source.push('?');
        source.push_str(&serde_urlencoded::to_string([("type", wanted)]).unwrap_or_default());
    }
    Ok(page(layout(
        &format!("Tenant {tenant}"),
        Some((&operator, &csrf)),
        html! {
            h1 { "Tenant " (tenant) }
            dl.facts #counts {
                dt { "Accepted" } dd.accepted { (counts.accepted) }
                dt { "Duplicate" } dd.duplicate { (counts.duplicate) }
                dt { "Rate-limited" } dd.rate-limited { (counts.rate_limited) }
                dt { "Stored" } dd.stored { (counts.stored) }
                dt { "Counted" } dd.counted { (counts.counted) }
                dt { "Dead-lettered" } dd.dead-lettered { a href=(format!("/console/dead-letters?tenant={tenant}")) { (counts.dead_lettered) } }
            }
            h2 { "Activity types" }
            table #types {
                thead { tr { th { "Type" } th.num { "Stored" } th.num { "Counted" } } }
                tbody {
                    @if counts.types.is_empty() {
                        tr { td.muted colspan="3" { "No activity stored or counted yet." } }
                    }
                    @for count in &counts.types {
                        tr { td { code { (count.activity_type) } } td.num { (count.stored) } td.num { (count.counted) } }
                    }
                }
            }
            (counts_legend())
            h2 { "Live tail" }
            form.filter method="get" action=(format!("/console/tenants/{tenant}")) {
                label { "Types " input name="type" placeholder="login,comment.created" value=(wanted); }
                button type="submit" { "Filter" }
            }
            p #tail-status.muted { "The live tail needs JavaScript (EventSource); "
                a href=(source) { "the raw event stream" } " works without it." }
            ul #tail data-source=(source) {}
            script src="/console/assets/tail.js" defer {}
        },
    )))
}

/// "in 1.5 s" or "overdue by 3.0 s".
fn due_in(milliseconds: i64) -> String {
    let seconds = milliseconds.unsigned_abs() as f64 / 1000.0;
    if milliseconds >= 0 {
        format!("in {seconds:.1} s")
    } else {
        format!("overdue by {seconds:.1} s")
    }
}

pub async fn retries(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, PageError> {
    let operator = state.gate.authenticate(&request).await?;
    let csrf = state.gate.csrf_token(&operator);
    let view = retries_now(&state).await;
    Ok(page(layout(
        "Retries",
        Some((&operator, &csrf)),
        html! {
            h1 { "Retries" }
            p.muted {
                "Waiting: each partition's end offset minus the step's consumer group's committed offset"
                @match view.sampled_at {
                    Some(at) => { " (sampled " (at.format("%H:%M:%S UTC")) ")" }
                    None => { " (not sampled yet)" }
                }
                ". Head: the record the stage reads next, read at " (view.read_at.format("%H:%M:%S UTC"))
                "; the stage holds it until its " code { "retry-due-at" } " header (never longer than the step's delay after reading it)."
            }
            @for step in &view.steps {
                section.retry-step data-step=(step.step) {
                    h2 { "Step " (step.step) ": " code { (step.topic) } }
                    p { "Group " code { (step.group) } ", delay " (step.delay_ms) " ms, "
                        strong.waiting { (step.waiting) } " waiting." }
                    @if let Some(error) = &step.error { p.error { (error) } }
                    @if step.waiting > 0 {
                        table.retry-partitions {
                            thead { tr { th.num { "Partition" } th.num { "End" } th.num { "Committed" } th.num { "Waiting" } th.num { "Head offset" } th { "Tenant" } th { "Idempotency key" } th { "Due at" } th { "Due" } th { "Last error" } } }
                            tbody {
                                @for partition in step.partitions.iter().filter(|partition| partition.waiting > 0) {
                                    tr {
                                        td.num { (partition.partition) }
                                        td.num { (partition.end_offset) }
                                        td.num { (partition.committed.map_or("none".to_owned(), |c| c.to_string())) }
                                        td.num { (partition.waiting) }
                                        @if let Some(head) = &partition.head {
                                            td.num { (head.offset) }
                                            td { (head.tenant.as_deref().unwrap_or("—")) }
                                            td { code { (head.idempotency_key.as_deref().unwrap_or("—")) } }
                                            td { (head.due_at.as_deref().unwrap_or("— (due now)")) }
                                            td.due { (head.due_in_ms.map_or("now".to_owned(), due_in)) }
                                            td.error-text { (head.error.as_deref().unwrap_or("")) }
                                        } @else {
                                            td.muted colspan="6" { "not read" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )))
}
