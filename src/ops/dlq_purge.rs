//! `dlq purge`: an operator declares dead letters done, instead of waiting for the DLQ's retention
//! (which is "forever" by default).
//!
//! Kafka cannot delete one record from the middle of a partition: DeleteRecords only drops a prefix
//! of it, up to an offset. So a purge has two steps, in this order:
//! 1. Each selected dead letter is recorded in the purge log (MongoDB, beside the replay log). From
//!    then on `dlq list` hides it (unless asked), `dlq show` says so, and `dlq replay` skips it.
//! 2. In each partition, the longest prefix whose records are all purged is dropped from the topic
//!    with DeleteRecords. Recording first means a failure between the steps loses nothing and hides
//!    what was meant to be hidden; every later purge (or dry run) retries the drop, since it is
//!    computed from the whole log, not from this purge's selection.
//!
//! Only purged dead letters make a prefix droppable, not replayed ones: a replay republishes a copy,
//! and the operator may still want the original (for instance when the replay dead-letters again).
//! `dlq purge` on the replayed positions says "done" explicitly.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::dlq::{list_matching, DeadLetterFilter, DeadLetterView};
use super::progress::Progress;
use crate::config::Settings;
use crate::kafka::delete_records_before;
use crate::store::{ActivityRepository, PurgeLog, PurgedDeadLetter, RedisStore};

/// How long reading the DLQ and the purge log may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which dead letters to purge. Every criterion given must hold; with none, `all` must be set
/// (purging everything is never the result of forgetting a flag).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeSelection {
    /// Tenant, error class, time range, text and positions: the same filter `dlq replay` and the
    /// console select with.
    pub filter: DeadLetterFilter,
    /// Dead-lettered (the `dlq-last-failure-at` header) at least this long ago. A dead letter
    /// without a readable failure time is never selected by age.
    pub older_than: Option<Duration>,
    pub all: bool,
}

impl PurgeSelection {
    /// Refuses a selection that names nothing, and `all` mixed with criteria (one of them is a
    /// mistake, and guessing which could purge too much).
    pub fn validate(&self) -> Result<(), String> {
        let has_criteria = !self.filter.is_empty() || self.older_than.is_some();
        match (self.all, has_criteria) {
            (false, false) => Err(
                "choose what to purge: --tenant, --older-than, --position, or --all for everything"
                    .to_owned(),
            ),
            (true, true) => Err("--all cannot be combined with other criteria".to_owned()),
            _ => Ok(()),
        }
    }

    /// Whether `view` is selected, judged at `now`.
    pub fn matches(&self, view: &DeadLetterView, now: DateTime<Utc>) -> bool {
        if self.all {
            return true;
        }
        let age_matches = self.older_than.is_none_or(|older_than| {
            DateTime::parse_from_rfc3339(&view.facts.last_failure_at)
                .ok()
                .and_then(|at| (now - at.with_timezone(&Utc)).to_std().ok())
                .is_some_and(|age| age >= older_than)
        });
        self.filter.matches(view) && age_matches
    }

    /// The selection as the purge log records it: `tenant=acme older-than=7d position=0:3,1:4`.
    pub fn describe(&self) -> String {
        if self.all {
            return "all".to_owned();
        }
        let mut parts = Vec::new();
        let filter = self.filter.describe();
        if !filter.is_empty() {
            parts.push(filter);
        }
        if let Some(older_than) = self.older_than {
            parts.push(format!(
                "older-than={}",
                humantime::format_duration(older_than)
            ));
        }
        parts.join(" ")
    }
}

/// Parses an age such as `7d`, `12h`, `90m` or `1h 30m` (humantime's syntax); zero is refused.
pub fn parse_age(raw: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(raw.trim())
        .map_err(|error| format!("{raw:?} is not a duration like 7d, 12h or 30m: {error}"))?;
    if age.is_zero() {
        return Err(format!("{raw:?}: the age must be longer than 0"));
    }
    Ok(age)
}

