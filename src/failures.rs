//! One home for record failures: what kinds there are, what a failure carries as it moves from the
//! main topic through the retry topics to the DLQ, and the header protocol that carries it there.
//!
//! Everything here is pure (no I/O, no Kafka client): the consumer decides with it, `kafka/` writes
//! the headers it produces, and the DLQ tools read them back with it. Header values are data written
//! by whoever produced the record (a hand-written record, another cluster, a clock that is off), so
//! parsing never panics and never trusts a number or a time beyond what the stage allows.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The names of the headers the pipeline writes on records that failed; constants so writer and
/// readers cannot drift. The values are UTF-8 text.
pub mod headers {
    /// Dead letters: why the record failed, and of which class (see [`super::FailureClass`]).
    pub const ERROR: &str = "dlq-error";
    pub const ERROR_CLASS: &str = "dlq-error-class";
    /// Dead letters: how many times processing was attempted in all.
    pub const ATTEMPTS: &str = "dlq-attempts";
    pub const FIRST_FAILURE_AT: &str = "dlq-first-failure-at";
    pub const LAST_FAILURE_AT: &str = "dlq-last-failure-at";
    /// Dead letters: where the record was first consumed (the main topic, even after retries).
    pub const SOURCE_TOPIC: &str = "dlq-source-topic";
    pub const SOURCE_PARTITION: &str = "dlq-source-partition";
    pub const SOURCE_OFFSET: &str = "dlq-source-offset";
    /// Retry topics: attempts made so far, when the next one is due (RFC 3339), the first failure
    /// and the last error.
    pub const RETRY_ATTEMPTS: &str = "retry-attempts";
    pub const RETRY_DUE_AT: &str = "retry-due-at";
    pub const RETRY_FIRST_FAILURE_AT: &str = "retry-first-failure-at";
    pub const RETRY_ERROR: &str = "retry-error";
    /// Retry topics: where the record was first consumed.
    pub const ORIGIN_TOPIC: &str = "origin-topic";
    pub const ORIGIN_PARTITION: &str = "origin-partition";
    pub const ORIGIN_OFFSET: &str = "origin-offset";
    /// Set by `dlq replay` on the republished record: `<partition>:<offset>` of the dead letter.
    pub const REPLAYED_FROM: &str = "replayed-from";

    /// Headers the pipeline itself writes; rewritten (not duplicated) when a record moves on.
    pub fn is_pipeline_header(name: &str) -> bool {
        ["dlq-", "retry-", "origin-", "replayed-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
    }
}

/// Anything with named text headers: a consumed record, or a test's list of pairs.
pub trait HeaderSource {
    /// The value of the first header called `name`, if it is UTF-8.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderSource for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    }
}

/// Why a record was not stored, as far as routing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The record cannot be decoded or validated: it never will be. DLQ at once.
    Poison,
    /// The store refuses the document, and would refuse it the same way every time. DLQ at once.
    Rejected,
    /// The record's (tenant, idempotency key) is already stored with a different payload: the key
    /// was reused for another activity. DLQ at once, never stored, never silently dropped.
    Conflict,
    /// The store refused this record this time; it may pass later. Retried on the schedule.
    Transient,
}

impl FailureClass {
    pub const ALL: [FailureClass; 4] = [
        FailureClass::Poison,
        FailureClass::Rejected,
        FailureClass::Conflict,
        FailureClass::Transient,
    ];

    /// The name in headers, alerts, metrics and the DLQ tools.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Poison => "poison",
            FailureClass::Rejected => "rejected",
            FailureClass::Conflict => "conflict",
            FailureClass::Transient => "transient",
        }
    }

    pub fn parse(raw: &str) -> Option<FailureClass> {
        FailureClass::ALL
            .into_iter()
            .find(|class| class.as_str() == raw)
    }

    /// Whether another attempt may succeed: only such failures go to a retry topic.
    pub fn may_pass_later(self) -> bool {
        self == FailureClass::Transient
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why one record failed this attempt: one constructor per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    pub class: FailureClass,
    pub error: String,
}

impl RecordFailure {
    pub fn poison(error: impl Into<String>) -> RecordFailure {
        RecordFailure::new(FailureClass::Poison, error)
    }

    pub fn rejected(error: impl Into<String>) -> RecordFailure {
        RecordFailure::new(FailureClass::Rejected, error)
    }

