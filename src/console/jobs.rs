//! Long actions as jobs: a replay or purge of a selection (not its dry run) runs in a task of its
//! own, so the request that starts it answers at once (202, or a redirect to the job's page) and
//! the operator follows its progress (`done / total`) to its end, where it keeps its report.
//!
//! The registry lives in the console's memory only: a restart forgets the jobs (the audit log keeps
//! who started what, and each job's outcome, durably). It keeps the running job and the last
//! [`FINISHED_JOBS_KEPT`] finished ones.
//!
//! At most one job runs at a time, whatever its selection: two replays of overlapping selections
//! would race each other on the replay log (both republish a dead letter neither has logged yet),
//! and a purge during a replay changes what the replay should skip after it read the purge log.
//! Whether two selections overlap (by text, time, tenant) is only known after listing them, so
//! the console does not try to tell; a second job gets 409 naming the running one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::dead_letters::{PurgeSummary, ReplayReport};
use super::error::ConsoleError;
use crate::ops::progress::Progress;

/// How many finished jobs the registry keeps (newest first). Each keeps its report, at most
/// `ACTION_ITEMS_MAX` items, so this bounds the registry's memory to a few megabytes; older jobs
/// are in the audit log.
pub const FINISHED_JOBS_KEPT: usize = 50;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    /// The console shut down while it ran: it stopped between two dead letters (what it did stays
    /// done, in the replay or purge log; running it again does the rest).
    Stopped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Stopped => "stopped",
        }
    }
}

/// What a finished job did: the same report the dry run answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum JobReport {
    Replay(ReplayReport),
    Purge(PurgeSummary),
}

/// A job as the API answers it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// A UUID; `GET /console/api/jobs/{id}` and the page `/console/jobs/{id}` follow it.
    pub id: String,
    /// `replay` or `purge`.
    pub action: String,
    /// The selection, as the audit log records it.
    pub filter: String,
    pub operator: String,
    pub state: JobState,
    /// How many dead letters the job works through; null until it has listed them.
    pub total: Option<usize>,
    /// How many it has worked through (replayed or skipped; purged or skipped).
    pub done: usize,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<DateTime<Utc>>,
    /// At the end: the line written to the audit log (`ok: ...`, `failed: ...`, `stopped: ...`).
    pub outcome: Option<String>,
    /// Why it failed or stopped.
    pub error: Option<String>,
    /// When it succeeded: the ReplayReport or PurgeSummary.
    pub report: Option<JobReport>,
}

/// A job's list, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// One job: what it is, how far it is (shared with the verb it runs), and how it ended.
#[derive(Debug)]
pub struct Job {
    /// A UUIDv7: unguessable enough for a URL, and sorted by start like the list.
    pub id: Uuid,
    /// `replay` or `purge`: the audit entry's action.
    pub action: &'static str,
    /// The selection as the audit entry records it, so the two read alike.
    pub filter: String,
    pub operator: String,
    pub started_at: DateTime<Utc>,
    /// Written by the `dlq` verb as it goes, read by every view of the job.
    progress: Arc<Progress>,
    /// `None` while running; set once, by the job's task, after the audit outcome is written.
    end: Mutex<Option<JobEnd>>,
}

#[derive(Debug, Clone)]
struct JobEnd {
    state: JobState,
    finished_at: DateTime<Utc>,
    outcome: String,
    error: Option<String>,
    report: Option<JobReport>,
}

impl Job {
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    pub fn is_running(&self) -> bool {
        lock(&self.end).is_none()
    }

    /// Records how the job ended: `report` when it succeeded, else `error`.
    pub fn finish(&self, state: JobState, outcome: String, outcome_of: Result<JobReport, String>) {
        let (report, error) = match outcome_of {
            Ok(report) => (Some(report), None),
            Err(error) => (None, Some(error)),
        };
        *lock(&self.end) = Some(JobEnd {
            state,
            finished_at: Utc::now(),
            outcome,
            error,
            report,
        });
    }

    pub fn view(&self) -> JobView {
        let end = lock(&self.end).clone();
        JobView {
            id: self.id.to_string(),
            action: self.action.to_owned(),
            filter: self.filter.clone(),
            operator: self.operator.clone(),
            state: end.as_ref().map_or(JobState::Running, |end| end.state),
            total: self.progress.total(),
            done: self.progress.done(),
            started_at: self.started_at,
            finished_at: end.as_ref().map(|end| end.finished_at),
            outcome: end.as_ref().map(|end| end.outcome.clone()),
            error: end.as_ref().and_then(|end| end.error.clone()),
            report: end.and_then(|end| end.report),
        }
    }

    /// One line naming the job, for a 409 and the logs.
    pub fn describe(&self) -> String {
        let total = self
            .progress
            .total()
            .map_or_else(|| "?".to_owned(), |total| total.to_string());
        format!(
            "job {} ({} of {} by {}, {} of {total} done; /console/jobs/{})",
            self.id,
            self.action,
            self.filter,
            self.operator,
            self.progress.done(),
            self.id
        )
    }
}

/// The console's jobs: the running one and the last finished ones, and the tasks that run them.
#[derive(Debug)]
pub struct JobRegistry {
    /// Newest first.
    jobs: Mutex<VecDeque<Arc<Job>>>,
    /// The jobs' tasks, so shutdown can wait for them to write their outcome.
    tasks: TaskTracker,
    /// The runtime the console was built on, where jobs run. Not the request's: actix-web runs
    /// handlers on its workers' own runtimes, which stop with the server and would drop a job
    /// mid-way, before it records its outcome.
    runtime: tokio::runtime::Handle,
    /// Jobs wait before each dead letter while this is held for writing: tests hold it to see a
    /// job running, deterministically. Nothing else takes it.
    hold: Arc<RwLock<()>>,
}

