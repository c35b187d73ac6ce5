//! The typed fast path of validation: a body deserialized straight into `NewActivity` (or a batch
//! straight into its items), every rule of the activity schema checked as the bytes go by, without
//! first building a `serde_json::Value` of the whole body and walking it with the JSON Schema
//! validator.
//!
//! The fast path only ever *accepts*. At the first thing it does not like (a rule broken, a shape it
//! was not written for, a duplicate key) it gives up and the caller runs the schema path on the same
//! bytes, so every error a client sees is still the JSON Schema validator's, word for word. What must
//! hold, and what `validator_props` proves with generated bodies, is that the fast path accepts
//! exactly the bodies the schema path accepts and makes the same `NewActivity` of them.
//!
//! Where the rules come from: the four string fields are checked by validators compiled from their
//! own subschemas in the effective schema (so configured lengths and the `type` pattern follow the
//! schema by construction); `metadata` (`$defs/storableKey`, `$defs/storableValue`) is written out
//! by hand below, because walking it with the schema is the cost this path exists to avoid; its key
//! length is read from the schema, and a test pins the rest of the schema's text to what this file
//! implements, so a change to the schema file cannot go unnoticed here.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::activity::{serialized_len, InvalidLimit, NewActivity};

/// An item of a batch the fast path accepted.
#[derive(Debug)]
pub(crate) enum FastItem {
    /// A bare activity: its key comes from the batch (or is made fresh).
    Bare(NewActivity),
    /// `{"idempotencyKey": ..., "activity": {...}}`; `own_key` is `None` when the key is absent or
    /// `null` (the item then gets the batch's key, as a bare one does). The key is not yet checked.
    Wrapped {
        own_key: Option<String>,
        activity: NewActivity,
    },
}

/// The rules of the activity schema in a form that checks as it deserializes.
pub(crate) struct FastPath {
    actor_id: jsonschema::Validator,
    actor_name: jsonschema::Validator,
    activity_type: jsonschema::Validator,
    entity_id: jsonschema::Validator,
    /// `$defs/storableKey/maxLength`, in characters.
    metadata_key_max_chars: usize,
    metadata_max_bytes: usize,
    metadata_max_depth: usize,
}

impl FastPath {
    /// The fast path for `schema`, the effective schema (configured limits written in).
    pub(crate) fn new(
        schema: &Value,
        metadata_max_bytes: usize,
        metadata_max_depth: usize,
    ) -> Result<FastPath, InvalidLimit> {
        let property = |name: &'static str| {
            jsonschema::draft202012::new(&schema["properties"][name]).map_err(|error| {
                InvalidLimit {
                    key: "type_pattern",
                    message: format!("the {name} rule does not compile: {error}"),
                }
            })
        };
        let metadata_key_max_chars = schema["$defs"]["storableKey"]["maxLength"]
            .as_u64()
            .and_then(|chars| usize::try_from(chars).ok())
            .expect("the bundled schema bounds metadata keys");
        Ok(FastPath {
            actor_id: property("actorId")?,
            actor_name: property("actorName")?,
            activity_type: property("type")?,
            entity_id: property("entityId")?,
            metadata_key_max_chars,
            metadata_max_bytes,
            metadata_max_depth,
        })
    }

    /// The activity in `body`, or `None` when the fast path refuses it (invalid, or not a shape it
    /// handles): the caller then asks the schema path, which says why.
    pub(crate) fn parse_activity(&self, body: &[u8]) -> Option<NewActivity> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let activity = ActivitySeed { rules: self }
            .deserialize(&mut deserializer)
            .ok()?;
        deserializer.end().ok()?;
        Some(activity)
    }

    /// The items of a batch body, when it is `{"activities": [...]}` with between 1 and `max_items`
    /// items and every item is a valid activity, bare or wrapped. `None` otherwise, and the caller
    /// judges the batch on the schema path: a batch with one bad item pays for both paths, which keeps
    /// the per-item errors and the whole-body errors exactly the schema path's.
    pub(crate) fn parse_batch_items(&self, body: &[u8], max_items: usize) -> Option<Vec<FastItem>> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let items = BatchSeed {
            rules: self,
            max_items,
        }
        .deserialize(&mut deserializer)
        .ok()?;
        deserializer.end().ok()?;
        Some(items)
    }
}

/// Why the fast path gave up; never shown to anyone (the schema path speaks for refused bodies), so
/// one message will do.
fn refused<E: de::Error>() -> E {
    E::custom("refused by the fast path")
}

/// The member names the fast path knows, in either an activity or a batch item's wrapper. Anything
/// else is `Unknown` and refused (`additionalProperties: false`).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Member {
    ActorId,
    ActorName,
    Type,
    EntityId,
    Metadata,
    Activity,
    IdempotencyKey,
    #[serde(other)]
    Unknown,
}