    pub fn conflict(error: impl Into<String>) -> RecordFailure {
        RecordFailure::new(FailureClass::Conflict, error)
    }

    pub fn transient(error: impl Into<String>) -> RecordFailure {
        RecordFailure::new(FailureClass::Transient, error)
    }

    fn new(class: FailureClass, error: impl Into<String>) -> RecordFailure {
        RecordFailure {
            class,
            error: error.into(),
        }
    }
}

/// Where a record was first consumed: its `origin-*` headers if it came through a retry topic, else
/// its own coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: String,
    pub offset: String,
}

impl Origin {
    pub fn of(
        record: &(impl HeaderSource + ?Sized),
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Origin {
        match (
            record.header(headers::ORIGIN_TOPIC),
            record.header(headers::ORIGIN_PARTITION),
            record.header(headers::ORIGIN_OFFSET),
        ) {
            (Some(topic), Some(partition), Some(offset)) => Origin {
                topic: topic.to_owned(),
                partition: partition.to_owned(),
                offset: offset.to_owned(),
            },
            _ => Origin {
                topic: topic.to_owned(),
                partition: partition.to_string(),
                offset: offset.to_string(),
            },
        }
    }
}

/// A failure with its history: what the retry and DLQ headers carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub error: String,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    pub first_failure_at: DateTime<Utc>,
    pub last_failure_at: DateTime<Utc>,
    pub origin: Origin,
}

impl Failure {
    /// This attempt's failure on top of what the record's headers say came before. `retry_step` is
    /// the retry topic the record was consumed from (`None`: the main topic, whose records have no
    /// history even if a replayed dead letter still carries old headers). A record read from retry
    /// step `n` has been attempted at least `n` times, whatever its headers claim, so a hand-written
    /// `retry-attempts` can neither send it back to an earlier step nor overflow the count.
    pub fn after(
        record: &(impl HeaderSource + ?Sized),
        retry_step: Option<usize>,
        failure: RecordFailure,
        origin: Origin,
        now: DateTime<Utc>,
    ) -> Failure {
        let (attempts_before, first_failure_at) = match retry_step {
            None => (0, now),
            Some(step) => {
                let claimed = record
                    .header(headers::RETRY_ATTEMPTS)
                    .and_then(|attempts| attempts.trim().parse::<u32>().ok())
                    .unwrap_or(0);
                let first = record
                    .header(headers::RETRY_FIRST_FAILURE_AT)
                    .and_then(parse_time)
                    .filter(|first| *first <= now)
                    .unwrap_or(now);
                (claimed.max(u32::try_from(step).unwrap_or(u32::MAX)), first)
            }
        };
        Failure {
            class: failure.class,
            error: failure.error,
            attempts: attempts_before.saturating_add(1),
            first_failure_at,
            last_failure_at: now,
            origin,
        }
    }

    /// The retry step (1-based) this failure goes to next, or `None` for the DLQ: only failures that
    /// may pass go to a retry topic, and only while steps remain.
    pub fn next_retry_step(&self, retry_steps: usize) -> Option<usize> {
        let step = usize::try_from(self.attempts).unwrap_or(usize::MAX);
        (self.class.may_pass_later() && step <= retry_steps).then_some(step)
    }

    /// The headers of the record written to a retry topic, due at `due_at`.
    pub fn retry_headers(&self, due_at: DateTime<Utc>) -> Vec<(&'static str, String)> {
        vec![
            (headers::RETRY_ATTEMPTS, self.attempts.to_string()),
            (headers::RETRY_DUE_AT, due_at.to_rfc3339()),
            (
                headers::RETRY_FIRST_FAILURE_AT,
                self.first_failure_at.to_rfc3339(),
            ),
            (headers::RETRY_ERROR, self.error.clone()),
            (headers::ORIGIN_TOPIC, self.origin.topic.clone()),
            (headers::ORIGIN_PARTITION, self.origin.partition.clone()),
            (headers::ORIGIN_OFFSET, self.origin.offset.clone()),
        ]
    }

