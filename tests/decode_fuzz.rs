//! Property tests of the consumer's record decoding (issue 5, "bad input"): whatever bytes reach the
//! activities topic, `ActivityEnvelope::decode` does not panic, and whatever it accepts is storable:
//! it becomes a `StoredActivity` and a BSON document without a key MongoDB would refuse or interpret
//! (`$`-prefixed, dotted, NUL), without a NUL in a string, and without an array directly inside an
//! array (FerretDB refuses those). So poison stops at decoding (DLQ) and
//! never reaches MongoDB.
//!
//! Case counts default to a few thousand per property; `DECODE_FUZZ_CASES=100000 cargo test --test
//! decode_fuzz -- --nocapture` tries more and prints how many ran.

use activity_pipeline::domain::{
    ActivityEnvelope, ActivityValidator, IdempotencyKey, PayloadFingerprint, TenantId,
};
use activity_pipeline::store::StoredActivity;
use mongodb::bson::{self, Bson, Document};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

fn validator() -> ActivityValidator {
    // The defaults of config/default.toml (limits.metadata_max_bytes / metadata_max_depth).
    ActivityValidator::new(16 * 1024, 8)
}

fn cases(default: u32) -> u32 {
    std::env::var("DECODE_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

/// Runs `test` on `cases` values of `strategy` and prints how many were tried and how many decoded
/// (`test` answers whether the value decoded).
fn run<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let tried = std::cell::Cell::new(0u64);
    let accepted = std::cell::Cell::new(0u64);
    let outcome = runner.run(&strategy, |value| {
        tried.set(tried.get() + 1);
        if test(value)? {
            accepted.set(accepted.get() + 1);
        }
        Ok(())
    });
    println!(
        "decode_fuzz: {name}: {} cases tried, {} decoded (and checked storable), the rest refused",
        tried.get(),
        accepted.get()
    );
    if let Err(error) = outcome {
        panic!("{name}: {error}");
    }
}

/// Strings that poke at what MongoDB refuses or interprets, and at the schema's patterns.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._:-]{0,12}",
        Just("$set".to_owned()),
        Just("$where".to_owned()),
        Just("a.b".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("nul\u{0}inside".to_owned()),
        Just("\u{0}".to_owned()),
        Just("ünïcødé ✓".to_owned()),
        Just("x".repeat(300)),
        any::<String>(),
    ]
}

/// Arbitrary JSON, with keys and strings from `tricky_string`.
fn tricky_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |n| n.is_finite())
            .prop_map(|n| json!(n)),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(12, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// JSON that MongoDB stores as is: safe keys, no NUL, finite numbers within i64 (any unicode).
fn storable_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |n| n.is_finite())
            .prop_map(|n| json!(n)),
        any::<String>()
            .prop_map(|text| text.replace('\0', ""))
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_ -]{0,10}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An activity body that is valid, or nearly: each field may be replaced by tricky JSON.
fn near_activity() -> impl Strategy<Value = Value> {
    (
        prop_oneof![8 => "[a-z0-9-]{1,20}".prop_map(Value::String), 1 => tricky_json()],
        prop_oneof![8 => "[A-Za-z ]{1,20}".prop_map(Value::String), 1 => tricky_json()],
        prop_oneof![
            8 => "[A-Za-z0-9][A-Za-z0-9._:-]{0,20}".prop_map(Value::String),
            1 => tricky_json()
        ],
        prop::option::of(prop_oneof![
            4 => "[a-z0-9-]{1,20}".prop_map(Value::String),
            1 => Just(Value::Null),
            1 => tricky_json()
        ]),
        prop::option::of(prop_oneof![
            4 => prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_ -]{0,10}", storable_json(), 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
            1 => tricky_json()
        ]),
        prop::option::weighted(0.05, tricky_json()),
    )
        .prop_map(|(actor_id, actor_name, kind, entity_id, metadata, extra)| {
            let mut body = json!({"actorId": actor_id, "actorName": actor_name, "type": kind});
            if let Some(entity_id) = entity_id {
                body["entityId"] = entity_id;
            }
            if let Some(metadata) = metadata {
                body["metadata"] = metadata;
            }
            if let Some(extra) = extra {
                body["unexpected"] = extra;
            }
            body
        })
}

/// An envelope as the API writes it, or a damaged one.
fn near_envelope() -> impl Strategy<Value = Value> {
    (
        prop_oneof![4 => Just(json!("activity.v1")), 1 => tricky_json()],
        prop_oneof![
            4 => "[a-z0-9_-]{1,20}".prop_map(Value::String),
            1 => tricky_json()
        ],
        prop_oneof![
            4 => "[A-Za-z0-9._:-]{1,40}".prop_map(Value::String),
            1 => tricky_json()
        ],
        prop_oneof![
            4 => Just(json!("2026-01-01T00:00:00Z")),
            1 => Just(json!("2026-02-30T25:61:00Z")),
            1 => tricky_json()
        ],
        prop_oneof![4 => near_activity(), 1 => tricky_json()],
        prop::option::weighted(0.05, tricky_json()),
    )
        .prop_map(|(schema, tenant, key, enqueued_at, activity, extra)| {
            let mut envelope = json!({
                "schema": schema,
                "tenantId": tenant,
                "idempotencyKey": key,
                "enqueuedAt": enqueued_at,
                "activity": activity,
            });
            if let Some(extra) = extra {
                envelope["extra"] = extra;
            }
            envelope
        })
}