/// A purge named positions that hold no dead letter; nothing was purged. Callers tell it from a
/// failure (the console answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no dead letter at {} in {topic} (already dropped, or never there; `dlq list` prints the \
     positions); nothing purged",
    positions.join(", ")
)]
pub struct UnknownPositions {
    pub positions: Vec<String>,
    pub topic: String,
}

/// What `dlq purge` did, or would do, with one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeOutcome {
    Purged,
    WouldPurge,
    /// Purged before; the earlier purge is kept as it was.
    AlreadyPurged,
}

/// A prefix of one DLQ partition that is (or, in a dry run, would be) deleted from Kafka: every
/// record before `before_offset` is purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixDrop {
    pub partition: i32,
    pub before_offset: i64,
    /// How many of the records read now are in the prefix.
    pub records: usize,
}

#[derive(Debug, Clone)]
pub struct PurgeReport {
    pub outcomes: Vec<(DeadLetterView, PurgeOutcome)>,
    pub dropped: Vec<PrefixDrop>,
    pub dry_run: bool,
}

/// Purges the dead letters `selection` names (see the module doc for the two steps). With
/// `dry_run`, reports the same without changing anything. Positions that are not in the DLQ are an
/// error, before anything is purged. `progress` learns how many dead letters are selected and
/// counts them as they are recorded; when it says stop, the purge ends between two of them with
/// [`super::progress::Stopped`], before dropping anything from Kafka (what it recorded stays
/// purged, and any later purge drops the prefixes).
pub async fn purge(
    settings: &Settings,
    repository: &ActivityRepository,
    selection: &PurgeSelection,
    reason: Option<&str>,
    dry_run: bool,
    progress: &Progress,
) -> anyhow::Result<PurgeReport> {
    selection.validate().map_err(anyhow::Error::msg)?;
    let dead_letters = list_matching(
        settings,
        repository,
        &DeadLetterFilter::default(),
        LIST_TIMEOUT,
    )
    .await?;
    let present: HashSet<(i32, i64)> = dead_letters
        .iter()
        .map(|view| (view.record.partition, view.record.offset))
        .collect();
    let missing: Vec<String> = selection
        .filter
        .positions
        .iter()
        .filter(|position| !present.contains(position))
        .map(|(partition, offset)| format!("{partition}:{offset}"))
        .collect();
    if !missing.is_empty() {
        return Err(UnknownPositions {
            positions: missing,
            topic: settings.kafka.dlq_topic.clone(),
        }
        .into());
    }

    let purge_log = repository.purge_log();
    // Told after each recorded chunk, so the console's copy of the purge log follows.
    let generation = if dry_run {
        None
    } else {
        Some(RedisStore::connect(&settings.redis)?)
    };
    let now = Utc::now();
    let description = selection.describe();
    let mut purged_positions: HashSet<(i32, i64)> = HashSet::new();
    let mut outcomes = Vec::new();
    progress.listed(
        dead_letters
            .iter()
            .filter(|view| selection.matches(view, now))
            .count(),
    );
    for chunk in dead_letters.chunks(PURGE_CHUNK) {
        // This chunk's purges, recorded together with one call to the purge log.
        let mut pending: Vec<(DeadLetterView, PurgedDeadLetter)> = Vec::new();
        for view in chunk {
            let position = (view.record.partition, view.record.offset);
            let selected = selection.matches(view, now);
            if view.purged.is_some() {
                purged_positions.insert(position);
                if selected {
                    outcomes.push((view.clone(), PurgeOutcome::AlreadyPurged));
                    progress.advance();
                }
                continue;
            }
            if !selected {
                continue;
            }
            // Stopping here leaves this chunk's pending purges unrecorded: those are not purged,
            // and the prefix drops below only count what was recorded.
            progress.next_record().await?;
            if dry_run {
                purged_positions.insert(position);
                outcomes.push((view.clone(), PurgeOutcome::WouldPurge));
                progress.advance();
                continue;
            }
            let entry = PurgedDeadLetter {
                position: view.log_id(),
                tenant: view.tenant.clone(),
                idempotency_key: view.idempotency_key.clone(),
                purged_at: now,
                selection: description.clone(),
                reason: reason.map(str::to_owned),
            };
            pending.push((view.clone(), entry));
        }
        record_purges(
            &purge_log,
            generation.as_ref(),
            pending,
            &mut purged_positions,
            &mut outcomes,
            progress,
        )
        .await?;
    }

    let positions: Vec<(i32, i64)> = dead_letters
        .iter()
        .map(|view| (view.record.partition, view.record.offset))
        .collect();
    let dropped = droppable_prefixes(&positions, &purged_positions);
    if !dry_run && !dropped.is_empty() {
        let before: Vec<(i32, i64)> = dropped
            .iter()
            .map(|drop| (drop.partition, drop.before_offset))
            .collect();
        delete_records_before(&settings.kafka, &settings.kafka.dlq_topic, &before)
            .await
            .map_err(|error| {
                error.context(
                    "the purge is recorded (purged dead letters are hidden and never replayed), \
                     but dropping them from Kafka failed; any later `dlq purge` retries it",
                )
            })?;
    }
    Ok(PurgeReport {
        outcomes,
        dropped,
        dry_run,
    })
}

