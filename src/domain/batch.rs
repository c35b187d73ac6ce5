//! `POST /activities/batch` bodies: `{"activities": [item, ...]}`, where an item is an activity (the
//! body of `POST /activities`) or `{"idempotencyKey": "...", "activity": {...}}` to give it its own
//! key. Items without their own key get `<X-Idempotency-Key>:<index>` when the request has that
//! header (so retrying the same batch with the same header is deduplicated item by item), else a
//! fresh UUIDv7.
//!
//! The batch as a whole is refused (400) when the body is not such an object, is empty or has more
//! than the allowed items; otherwise each item is judged on its own.

use std::collections::HashMap;

use serde_json::Value;

use super::activity::{ActivityValidator, NewActivity, ValidationFailure};
use super::fast_path::FastItem;
use super::idempotency::IdempotencyKey;

/// One item of a batch, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    /// Position in the request's `activities` array.
    pub index: usize,
    /// The item's key, when one could be determined (an invalid own key leaves it `None`).
    pub key: Option<IdempotencyKey>,
    /// Whether the client chose the key (its own, or derived from the batch's header) rather than the
    /// server making a fresh UUIDv7. Only a client's key can come back in a retry.
    pub key_from_client: bool,
    pub activity: Result<NewActivity, ValidationFailure>,
}

/// Parses a batch body. `Err` refuses the whole batch; `Ok` holds one judged item per element.
///
/// The typed fast path first, which takes a batch only when every item in it is valid; any other
/// batch is judged on the schema path, so its answer (whole-batch errors, per-item errors with their
/// indexes) is the schema path's.
pub fn parse_batch(
    body: &[u8],
    batch_key: Option<&IdempotencyKey>,
    validator: &ActivityValidator,
    max_items: usize,
) -> Result<Vec<BatchItem>, ValidationFailure> {
    match parse_batch_fast(body, batch_key, validator, max_items) {
        Some(items) => Ok(items),
        None => parse_batch_by_schema(body, batch_key, validator, max_items),
    }
}

/// The batch on the typed fast path: the items deserialized straight into activities, no `Value`
/// of the body built. `None` when the batch is not one the fast path takes: anything wrong with it
/// as a whole, any invalid item, any invalid own key.
pub(crate) fn parse_batch_fast(
    body: &[u8],
    batch_key: Option<&IdempotencyKey>,
    validator: &ActivityValidator,
    max_items: usize,
) -> Option<Vec<BatchItem>> {
    let fast_items = validator.fast_path().parse_batch_items(body, max_items)?;
    if let Some(batch_key) = batch_key {
        derived_key(batch_key, fast_items.len() - 1)?;
    }
    let mut items = Vec::with_capacity(fast_items.len());
    for (index, item) in fast_items.into_iter().enumerate() {
        let (key, key_from_client, activity) = match item {
            FastItem::Bare(activity)
            | FastItem::Wrapped {
                own_key: None,
                activity,
            } => {
                let (key, key_from_client) = item_key_from_batch(batch_key, index);
                (key, key_from_client, activity)
            }
            FastItem::Wrapped {
                own_key: Some(own_key),
                activity,
            } => (IdempotencyKey::parse(&own_key).ok()?, true, activity),
        };
        items.push(BatchItem {
            index,
            key: Some(key),
            key_from_client,
            activity: Ok(activity),
        });
    }
    refuse_repeated_keys(&mut items);
    Some(items)
}

/// The schema path alone: the body parsed into a `Value`, each item judged by
/// `ActivityValidator::validate`. The definition the fast path is held to, and the benchmarks'
/// baseline.
pub fn parse_batch_by_schema(
    body: &[u8],
    batch_key: Option<&IdempotencyKey>,
    validator: &ActivityValidator,
    max_items: usize,
) -> Result<Vec<BatchItem>, ValidationFailure> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        ValidationFailure::single("/", "json", format!("body is not valid JSON ({error})"))
    })?;
    let Value::Object(mut object) = value else {
        return Err(ValidationFailure::single(
            "/",
            "type",
            "a batch is an object: {\"activities\": [...]}",
        ));
    };
    if let Some(unknown) = object.keys().find(|key| *key != "activities") {
        return Err(ValidationFailure::single(
            "/",
            "additionalProperties",
            format!("unknown field(s): {unknown}"),
        ));
    }
    let Some(Value::Array(elements)) = object.remove("activities") else {
        return Err(ValidationFailure::single(
            "/activities",
            "required",
            "activities (an array of activities)",
        ));
    };
    if elements.is_empty() {
        return Err(ValidationFailure::single(
            "/activities",
            "minItems",
            "a batch holds at least one activity",
        ));
    }
    if elements.len() > max_items {
        return Err(ValidationFailure::single(
            "/activities",
            "maxItems",
            format!(
                "{} activities; a batch holds at most {max_items}",
                elements.len()
            ),
        ));
    }
    if let Some(batch_key) = batch_key {
        let longest = derived_key(batch_key, elements.len() - 1);
        if longest.is_none() {
            return Err(ValidationFailure::single(
                "X-Idempotency-Key",
                "maxLength",
                format!(
                    "item keys are <key>:<index> and may not exceed {} characters: shorten the key",
                    IdempotencyKey::MAX_LEN
                ),
            ));
        }
    }

    let mut items: Vec<BatchItem> = elements
        .into_iter()
        .enumerate()
        .map(|(index, element)| judge(index, element, batch_key, validator))
        .collect();
    refuse_repeated_keys(&mut items);
    Ok(items)
}

