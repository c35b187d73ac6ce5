//! The console's actions, shared by the JSON API and the pages: each checks the CSRF token and the
//! role, writes the audit entry before it runs (so an action the audit log cannot record does not
//! run), runs the `dlq` verbs' code, and records the outcome. Previews (dry runs) answer in the
//! request; a real replay or purge runs as a job (see `jobs`) and the request answers the job.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix_web::{web, HttpRequest};
use chrono::Utc;
use futures::FutureExt;
use serde::Deserialize;

use super::auth::{require_admin, Operator};
use super::dead_letters::{PurgeSummary, RawFilter, ReplayReport};
use super::error::ConsoleError;
use super::jobs::{JobReport, JobState, JobView};
use super::ConsoleState;
use crate::ops::dlq::{self, DeadLetterFilter};
use crate::ops::dlq_purge::{self, PurgeSelection, UnknownPositions};
use crate::ops::progress::{Progress, Stopped};
use crate::store::AuditEntry;

/// What an action answers: a preview's report at once, or the job that does the work.
#[derive(Debug)]
pub enum ActionAnswer<T> {
    Previewed(T),
    /// Boxed: a job's view is several times the size of a report (clippy's large_enum_variant).
    Started(Box<JobView>),
}

/// The longest purge reason kept.
const REASON_MAX_CHARS: usize = 500;

/// A replay or purge request: the filter, and what to do with what it selects. The same fields
/// come as JSON (the API) or as a form (the pages).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionRequest {
    pub tenant: Option<String>,
    pub class: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub text: Option<String>,
    /// `partition:offset` positions, comma-separated.
    pub position: Option<String>,
    /// Required: true previews (changes nothing), false acts.
    pub dry_run: bool,
    /// Replay: also dead letters replayed before.
    #[serde(default)]
    pub again: bool,
    /// Every dead letter; required when no filter field is given, refused with one (so
    /// "everything" is never the result of a forgotten field).
    #[serde(default)]
    pub all: bool,
    /// Purge: why, kept in the purge log.
    pub reason: Option<String>,
    /// Forms carry the CSRF token here; scripts send the X-CSRF-Token header instead.
    pub csrf_token: Option<String>,
}

impl ActionRequest {
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

    /// The filter, with the "everything needs `all`" rule applied.
    fn selection(&self) -> Result<DeadLetterFilter, ConsoleError> {
        let filter = self.raw_filter().parse()?;
        match (self.all, filter.is_empty()) {
            (false, true) => Err(ConsoleError::BadRequest(
                "choose dead letters: a filter field (tenant, class, from, until, text, \
                 position), or `all: true` for every dead letter"
                    .to_owned(),
            )),
            (true, false) => Err(ConsoleError::BadRequest(
                "`all` cannot be combined with filter fields".to_owned(),
            )),
            _ => Ok(filter),
        }
    }
}

/// Writes one finished entry (a login, a refusal, an export).
pub async fn audit(
    state: &ConsoleState,
    operator: &str,
    action: &str,
    filter: &str,
    outcome: &str,
) -> Result<(), ConsoleError> {
    state
        .audit
        .record(
            &AuditEntry {
                operator: operator.to_owned(),
                action: action.to_owned(),
                at: Utc::now(),
                filter: filter.to_owned(),
                outcome: outcome.to_owned(),
            },
            state.read_timeout(),
        )
        .await
        .map(|_| ())
        .map_err(|error| ConsoleError::Unavailable(anyhow::anyhow!("the audit log: {error}")))
}

/// Checks CSRF and role (auditing a refusal) and parses the filter.
async fn admit(
    state: &ConsoleState,
    request: &HttpRequest,
    operator: &Operator,
    action: &str,
    body: &ActionRequest,
) -> Result<DeadLetterFilter, ConsoleError> {
    let refused = state
        .gate
        .check_csrf(request, operator, body.csrf_token.as_deref())
        .and_then(|()| require_admin(operator))
        .err();
    if let Some(error) = refused {
        audit(
            state,
            operator.name.as_str(),
            action,
            &body.raw_filter().to_query(),
            &format!("refused: {error}"),
        )
        .await?;
        return Err(error);
    }
    body.selection()
}