/// Dead letters worked through together, their purges recorded with one call to the purge log: one
/// at a time, an upsert each, a purge of 10^4 took minutes on FerretDB (each upsert slower as the
/// log grew).
const PURGE_CHUNK: usize = 500;

/// Bumps the purge log's generation in Redis, so consoles reload their copy of the log. Redis down
/// does not undo or fail the purge: a console also reloads its copy once a minute.
async fn announce_purges(redis: Option<&RedisStore>) {
    if let Some(redis) = redis {
        if let Err(error) = redis.bump_purge_log_generation().await {
            tracing::warn!(%error, "the purge is recorded, but Redis did not take the purge log's generation: consoles show it within a minute");
        }
    }
}

/// Records the `pending` purges in the purge log (and says so through `generation`), then counts them
/// purged.
async fn record_purges(
    purge_log: &PurgeLog,
    generation: Option<&RedisStore>,
    pending: Vec<(DeadLetterView, PurgedDeadLetter)>,
    purged_positions: &mut HashSet<(i32, i64)>,
    outcomes: &mut Vec<(DeadLetterView, PurgeOutcome)>,
    progress: &Progress,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let entries: Vec<PurgedDeadLetter> = pending.iter().map(|(_, entry)| entry.clone()).collect();
    purge_log.record_new(&entries).await?;
    announce_purges(generation).await;
    let recorded = pending.len();
    for (mut view, entry) in pending {
        tracing::info!(position = %view.position(), tenant = ?view.tenant, key = ?view.idempotency_key, selection = %entry.selection, "dead letter purged");
        purged_positions.insert((view.record.partition, view.record.offset));
        view.purged = Some(entry);
        outcomes.push((view, PurgeOutcome::Purged));
    }
    progress.advance_by(recorded);
    Ok(())
}

