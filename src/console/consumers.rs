//! Who consumes what: per stage, the `consume` instances that report into the group's Redis hash
//! (see `consume::instances`), the partitions each owns, its breaker and the time since its last
//! commit; and the partitions nobody owns while they have lag (from the overview's latest sample).
//!
//! An instance that stopped reporting for three `consumer.instance_report_interval_secs` is shown
//! stale (it crashed, hangs, or lost Redis); one that stopped cleanly removed its field and is
//! gone. A field that is not a report (written by something else) is shown as unreadable rather
//! than failing the page.

use std::collections::BTreeSet;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Serialize;

use super::error::{ConsoleError, ConsoleErrorBody};
use super::overview::Overview;
use super::ConsoleState;
use crate::consume::InstanceReport;

/// Every stage's consumers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersView {
    /// How often instances report (`consumer.instance_report_interval_secs`).
    pub report_interval_secs: u64,
    /// An instance whose last report is older than this is stale.
    pub stale_after_secs: u64,
    pub stages: Vec<StageConsumers>,
}

/// One stage's consumer group and its instances.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageConsumers {
    /// `main`, `retry.1`, ...
    pub stage: String,
    pub group: String,
    /// Newest report first.
    pub instances: Vec<InstanceView>,
    /// Partitions with lag (at the overview's latest sample) that no fresh instance owns: nobody
    /// is working them off.
    pub unowned_with_lag: Vec<i32>,
    /// Fields of the group's hash that are not instance reports.
    pub unreadable: Vec<String>,
}

/// One instance of one stage, as it last reported.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// `<host>:<pid>:<random>`.
    pub instance: String,
    pub host: String,
    pub pid: u32,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// No report for `staleAfterSecs`: crashed, hung or cut off from Redis.
    pub stale: bool,
    pub partitions: Vec<i32>,
    /// Partitions of mirrored topics (`<topic>:<partition>`) the main stage owns.
    pub mirrored_partitions: Vec<String>,
    pub breaker_open: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub breaker_since: Option<DateTime<Utc>>,
    /// `mongodb`, `redis` or `kafka`: the dependency of the last outage.
    pub last_error_class: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_commit_at: Option<DateTime<Utc>>,
    /// Seconds from the last commit to now; null before the first.
    pub seconds_since_commit: Option<i64>,
    pub records_processed: u64,
}

/// Reads every stage group's reports (one Redis pipeline) and joins them with the overview.
pub async fn consumers_now(state: &ConsumerSources<'_>) -> Result<ConsumersView, ConsoleError> {
    let groups: Vec<&str> = state
        .stages
        .iter()
        .map(|(_, group)| group.as_str())
        .collect();
    let reports = state
        .redis
        .instance_reports(&groups)
        .await
        .map_err(|outage| ConsoleError::Unavailable(outage.into()))?;
    let now = Utc::now();
    let stale_after = state.report_interval_secs * 3;
    let stages = state
        .stages
        .iter()
        .zip(reports)
        .map(|((label, group), fields)| {
            let mut instances = Vec::new();
            let mut unreadable = Vec::new();
            for (field, value) in fields {
                match serde_json::from_str::<InstanceReport>(&value) {
                    Ok(report) => instances.push(view(report, now, stale_after)),
                    Err(_) => unreadable.push(field),
                }
            }
            instances.sort_by_key(|instance| std::cmp::Reverse(instance.updated_at));
            let owned: BTreeSet<i32> = instances
                .iter()
                .filter(|instance| !instance.stale)
                .flat_map(|instance| instance.partitions.iter().copied())
                .collect();
            let unowned_with_lag = state
                .overview
                .stages
                .iter()
                .find(|stage| &stage.stage == label)
                .map(|stage| {
                    stage
                        .partitions
                        .iter()
                        .filter(|partition| {
                            partition.lag > 0 && !owned.contains(&partition.partition)
                        })
                        .map(|partition| partition.partition)
                        .collect()
                })
                .unwrap_or_default();
            StageConsumers {
                stage: label.clone(),
                group: group.clone(),
                instances,
                unowned_with_lag,
                unreadable,
            }
        })
        .collect();
    Ok(ConsumersView {
        report_interval_secs: state.report_interval_secs,
        stale_after_secs: stale_after,
        stages,
    })
}

/// What [`consumers_now`] reads: the stages' groups, Redis and the overview's latest sample.
pub struct ConsumerSources<'a> {
    pub stages: Vec<(String, String)>,
    pub redis: &'a crate::store::RedisStore,
    pub overview: &'a Overview,
    pub report_interval_secs: u64,
}

impl<'a> ConsumerSources<'a> {
    pub fn of(state: &'a ConsoleState, overview: &'a Overview) -> ConsumerSources<'a> {
        let kafka = &state.settings.kafka;
        let mut stages = vec![("main".to_owned(), kafka.consumer_group.clone())];
        // The retry stages' groups, as `consume` names them.
        for step in 1..=state.settings.retry.delays_ms.len() {
            stages.push((
                format!("retry.{step}"),
                format!("{}.retry.{step}", kafka.consumer_group),
            ));
        }
        ConsumerSources {
            stages,
            redis: &state.redis,
            overview,
            report_interval_secs: state.settings.consumer.instance_report_interval_secs,
        }
    }
}