/// `{"activities": [...]}`.
struct BatchSeed<'a> {
    rules: &'a FastPath,
    max_items: usize,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<FastItem>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<FastItem>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a batch object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = None;
        while let Some(name) = map.next_key::<BatchMember>()? {
            // A repeated `activities` is last-wins on the schema path; leave that to it.
            if name != BatchMember::Activities || items.is_some() {
                return Err(refused());
            }
            items = Some(map.next_value_seed(ItemsSeed {
                rules: self.rules,
                max_items: self.max_items,
            })?);
        }
        match items {
            Some(items) if !items.is_empty() => Ok(items),
            _ => Err(refused()),
        }
    }
}

#[derive(Deserialize, PartialEq)]
#[serde(field_identifier, rename_all = "camelCase")]
enum BatchMember {
    Activities,
    #[serde(other)]
    Unknown,
}

struct ItemsSeed<'a> {
    rules: &'a FastPath,
    max_items: usize,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<FastItem>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<FastItem>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an array of activities")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max_items));
        while let Some(item) = seq.next_element_seed(ObjectSeed {
            rules: self.rules,
            wrapper_allowed: true,
        })? {
            // Stop reading as soon as the batch is too long: the schema path will say so.
            if items.len() == self.max_items {
                return Err(refused());
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// An activity (top-level body, or the `activity` of a wrapper).
struct ActivitySeed<'a> {
    rules: &'a FastPath,
}

impl<'de> DeserializeSeed<'de> for ActivitySeed<'_> {
    type Value = NewActivity;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match (ObjectSeed {
            rules: self.rules,
            wrapper_allowed: false,
        })
        .deserialize(deserializer)?
        {
            FastItem::Bare(activity) => Ok(activity),
            FastItem::Wrapped { .. } => Err(refused()),
        }
    }
}

/// An object that is an activity or, where `wrapper_allowed` (a batch item), a wrapper. Which one is
/// known only at its end (the schema path calls an item a wrapper when it has an `activity` member),
/// so both kinds of member are collected and the combination judged then.
struct ObjectSeed<'a> {
    rules: &'a FastPath,
    wrapper_allowed: bool,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = FastItem;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

/// Sets a member's slot; `false` when it was already set (a repeated member is last-wins on the
/// schema path, which the fast path leaves to it).
fn set_once<T>(slot: &mut Option<T>, value: T) -> bool {
    slot.replace(value).is_none()
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = FastItem;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an activity object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let rules = self.rules;
        let mut actor_id = None;
        let mut actor_name = None;
        let mut activity_type = None;
        let mut entity_id = None;
        let mut metadata = None;
        let mut activity = None;
        let mut own_key = None;
        let refuse = refused::<A::Error>;
        while let Some(member) = map.next_key::<Member>()? {
            let first_time = match member {
                Member::ActorId => {
                    let value = checked_string(&rules.actor_id, map.next_value()?);
                    set_once(&mut actor_id, value.ok_or_else(refuse)?)
                }
                Member::ActorName => {
                    let value = checked_string(&rules.actor_name, map.next_value()?);
                    set_once(&mut actor_name, value.ok_or_else(refuse)?)
                }
                Member::Type => {
                    let value = checked_string(&rules.activity_type, map.next_value()?);
                    set_once(&mut activity_type, value.ok_or_else(refuse)?)
                }
                Member::EntityId => {
                    let value: Value = map.next_value()?;
                    let entity = match value {
                        Value::Null if rules.entity_id.is_valid(&value) => None,
                        value => Some(checked_string(&rules.entity_id, value).ok_or_else(refuse)?),
                    };
                    set_once(&mut entity_id, entity)
                }
                Member::Metadata => {
                    set_once(&mut metadata, map.next_value_seed(MetadataSeed { rules })?)
                }
                Member::Activity if self.wrapper_allowed => {
                    set_once(&mut activity, map.next_value_seed(ActivitySeed { rules })?)
                }
                Member::IdempotencyKey if self.wrapper_allowed => {
                    set_once(&mut own_key, map.next_value::<Option<String>>()?)
                }
                Member::Activity | Member::IdempotencyKey | Member::Unknown => false,
            };
            if !first_time {
                return Err(refuse());
            }
        }
        let any_activity_member = actor_id.is_some()
            || actor_name.is_some()
            || activity_type.is_some()
            || entity_id.is_some()
            || metadata.is_some();
        match (activity, own_key) {
            // A wrapper holds only `activity` and `idempotencyKey`.
            (Some(activity), own_key) if !any_activity_member => Ok(FastItem::Wrapped {
                own_key: own_key.flatten(),
                activity,
            }),
            (None, None) => Ok(FastItem::Bare(NewActivity {
                actor_id: actor_id.ok_or_else(refuse)?,
                actor_name: actor_name.ok_or_else(refuse)?,
                activity_type: activity_type.ok_or_else(refuse)?,
                entity_id: entity_id.flatten(),
                metadata,
            })),
            _ => Err(refused()),
        }
    }
}