/// The same key twice in one batch is a client mistake, not a retry: the later items are refused.
fn refuse_repeated_keys(items: &mut [BatchItem]) {
    let mut first_seen: HashMap<IdempotencyKey, usize> = HashMap::new();
    for item in items {
        let Some(key) = &item.key else { continue };
        match first_seen.get(key) {
            Some(first) if item.activity.is_ok() => {
                item.activity = Err(ValidationFailure::single(
                    "idempotencyKey",
                    "uniqueKeys",
                    format!("{key} is also the key of item {first} of this batch"),
                ));
            }
            Some(_) => {}
            None => {
                first_seen.insert(key.clone(), item.index);
            }
        }
    }
}

/// Bounds the failures described across a whole batch to `max_details`, in item order: each item
/// already describes at most `limits.max_reported_errors`, and once the batch's budget is spent the
/// later invalid items keep their one-line summary and only count their failures (`omitted`). So a
/// batch of a thousand items built to fail gets an answer that grows with its item count, not with
/// the failures in it.
pub fn limit_batch_details(items: &mut [BatchItem], max_details: usize) {
    let mut budget = max_details;
    for item in items {
        if let Err(failure) = &mut item.activity {
            let kept = failure.errors.len().min(budget);
            failure.omitted += failure.errors.len() - kept;
            failure.errors.truncate(kept);
            budget -= kept;
        }
    }
}

fn judge(
    index: usize,
    element: Value,
    batch_key: Option<&IdempotencyKey>,
    validator: &ActivityValidator,
) -> BatchItem {
    let fallback_key = || item_key_from_batch(batch_key, index);
    let wrapped = element
        .as_object()
        .is_some_and(|object| object.contains_key("activity"));
    if !wrapped {
        let (key, key_from_client) = fallback_key();
        return BatchItem {
            index,
            key: Some(key),
            key_from_client,
            activity: validator.validate(element),
        };
    }
    let Value::Object(mut wrapper) = element else {
        unreachable!("checked to be an object")
    };
    if let Some(unknown) = wrapper
        .keys()
        .find(|key| *key != "activity" && *key != "idempotencyKey")
    {
        return BatchItem {
            index,
            key: None,
            key_from_client: false,
            activity: Err(ValidationFailure::single(
                "/",
                "additionalProperties",
                format!("unknown field(s) beside activity and idempotencyKey: {unknown}"),
            )),
        };
    }
    let (key, key_from_client) = match wrapper.remove("idempotencyKey") {
        None | Some(Value::Null) => fallback_key(),
        Some(Value::String(raw)) => match IdempotencyKey::parse(&raw) {
            Ok(key) => (key, true),
            Err(error) => {
                return BatchItem {
                    index,
                    key: None,
                    key_from_client: false,
                    activity: Err(ValidationFailure::single(
                        "idempotencyKey",
                        "pattern",
                        error.to_string(),
                    )),
                }
            }
        },
        Some(_) => {
            return BatchItem {
                index,
                key: None,
                key_from_client: false,
                activity: Err(ValidationFailure::single(
                    "idempotencyKey",
                    "type",
                    "must be a string",
                )),
            }
        }
    };
    let activity = wrapper.remove("activity").unwrap_or(Value::Null);
    BatchItem {
        index,
        key: Some(key),
        key_from_client,
        activity: validator.validate(activity),
    }
}

/// The key of an item without its own: derived from the batch's (the client's), else fresh. The
/// batch's key is checked to be short enough for its longest index before any item is judged.
fn item_key_from_batch(batch_key: Option<&IdempotencyKey>, index: usize) -> (IdempotencyKey, bool) {
    match batch_key {
        Some(batch_key) => (
            derived_key(batch_key, index).expect("checked for the longest index"),
            true,
        ),
        None => (IdempotencyKey::generate(), false),
    }
}

