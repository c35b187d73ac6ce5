//! `dlq list | show | replay`: the dead-letter topic as an operator sees it.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::progress::Progress;
use crate::config::Settings;
use crate::domain::TenantId;
use crate::failures::DeadLetterFacts;
use crate::kafka::{headers, read_topic, ActivityPublisher, ConsumedRecord};
use crate::store::{ActivityRepository, PurgedDeadLetter, ReplayLog};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A dead letter with its facts pulled out of the headers.
#[derive(Debug, Clone)]
pub struct DeadLetterView {
    pub record: ConsumedRecord,
    /// The record key: the tenant id for records that came through the API.
    pub tenant: Option<String>,
    pub idempotency_key: Option<String>,
    /// What its `dlq-*` headers say: error, class, attempts, times, source.
    pub facts: DeadLetterFacts,
    /// Set when `dlq purge` declared this dead letter done: it is hidden from `dlq list` unless
    /// asked for, and `dlq replay` leaves it alone.
    pub purged: Option<PurgedDeadLetter>,
}

impl DeadLetterView {
    pub fn from_record(record: ConsumedRecord) -> DeadLetterView {
        DeadLetterView {
            tenant: record
                .key
                .as_deref()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            idempotency_key: record.header(headers::IDEMPOTENCY_KEY).map(str::to_owned),
            facts: DeadLetterFacts::of(&record),
            purged: None,
            record,
        }
    }

    /// `topic:partition:offset`: how the replay and purge logs name this dead letter.
    pub fn log_id(&self) -> String {
        format!("{}:{}", self.record.topic, self.position())
    }

    /// `partition:offset` in the DLQ topic: how `dlq show` names it.
    pub fn position(&self) -> String {
        format!("{}:{}", self.record.partition, self.record.offset)
    }

    /// One line for `dlq list`.
    pub fn summary_line(&self) -> String {
        let purged = self.purged.as_ref().map_or_else(String::new, |purged| {
            format!(" purged={}", purged.purged_at.to_rfc3339())
        });
        format!(
            "{:<10} tenant={} key={} class={} attempts={} last={} source={}{purged} error={}",
            self.position(),
            self.tenant.as_deref().unwrap_or("-"),
            self.idempotency_key.as_deref().unwrap_or("-"),
            self.facts.class,
            self.facts.attempts,
            self.facts.last_failure_at,
            self.facts.source,
            self.facts.error
        )
    }

    /// Everything about one dead letter, for `dlq show`.
    pub fn details(&self) -> String {
        let mut out = format!("dead letter {} in {}\n", self.position(), self.record.topic);
        out.push_str(&format!(
            "key: {}\n",
            self.tenant.as_deref().unwrap_or("(none)")
        ));
        if let Some(purged) = &self.purged {
            out.push_str(&format!(
                "purged: {} by `dlq purge` ({}){}\n",
                purged.purged_at.to_rfc3339(),
                purged.selection,
                purged
                    .reason
                    .as_deref()
                    .map_or_else(String::new, |reason| format!(": {reason}"))
            ));
        }
        out.push_str("headers:\n");
        for (name, value) in &self.record.headers {
            let value = value.as_deref().map_or_else(
                || "(null)".to_owned(),
                |bytes| String::from_utf8_lossy(bytes).into_owned(),
            );
            out.push_str(&format!("  {name}: {value}\n"));
        }
        out.push_str("value:\n");
        match &self.record.payload {
            None => out.push_str("  (none)\n"),
            Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(json) => out.push_str(&serde_json::to_string_pretty(&json).unwrap_or_default()),
                Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
            },
        }
        out.push('\n');
        out
    }
}

