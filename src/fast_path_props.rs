//! The differential test of validation's typed fast path (`domain/fast_path.rs`) against the schema
//! path (the JSON Schema validator over a parsed `Value`, which is the definition): for generated
//! bodies, valid and invalid near every rule of `schemas/activity.v1.json` (missing, repeated and
//! unknown members, wrong types, strings around their length limits counted in characters, NUL,
//! the `type` pattern, metadata keys and values MongoDB or FerretDB refuse, size and depth limits,
//! integers beyond BSON, unicode and escapes, batches and their wrappers and keys), the fast path
//! accepts exactly what the schema path accepts and builds the same `NewActivity`, and what the API
//! answers (`parse_body`, `parse_batch`) is the schema path's answer, errors included.

use proptest::prelude::*;
use serde_json::Value;

use crate::domain::{parse_batch, parse_batch_by_schema, ActivityValidator, IdempotencyKey};
use crate::validator_props::{activity_like, json, key};

const METADATA_MAX_BYTES: usize = 512;
const METADATA_MAX_DEPTH: usize = 3;
const BATCH_MAX_ITEMS: usize = 6;

fn validator() -> ActivityValidator {
    ActivityValidator::new(METADATA_MAX_BYTES, METADATA_MAX_DEPTH)
}

/// JSON text of a value, written the way a client might: compact, or with `\u` escapes for some
/// characters (which must parse to the same strings).
fn render(value: &Value, escape: bool) -> String {
    let text = value.to_string();
    if !escape {
        return text;
    }
    // Escaping inside string literals only: outside them every character is ASCII syntax.
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for character in text.chars() {
        if in_string
            && !escaped
            && character != '"'
            && character != '\\'
            && (!character.is_ascii() || character == 'a')
        {
            let mut units = [0u16; 2];
            for unit in character.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            continue;
        }
        if character == '"' && !escaped {
            in_string = !in_string;
        }
        escaped = character == '\\' && !escaped;
        out.push(character);
    }
    out
}

/// Numbers as text that no `Value` produces: out of range, huge integers, negative zero.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        Just("1.0".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775809".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// Strings right around the limits, in characters not bytes.
fn edge_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        "x{126,130}",
        "[\u{e9}\u{1F600}]{126,130}",
        "y{254,258}",
        "[A-Za-z0-9][A-Za-z0-9._:-]{62,64}",
        Just(String::new()),
        "[a-z]{0,3}\u{0}",
    ]
    .prop_map(Value::String)
}

/// A member's raw value: mostly JSON values, sometimes strings at a limit or odd number text.
fn member_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json().prop_map(|value| value.to_string()),
        2 => edge_string().prop_map(|value| value.to_string()),
        1 => number_text(),
    ]
}

/// Metadata nearer its own rules: keys at the length limit, deep nesting, odd numbers, big bodies.
fn metadata_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![4 => key(), 1 => "k{255,257}"];
    let value = prop_oneof![
        3 => json().prop_map(|value| value.to_string()),
        1 => number_text(),
        1 => (1usize..6).prop_map(|depth| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))),
        1 => "x{100,300}".prop_map(|text| format!("\"{text}\"")),
    ];
    prop::collection::vec((key, value), 0..5).prop_map(|entries| {
        let members: Vec<String> = entries
            .into_iter()
            .map(|(key, value)| format!("{}:{value}", Value::String(key)))
            .collect();
        format!("{{{}}}", members.join(","))
    })
}

/// An activity as JSON text: a near-activity, its members shuffled, sometimes one repeated (with the
/// same or another value), replaced by a value at a limit, or by odd text; sometimes escaped.
fn activity_text() -> impl Strategy<Value = String> {
    let member = prop_oneof![
        Just("actorId"),
        Just("actorName"),
        Just("type"),
        Just("entityId"),
        Just("metadata"),
    ];
    (
        activity_like(),
        prop::option::weighted(0.25, (member.clone(), member_text())),
        prop::option::weighted(0.2, metadata_text()),
        prop::option::weighted(0.15, member),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(body, replaced, metadata, repeated, escape, seed)| {
            let Value::Object(object) = body else {
                unreachable!("activity_like makes objects")
            };
            let mut members: Vec<(String, String)> = object
                .into_iter()
                .map(|(name, value)| (name, render(&value, escape)))
                .collect();
            let mut set = |name: &str, text: String| match members
                .iter_mut()
                .find(|(member, _)| member == name)
            {
                Some(member) => member.1 = text,
                None => members.push((name.to_owned(), text)),
            };
            if let Some((name, text)) = replaced {
                set(name, text);
            }
            if let Some(text) = metadata {
                set("metadata", text);
            }
            if let Some(name) = repeated {
                if let Some(found) = members.iter().find(|(member, _)| member == name).cloned() {
                    // Half the time the same value again, else a different one.
                    let text = if seed % 2 == 0 {
                        found.1
                    } else {
                        "\"other\"".to_owned()
                    };
                    members.push((found.0, text));
                }
            }
            // A deterministic shuffle from the seed (member order must not matter).
            let count = members.len().max(1) as u64;
            members.rotate_left((seed % count) as usize);
            let members: Vec<String> = members
                .into_iter()
                .map(|(name, text)| format!("{}:{text}", Value::String(name)))
                .collect();
            format!("{{{}}}", members.join(","))
        })
}

