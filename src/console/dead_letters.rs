//! The dead letters as the console shows and acts on them: parsing a filter from untrusted input
//! (query strings, forms, JSON) with a precise error per field, newest-first pages with a cursor,
//! and the replay and purge actions, which run the `dlq` verbs' own code (`ops::dlq`,
//! `ops::dlq_purge`) and are audited.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ConsoleError;
use crate::domain::TenantId;
use crate::failures::FailureClass;
use crate::ops::dlq::{parse_position, DeadLetterFilter, DeadLetterView, ReplayOutcome};
use crate::ops::dlq_purge::{PrefixDrop, PurgeOutcome, PurgeReport};

/// The longest `text` filter accepted.
pub const TEXT_FILTER_MAX_CHARS: usize = 200;
/// Most items an action's answer lists; the counts always cover everything.
pub const ACTION_ITEMS_MAX: usize = 1000;

/// A dead-letter filter as it arrives: every field text, parsed by [`RawFilter::parse`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RawFilter {
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
}

impl RawFilter {
    /// The filter, or a 400 naming the field at fault. Empty fields count as absent (an HTML form
    /// sends every field).
    pub fn parse(&self) -> Result<DeadLetterFilter, ConsoleError> {
        let given = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        let tenant = given(&self.tenant)
            .map(|tenant| {
                TenantId::parse(&tenant)
                    .map_err(|error| ConsoleError::BadRequest(format!("`tenant`: {error}")))
            })
            .transpose()?;
        let class = given(&self.class)
            .map(|class| {
                FailureClass::parse(&class)
                    .map(|class| class.as_str().to_owned())
                    .ok_or_else(|| {
                        let known: Vec<&str> = FailureClass::ALL
                            .iter()
                            .map(|class| class.as_str())
                            .collect();
                        ConsoleError::BadRequest(format!(
                            "`class`: unknown error class {class:?}; expected one of {}",
                            known.join(", ")
                        ))
                    })
            })
            .transpose()?;
        let time = |field: &str, value: Option<String>| {
            value
                .map(|raw| {
                    DateTime::parse_from_rfc3339(&raw)
                        .map(|time| time.with_timezone(&Utc))
                        .map_err(|error| {
                            ConsoleError::BadRequest(format!(
                                "`{field}`: {raw:?} is not an RFC 3339 time like \
                                 2026-12-02T10:00:00Z ({error})"
                            ))
                        })
                })
                .transpose()
        };
        let failed_from = time("from", given(&self.from))?;
        let failed_until = time("until", given(&self.until))?;
        if let (Some(from), Some(until)) = (failed_from, failed_until) {
            if from >= until {
                return Err(ConsoleError::BadRequest(
                    "`from` must be before `until`".to_owned(),
                ));
            }
        }
        let text = given(&self.text);
        if let Some(text) = &text {
            if text.chars().count() > TEXT_FILTER_MAX_CHARS {
                return Err(ConsoleError::BadRequest(format!(
                    "`text`: at most {TEXT_FILTER_MAX_CHARS} characters"
                )));
            }
        }
        let mut positions = BTreeSet::new();
        if let Some(raw) = given(&self.position) {
            for item in raw.split(',') {
                positions.insert(
                    parse_position(item.trim()).map_err(|error| {
                        ConsoleError::BadRequest(format!("`position`: {error}"))
                    })?,
                );
            }
        }
        Ok(DeadLetterFilter {
            tenant,
            class,
            failed_from,
            failed_until,
            text,
            positions,
        })
    }

    /// The query string that reproduces this filter (for the pages' links).
    pub fn to_query(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }
}

/// How `GET /console/api/dead-letters/export` writes the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One `DeadLetterDetails` JSON object per line (`application/x-ndjson`).
    JsonLines,
    /// One row per dead letter under a header row ([`CSV_COLUMNS`]), RFC 4180 quoting (`text/csv`).
    Csv,
}