/// A key or string anywhere in the document that MongoDB would refuse or interpret.
fn first_unsafe(document: &Document, path: &str) -> Option<String> {
    for (key, value) in document {
        let here = format!("{path}/{key}");
        if key.is_empty() || key.starts_with('$') || key.contains('.') || key.contains('\0') {
            return Some(format!("key {here:?}"));
        }
        if let Some(found) = first_unsafe_value(value, &here) {
            return Some(found);
        }
    }
    None
}

fn first_unsafe_value(value: &Bson, path: &str) -> Option<String> {
    match value {
        Bson::Document(document) => first_unsafe(document, path),
        Bson::Array(items) if items.iter().any(|item| matches!(item, Bson::Array(_))) => Some(
            format!("an array inside the array at {path} (FerretDB refuses nested arrays)"),
        ),
        Bson::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| first_unsafe_value(item, &format!("{path}/{index}"))),
        Bson::String(text) if text.contains('\0') => Some(format!("NUL in the string at {path}")),
        Bson::Double(number) if !number.is_finite() => Some(format!("{number} at {path}")),
        _ => None,
    }
}

/// What the consumer does with an accepted envelope, up to the insert: it must all work.
fn assert_storable(envelope: &ActivityEnvelope) -> Result<bool, TestCaseError> {
    let fingerprint = PayloadFingerprint::of(&envelope.activity);
    let stored = StoredActivity::from_envelope(envelope, &fingerprint, chrono::Utc::now())
        .map_err(|error| TestCaseError::fail(format!("accepted but not storable: {error}")))?;
    let document = bson::to_document(&stored)
        .map_err(|error| TestCaseError::fail(format!("not a BSON document: {error}")))?;
    // `_id` is the one `$`-free system key we write ourselves; everything else comes from the record.
    if let Some(found) = first_unsafe(&document, "") {
        return Err(TestCaseError::fail(format!(
            "accepted envelope would store {found}: {document}"
        )));
    }
    // The live event is JSON of the stored document: it must serialize.
    let _ = stored.to_json().to_string();
    Ok(true)
}

#[test]
fn arbitrary_bytes_never_panic_and_accepted_ones_are_storable() {
    let validator = validator();
    run(
        "arbitrary bytes",
        cases(10_000),
        prop::collection::vec(any::<u8>(), 0..600),
        |bytes| match ActivityEnvelope::decode(&bytes, &validator) {
            Ok(envelope) => assert_storable(&envelope),
            Err(_) => Ok(false),
        },
    );
}

#[test]
fn damaged_envelopes_never_panic_and_accepted_ones_are_storable() {
    let validator = validator();
    run(
        "damaged envelopes",
        cases(5_000),
        near_envelope(),
        |envelope| {
            let bytes = serde_json::to_vec(&envelope).expect("JSON serializes");
            match ActivityEnvelope::decode(&bytes, &validator) {
                Ok(decoded) => assert_storable(&decoded),
                Err(_) => Ok(false),
            }
        },
    );
}

#[test]
fn envelopes_as_the_api_writes_them_round_trip_and_are_storable() {
    let validator = validator();
    run("valid envelopes", cases(2_000), near_activity(), |body| {
        // Only bodies the API itself accepts become records through it.
        let Ok(activity) = validator.validate(body) else {
            return Ok(false);
        };
        let envelope = ActivityEnvelope::new(
            TenantId::parse("acme").expect("tenant"),
            IdempotencyKey::parse("key-1").expect("key"),
            activity,
        );
        let decoded = ActivityEnvelope::decode(&envelope.encode(), &validator)
            .map_err(|error| TestCaseError::fail(format!("round trip failed: {error}")))?;
        prop_assert_eq!(&decoded, &envelope);
        assert_storable(&decoded)
    });
}

#[test]
fn truncated_and_bit_flipped_records_never_panic() {
    let validator = validator();
    let good = serde_json::to_vec(&json!({
        "schema": "activity.v1", "tenantId": "acme", "idempotencyKey": "k-1",
        "enqueuedAt": "2026-01-01T00:00:00Z",
        "activity": {"actorId": "u1", "actorName": "Alice", "type": "login", "metadata": {"a": [1, {"b": "c"}]}}
    }))
    .expect("serializes");
    run(
        "truncated and bit-flipped records",
        cases(5_000),
        (
            0..=good.len(),
            prop::collection::vec((0..good.len(), any::<u8>()), 0..4),
        ),
        |(cut, flips)| {
            let mut bytes = good[..cut].to_vec();
            for (at, bits) in flips {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= bits;
                }
            }
            match ActivityEnvelope::decode(&bytes, &validator) {
                Ok(envelope) => assert_storable(&envelope),
                Err(_) => Ok(false),
            }
        },
    );
}