/// A body: mostly activity text, sometimes any JSON or a truncated activity.
fn body_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => activity_text(),
        1 => json().prop_map(|value| value.to_string()),
        1 => (activity_text(), any::<prop::sample::Index>())
            .prop_map(|(text, cut)| text[..text.floor_char_boundary(cut.index(text.len() + 1))].to_owned()),
    ]
}

/// A batch item: bare, or wrapped with an own key that is valid, repeated, invalid, null, not a
/// string or absent, sometimes with an extra member.
fn item_text() -> impl Strategy<Value = String> {
    let own_key = prop_oneof![
        Just(None),
        Just(Some("\"own-1\"".to_owned())),
        Just(Some("\"own-2\"".to_owned())),
        Just(Some("\"bad key\"".to_owned())),
        Just(Some("null".to_owned())),
        Just(Some("7".to_owned())),
    ];
    let extra = prop::option::weighted(0.1, prop_oneof![Just("actorId"), Just("x")]);
    prop_oneof![
        3 => activity_text(),
        2 => (activity_text(), own_key, extra).prop_map(|(activity, own_key, extra)| {
            let mut members = vec![format!("\"activity\":{activity}")];
            if let Some(own_key) = own_key {
                members.push(format!("\"idempotencyKey\":{own_key}"));
            }
            if let Some(extra) = extra {
                members.push(format!("\"{extra}\":\"u\""));
            }
            format!("{{{}}}", members.join(","))
        }),
        1 => own_key_only(),
    ]
}

/// A bare activity that also carries an `idempotencyKey` (refused: it is not a wrapper).
fn own_key_only() -> impl Strategy<Value = String> {
    Just(r#"{"actorId":"u","actorName":"A","type":"t","idempotencyKey":"k"}"#.to_owned())
}

/// A batch: items (some of them accepted, many not), with sometimes an extra or repeated member.
fn batch_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![3 => good_item(), 2 => item_text()],
            0..BATCH_MAX_ITEMS + 2,
        ),
        prop_oneof![8 => Just(""), 1 => Just(",\"x\":1"), 1 => Just(",\"activities\":[]")],
    )
        .prop_map(|(items, tail)| format!("{{\"activities\":[{}]{tail}}}", items.join(",")))
}

