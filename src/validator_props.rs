//! Property tests of intake validation, across the boundary it protects: for arbitrary JSON (and for
//! JSON shaped almost like an activity, so that many cases are accepted), the validator never
//! panics, never accepts what the JSON Schema rejects, and everything it accepts round-trips into
//! `NewActivity` and becomes a document MongoDB can store (no poison downstream).

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::domain::{
    parse_batch, ActivityEnvelope, ActivityLimits, ActivityValidator, IdempotencyKey, NewActivity,
    PayloadFingerprint, TenantId, FIELD_ERROR_MAX_TEXT,
};
use crate::store::StoredActivity;

const METADATA_MAX_BYTES: usize = 512;
const METADATA_MAX_DEPTH: usize = 3;

fn validator() -> ActivityValidator {
    ActivityValidator::new(METADATA_MAX_BYTES, METADATA_MAX_DEPTH)
}

/// Object keys, biased toward the ones MongoDB refuses or interprets.
pub(crate) fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_]{1,8}",
        "\\$[a-z]{0,4}",
        "[a-z]{0,3}\\.[a-z]{0,3}",
        "[a-z]{0,2}\u{0}[a-z]{0,2}",
        Just(String::new()),
        any::<String>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ._:-]{0,20}",
        "[a-z]{0,3}\u{0}[a-z]{0,3}",
        any::<String>(),
        "x{120,140}",
    ]
}

pub(crate) fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |float| float.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects with the activity's fields, each present or not, plausible or not, sometimes an extra.
pub(crate) fn activity_like() -> impl Strategy<Value = Value> {
    let field = |plausible: BoxedStrategy<Value>| prop_oneof![12 => plausible.prop_map(Some), 1 => json().prop_map(Some), 1 => Just(None)];
    let identifier = "[a-zA-Z0-9-]{1,10}".prop_map(Value::String).boxed();
    let activity_type = prop_oneof!["[A-Za-z0-9][A-Za-z0-9._:-]{0,10}", "[A-Za-z0-9._: -]{0,70}"]
        .prop_map(Value::String)
        .boxed();
    let mostly_good_key = prop_oneof![6 => "[a-zA-Z_]{1,8}", 1 => key()];
    let mostly_good_value = prop_oneof![
        3 => prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,10}".prop_map(Value::String),
            any::<bool>().prop_map(Value::Bool),
        ],
        1 => json(),
    ];
    let metadata = prop::collection::vec((mostly_good_key, mostly_good_value), 0..4)
        .prop_map(|entries| Value::Object(entries.into_iter().collect()))
        .boxed();
    (
        field(identifier.clone()),
        field(identifier.clone()),
        field(activity_type),
        field(prop_oneof![identifier, Just(Value::Null)].boxed()),
        field(metadata),
        prop::option::weighted(0.1, (key(), json())),
    )
        .prop_map(
            |(actor_id, actor_name, activity_type, entity_id, metadata, extra)| {
                let mut object = Map::new();
                for (name, value) in [
                    ("actorId", actor_id),
                    ("actorName", actor_name),
                    ("type", activity_type),
                    ("entityId", entity_id),
                    ("metadata", metadata),
                ] {
                    if let Some(value) = value {
                        object.insert(name.to_owned(), value);
                    }
                }
                if let Some((name, value)) = extra {
                    object.insert(name, value);
                }
                Value::Object(object)
            },
        )
}

/// What must hold for any candidate body.
fn check(body: Value) -> Result<(), TestCaseError> {
    let validator = validator();
    let schema_accepts = validator.schema_accepts(&body);
    match validator.validate(body.clone()) {
        Err(failure) => {
            prop_assert!(!failure.errors.is_empty());
            prop_assert!(!failure.summary().is_empty());
            // The report is bounded whatever the body: its count and each text.
            prop_assert!(failure.errors.len() <= ActivityLimits::default().max_reported_errors);
            for error in &failure.errors {
                prop_assert!(error.field.len() <= FIELD_ERROR_MAX_TEXT, "{:?}", error);
                prop_assert!(error.message.len() <= FIELD_ERROR_MAX_TEXT, "{:?}", error);
            }
        }
        Ok(activity) => {
            prop_assert!(schema_accepts, "accepted what the schema rejects: {}", body);
            // Round trip: the accepted activity is valid again and unchanged.
            let again = validator
                .validate(serde_json::to_value(&activity).unwrap())
                .map_err(|failure| TestCaseError::fail(failure.summary()))?;
            prop_assert_eq!(&again, &activity);
            let metadata = activity.metadata.clone().map(Value::Object);
            if let Some(metadata) = &metadata {
                prop_assert!(serde_json::to_vec(metadata).unwrap().len() <= METADATA_MAX_BYTES);
            }
            // And it is storable: no poison for the consumer.
            let envelope = ActivityEnvelope::new(
                TenantId::parse("acme").unwrap(),
                IdempotencyKey::generate(),
                activity,
            );
            let fingerprint = PayloadFingerprint::of(&envelope.activity);
            let stored = StoredActivity::from_envelope(&envelope, &fingerprint, chrono::Utc::now());
            prop_assert!(stored.is_ok(), "accepted but not storable: {}", body);
            let decoded = ActivityEnvelope::decode(&envelope.encode(), &validator);
            prop_assert!(decoded.is_ok(), "the consumer would refuse: {}", body);
            // The consumer's fingerprint of the record is the API's: a retry is never a conflict.
            prop_assert_eq!(
                PayloadFingerprint::of(&decoded.unwrap().activity),
                fingerprint,
                "fingerprint changed through Kafka: {}",
                body
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_json_is_judged_like_the_schema_and_never_panics(body in json()) {
        check(body)?;
    }

    #[test]
    fn near_activities_are_judged_like_the_schema_and_stay_storable(body in activity_like()) {
        check(body)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = validator().parse_body(&bytes);
        let _ = parse_batch(&bytes, None, &validator(), 10);
    }

    #[test]
    fn arbitrary_batches_never_panic_and_judge_each_item(items in prop::collection::vec(prop_oneof![json(), activity_like()], 0..12)) {
        let body = serde_json::json!({ "activities": items }).to_string();
        let batch_key = IdempotencyKey::parse("b").unwrap();
        match parse_batch(body.as_bytes(), Some(&batch_key), &validator(), 10) {
            Err(_) => prop_assert!(items.is_empty() || items.len() > 10),
            Ok(judged) => {
                prop_assert_eq!(judged.len(), items.len());
                for item in judged {
                    if let Ok(activity) = &item.activity {
                        let activity: &NewActivity = activity;
                        prop_assert!(item.key.is_some());
                        prop_assert!(validator().schema_accepts(&serde_json::to_value(activity).unwrap()));
                    }
                }
            }
        }
    }
}

/// Guards the properties above against being vacuous: the near-activity generator must produce both
/// accepted and refused bodies.
#[test]
fn the_near_activity_generator_reaches_both_outcomes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = activity_like();
    let validator = validator();
    let accepted = (0..300)
        .filter(|_| {
            let body = strategy.new_tree(&mut runner).unwrap().current();
            validator.validate(body).is_ok()
        })
        .count();
    assert!((15..=285).contains(&accepted), "{accepted} of 300 accepted");
}