/// `<batch key>:<index>`, if that is still a valid key (short enough).
fn derived_key(batch_key: &IdempotencyKey, index: usize) -> Option<IdempotencyKey> {
    IdempotencyKey::parse(&format!("{batch_key}:{index}")).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validator() -> ActivityValidator {
        ActivityValidator::new(16 * 1024, 8)
    }

    fn parse(body: Value, batch_key: Option<&str>) -> Result<Vec<BatchItem>, ValidationFailure> {
        let batch_key = batch_key.map(|key| IdempotencyKey::parse(key).unwrap());
        parse_batch(
            body.to_string().as_bytes(),
            batch_key.as_ref(),
            &validator(),
            3,
        )
    }

    fn good(actor: &str) -> Value {
        json!({"actorId": actor, "actorName": "A", "type": "login"})
    }

    #[test]
    fn bare_and_wrapped_items_with_their_keys() {
        let items = parse(
            json!({"activities": [good("a"), {"idempotencyKey": "own-1", "activity": good("b")}, {"activity": good("c")}]}),
            Some("batch-7"),
        )
        .unwrap();
        let keys: Vec<&str> = items
            .iter()
            .map(|item| item.key.as_ref().unwrap().as_str())
            .collect();
        assert_eq!(keys, ["batch-7:0", "own-1", "batch-7:2"]);
        assert!(items.iter().all(|item| item.key_from_client));
        assert!(items.iter().all(|item| item.activity.is_ok()));
        assert_eq!(items[1].activity.as_ref().unwrap().actor_id, "b");
    }

    #[test]
    fn without_a_batch_key_items_get_fresh_keys() {
        let items = parse(
            json!({"activities": [good("a"), {"activity": good("b")}, {"idempotencyKey": "own-2", "activity": good("c")}]}),
            None,
        )
        .unwrap();
        assert_ne!(items[0].key, items[1].key);
        assert!(items.iter().all(|item| item.key.is_some()));
        let from_client: Vec<bool> = items.iter().map(|item| item.key_from_client).collect();
        assert_eq!(from_client, [false, false, true]);
    }

    #[test]
    fn invalid_items_are_judged_one_by_one() {
        let items = parse(
            json!({"activities": [good("a"), {"actorId": "x"}, {"idempotencyKey": "bad key", "activity": good("c")}]}),
            None,
        )
        .unwrap();
        assert!(items[0].activity.is_ok());
        let failure = items[1].activity.as_ref().unwrap_err();
        assert_eq!(
            failure.summary(),
            "Missing required fields: actorName, type"
        );
        assert!(
            items[1].key.is_some(),
            "an invalid activity still has its key"
        );
        assert_eq!(items[2].key, None);
        assert_eq!(
            items[2].activity.as_ref().unwrap_err().errors[0].field,
            "idempotencyKey"
        );
    }

    #[test]
    fn a_key_repeated_within_the_batch_is_refused_after_its_first_use() {
        let items = parse(
            json!({"activities": [
                {"idempotencyKey": "k", "activity": good("a")},
                {"idempotencyKey": "k", "activity": good("b")},
            ]}),
            None,
        )
        .unwrap();
        assert!(items[0].activity.is_ok());
        assert_eq!(
            items[1].activity.as_ref().unwrap_err().errors[0].rule,
            "uniqueKeys"
        );
    }

    #[test]
    fn the_details_of_a_batch_are_bounded_as_a_whole_and_the_rest_counted() {
        // Each invalid item misses two fields (two failures); a budget of 3 describes the first 3.
        let missing_two = json!({"actorId": "x"});
        let mut items = parse(
            json!({"activities": [missing_two, good("a"), missing_two]}),
            None,
        )
        .unwrap();
        limit_batch_details(&mut items, 3);
        let counts: Vec<(usize, usize)> = items
            .iter()
            .map(|item| match &item.activity {
                Ok(_) => (0, 0),
                Err(failure) => (failure.errors.len(), failure.omitted),
            })
            .collect();
        assert_eq!(counts, [(2, 0), (0, 0), (1, 1)]);
        assert_eq!(
            items[2].activity.as_ref().unwrap_err().summary(),
            "Missing required fields: actorName (and 1 more)",
            "an item past the budget still says why"
        );
        limit_batch_details(&mut items, 0);
        assert_eq!(
            items[0].activity.as_ref().unwrap_err().summary(),
            "Invalid activity (2 failure(s), not described)"
        );
    }

    #[test]
    fn the_whole_batch_is_refused_when_its_shape_is_wrong() {
        let rule = |body: Value, batch_key: Option<&str>| {
            parse(body, batch_key).unwrap_err().errors[0].rule.clone()
        };
        assert_eq!(rule(json!([good("a")]), None), "type");
        assert_eq!(rule(json!({"activities": []}), None), "minItems");
        assert_eq!(
            rule(
                json!({"activities": [good("a"), good("b"), good("c"), good("d")]}),
                None
            ),
            "maxItems"
        );
        assert_eq!(
            rule(json!({"items": [good("a")]}), None),
            "additionalProperties"
        );
        assert_eq!(rule(json!({}), None), "required");
        assert_eq!(rule(json!({"activities": good("a")}), None), "required");
        assert_eq!(
            rule(json!({"activities": [good("a")]}), Some(&"k".repeat(127))),
            "maxLength"
        );
        let failure = parse_batch(b"{", None, &validator(), 3).unwrap_err();
        assert_eq!(failure.errors[0].rule, "json");
    }
}