impl ExportFormat {
    /// `jsonl` (the default when absent or empty) or `csv`; anything else is a 400.
    pub fn parse(raw: Option<&str>) -> Result<ExportFormat, ConsoleError> {
        match raw.map(str::trim).unwrap_or("") {
            "" | "jsonl" => Ok(ExportFormat::JsonLines),
            "csv" => Ok(ExportFormat::Csv),
            other => Err(ConsoleError::BadRequest(format!(
                "`format`: {other:?} is not an export format (jsonl or csv)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::JsonLines => "jsonl",
            ExportFormat::Csv => "csv",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::JsonLines => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }

    /// The selection (newest first) in this format.
    pub fn write(self, views: &[Arc<DeadLetterView>]) -> Result<String, ConsoleError> {
        match self {
            ExportFormat::JsonLines => {
                let mut body = String::new();
                for view in views {
                    body.push_str(
                        &serde_json::to_string(&DeadLetterDetails::of(view))
                            .map_err(|error| ConsoleError::Unexpected(error.into()))?,
                    );
                    body.push('\n');
                }
                Ok(body)
            }
            ExportFormat::Csv => csv_of(views),
        }
    }
}

/// The CSV export's columns. `payload` is the record's value exactly as the DLQ holds it (as
/// UTF-8, invalid bytes replaced), not pretty-printed, so it can be fed back as it was;
/// `headers` is every header as a JSON array of `[name, value]` pairs.
pub const CSV_COLUMNS: [&str; 13] = [
    "position",
    "tenant",
    "idempotencyKey",
    "errorClass",
    "error",
    "attempts",
    "firstFailureAt",
    "lastFailureAt",
    "source",
    "purgedAt",
    "topic",
    "headers",
    "payload",
];

/// The selection as CSV: the `csv` crate quotes every field that holds a comma, a quote or a line
/// break (RFC 4180), so tenants' payloads round-trip through any CSV parser. Values are written
/// as they are: a spreadsheet that evaluates a cell starting with `=` should import as text.
fn csv_of(views: &[Arc<DeadLetterView>]) -> Result<String, ConsoleError> {
    let unexpected = |error: csv::Error| ConsoleError::Unexpected(error.into());
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS).map_err(unexpected)?;
    for view in views {
        let summary = DeadLetterSummary::of(view);
        let headers: Vec<(&str, Option<String>)> = view
            .record
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str(),
                    value
                        .as_deref()
                        .map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
                )
            })
            .collect();
        let headers = serde_json::to_string(&headers)
            .map_err(|error| ConsoleError::Unexpected(error.into()))?;
        let payload = view
            .record
            .payload
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        writer
            .write_record([
                summary.position.as_str(),
                summary.tenant.as_deref().unwrap_or(""),
                summary.idempotency_key.as_deref().unwrap_or(""),
                &summary.error_class,
                &summary.error,
                &summary.attempts,
                &summary.first_failure_at,
                &summary.last_failure_at,
                &summary.source,
                &summary
                    .purged_at
                    .map(|at| at.to_rfc3339())
                    .unwrap_or_default(),
                &view.record.topic,
                &headers,
                &payload,
            ])
            .map_err(unexpected)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| ConsoleError::Unexpected(anyhow::anyhow!("writing CSV: {error}")))?;
    String::from_utf8(bytes).map_err(|error| ConsoleError::Unexpected(error.into()))
}

/// A dead letter in a listing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSummary {
    /// `partition:offset` in the DLQ: the dead letter's id in the console and in `dlq show`.
    pub position: String,
    pub tenant: Option<String>,
    pub idempotency_key: Option<String>,
    pub error_class: String,
    pub error: String,
    pub attempts: String,
    pub first_failure_at: String,
    pub last_failure_at: String,
    /// `topic[partition]@offset` where the record was first consumed.
    pub source: String,
    /// When `dlq purge` (or the console) purged it; purged ones are listed only on request.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub purged_at: Option<DateTime<Utc>>,
}

impl DeadLetterSummary {
    pub fn of(view: &DeadLetterView) -> DeadLetterSummary {
        DeadLetterSummary {
            position: view.position(),
            tenant: view.tenant.clone(),
            idempotency_key: view.idempotency_key.clone(),
            error_class: view.facts.class.clone(),
            error: view.facts.error.clone(),
            attempts: view.facts.attempts.clone(),
            first_failure_at: view.facts.first_failure_at.clone(),
            last_failure_at: view.facts.last_failure_at.clone(),
            source: view.facts.source.clone(),
            purged_at: view.purged.as_ref().map(|purged| purged.purged_at),
        }
    }
}

/// One header of a dead letter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeaderView {
    pub name: String,
    /// The value as text (invalid UTF-8 replaced); null for a header without a value.
    pub value: Option<String>,
}