impl JobRegistry {
    /// A registry whose jobs run on `runtime` (see the field).
    pub fn new(runtime: tokio::runtime::Handle) -> JobRegistry {
        JobRegistry {
            jobs: Mutex::new(VecDeque::new()),
            tasks: TaskTracker::new(),
            runtime,
            hold: Arc::new(RwLock::new(())),
        }
    }

    /// Registers a running job, unless one runs already (then that one is the error). The job
    /// stops between two dead letters once `stop` is cancelled.
    pub fn start(
        &self,
        action: &'static str,
        filter: &str,
        operator: &str,
        stop: CancellationToken,
    ) -> Result<Arc<Job>, Arc<Job>> {
        let mut jobs = lock(&self.jobs);
        if let Some(running) = jobs.iter().find(|job| job.is_running()) {
            return Err(Arc::clone(running));
        }
        let job = Arc::new(Job {
            id: Uuid::now_v7(),
            action,
            filter: filter.to_owned(),
            operator: operator.to_owned(),
            started_at: Utc::now(),
            progress: Arc::new(Progress::new(stop, Some(Arc::clone(&self.hold)))),
            end: Mutex::new(None),
        });
        jobs.push_front(Arc::clone(&job));
        // Only finished jobs are dropped: the running one (just pushed, first) always stays.
        while jobs.len() > FINISHED_JOBS_KEPT + 1 {
            jobs.pop_back();
        }
        Ok(job)
    }

    /// Forgets a job that never ran (its start could not be audited) or whose request failed
    /// before it was announced.
    pub fn forget(&self, id: Uuid) {
        lock(&self.jobs).retain(|job| job.id != id);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<JobView> {
        lock(&self.jobs).iter().map(|job| job.view()).collect()
    }

    /// One job by its id as the URL carries it: 400 if it is not a job id, 404 if unknown.
    pub fn find(&self, raw_id: &str) -> Result<JobView, ConsoleError> {
        let id = Uuid::try_parse(raw_id).map_err(|_| {
            ConsoleError::BadRequest(format!(
                "`id`: {raw_id:?} is not a job id (a UUID such as 0193a4e2-7c1d-7b3e-9f00-1a2b3c4d5e6f)"
            ))
        })?;
        lock(&self.jobs)
            .iter()
            .find(|job| job.id == id)
            .map(|job| job.view())
            .ok_or_else(|| {
                ConsoleError::NotFound(format!(
                    "no job {id} in this console: jobs live in its memory (the last \
                     {FINISHED_JOBS_KEPT} finished ones), so a restart forgets them; the audit \
                     log keeps who did what and the outcome"
                ))
            })
    }

    /// Runs a job's task on the console's runtime, tracked so shutdown can wait for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn_on(task, &self.runtime)
    }

    /// Waits (at most `timeout`) for the jobs' tasks to end. Call after cancelling their stop
    /// token: each stops before its next dead letter and records its outcome.
    pub async fn wait_finished(&self, timeout: Duration) {
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(
                ?timeout,
                "a console job did not stop in time; its audit entry may still say `started`"
            );
        }
    }

    /// The hold jobs wait on before each dead letter (for tests; see the field).
    pub fn hold(&self) -> Arc<RwLock<()>> {
        Arc::clone(&self.hold)
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (plain records)
/// is still whole, so keep serving it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_job_runs_at_a_time_and_only_the_last_finished_are_kept() {
        let registry = JobRegistry::new(tokio::runtime::Handle::current());
        let first = registry
            .start("replay", "tenant=acme", "ada", CancellationToken::new())
            .unwrap();
        let refused = registry
            .start("purge", "tenant=globex", "bob", CancellationToken::new())
            .unwrap_err();
        assert_eq!(refused.id, first.id);
        assert!(refused.describe().contains("replay of tenant=acme by ada"));
        first.finish(
            JobState::Failed,
            "failed: x".to_owned(),
            Err("x".to_owned()),
        );
        for _ in 0..FINISHED_JOBS_KEPT + 5 {
            let job = registry
                .start("purge", "all", "ada", CancellationToken::new())
                .unwrap();
            job.finish(
                JobState::Failed,
                "failed: y".to_owned(),
                Err("y".to_owned()),
            );
        }
        let listed = registry.list();
        assert_eq!(listed.len(), FINISHED_JOBS_KEPT + 1);
        assert!(listed.iter().all(|job| job.action == "purge"));
        assert!(listed[0].started_at >= listed[1].started_at, "newest first");
        let running = registry
            .start("replay", "all", "ada", CancellationToken::new())
            .unwrap();
        assert_eq!(registry.list()[0].state, JobState::Running);
        assert_eq!(registry.list().len(), FINISHED_JOBS_KEPT + 1);
        assert_eq!(
            registry.find(&running.id.to_string()).unwrap().id,
            running.id.to_string()
        );
    }

    #[tokio::test]
    async fn ids_are_checked_before_they_are_looked_up() {
        let registry = JobRegistry::new(tokio::runtime::Handle::current());
        assert!(matches!(
            registry.find("nope"),
            Err(ConsoleError::BadRequest(message)) if message.contains("`id`")
        ));
        assert!(matches!(
            registry.find(&Uuid::now_v7().to_string()),
            Err(ConsoleError::NotFound(_))
        ));
    }
}