/// Writes an action's audit entry with the outcome `started`, before it runs: its id, or 503 (and
/// the action does not run).
async fn audit_start(
    state: &ConsoleState,
    operator: &Operator,
    action: &str,
    filter: &str,
) -> Result<String, ConsoleError> {
    state
        .audit
        .record(
            &AuditEntry {
                operator: operator.name.to_string(),
                action: action.to_owned(),
                at: Utc::now(),
                filter: filter.to_owned(),
                outcome: "started".to_owned(),
            },
            state.read_timeout(),
        )
        .await
        .map_err(|error| {
            ConsoleError::Unavailable(anyhow::anyhow!(
                "the audit log could not record the action, so it did not run: {error}"
            ))
        })
}

/// Replaces a started action's outcome in the audit log.
async fn audit_outcome(state: &ConsoleState, id: &str, outcome: &str) {
    if let Err(error) = state
        .audit
        .set_outcome(id, outcome, state.read_timeout())
        .await
    {
        // The action ran and its start is recorded; say loudly that its outcome is not.
        tracing::error!(%error, audit_id = %id, %outcome, "could not record an action's outcome in the audit log");
    }
}

/// Runs `work` between an audit entry written before (outcome `started`) and its outcome after.
async fn audited<T>(
    state: &ConsoleState,
    operator: &Operator,
    action: &str,
    filter: &str,
    work: impl Future<Output = Result<T, ConsoleError>>,
    describe: impl FnOnce(&T) -> String,
) -> Result<T, ConsoleError> {
    let id = audit_start(state, operator, action, filter).await?;
    let result = work.await;
    let outcome = match &result {
        Ok(done) => describe(done),
        Err(error) => format!("failed: {error}"),
    };
    audit_outcome(state, &id, &outcome).await;
    result
}

/// The error of a `dlq` verb, as the console answers it: positions without a dead letter are the
/// request's fault (400); anything else is Kafka's or MongoDB's (503).
fn verb_error(error: anyhow::Error) -> ConsoleError {
    match error.downcast::<UnknownPositions>() {
        Ok(unknown) => ConsoleError::BadRequest(unknown.to_string()),
        Err(error) => ConsoleError::Unavailable(error),
    }
}

/// Starts `work` as a job, between an audit entry written before (outcome `started`, else 503 and
/// nothing runs) and its outcome after. Answers once the job has listed what it works through (so
/// its `total` is known), or has ended; a job that fails before that (a position without a dead
/// letter, Kafka down) fails the request instead, and is not kept. 409 if another job runs.
async fn run_as_job<Work, Running>(
    state: &web::Data<ConsoleState>,
    operator: &Operator,
    action: &'static str,
    filter: &str,
    work: Work,
) -> Result<JobView, ConsoleError>
where
    Work: FnOnce(web::Data<ConsoleState>, Arc<Progress>) -> Running + Send + 'static,
    Running: Future<Output = anyhow::Result<JobReport>> + Send + 'static,
{
    let job = match state.jobs.start(
        action,
        filter,
        operator.name.as_str(),
        state.shutdown.clone(),
    ) {
        Ok(job) => job,
        Err(running) => {
            let error = ConsoleError::Conflict(format!(
                "one replay or purge runs at a time, and {} is running; wait for it to end",
                running.describe()
            ));
            audit(
                state,
                operator.name.as_str(),
                action,
                filter,
                &format!("refused: {error}"),
            )
            .await?;
            return Err(error);
        }
    };
    let audit_id = match audit_start(state, operator, action, filter).await {
        Ok(id) => id,
        Err(error) => {
            state.jobs.forget(job.id);
            return Err(error);
        }
    };
    tracing::info!(job = %job.id, action, filter, operator = %operator.name, "console job started");
    let task_state = state.clone();
    let task_job = Arc::clone(&job);
    let mut task = state.jobs.spawn(async move {
        // A panic in the work must still end the job: a job left `running` would refuse every
        // later one (409) until a restart, and leave its audit entry `started`.
        let result = AssertUnwindSafe(work(task_state.clone(), task_job.progress()))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the job panicked (a bug; the console's log has the panic message)"
                ))
            });
        let (job_state, outcome, outcome_of, answer) = match result {
            Ok(report) => {
                let outcome = match &report {
                    JobReport::Replay(report) => report.outcome_line(),
                    JobReport::Purge(summary) => summary.outcome_line(),
                };
                (JobState::Succeeded, outcome, Ok(report), Ok(()))
            }
            Err(error) => match error.downcast::<Stopped>() {
                Ok(stopped) => {
                    let message = format!(
                        "{stopped}; what it did stays done, run it again for the rest"
                    );
                    (
                        JobState::Stopped,
                        format!("stopped: {message}"),
                        Err(message.clone()),
                        Err(ConsoleError::Unavailable(anyhow::anyhow!(message))),
                    )
                }
                Err(error) => {
                    let error = verb_error(error);
                    (
                        JobState::Failed,
                        format!("failed: {error}"),
                        Err(error.to_string()),
                        Err(error),
                    )
                }
            },
        };
        // The audit log first: whoever sees the job ended finds its outcome there too.
        audit_outcome(&task_state, &audit_id, &outcome).await;
        tracing::info!(job = %task_job.id, state = job_state.as_str(), %outcome, "console job ended");
        task_job.finish(job_state, outcome, outcome_of);
        answer
    });
    let progress = job.progress();
    tokio::select! {
        () = progress.wait_listed() => Ok(job.view()),
        ended = &mut task => match ended {
            Ok(Ok(())) => Ok(job.view()),
            Ok(Err(error)) => {
                state.jobs.forget(job.id);
                Err(error)
            }
            Err(panicked) => Err(ConsoleError::Unexpected(anyhow::anyhow!(
                "the job's task ended abnormally: {panicked}"
            ))),
        },
    }
}