fn view(report: InstanceReport, now: DateTime<Utc>, stale_after_secs: u64) -> InstanceView {
    InstanceView {
        stale: (now - report.updated_at).num_seconds() > stale_after_secs as i64,
        seconds_since_commit: report
            .last_commit_at
            .map(|at| (now - at).num_seconds().max(0)),
        instance: report.instance,
        host: report.host,
        pid: report.pid,
        started_at: report.started_at,
        updated_at: report.updated_at,
        partitions: report.partitions,
        mirrored_partitions: report.mirrored_partitions,
        breaker_open: report.breaker_open,
        breaker_since: report.breaker_since,
        last_error_class: report.last_error_class,
        last_commit_at: report.last_commit_at,
        records_processed: report.records_processed,
    }
}

#[utoipa::path(
    get,
    path = "/console/api/consumers",
    tag = "overview",
    operation_id = "getConsumers",
    description = "Per stage, the consume instances of its group as they last reported (every \
        consumer.instance_report_interval_secs, into Redis): the partitions each owns, its breaker \
        (open or closed, since when, the dependency of the last outage), its last commit and the \
        seconds since, the records it processed; stale after three intervals without a report. \
        unownedWithLag lists the partitions with lag (at the overview's latest sample) that no fresh \
        instance owns.",
    responses(
        (status = 200, description = "The consumers.", body = ConsumersView),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
        (status = 503, description = "Redis did not answer within redis.op_timeout_ms.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn consumers(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    let overview = state.monitor.overview();
    let view = consumers_now(&ConsumerSources::of(&state, &overview)).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// The overview page's consumers section (or why it is missing).
pub fn consumers_section(view: &Result<ConsumersView, ConsoleError>) -> Markup {
    let view = match view {
        Ok(view) => view,
        Err(error) => return html! { p.error { "Consumers unavailable: " (error) } },
    };
    html! {
        p.muted { "As each instance last reported (every " (view.report_interval_secs) " s); stale after " (view.stale_after_secs) " s without a report." }
        table #consumers {
            thead { tr { th { "Stage" } th { "Instance" } th { "Partitions" } th { "Breaker" } th.num { "Since last commit" } th.num { "Processed" } th { "Reported" } } }
            tbody {
                @for stage in &view.stages {
                    @if stage.instances.is_empty() {
                        tr data-stage=(stage.stage) { td { (stage.stage) } td.muted colspan="6" { "no instance reports for " code { (stage.group) } } }
                    }
                    @for instance in &stage.instances {
                        tr data-stage=(stage.stage) data-instance=(instance.instance) class=[instance.stale.then_some("stale")] {
                            td { (stage.stage) }
                            td { code { (instance.instance) } }
                            td.partitions {
                                (instance.partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(", "))
                                @if !instance.mirrored_partitions.is_empty() {
                                    br; span.muted { "mirrored: " (instance.mirrored_partitions.join(", ")) }
                                }
                            }
                            td.breaker {
                                @if instance.breaker_open {
                                    span.error { "open" } " (" (instance.last_error_class.as_deref().unwrap_or("?")) ")"
                                } @else { "closed" }
                                @if let Some(since) = instance.breaker_since { span.muted { " since " (since.format("%H:%M:%S UTC")) } }
                            }
                            td.num.since-commit {
                                @match instance.seconds_since_commit { Some(seconds) => { (seconds) " s" } None => { "never" } }
                            }
                            td.num { (instance.records_processed) }
                            td {
                                @if instance.stale { span.error { "stale" } " " }
                                span.muted { (instance.updated_at.format("%H:%M:%S UTC")) }
                            }
                        }
                    }
                    @if !stage.unowned_with_lag.is_empty() {
                        tr.unowned data-stage=(stage.stage) {
                            td { (stage.stage) }
                            td.error colspan="6" { "Partitions with lag that no instance owns: " (stage.unowned_with_lag.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                    @if !stage.unreadable.is_empty() {
                        tr data-stage=(stage.stage) {
                            td { (stage.stage) }
                            td.error colspan="6" { "Not instance reports (ignored): " (stage.unreadable.join(", ")) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        now: DateTime<Utc>,
        updated_secs_ago: i64,
        commit_secs_ago: Option<i64>,
    ) -> InstanceReport {
        InstanceReport {
            instance: "host:1:00000001".to_owned(),
            host: "host".to_owned(),
            pid: 1,
            started_at: now,
            updated_at: now - chrono::Duration::seconds(updated_secs_ago),
            stage: "main".to_owned(),
            partitions: vec![0, 2],
            mirrored_partitions: Vec::new(),
            breaker_open: false,
            breaker_since: None,
            last_error_class: None,
            last_commit_at: commit_secs_ago.map(|ago| now - chrono::Duration::seconds(ago)),
            records_processed: 3,
        }
    }

    #[test]
    fn an_instance_is_stale_after_three_intervals_without_a_report() {
        let now = Utc::now();
        assert!(!view(report(now, 5, None), now, 6).stale);
        assert!(view(report(now, 7, None), now, 6).stale);
        assert_eq!(
            view(report(now, 0, None), now, 6).seconds_since_commit,
            None
        );
        assert_eq!(
            view(report(now, 0, Some(12)), now, 6).seconds_since_commit,
            Some(12)
        );
    }
}