/// Parses `partition:offset`.
pub fn parse_position(raw: &str) -> Result<(i32, i64), String> {
    let (partition, offset) = raw
        .split_once(':')
        .ok_or_else(|| format!("expected <partition>:<offset>, got {raw:?}"))?;
    let partition = partition
        .parse::<i32>()
        .ok()
        .filter(|partition| *partition >= 0)
        .ok_or_else(|| format!("partition {partition:?} is not a non-negative number"))?;
    let offset = offset
        .parse::<i64>()
        .ok()
        .filter(|offset| *offset >= 0)
        .ok_or_else(|| format!("offset {offset:?} is not a non-negative number"))?;
    Ok((partition, offset))
}

/// Which dead letters a verb (or the console) works on. Every criterion given must hold; the
/// default selects every dead letter. The `dlq` verbs and the console's actions both select with
/// this, so a preview in the console and the command line agree on what a filter means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// The record key (the tenant, for records that came through the API).
    pub tenant: Option<TenantId>,
    /// The `dlq-error-class` header, as written (`poison`, `transient`, ...).
    pub class: Option<String>,
    /// Last failed at or after this time (the `dlq-last-failure-at` header). A dead letter without
    /// a readable failure time is never selected by time.
    pub failed_from: Option<DateTime<Utc>>,
    /// Last failed before this time.
    pub failed_until: Option<DateTime<Utc>>,
    /// Case-insensitive text searched in the error, the key, the idempotency key and the payload.
    pub text: Option<String>,
    /// `partition:offset` positions in the DLQ; empty means any.
    pub positions: BTreeSet<(i32, i64)>,
}

impl DeadLetterFilter {
    /// Every dead letter of `tenant`, or every dead letter.
    pub fn for_tenant(tenant: Option<TenantId>) -> DeadLetterFilter {
        DeadLetterFilter {
            tenant,
            ..DeadLetterFilter::default()
        }
    }

    /// Whether no criterion is given (the filter selects everything).
    pub fn is_empty(&self) -> bool {
        *self == DeadLetterFilter::default()
    }

    /// Whether `view` meets every criterion. The cheap ones are checked first: the console asks
    /// this of every dead letter it holds for each page.
    pub fn matches(&self, view: &DeadLetterView) -> bool {
        let tenant_matches = || {
            self.tenant
                .as_ref()
                .is_none_or(|tenant| view.tenant.as_deref() == Some(tenant.as_str()))
        };
        let class_matches = || {
            self.class
                .as_deref()
                .is_none_or(|class| view.facts.class == class)
        };
        let position_matches = || {
            self.positions.is_empty()
                || self
                    .positions
                    .contains(&(view.record.partition, view.record.offset))
        };
        let time_matches = || {
            if self.failed_from.is_none() && self.failed_until.is_none() {
                return true;
            }
            DateTime::parse_from_rfc3339(&view.facts.last_failure_at)
                .ok()
                .map(|at| at.with_timezone(&Utc))
                .is_some_and(|at| {
                    self.failed_from.is_none_or(|from| at >= from)
                        && self.failed_until.is_none_or(|until| at < until)
                })
        };
        let text_matches = || {
            self.text.as_deref().is_none_or(|text| {
                let needle = text.to_lowercase();
                let payload = view
                    .record
                    .payload
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                [
                    view.facts.error.as_str(),
                    view.tenant.as_deref().unwrap_or(""),
                    view.idempotency_key.as_deref().unwrap_or(""),
                    &payload,
                ]
                .iter()
                .any(|haystack| haystack.to_lowercase().contains(&needle))
            })
        };
        tenant_matches()
            && class_matches()
            && position_matches()
            && time_matches()
            && text_matches()
    }

    /// The filter as the logs record it: `tenant=acme class=poison text="timeout"`; empty for none.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(tenant) = &self.tenant {
            parts.push(format!("tenant={tenant}"));
        }
        if let Some(class) = &self.class {
            parts.push(format!("class={class}"));
        }
        if let Some(from) = self.failed_from {
            parts.push(format!("from={}", from.to_rfc3339()));
        }
        if let Some(until) = self.failed_until {
            parts.push(format!("until={}", until.to_rfc3339()));
        }
        if let Some(text) = &self.text {
            parts.push(format!("text={text:?}"));
        }
        if !self.positions.is_empty() {
            let positions: Vec<String> = self
                .positions
                .iter()
                .map(|(partition, offset)| format!("{partition}:{offset}"))
                .collect();
            parts.push(format!("position={}", positions.join(",")));
        }
        parts.join(" ")
    }
}