/// Everything about one dead letter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterDetails {
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    pub topic: String,
    pub headers: Vec<HeaderView>,
    /// The value, pretty-printed when it is JSON, else as text; null for none.
    pub payload: Option<String>,
    /// Whether the value parsed as JSON.
    pub payload_is_json: bool,
    pub purge_selection: Option<String>,
    pub purge_reason: Option<String>,
}

impl DeadLetterDetails {
    pub fn of(view: &DeadLetterView) -> DeadLetterDetails {
        let payload = view.record.payload.as_deref().map(|bytes| {
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(json) => (
                    serde_json::to_string_pretty(&json).unwrap_or_default(),
                    true,
                ),
                Err(_) => (String::from_utf8_lossy(bytes).into_owned(), false),
            }
        });
        DeadLetterDetails {
            summary: DeadLetterSummary::of(view),
            topic: view.record.topic.clone(),
            headers: view
                .record
                .headers
                .iter()
                .map(|(name, value)| HeaderView {
                    name: name.clone(),
                    value: value
                        .as_deref()
                        .map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
                })
                .collect(),
            payload_is_json: payload.as_ref().is_some_and(|(_, json)| *json),
            payload: payload.map(|(text, _)| text),
            purge_selection: view.purged.as_ref().map(|purged| purged.selection.clone()),
            purge_reason: view
                .purged
                .as_ref()
                .and_then(|purged| purged.reason.clone()),
        }
    }
}

/// One page of dead letters, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterSummary>,
    /// How many match the filter, all pages together.
    pub total: usize,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Newest first: by last failure time, then by position (the later offset first). Each time is
/// parsed once, not per comparison: at 10^5 dead letters that is most of the sort.
pub fn sort_newest_first(views: &mut [Arc<DeadLetterView>]) {
    views.sort_by_cached_key(|view| {
        let time = DateTime::parse_from_rfc3339(&view.facts.last_failure_at)
            .ok()
            .map(|at| at.with_timezone(&Utc));
        std::cmp::Reverse((time, view.record.offset, view.record.partition))
    });
}

/// The page of `views` (sorted newest first) after `cursor`, at most `limit` long. A cursor is the
/// position of the last dead letter of the previous page; one that is not in `views` (dropped
/// since, or never there) is a 400, so a client never silently restarts from the top.
pub fn page(
    views: &[Arc<DeadLetterView>],
    cursor: Option<&str>,
    limit: usize,
) -> Result<DeadLetterPage, ConsoleError> {
    let start = match cursor.map(str::trim).filter(|cursor| !cursor.is_empty()) {
        None => 0,
        Some(raw) => {
            let (partition, offset) = parse_position(raw)
                .map_err(|error| ConsoleError::BadRequest(format!("`cursor`: {error}")))?;
            let found = views
                .iter()
                .position(|view| view.record.partition == partition && view.record.offset == offset)
                .ok_or_else(|| {
                    ConsoleError::BadRequest(format!(
                        "`cursor`: {raw} is not a dead letter of this listing (purged or \
                         dropped since, or another filter's); start again without a cursor"
                    ))
                })?;
            found + 1
        }
    };
    let end = (start + limit).min(views.len());
    let dead_letters: Vec<DeadLetterSummary> = views[start.min(end)..end]
        .iter()
        .map(|view| DeadLetterSummary::of(view))
        .collect();
    let next_cursor = (end < views.len())
        .then(|| dead_letters.last().map(|last| last.position.clone()))
        .flatten();
    Ok(DeadLetterPage {
        dead_letters,
        total: views.len(),
        next_cursor,
    })
}

/// Parses `limit`: absent means `default`; otherwise 1 to `max`.
pub fn parse_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, ConsoleError> {
    match raw.map(str::trim).filter(|raw| !raw.is_empty()) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| {
                ConsoleError::BadRequest(format!(
                    "`limit`: {raw:?} is not a number from 1 to {max}"
                ))
            }),
    }
}

/// What an action did, or would do, with one dead letter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionItem {
    pub position: String,
    pub tenant: Option<String>,
    pub idempotency_key: Option<String>,
    /// `replayed`, `would-replay`, `skipped-already-replayed`, `skipped-purged`, `purged`,
    /// `would-purge`, `skipped-already-purged`.
    pub outcome: String,
}

