//! The retry topics as the console shows them: per retry step and partition what is waiting (the
//! end offset minus the step's consumer group's committed offset, from the lag sampler's latest
//! sample) and the head record, the one the stage reads next, with the due time its
//! `retry-due-at` header carries. The stage holds a record until then (never longer than the
//! step's own delay after reading it, see `failures::retry_due_at`), so the head's due time says
//! when the partition moves again.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::{ConsoleError, ConsoleErrorBody};
use super::overview::StageBacklog;
use super::ConsoleState;
use crate::failures::headers;
use crate::kafka::{self, ConsumedRecord};

/// Every retry step, in order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetriesView {
    /// When the backlogs were sampled (the overview's latest sample); null before the first one.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sampled_at: Option<DateTime<Utc>>,
    /// When the head records were read and `dueInMs` computed.
    #[schema(value_type = String, format = DateTime)]
    pub read_at: DateTime<Utc>,
    pub steps: Vec<RetryStep>,
}

/// One retry step: its topic, its group, its delay and what waits in it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryStep {
    /// 1, 2, ...: the attempt this topic holds records for.
    pub step: usize,
    pub topic: String,
    pub group: String,
    /// The step's delay (retry.delays_ms).
    pub delay_ms: u64,
    /// Records waiting, all partitions together.
    pub waiting: i64,
    pub partitions: Vec<RetryPartition>,
    /// Why the step could not be read, if it could not.
    pub error: Option<String>,
}

/// One partition of a retry topic.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPartition {
    pub partition: i32,
    /// The end offset.
    pub end_offset: i64,
    /// The step's group's committed offset; null when it never committed here.
    pub committed: Option<i64>,
    /// End offset minus the committed offset (minus the oldest retained offset when none).
    pub waiting: i64,
    /// The record the stage reads next; null when nothing waits (or it could not be read).
    pub head: Option<RetryHead>,
}

/// The next record of a retry partition.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryHead {
    pub offset: i64,
    /// The record key.
    pub tenant: Option<String>,
    pub idempotency_key: Option<String>,
    /// The `retry-due-at` header as written; null when missing (the stage takes it as due now).
    pub due_at: Option<String>,
    /// Milliseconds from `readAt` until `dueAt`; negative when overdue, null without a readable
    /// due time.
    pub due_in_ms: Option<i64>,
    /// The `retry-attempts` header: attempts made so far.
    pub attempts: Option<String>,
    /// The `retry-error` header: the last failure.
    pub error: Option<String>,
}

impl RetryHead {
    fn of(record: &ConsumedRecord, now: DateTime<Utc>) -> RetryHead {
        let due_at = record.header(headers::RETRY_DUE_AT).map(str::to_owned);
        let due_in_ms = due_at
            .as_deref()
            .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
            .map(|due| (due.with_timezone(&Utc) - now).num_milliseconds());
        RetryHead {
            offset: record.offset,
            tenant: record
                .key
                .as_deref()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            idempotency_key: record
                .header(kafka::headers::IDEMPOTENCY_KEY)
                .map(str::to_owned),
            due_at,
            due_in_ms,
            attempts: record.header(headers::RETRY_ATTEMPTS).map(str::to_owned),
            error: record.header(headers::RETRY_ERROR).map(str::to_owned),
        }
    }
}

/// The retry steps now: backlogs from the latest sample, head records read fresh (each step's
/// read bounded by `console.read_timeout_ms`; a step that fails says so and the others are shown).
pub async fn retries_now(state: &ConsoleState) -> RetriesView {
    let overview = state.monitor.overview();
    let delays = &state.settings.retry.delays_ms;
    let mut steps = Vec::with_capacity(delays.len());
    for (index, delay_ms) in delays.iter().enumerate() {
        let step = index + 1;
        let label = format!("retry.{step}");
        let stage = overview.stages.iter().find(|stage| stage.stage == label);
        steps.push(match stage {
            Some(stage) => describe_step(state, step, *delay_ms, stage).await,
            None => RetryStep {
                step,
                topic: state.settings.kafka.retry_topic_for(step),
                group: String::new(),
                delay_ms: *delay_ms,
                waiting: 0,
                partitions: Vec::new(),
                error: Some("not sampled".to_owned()),
            },
        });
    }
    RetriesView {
        sampled_at: overview.sampled_at,
        read_at: Utc::now(),
        steps,
    }
}

async fn describe_step(
    state: &ConsoleState,
    step: usize,
    delay_ms: u64,
    stage: &StageBacklog,
) -> RetryStep {
    let heads: Vec<(i32, i64)> = stage
        .partitions
        .iter()
        .filter(|partition| partition.lag > 0)
        .map(|partition| {
            let next = partition
                .committed
                .unwrap_or(partition.low)
                .max(partition.low);
            (partition.partition, next)
        })
        .collect();
    let kafka_settings = state.settings.kafka.clone();
    let topic = stage.topic.clone();
    let timeout = state.read_timeout();
    let read = tokio::task::spawn_blocking(move || {
        kafka::read_heads(&kafka_settings, &topic, &heads, timeout)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|result| result);
    let now = Utc::now();
    let (records, read_error) = match read {
        Ok(records) => (records, None),
        Err(error) => (Vec::new(), Some(format!("{error:#}"))),
    };
    RetryStep {
        step,
        topic: stage.topic.clone(),
        group: stage.group.clone().unwrap_or_default(),
        delay_ms,
        waiting: stage.backlog,
        partitions: stage
            .partitions
            .iter()
            .map(|partition| RetryPartition {
                partition: partition.partition,
                end_offset: partition.high,
                committed: partition.committed,
                waiting: partition.lag,
                head: records
                    .iter()
                    .find(|record| record.partition == partition.partition)
                    .map(|record| RetryHead::of(record, now)),
            })
            .collect(),
        error: stage.error.clone().or(read_error),
    }
}

#[utoipa::path(
    get,
    path = "/console/api/retries",
    tag = "retries",
    operation_id = "getRetries",
    description = "Per retry step and partition: what is waiting (the end offset minus the step's \
        consumer group's committed offset, from the overview's latest sample) and the head record (the \
        one the stage reads next, read now) with its `retry-due-at` header and how long until then. \
        A step that cannot be read carries an error; the others are still shown.",
    responses(
        (status = 200, description = "The retry steps.", body = RetriesView),
        (status = 401, description = "Not an operator.", body = ConsoleErrorBody),
    ),
    security(("operator" = []), ("session" = []))
)]
pub async fn retries(
    request: HttpRequest,
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ConsoleError> {
    state.gate.authenticate(&request).await?;
    Ok(HttpResponse::Ok().json(retries_now(&state).await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_says_when_it_is_due() {
        let mut record = ConsumedRecord::from_parts(
            "activities.retry.1",
            3,
            41,
            Some(b"acme".to_vec()),
            Some(b"{}".to_vec()),
        );
        record.headers.push((
            headers::RETRY_DUE_AT.to_owned(),
            Some(b"2026-12-02T10:00:02+00:00".to_vec()),
        ));
        let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let head = RetryHead::of(&record, now);
        assert_eq!(head.due_in_ms, Some(2000));
        assert_eq!(head.tenant.as_deref(), Some("acme"));
        record.headers[0].1 = Some(b"tomorrow".to_vec());
        assert_eq!(RetryHead::of(&record, now).due_in_ms, None);
    }
}