/// The dead letters now in the DLQ, oldest first per partition, optionally of one tenant, each
/// marked with its purge (see [`DeadLetterView::purged`]) if it was purged.
pub async fn list(
    settings: &Settings,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<DeadLetterView>> {
    let tenant = tenant.map(TenantId::parse).transpose()?;
    let repository = ActivityRepository::connect(&settings.mongo).await?;
    list_matching(
        settings,
        &repository,
        &DeadLetterFilter::for_tenant(tenant),
        READ_TIMEOUT,
    )
    .await
}

/// The dead letters now in the DLQ that `filter` selects, oldest first per partition, each marked
/// with its purge if it was purged. Reading the DLQ (and the purge log) must finish within
/// `timeout`. `repository` holds the purge log (a long-running caller, the console, keeps one).
pub async fn list_matching(
    settings: &Settings,
    repository: &ActivityRepository,
    filter: &DeadLetterFilter,
    timeout: Duration,
) -> anyhow::Result<Vec<DeadLetterView>> {
    let kafka = settings.kafka.clone();
    let topic = settings.kafka.dlq_topic.clone();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&kafka, &topic, timeout)).await??;
    let purge_log = repository.purge_log();
    let mut purged = tokio::time::timeout(timeout, purge_log.purged())
        .await
        .map_err(|_| anyhow::anyhow!("reading the purge log took longer than {timeout:?}"))??;
    Ok(records
        .into_iter()
        .map(DeadLetterView::from_record)
        .filter(|view| filter.matches(view))
        .map(|mut view| {
            view.purged = purged.remove(&view.log_id());
            view
        })
        .collect())
}

/// One dead letter by position.
pub async fn show(
    settings: &Settings,
    partition: i32,
    offset: i64,
) -> anyhow::Result<DeadLetterView> {
    list(settings, None)
        .await?
        .into_iter()
        .find(|view| view.record.partition == partition && view.record.offset == offset)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no dead letter at {partition}:{offset} in {}",
                settings.kafka.dlq_topic
            )
        })
}

/// What `dlq replay` did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    Replayed,
    WouldReplay,
    AlreadyReplayed,
    /// Purged with `dlq purge`: never replayed, not even with `again`.
    Purged,
}

/// Republishes dead letters (of `tenant`, if given) to the main topic with their original key, value
/// and headers, so they are processed again under the same idempotency key: replaying something
/// already stored changes nothing. Each replay is recorded in MongoDB, and a dead letter already
/// replayed is skipped unless `again`; a purged one is always skipped.
pub async fn replay(
    settings: &Settings,
    tenant: Option<&str>,
    dry_run: bool,
    again: bool,
) -> anyhow::Result<Vec<(DeadLetterView, ReplayOutcome)>> {
    let tenant = tenant.map(TenantId::parse).transpose()?;
    let repository = ActivityRepository::connect(&settings.mongo).await?;
    replay_matching(
        settings,
        &repository,
        &DeadLetterFilter::for_tenant(tenant),
        dry_run,
        again,
        &Progress::unwatched(),
    )
    .await
}

/// Dead letters worked through together: those to replay are published concurrently, then recorded
/// in the replay log with one call. One at a time, a replay of 10,000 took minutes (a round trip to the broker and a log upsert
/// per record, the upsert slower as the log grew).
const REPLAY_CHUNK: usize = 500;