/// `value` as a string, when its subschema accepts it.
fn checked_string(rule: &jsonschema::Validator, value: Value) -> Option<String> {
    if !rule.is_valid(&value) {
        return None;
    }
    match value {
        Value::String(text) => Some(text),
        _ => None,
    }
}

/// `metadata`: an object of storable keys and values, within the size and depth limits.
struct MetadataSeed<'a> {
    rules: &'a FastPath,
}

impl<'de> DeserializeSeed<'de> for MetadataSeed<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let value = StorableSeed {
            rules: self.rules,
            depth: 1,
            in_array: false,
        }
        .deserialize(deserializer)?;
        let Value::Object(_) = value else {
            return Err(refused());
        };
        // Measured on the finished value with the schema path's own function, so "serialized size"
        // means one thing.
        if serialized_len(&value) > self.rules.metadata_max_bytes {
            return Err(refused());
        }
        match value {
            Value::Object(map) => Ok(map),
            _ => unreachable!("checked to be an object"),
        }
    }
}

/// `$defs/storableValue` at `depth` (the depth a container found here would have: `metadata` itself
/// is 1). `in_array`: directly inside an array, where an array is refused (FerretDB refuses them).
struct StorableSeed<'a> {
    rules: &'a FastPath,
    depth: usize,
    in_array: bool,
}

impl<'de> DeserializeSeed<'de> for StorableSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl StorableSeed<'_> {
    /// Whether a container found here is within `metadata_max_depth`.
    fn container_allowed(&self) -> bool {
        self.depth <= self.rules.metadata_max_depth
    }

    fn child(&self, in_array: bool) -> StorableSeed<'_> {
        StorableSeed {
            rules: self.rules,
            depth: self.depth + 1,
            in_array,
        }
    }

    /// `$defs/storableKey`: not empty, at most `maxLength` characters, no `$` first, no `.` or NUL.
    fn storable_key(&self, key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('$')
            && !key.contains(['.', '\0'])
            && key.chars().count() <= self.rules.metadata_key_max_chars
    }
}

// Every scalar becomes the `Value` serde_json's own visitor would make of it, so an accepted
// activity is equal to the one the schema path builds.
impl<'de> Visitor<'de> for StorableSeed<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a storable value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    /// An integer above `i64::MAX` has no BSON representation (the schema path's `integerRange`).
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        if i64::try_from(value).is_err() {
            return Err(refused());
        }
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        if value.contains('\0') {
            return Err(refused());
        }
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        if value.contains('\0') {
            return Err(refused());
        }
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.in_array || !self.container_allowed() {
            return Err(refused());
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(true))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if !self.container_allowed() {
            return Err(refused());
        }
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if !self.storable_key(&key) {
                return Err(refused());
            }
            let value = map.next_value_seed(self.child(false))?;
            // A repeated key is last-wins on the schema path (the earlier value never judged).
            if object.insert(key, value).is_some() {
                return Err(refused());
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::activity::ACTIVITY_SCHEMA_JSON;

    /// The parts of the schema this file implements by hand (the object's shape, `metadata`, the
    /// `$defs`), descriptions left out. The four string fields are not pinned: their rules are
    /// compiled from the schema itself. If this fails, the schema file changed: change the fast path
    /// to match (and the generators of `fast_path_props`), then this copy.
    #[test]
    fn the_schema_is_the_one_the_fast_path_was_written_for() {
        let mut schema: serde_json::Value = serde_json::from_str(ACTIVITY_SCHEMA_JSON).unwrap();
        strip_descriptions(&mut schema);
        let properties = schema["properties"].as_object_mut().unwrap();
        for compiled in ["actorId", "actorName", "type", "entityId"] {
            assert!(properties.remove(compiled).is_some(), "{compiled}");
        }
        assert_eq!(
            schema,
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": "https://activity-pipeline.dev/schemas/activity.v1.json",
                "title": "Activity (v1)",
                "type": "object",
                "required": ["actorId", "actorName", "type"],
                "additionalProperties": false,
                "properties": {
                    "metadata": {
                        "type": "object",
                        "propertyNames": {"$ref": "#/$defs/storableKey"},
                        "additionalProperties": {"$ref": "#/$defs/storableValue"}
                    }
                },
                "$defs": {
                    "storableKey": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 256,
                        "pattern": "^[^$.\\u0000][^.\\u0000]*$"
                    },
                    "storableValue": {
                        "anyOf": [
                            {"type": ["number", "boolean", "null"]},
                            {"type": "string", "pattern": "^[^\\u0000]*$"},
                            {
                                "type": "array",
                                "items": {"$ref": "#/$defs/storableValue", "not": {"type": "array"}}
                            },
                            {
                                "type": "object",
                                "propertyNames": {"$ref": "#/$defs/storableKey"},
                                "additionalProperties": {"$ref": "#/$defs/storableValue"}
                            }
                        ]
                    }
                }
            })
        );
    }

    fn strip_descriptions(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(object) => {
                object.remove("description");
                object.values_mut().for_each(strip_descriptions);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
            _ => {}
        }
    }
}