/// An item the schema accepts, so that whole batches are accepted often enough.
fn good_item() -> impl Strategy<Value = String> {
    ("[a-z0-9-]{1,10}", prop::option::of("own-[1-3]"), any::<bool>()).prop_map(|(actor, own_key, wrapped)| {
        let activity = format!(r#"{{"actorId":"{actor}","actorName":"A é","type":"t.x","metadata":{{"n":[1,{{"k":"v"}}]}}}}"#);
        match (wrapped, own_key) {
            (true, Some(own_key)) => format!(r#"{{"activity":{activity},"idempotencyKey":"{own_key}"}}"#),
            (true, None) => format!(r#"{{"activity":{activity}}}"#),
            (false, _) => activity,
        }
    })
}

/// Whether some object in `body` names a member twice. serde_json keeps the last one and the schema
/// path judges only that; the fast path leaves such a body to the schema path (it refuses it), the
/// one place it may refuse what the schema accepts. It never accepts what the schema refuses.
fn has_repeated_member(body: &[u8]) -> bool {
    struct Walk;
    impl<'de> serde::de::Visitor<'de> for Walk {
        type Value = bool;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut repeated = false;
            while let Some(found) = seq.next_element::<Repeated>()? {
                repeated |= found.0;
            }
            Ok(repeated)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut names = std::collections::HashSet::new();
            let mut repeated = false;
            while let Some(name) = map.next_key::<String>()? {
                repeated |= !names.insert(name);
                repeated |= map.next_value::<Repeated>()?.0;
            }
            Ok(repeated)
        }
    }
    struct Repeated(bool);
    impl<'de> serde::Deserialize<'de> for Repeated {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(Walk).map(Repeated)
        }
    }
    serde_json::from_slice::<Repeated>(body).is_ok_and(|found| found.0)
}

/// What must hold for any body.
fn check_body(body: &[u8]) -> Result<(), TestCaseError> {
    let validator = validator();
    let reference = validator.parse_body_by_schema(body);
    let fast = validator.fast_path().parse_activity(body);
    let text = String::from_utf8_lossy(body);
    let fast_expected = reference.is_ok() && !has_repeated_member(body);
    prop_assert!(
        fast.is_none() || reference.is_ok(),
        "the fast path accepts what the schema refuses: {}: {:?}",
        text,
        reference
    );
    prop_assert_eq!(
        fast.is_some(),
        fast_expected,
        "the fast path and the schema disagree on {}: {:?}",
        text,
        reference
    );
    if let (Some(fast), Ok(reference)) = (&fast, &reference) {
        prop_assert_eq!(fast, reference, "different activities from {}", text);
    }
    prop_assert_eq!(
        validator.parse_body(body),
        reference,
        "different answers to {}",
        text
    );
    Ok(())
}

fn check_batch(body: &[u8], batch_key: Option<&IdempotencyKey>) -> Result<(), TestCaseError> {
    let validator = validator();
    let text = String::from_utf8_lossy(body);
    let reference = parse_batch_by_schema(body, batch_key, &validator, BATCH_MAX_ITEMS);
    let answer = parse_batch(body, batch_key, &validator, BATCH_MAX_ITEMS);
    // The fast path takes a batch only when every item is valid (a key repeated within the batch is
    // judged after either path, the same way).
    let fast_expected = !has_repeated_member(body)
        && reference.as_ref().is_ok_and(|items| {
            items.iter().all(|item| match &item.activity {
                Ok(_) => true,
                Err(failure) => failure.errors[0].rule == "uniqueKeys",
            })
        });
    let fast = crate::domain::parse_batch_fast(body, batch_key, &validator, BATCH_MAX_ITEMS);
    prop_assert_eq!(
        fast.is_some(),
        fast_expected,
        "fast path vs schema on {}: {:?}",
        text,
        reference
    );
    match (&answer, &reference) {
        (Err(answer), Err(reference)) => prop_assert_eq!(answer, reference),
        (Ok(answer), Ok(reference)) => {
            prop_assert_eq!(answer.len(), reference.len());
            for (answer, reference) in answer.iter().zip(reference) {
                prop_assert_eq!(answer.index, reference.index);
                prop_assert_eq!(answer.key_from_client, reference.key_from_client);
                prop_assert_eq!(
                    &answer.activity,
                    &reference.activity,
                    "item {} of {}",
                    answer.index,
                    text
                );
                // A fresh key is random; a client's is the same on both paths.
                if reference.key_from_client {
                    prop_assert_eq!(&answer.key, &reference.key);
                } else {
                    prop_assert_eq!(answer.key.is_some(), reference.key.is_some());
                }
            }
        }
        _ => prop_assert!(
            false,
            "one path refused the batch: {} vs {:?}",
            text,
            reference
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_fast_path_accepts_exactly_what_the_schema_accepts(body in body_text()) {
        check_body(body.as_bytes())?;
    }

    #[test]
    fn the_fast_path_judges_arbitrary_bytes_like_the_schema(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        check_body(&bytes)?;
    }
}

#[test]
fn batches_are_judged_like_the_schema_judges_them() {
    use proptest::test_runner::{Config, TestRunner};

    // The batch generator nests deeply: its value trees need more stack than a test thread's 2 MiB
    // in a debug build.
    let run = || {
        let batch_key = prop_oneof![
            Just(None),
            Just(Some("b".to_owned())),
            Just(Some("k".repeat(127)))
        ];
        let mut runner = TestRunner::new(Config::with_cases(256));
        let outcome = runner.run(&(batch_text(), batch_key), |(body, batch_key)| {
            let batch_key = batch_key.map(|key| IdempotencyKey::parse(&key).unwrap());
            check_batch(body.as_bytes(), batch_key.as_ref())
        });
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
    };
    with_a_large_stack(run);
}

/// Runs `test` on a thread with 64 MiB of stack, passing its panic on.
fn with_a_large_stack(test: impl FnOnce() + Send + 'static) {
    let outcome = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(test)
        .unwrap()
        .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Guards the properties above against being vacuous: both outcomes are common, for bodies and for
/// whole batches.
#[test]
fn the_generators_reach_both_outcomes() {
    with_a_large_stack(generators_reach_both_outcomes);
}

fn generators_reach_both_outcomes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let validator = validator();
    let mut runner = TestRunner::deterministic();
    let bodies = body_text();
    let accepted = (0..500)
        .filter(|_| {
            let body = bodies.new_tree(&mut runner).unwrap().current();
            validator.parse_body_by_schema(body.as_bytes()).is_ok()
        })
        .count();
    assert!(
        (50..=450).contains(&accepted),
        "{accepted} of 500 bodies accepted"
    );
    let batches = batch_text();
    let accepted = (0..300)
        .filter(|_| {
            let body = batches.new_tree(&mut runner).unwrap().current();
            crate::domain::parse_batch_fast(body.as_bytes(), None, &validator, BATCH_MAX_ITEMS)
                .is_some()
        })
        .count();
    assert!(
        (20..=280).contains(&accepted),
        "{accepted} of 300 batches taken by the fast path"
    );
}