/// Publishes the dead letters at `pending` in `outcomes` (all at once; the producer keeps their
/// order per partition), records those published in the replay log, and marks them replayed. A
/// publish that failed fails the run after the others are recorded, so the log holds every replay
/// that happened.
async fn replay_chunk(
    outcomes: &mut [(DeadLetterView, ReplayOutcome)],
    pending: &[usize],
    publisher: &ActivityPublisher,
    replay_log: &ReplayLog,
    replayed_before: &HashSet<String>,
) -> anyhow::Result<()> {
    let published = futures::future::join_all(
        pending
            .iter()
            .map(|&index| publisher.replay(&outcomes[index].0.record)),
    )
    .await;
    let mut first_failure = None;
    let mut new_entries = Vec::new();
    let mut again = Vec::new();
    for (&index, result) in pending.iter().zip(published) {
        let view = &outcomes[index].0;
        if let Err(error) = result {
            first_failure
                .get_or_insert_with(|| anyhow::anyhow!("replaying {}: {error}", view.position()));
            continue;
        }
        let log_id = view.log_id();
        tracing::info!(position = %view.position(), tenant = ?view.tenant, key = ?view.idempotency_key, "dead letter replayed");
        if replayed_before.contains(&log_id) {
            again.push(index);
        } else {
            new_entries.push((log_id, view.tenant.clone(), view.idempotency_key.clone()));
        }
        outcomes[index].1 = ReplayOutcome::Replayed;
    }
    replay_log.record_new(&new_entries).await?;
    // Replayed again (`again`): their entries exist; each gets its new time.
    for index in again {
        let view = &outcomes[index].0;
        replay_log
            .record(
                &view.log_id(),
                view.tenant.as_deref(),
                view.idempotency_key.as_deref(),
            )
            .await?;
    }
    first_failure.map_or(Ok(()), Err)
}