/// For each partition of `positions` (every record now in the DLQ), the longest prefix whose records
/// are all in `purged`. Offsets need not be contiguous (a topic may have gaps); a partition whose
/// first record is not purged has nothing to drop.
pub fn droppable_prefixes(
    positions: &[(i32, i64)],
    purged: &HashSet<(i32, i64)>,
) -> Vec<PrefixDrop> {
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for &(partition, offset) in positions {
        by_partition.entry(partition).or_default().push(offset);
    }
    by_partition
        .into_iter()
        .filter_map(|(partition, mut offsets)| {
            offsets.sort_unstable();
            let records = offsets
                .iter()
                .take_while(|offset| purged.contains(&(partition, **offset)))
                .count();
            let before_offset = match offsets.get(records) {
                Some(first_kept) => *first_kept,
                None => offsets.last()? + 1,
            };
            (records > 0).then_some(PrefixDrop {
                partition,
                before_offset,
                records,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::TenantId;
    use crate::kafka::ConsumedRecord;

    fn view(partition: i32, offset: i64, tenant: &str, last_failure_at: &str) -> DeadLetterView {
        let mut record = ConsumedRecord::from_parts(
            "activities.dlq",
            partition,
            offset,
            Some(tenant.as_bytes().to_vec()),
            Some(b"{}".to_vec()),
        );
        record.headers.push((
            crate::failures::headers::LAST_FAILURE_AT.to_owned(),
            Some(last_failure_at.as_bytes().to_vec()),
        ));
        DeadLetterView::from_record(record)
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    #[test]
    fn ages_parse_like_an_operator_writes_them() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("1h 30m"), Ok(Duration::from_secs(5_400)));
        for bad in ["", "7", "seven days", "-1d", "0s", "7x", "d7"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
        assert!(parse_age("7").unwrap_err().contains("like 7d"));
    }

    #[test]
    fn an_empty_selection_and_all_with_criteria_are_refused() {
        assert!(PurgeSelection::default().validate().is_err());
        let all = PurgeSelection {
            all: true,
            ..PurgeSelection::default()
        };
        assert!(all.validate().is_ok());
        let mixed = PurgeSelection {
            filter: DeadLetterFilter::for_tenant(Some(TenantId::parse("acme").unwrap())),
            ..all
        };
        assert!(mixed.validate().is_err());
    }

    #[test]
    fn every_criterion_given_must_hold() {
        let now = at("2026-12-02T12:00:00Z");
        let old_acme = view(0, 3, "acme", "2026-11-20T12:00:00Z");
        let new_acme = view(0, 4, "acme", "2026-12-02T11:00:00Z");
        let old_globex = view(1, 3, "globex", "2026-11-20T12:00:00Z");
        let no_time = view(1, 4, "acme", "not a time");
        let selection = PurgeSelection {
            filter: DeadLetterFilter::for_tenant(Some(TenantId::parse("acme").unwrap())),
            older_than: Some(parse_age("7d").unwrap()),
            ..PurgeSelection::default()
        };
        assert!(selection.matches(&old_acme, now));
        assert!(!selection.matches(&new_acme, now));
        assert!(!selection.matches(&old_globex, now));
        assert!(!selection.matches(&no_time, now), "no age, never old");
        assert_eq!(selection.describe(), "tenant=acme older-than=7days");

        let by_position = PurgeSelection {
            filter: DeadLetterFilter {
                positions: BTreeSet::from([(0, 4), (1, 3)]),
                ..DeadLetterFilter::default()
            },
            ..PurgeSelection::default()
        };
        assert!(!by_position.matches(&old_acme, now));
        assert!(by_position.matches(&new_acme, now));
        assert!(by_position.matches(&old_globex, now));
        assert_eq!(by_position.describe(), "position=0:4,1:3");
    }

    #[test]
    fn only_an_all_purged_prefix_is_dropped() {
        let positions = [(0, 5), (0, 6), (0, 7), (1, 0), (1, 1), (2, 10), (2, 12)];
        let purged: HashSet<(i32, i64)> = [(0, 5), (0, 7), (1, 1), (2, 10), (2, 12)]
            .into_iter()
            .collect();
        assert_eq!(
            droppable_prefixes(&positions, &purged),
            [
                // 0:6 is kept, so 0:7 stays too; 1:0 is kept, so partition 1 keeps everything.
                PrefixDrop {
                    partition: 0,
                    before_offset: 6,
                    records: 1
                },
                // Everything purged, with a gap: up to the last record, inclusive.
                PrefixDrop {
                    partition: 2,
                    before_offset: 13,
                    records: 2
                },
            ]
        );
        assert_eq!(droppable_prefixes(&[], &purged), []);
    }
}
