//! The console's actions, shared by the JSON API and the pages: each checks the CSRF token and the
//! role, writes the audit entry before it runs (so an action the audit log cannot record does not
//! run), runs the `dlq` verbs' code, and records the outcome.

use actix_web::HttpRequest;
use chrono::Utc;
use serde::Deserialize;

use super::auth::{require_admin, Operator};
use super::dead_letters::{PurgeSummary, RawFilter, ReplayReport};
use super::error::ConsoleError;
use super::ConsoleState;
use crate::ops::dlq::{self, DeadLetterFilter};
use crate::ops::dlq_purge::{self, PurgeSelection, UnknownPositions};
use crate::store::AuditEntry;

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

/// Runs `work` between an audit entry written before (outcome `started`) and its outcome after.
async fn audited<T>(
    state: &ConsoleState,
    operator: &Operator,
    action: &str,
    filter: &str,
    work: impl std::future::Future<Output = Result<T, ConsoleError>>,
    describe: impl FnOnce(&T) -> String,
) -> Result<T, ConsoleError> {
    let id = state
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
        })?;
    let result = work.await;
    let outcome = match &result {
        Ok(done) => describe(done),
        Err(error) => format!("failed: {error}"),
    };
    if let Err(error) = state
        .audit
        .set_outcome(&id, &outcome, state.read_timeout())
        .await
    {
        // The action ran and its start is recorded; say loudly that its outcome is not.
        tracing::error!(%error, audit_id = %id, %outcome, "could not record an action's outcome in the audit log");
    }
    result
}

/// Replays (or previews replaying) the dead letters `body` selects.
pub async fn replay(
    state: &ConsoleState,
    request: &HttpRequest,
    operator: &Operator,
    body: &ActionRequest,
) -> Result<ReplayReport, ConsoleError> {
    let action = if body.dry_run {
        "replay-preview"
    } else {
        "replay"
    };
    let filter = admit(state, request, operator, action, body).await?;
    let description = describe_selection(&filter, body.again);
    audited(
        state,
        operator,
        action,
        &description,
        async {
            let outcomes = dlq::replay_matching(
                &state.settings,
                &state.repository,
                &filter,
                body.dry_run,
                body.again,
            )
            .await
            .map_err(ConsoleError::Unavailable)?;
            Ok(ReplayReport::of(&outcomes, body.dry_run))
        },
        ReplayReport::outcome_line,
    )
    .await
}

/// Purges (or previews purging) the dead letters `body` selects.
pub async fn purge(
    state: &ConsoleState,
    request: &HttpRequest,
    operator: &Operator,
    body: &ActionRequest,
) -> Result<PurgeSummary, ConsoleError> {
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
    audited(
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
                body.dry_run,
            )
            .await
            .map_err(|error| match error.downcast::<UnknownPositions>() {
                Ok(unknown) => ConsoleError::BadRequest(unknown.to_string()),
                Err(error) => ConsoleError::Unavailable(error),
            })?;
            Ok(PurgeSummary::of(&report))
        },
        PurgeSummary::outcome_line,
    )
    .await
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