/// [`replay`] of the dead letters `filter` selects: the one path of `dlq replay` and the console.
/// `progress` learns how many were selected and counts them as they are worked through; when it
/// says stop, the replay ends between two dead letters with [`super::progress::Stopped`] (each
/// one replayed before is in the replay log, so running it again does the rest).
pub async fn replay_matching(
    settings: &Settings,
    repository: &ActivityRepository,
    filter: &DeadLetterFilter,
    dry_run: bool,
    again: bool,
    progress: &Progress,
) -> anyhow::Result<Vec<(DeadLetterView, ReplayOutcome)>> {
    let dead_letters = list_matching(settings, repository, filter, READ_TIMEOUT).await?;
    let replay_log = repository.replay_log();
    let replayed = replay_log.replayed().await?;
    let publisher = if dry_run {
        None
    } else {
        Some(ActivityPublisher::new(&settings.kafka)?)
    };
    progress.listed(dead_letters.len());
    let mut outcomes: Vec<(DeadLetterView, ReplayOutcome)> = Vec::with_capacity(dead_letters.len());
    let mut listed = dead_letters.into_iter().peekable();
    while listed.peek().is_some() {
        // Indexes into `outcomes` of this chunk's dead letters to replay.
        let mut pending: Vec<usize> = Vec::new();
        for view in listed.by_ref().take(REPLAY_CHUNK) {
            // Stopping here leaves this chunk's pending dead letters unpublished, so unreplayed.
            progress.next_record().await?;
            let outcome = if view.purged.is_some() {
                ReplayOutcome::Purged
            } else if replayed.contains(&view.log_id()) && !again {
                ReplayOutcome::AlreadyReplayed
            } else {
                ReplayOutcome::WouldReplay
            };
            if outcome == ReplayOutcome::WouldReplay && publisher.is_some() {
                pending.push(outcomes.len());
            } else {
                progress.advance();
            }
            outcomes.push((view, outcome));
        }
        if let Some(publisher) = &publisher {
            replay_chunk(&mut outcomes, &pending, publisher, &replay_log, &replayed).await?;
            progress.advance_by(pending.len());
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(parse_position("3:42"), Ok((3, 42)));
        for bad in ["", "3", "3:", ":4", "a:1", "1:b", "-1:0", "0:-5", "1:2:3"] {
            assert!(parse_position(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_filter_holds_every_criterion_given() {
        use crate::failures::headers as failure_headers;

        let view = |tenant: &str, class: &str, at: &str, payload: &str| {
            let mut record = ConsumedRecord::from_parts(
                "activities.dlq",
                0,
                1,
                Some(tenant.as_bytes().to_vec()),
                Some(payload.as_bytes().to_vec()),
            );
            for (name, value) in [
                (failure_headers::ERROR_CLASS, class),
                (failure_headers::LAST_FAILURE_AT, at),
                (failure_headers::ERROR, "MongoDB timed out"),
            ] {
                record
                    .headers
                    .push((name.to_owned(), Some(value.as_bytes().to_vec())));
            }
            DeadLetterView::from_record(record)
        };
        let at = |raw: &str| {
            DateTime::parse_from_rfc3339(raw)
                .unwrap()
                .with_timezone(&Utc)
        };
        let acme = view(
            "acme",
            "transient",
            "2026-12-02T10:30:00Z",
            r#"{"a":"Needle"}"#,
        );
        let filter = DeadLetterFilter {
            tenant: Some(TenantId::parse("acme").unwrap()),
            class: Some("transient".to_owned()),
            failed_from: Some(at("2026-12-02T10:00:00Z")),
            failed_until: Some(at("2026-12-02T11:00:00Z")),
            text: Some("needle".to_owned()),
            positions: BTreeSet::from([(0, 1)]),
        };
        assert!(filter.matches(&acme));
        assert!(DeadLetterFilter::default().matches(&acme));
        for (other, why) in [
            (
                view("globex", "transient", "2026-12-02T10:30:00Z", "needle"),
                "tenant",
            ),
            (
                view("acme", "poison", "2026-12-02T10:30:00Z", "needle"),
                "class",
            ),
            (
                view("acme", "transient", "2026-12-02T11:00:00Z", "needle"),
                "until is exclusive",
            ),
            (
                view("acme", "transient", "not a time", "needle"),
                "no time, never in a range",
            ),
            (
                view("acme", "transient", "2026-12-02T10:30:00Z", "hay"),
                "text",
            ),
        ] {
            assert!(!filter.matches(&other), "{why}");
        }
        let in_error = DeadLetterFilter {
            text: Some("TIMED OUT".to_owned()),
            ..DeadLetterFilter::default()
        };
        assert!(in_error.matches(&acme), "text is searched in the error too");
        assert_eq!(
            filter.describe(),
            "tenant=acme class=transient from=2026-12-02T10:00:00+00:00 \
             until=2026-12-02T11:00:00+00:00 text=\"needle\" position=0:1"
        );
    }

    #[test]
    fn views_read_the_dead_letter_headers() {
        use crate::failures::headers as failure_headers;

        let mut record = ConsumedRecord::from_parts(
            "activities.dlq",
            2,
            7,
            Some(b"acme".to_vec()),
            Some(b"{}".to_vec()),
        );
        for (name, value) in [
            (headers::IDEMPOTENCY_KEY, "k-1"),
            (failure_headers::ERROR, "boom"),
            (failure_headers::ERROR_CLASS, "poison"),
            (failure_headers::ATTEMPTS, "1"),
            (failure_headers::SOURCE_TOPIC, "activities"),
            (failure_headers::SOURCE_PARTITION, "5"),
            (failure_headers::SOURCE_OFFSET, "9"),
        ] {
            record
                .headers
                .push((name.to_owned(), Some(value.as_bytes().to_vec())));
        }
        let view = DeadLetterView::from_record(record);
        assert_eq!(view.position(), "2:7");
        assert_eq!(view.tenant.as_deref(), Some("acme"));
        assert_eq!(view.facts.source, "activities[5]@9");
        let line = view.summary_line();
        assert!(
            line.contains("key=k-1")
                && line.contains("class=poison")
                && line.contains("error=boom"),
            "{line}"
        );
        assert!(view.details().contains("dlq-error: boom"));
    }
}