/// The answer of a replay, or of its dry-run preview.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Dead letters the filter selected.
    pub matched: usize,
    pub replayed: usize,
    pub would_replay: usize,
    /// Replayed before (the replay log remembers); replayed again only with `again`.
    pub skipped_already_replayed: usize,
    /// Purged: never replayed.
    pub skipped_purged: usize,
    /// At most [`ACTION_ITEMS_MAX`] of them; the counts cover all.
    pub items: Vec<ActionItem>,
}

impl ReplayReport {
    pub fn of(outcomes: &[(DeadLetterView, ReplayOutcome)], dry_run: bool) -> ReplayReport {
        let count = |wanted: ReplayOutcome| {
            outcomes
                .iter()
                .filter(|(_, outcome)| *outcome == wanted)
                .count()
        };
        ReplayReport {
            dry_run,
            matched: outcomes.len(),
            replayed: count(ReplayOutcome::Replayed),
            would_replay: count(ReplayOutcome::WouldReplay),
            skipped_already_replayed: count(ReplayOutcome::AlreadyReplayed),
            skipped_purged: count(ReplayOutcome::Purged),
            items: outcomes
                .iter()
                .take(ACTION_ITEMS_MAX)
                .map(|(view, outcome)| ActionItem {
                    position: view.position(),
                    tenant: view.tenant.clone(),
                    idempotency_key: view.idempotency_key.clone(),
                    outcome: match outcome {
                        ReplayOutcome::Replayed => "replayed",
                        ReplayOutcome::WouldReplay => "would-replay",
                        ReplayOutcome::AlreadyReplayed => "skipped-already-replayed",
                        ReplayOutcome::Purged => "skipped-purged",
                    }
                    .to_owned(),
                })
                .collect(),
        }
    }

    /// One line for the audit log.
    pub fn outcome_line(&self) -> String {
        format!(
            "ok: matched {}, replayed {}, would replay {}, skipped {} already replayed and {} purged",
            self.matched,
            self.replayed,
            self.would_replay,
            self.skipped_already_replayed,
            self.skipped_purged
        )
    }
}

/// A prefix of a DLQ partition that a purge drops (or would drop) from Kafka.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DroppedPrefix {
    pub partition: i32,
    pub before_offset: i64,
    pub records: usize,
}

/// The answer of a purge, or of its dry-run preview.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PurgeSummary {
    pub dry_run: bool,
    pub matched: usize,
    pub purged: usize,
    pub would_purge: usize,
    pub skipped_already_purged: usize,
    pub dropped: Vec<DroppedPrefix>,
    /// At most [`ACTION_ITEMS_MAX`] of them; the counts cover all.
    pub items: Vec<ActionItem>,
}

impl PurgeSummary {
    pub fn of(report: &PurgeReport) -> PurgeSummary {
        let count = |wanted: PurgeOutcome| {
            report
                .outcomes
                .iter()
                .filter(|(_, outcome)| *outcome == wanted)
                .count()
        };
        PurgeSummary {
            dry_run: report.dry_run,
            matched: report.outcomes.len(),
            purged: count(PurgeOutcome::Purged),
            would_purge: count(PurgeOutcome::WouldPurge),
            skipped_already_purged: count(PurgeOutcome::AlreadyPurged),
            dropped: report
                .dropped
                .iter()
                .map(|drop: &PrefixDrop| DroppedPrefix {
                    partition: drop.partition,
                    before_offset: drop.before_offset,
                    records: drop.records,
                })
                .collect(),
            items: report
                .outcomes
                .iter()
                .take(ACTION_ITEMS_MAX)
                .map(|(view, outcome)| ActionItem {
                    position: view.position(),
                    tenant: view.tenant.clone(),
                    idempotency_key: view.idempotency_key.clone(),
                    outcome: match outcome {
                        PurgeOutcome::Purged => "purged",
                        PurgeOutcome::WouldPurge => "would-purge",
                        PurgeOutcome::AlreadyPurged => "skipped-already-purged",
                    }
                    .to_owned(),
                })
                .collect(),
        }
    }