/// Previews replaying the dead letters `body` selects, or starts a job that replays them.
pub async fn replay(
    state: &web::Data<ConsoleState>,
    request: &HttpRequest,
    operator: &Operator,
    body: &ActionRequest,
) -> Result<ActionAnswer<ReplayReport>, ConsoleError> {
    let action = if body.dry_run {
        "replay-preview"
    } else {
        "replay"
    };
    let filter = admit(state, request, operator, action, body).await?;
    let description = describe_selection(&filter, body.again);
    let again = body.again;
    if body.dry_run {
        return audited(
            state,
            operator,
            action,
            &description,
            async {
                let outcomes = dlq::replay_matching(
                    &state.settings,
                    &state.repository,
                    &filter,
                    true,
                    again,
                    &Progress::unwatched(),
                )
                .await
                .map_err(verb_error)?;
                Ok(ReplayReport::of(&outcomes, true))
            },
            ReplayReport::outcome_line,
        )
        .await
        .map(ActionAnswer::Previewed);
    }
    run_as_job(
        state,
        operator,
        action,
        &description,
        move |state, progress| async move {
            let outcomes = dlq::replay_matching(
                &state.settings,
                &state.repository,
                &filter,
                false,
                again,
                &progress,
            )
            .await?;
            Ok(JobReport::Replay(ReplayReport::of(&outcomes, false)))
        },
    )
    .await
    .map(|job| ActionAnswer::Started(Box::new(job)))
}

/// Previews purging the dead letters `body` selects, or starts a job that purges them.
pub async fn purge(
    state: &web::Data<ConsoleState>,
    request: &HttpRequest,
    operator: &Operator,
    body: &ActionRequest,
) -> Result<ActionAnswer<PurgeSummary>, ConsoleError> {
    let action = if body.dry_run {
        "purge-preview"
    } else {
        "purge"
    };
    let filter = admit(state, request, operator, action, body).await?;
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|reason| !reason.is_empty());
    if reason.is_some_and(|reason| reason.chars().count() > REASON_MAX_CHARS) {
        return Err(ConsoleError::BadRequest(format!(
            "`reason`: at most {REASON_MAX_CHARS} characters"
        )));
    }
    let selection = PurgeSelection {
        filter,
        older_than: None,
        all: body.all,
    };
    let description = selection.describe();
    let reason = reason.map(|reason| format!("{reason} (console, by {})", operator.name));
    if body.dry_run {
        return audited(
            state,
            operator,
            action,
            &description,
            async {
                let report = dlq_purge::purge(
                    &state.settings,
                    &state.repository,
                    &selection,
                    reason.as_deref(),
                    true,
                    &Progress::unwatched(),
                )
                .await
                .map_err(verb_error)?;
                Ok(PurgeSummary::of(&report))
            },
            PurgeSummary::outcome_line,
        )
        .await
        .map(ActionAnswer::Previewed);
    }
    run_as_job(
        state,
        operator,
        action,
        &description,
        move |state, progress| async move {
            let report = dlq_purge::purge(
                &state.settings,
                &state.repository,
                &selection,
                reason.as_deref(),
                false,
                &progress,
            )
            .await?;
            Ok(JobReport::Purge(PurgeSummary::of(&report)))
        },
    )
    .await
    .map(|job| ActionAnswer::Started(Box::new(job)))
}

fn describe_selection(filter: &DeadLetterFilter, again: bool) -> String {
    let mut description = filter.describe();
    if description.is_empty() {
        description = "all".to_owned();
    }
    if again {
        description.push_str(" again");
    }
    description
}