    /// The headers of the dead letter.
    pub fn dead_letter_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (headers::ERROR, self.error.clone()),
            (headers::ERROR_CLASS, self.class.as_str().to_owned()),
            (headers::ATTEMPTS, self.attempts.to_string()),
            (
                headers::FIRST_FAILURE_AT,
                self.first_failure_at.to_rfc3339(),
            ),
            (headers::LAST_FAILURE_AT, self.last_failure_at.to_rfc3339()),
            (headers::SOURCE_TOPIC, self.origin.topic.clone()),
            (headers::SOURCE_PARTITION, self.origin.partition.clone()),
            (headers::SOURCE_OFFSET, self.origin.offset.clone()),
        ]
    }
}

/// When a record read from a retry topic whose step waits `step_delay` is due. Its `retry-due-at`
/// header is believed only as far as the step allows: a record is never held longer than the step's
/// own delay from `now` (a far-future header, from a skewed clock or a hand-written record, would
/// otherwise pause the whole stage), and one without a readable due time is due now.
pub fn retry_due_at(
    record: &(impl HeaderSource + ?Sized),
    step_delay: Duration,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let latest = chrono::Duration::from_std(step_delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(now);
    record
        .header(headers::RETRY_DUE_AT)
        .and_then(parse_time)
        .map_or(now, |due| due.min(latest))
}

/// The facts of a dead letter as its headers tell them, for the DLQ tools; `-` where a header is
/// missing (a record written to the DLQ by hand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFacts {
    pub error: String,
    /// The class as written; [`FailureClass::parse`] tells whether it is one this version knows.
    pub class: String,
    pub attempts: String,
    pub first_failure_at: String,
    pub last_failure_at: String,
    /// `topic[partition]@offset` where the record was first consumed.
    pub source: String,
}

impl DeadLetterFacts {
    pub fn of(record: &(impl HeaderSource + ?Sized)) -> DeadLetterFacts {
        let text = |name: &str| record.header(name).unwrap_or("-").to_owned();
        DeadLetterFacts {
            error: text(headers::ERROR),
            class: text(headers::ERROR_CLASS),
            attempts: text(headers::ATTEMPTS),
            first_failure_at: text(headers::FIRST_FAILURE_AT),
            last_failure_at: text(headers::LAST_FAILURE_AT),
            source: format!(
                "{}[{}]@{}",
                text(headers::SOURCE_TOPIC),
                text(headers::SOURCE_PARTITION),
                text(headers::SOURCE_OFFSET)
            ),
        }
    }
}

fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw.trim())
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn origin() -> Origin {
        Origin {
            topic: "activities".to_owned(),
            partition: "3".to_owned(),
            offset: "7".to_owned(),
        }
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        parse_time(rfc3339).unwrap()
    }

    #[test]
    fn classes_round_trip_by_name_and_only_transient_may_pass() {
        for class in FailureClass::ALL {
            assert_eq!(FailureClass::parse(class.as_str()), Some(class));
            assert_eq!(class.may_pass_later(), class == FailureClass::Transient);
        }
        assert_eq!(FailureClass::parse("POISON"), None);
    }

    #[test]
    fn a_first_failure_starts_the_history() {
        let now = at("2026-12-02T10:00:00Z");
        let stale: &[(&str, &str)] = &[(headers::RETRY_ATTEMPTS, "2")];
        let failure = Failure::after(stale, None, RecordFailure::transient("x"), origin(), now);
        assert_eq!(failure.attempts, 1, "main-topic records carry no history");
        assert_eq!(failure.first_failure_at, now);
        assert_eq!(failure.next_retry_step(3), Some(1));
    }

    #[test]
    fn retries_continue_the_history_then_dead_letter() {
        let now = at("2026-12-02T10:00:00Z");
        let record: &[(&str, &str)] = &[
            (headers::RETRY_ATTEMPTS, "3"),
            (headers::RETRY_FIRST_FAILURE_AT, "2026-12-02T09:59:50Z"),
        ];
        let failure = Failure::after(
            record,
            Some(3),
            RecordFailure::transient("x"),
            origin(),
            now,
        );
        assert_eq!(failure.attempts, 4);
        assert_eq!(failure.first_failure_at, at("2026-12-02T09:59:50Z"));
        assert_eq!(failure.next_retry_step(3), None);
        let poison = Failure::after(record, Some(1), RecordFailure::poison("x"), origin(), now);
        assert_eq!(poison.next_retry_step(3), None, "poison is never retried");
    }

    #[test]
    fn hostile_attempt_counts_neither_overflow_nor_go_backwards() {
        let now = Utc::now();
        let huge: &[(&str, &str)] = &[(headers::RETRY_ATTEMPTS, "4294967295")];
        let failure = Failure::after(huge, Some(1), RecordFailure::transient("x"), origin(), now);
        assert_eq!(failure.attempts, u32::MAX);
        assert_eq!(failure.next_retry_step(3), None);
        let low: &[(&str, &str)] = &[(headers::RETRY_ATTEMPTS, "0")];
        let failure = Failure::after(low, Some(2), RecordFailure::transient("x"), origin(), now);
        assert_eq!(
            failure.attempts, 3,
            "a record from step 2 had at least 2 attempts"
        );
    }

    #[test]
    fn due_times_are_clamped_to_the_step_delay() {
        let now = at("2026-12-02T10:00:00Z");
        let delay = Duration::from_secs(2);
        let far: &[(&str, &str)] = &[(headers::RETRY_DUE_AT, "2999-01-01T00:00:00Z")];
        assert_eq!(retry_due_at(far, delay, now), at("2026-12-02T10:00:02Z"));
        let soon: &[(&str, &str)] = &[(headers::RETRY_DUE_AT, "2026-12-02T10:00:01Z")];
        assert_eq!(retry_due_at(soon, delay, now), at("2026-12-02T10:00:01Z"));
        let garbage: &[(&str, &str)] = &[(headers::RETRY_DUE_AT, "tomorrow")];
        assert_eq!(retry_due_at(garbage, delay, now), now);
    }

    #[test]
    fn headers_written_are_headers_read() {
        let now = at("2026-12-02T10:00:00Z");
        let failure = Failure::after(
            &[] as &[(&str, &str)],
            None,
            RecordFailure::conflict("key reused"),
            origin(),
            now,
        );
        let written = failure.dead_letter_headers();
        let pairs: Vec<(&str, &str)> = written
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let facts = DeadLetterFacts::of(pairs.as_slice());
        assert_eq!(facts.class, "conflict");
        assert_eq!(facts.error, "key reused");
        assert_eq!(facts.attempts, "1");
        assert_eq!(facts.source, "activities[3]@7");
        assert!(written
            .iter()
            .all(|(name, _)| headers::is_pipeline_header(name)));

        let retry = failure.retry_headers(now);
        let pairs: Vec<(&str, &str)> = retry
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let again = Failure::after(
            pairs.as_slice(),
            Some(1),
            RecordFailure::transient("again"),
            Origin::of(pairs.as_slice(), "activities.retry.1", 0, 0),
            now,
        );
        assert_eq!(again.attempts, 2);
        assert_eq!(again.origin, origin(), "the origin survives the hop");
    }

    proptest! {
        /// Whatever a retry record's headers hold, a stage neither panics nor waits longer than its
        /// own delay, and the attempt count only grows.
        #[test]
        fn no_header_value_panics_a_stage_or_holds_it_longer_than_its_delay(
            attempts in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), ".{0,24}"],
            due_at in prop_oneof![
                (-10_000_000_000i64..10_000_000_000i64).prop_map(|secs| {
                    DateTime::<Utc>::from_timestamp(secs, 0).map(|t| t.to_rfc3339()).unwrap_or_default()
                }),
                ".{0,40}",
            ],
            first in ".{0,40}",
            step in 1usize..8,
            delay_ms in 0u64..3_600_000,
        ) {
            let now = Utc::now();
            let record: &[(&str, &str)] = &[
                (headers::RETRY_ATTEMPTS, &attempts),
                (headers::RETRY_DUE_AT, &due_at),
                (headers::RETRY_FIRST_FAILURE_AT, &first),
            ];
            let delay = Duration::from_millis(delay_ms);
            let due = retry_due_at(record, delay, now);
            let wait = (due - now).to_std().unwrap_or_default();
            prop_assert!(wait <= delay, "waits {wait:?} for a step of {delay:?}");
            let failure = Failure::after(record, Some(step), RecordFailure::transient("x"), origin(), now);
            prop_assert!(failure.attempts as usize > step.min(u32::MAX as usize) || failure.attempts == u32::MAX);
            prop_assert!(failure.first_failure_at <= now);
        }
    }
}