    pub fn outcome_line(&self) -> String {
        format!(
            "ok: matched {}, purged {}, would purge {}, skipped {} already purged, {} prefix(es) dropped",
            self.matched,
            self.purged,
            self.would_purge,
            self.skipped_already_purged,
            self.dropped.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::ConsumedRecord;

    fn view(partition: i32, offset: i64, last_failure_at: &str) -> DeadLetterView {
        let mut record = ConsumedRecord::from_parts(
            "activities.dlq",
            partition,
            offset,
            Some(b"acme".to_vec()),
            Some(b"{}".to_vec()),
        );
        record.headers.push((
            crate::failures::headers::LAST_FAILURE_AT.to_owned(),
            Some(last_failure_at.as_bytes().to_vec()),
        ));
        DeadLetterView::from_record(record)
    }

    #[test]
    fn every_bad_field_is_named() {
        for (raw, field) in [
            (
                RawFilter {
                    tenant: Some("Not A Tenant".into()),
                    ..RawFilter::default()
                },
                "`tenant`",
            ),
            (
                RawFilter {
                    class: Some("exploded".into()),
                    ..RawFilter::default()
                },
                "`class`",
            ),
            (
                RawFilter {
                    from: Some("yesterday".into()),
                    ..RawFilter::default()
                },
                "`from`",
            ),
            (
                RawFilter {
                    from: Some("2026-12-02T10:00:00Z".into()),
                    until: Some("2026-12-01T10:00:00Z".into()),
                    ..RawFilter::default()
                },
                "`from` must be before `until`",
            ),
            (
                RawFilter {
                    text: Some("x".repeat(201)),
                    ..RawFilter::default()
                },
                "`text`",
            ),
            (
                RawFilter {
                    position: Some("0:1,zz".into()),
                    ..RawFilter::default()
                },
                "`position`",
            ),
        ] {
            let error = raw.parse().unwrap_err();
            assert!(matches!(error, ConsoleError::BadRequest(_)), "{error}");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
        let empty_fields = RawFilter {
            tenant: Some(String::new()),
            class: Some(" ".into()),
            ..RawFilter::default()
        };
        assert!(empty_fields.parse().unwrap().is_empty());
    }

    #[test]
    fn csv_export_round_trips_commas_quotes_and_line_breaks() {
        let payload = "{\"note\": \"a, \\\"quoted\\\"\\nline\"}\r\nand, \"more\"";
        let mut record = ConsumedRecord::from_parts(
            "activities.dlq",
            0,
            7,
            Some(b"acme".to_vec()),
            Some(payload.as_bytes().to_vec()),
        );
        record
            .headers
            .push(("dlq-error".to_owned(), Some(b"bad, \"very\"\nbad".to_vec())));
        let views = [Arc::new(DeadLetterView::from_record(record))];
        let exported = ExportFormat::Csv.write(&views).unwrap();
        let mut reader = csv::Reader::from_reader(exported.as_bytes());
        assert_eq!(
            reader.headers().unwrap().iter().collect::<Vec<_>>(),
            CSV_COLUMNS
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][0], "0:7");
        assert_eq!(&rows[0][4], "bad, \"very\"\nbad");
        assert_eq!(&rows[0][12], payload);
        assert!(ExportFormat::parse(Some("xml")).is_err());
        assert_eq!(ExportFormat::parse(None).unwrap(), ExportFormat::JsonLines);
    }

    #[test]
    fn pages_go_newest_first_and_refuse_unknown_cursors() {
        let mut views: Vec<Arc<DeadLetterView>> = [
            view(0, 1, "2026-12-01T10:00:00Z"),
            view(1, 5, "2026-12-02T10:00:00Z"),
            view(0, 2, "2026-12-01T11:00:00Z"),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        sort_newest_first(&mut views);
        let first = page(&views, None, 2).unwrap();
        let positions: Vec<&str> = first
            .dead_letters
            .iter()
            .map(|dead| dead.position.as_str())
            .collect();
        assert_eq!(positions, ["1:5", "0:2"]);
        assert_eq!(first.total, 3);
        let second = page(&views, first.next_cursor.as_deref(), 2).unwrap();
        assert_eq!(second.dead_letters[0].position, "0:1");
        assert_eq!(second.next_cursor, None);
        for bad in ["nonsense", "-1:0", "7:7"] {
            let error = page(&views, Some(bad), 2).unwrap_err();
            assert!(error.to_string().starts_with("`cursor`"), "{error}");
        }
        assert!(parse_limit(Some("0"), 50, 500).is_err());
        assert!(parse_limit(Some("501"), 50, 500).is_err());
        assert_eq!(parse_limit(None, 50, 500).unwrap(), 50);
    }
}
