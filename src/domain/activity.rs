use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::fast_path::FastPath;

/// The JSON Schema every activity body is checked against: the single source of truth, also served to
/// clients at `GET /schemas/activity.v1.json`.
pub const ACTIVITY_SCHEMA_JSON: &str = include_str!("../../schemas/activity.v1.json");
/// Carried in the envelope and a record header, so consumers know how to read the payload.
pub const ACTIVITY_SCHEMA_ID: &str = "activity.v1";

/// A validated activity, as the client sent it (field names stay camelCase on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewActivity {
    pub actor_id: String,
    pub actor_name: String,
    #[serde(rename = "type")]
    pub activity_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// One reason a body was refused: where (`/metadata/x`, or `/` for the whole body), which rule, and a
/// sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub rule: String,
    pub message: String,
}

/// Why a body is not a valid activity. The first error is the headline. At most
/// `limits.max_reported_errors` are described; `omitted` counts the others, so a body built to fail
/// everywhere costs a small answer, not one line per failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.summary())]
pub struct ValidationFailure {
    pub errors: Vec<FieldError>,
    /// Failures found beyond those in `errors`.
    pub omitted: usize,
}

/// Longest `field` or `message` of a `FieldError`, in bytes: a path or a message quoting a client's
/// key is shortened, so the size of an error answer does not follow the size of the body.
pub const FIELD_ERROR_MAX_TEXT: usize = 200;

/// Most unknown field names listed in one `additionalProperties` message.
const UNKNOWN_FIELDS_LISTED: usize = 10;

impl ValidationFailure {
    pub(crate) fn single(field: &str, rule: &str, message: impl Into<String>) -> ValidationFailure {
        ValidationFailure {
            errors: vec![FieldError {
                field: shorten(field.to_owned()),
                rule: rule.to_owned(),
                message: shorten(message.into()),
            }],
            omitted: 0,
        }
    }

    /// Every failure found, described or not.
    pub fn total(&self) -> usize {
        self.errors.len() + self.omitted
    }

    /// The seed's clients read `error`: keep a short sentence, naming the missing fields the way the
    /// seed did when that is the problem, and saying how many failures are not described.
    pub fn summary(&self) -> String {
        let missing: Vec<&str> = self
            .errors
            .iter()
            .filter(|error| error.rule == "required")
            .map(|error| error.message.as_str())
            .collect();
        let headline = if !missing.is_empty() {
            format!("Missing required fields: {}", missing.join(", "))
        } else {
            match self.errors.first() {
                Some(error) if error.field == "/" => format!("Invalid activity: {}", error.message),
                Some(error) => format!("Invalid activity: {}: {}", error.field, error.message),
                None => "Invalid activity".to_owned(),
            }
        };
        match (self.errors.is_empty(), self.omitted) {
            (_, 0) => headline,
            (true, omitted) => format!("{headline} ({omitted} failure(s), not described)"),
            (false, omitted) => format!("{headline} (and {omitted} more)"),
        }
    }
}

/// The configurable bounds of an activity. The field lengths and the `type` pattern are written into
/// the schema itself, so the schema served to clients is exactly the one requests are checked against;
/// the metadata size and depth are checked after the schema, which cannot express them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityLimits {
    pub actor_id_max_chars: u64,
    pub actor_name_max_chars: u64,
    pub entity_id_max_chars: u64,
    pub type_pattern: String,
    pub metadata_max_bytes: usize,
    pub metadata_max_depth: usize,
    /// Most failures described in one `ValidationFailure`; the rest are only counted.
    pub max_reported_errors: usize,
}

impl Default for ActivityLimits {
    /// The values written in `schemas/activity.v1.json`, with 16 KiB and 8 levels of metadata, and
    /// 20 failures described.
    fn default() -> ActivityLimits {
        let schema = bundled_schema();
        let property = |name: &str, keyword: &str| schema["properties"][name][keyword].clone();
        let max_chars = |name: &str| {
            property(name, "maxLength")
                .as_u64()
                .expect("the bundled schema bounds every string field")
        };
        ActivityLimits {
            actor_id_max_chars: max_chars("actorId"),
            actor_name_max_chars: max_chars("actorName"),
            entity_id_max_chars: max_chars("entityId"),
            type_pattern: property("type", "pattern")
                .as_str()
                .expect("the bundled schema has a type pattern")
                .to_owned(),
            metadata_max_bytes: 16 * 1024,
            metadata_max_depth: 8,
            max_reported_errors: 20,
        }
    }
}

/// A limit that cannot work, naming it (`type_pattern`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidLimit {
    pub key: &'static str,
    pub message: String,
}

fn bundled_schema() -> Value {
    serde_json::from_str(ACTIVITY_SCHEMA_JSON).expect("the bundled activity schema is valid JSON")
}

/// Checks bodies against the activity schema plus the configured size and depth limits, which a
/// schema cannot express.
pub struct ActivityValidator {
    schema: jsonschema::Validator,
    /// The same rules, checked while deserializing: tried first, the schema asked only about a body
    /// it refuses (`domain/fast_path.rs`).
    fast_path: FastPath,
    /// The schema with the configured limits written in: what `GET /schemas/activity.v1.json` serves.
    schema_json: String,
    metadata_max_bytes: usize,
    metadata_max_depth: usize,
    max_reported_errors: usize,
}

impl std::fmt::Debug for ActivityValidator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ActivityValidator")
            .field("metadata_max_bytes", &self.metadata_max_bytes)
            .field("metadata_max_depth", &self.metadata_max_depth)
            .field("max_reported_errors", &self.max_reported_errors)
            .finish_non_exhaustive()
    }
}

impl ActivityValidator {
    /// The bundled schema's field limits with the given metadata bounds.
    pub fn new(metadata_max_bytes: usize, metadata_max_depth: usize) -> ActivityValidator {
        ActivityValidator::with_limits(&ActivityLimits {
            metadata_max_bytes,
            metadata_max_depth,
            ..ActivityLimits::default()
        })
        .expect("the bundled schema's own limits compile")
    }

    /// A validator for `limits`; fails when the limits make no schema (a `type_pattern` that is not
    /// a regular expression, a zero length).
    pub fn with_limits(limits: &ActivityLimits) -> Result<ActivityValidator, InvalidLimit> {
        for (key, value) in [
            ("actor_id_max_chars", limits.actor_id_max_chars),
            ("actor_name_max_chars", limits.actor_name_max_chars),
            ("entity_id_max_chars", limits.entity_id_max_chars),
            ("max_reported_errors", limits.max_reported_errors as u64),
        ] {
            if value == 0 {
                return Err(InvalidLimit {
                    key,
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        let mut schema = bundled_schema();
        let properties = &mut schema["properties"];
        properties["actorId"]["maxLength"] = limits.actor_id_max_chars.into();
        properties["actorName"]["maxLength"] = limits.actor_name_max_chars.into();
        properties["entityId"]["maxLength"] = limits.entity_id_max_chars.into();
        properties["type"]["pattern"] = limits.type_pattern.clone().into();
        let compiled = jsonschema::draft202012::new(&schema).map_err(|error| InvalidLimit {
            key: "type_pattern",
            message: format!("is not a usable regular expression: {error}"),
        })?;
        let fast_path = FastPath::new(
            &schema,
            limits.metadata_max_bytes,
            limits.metadata_max_depth,
        )?;
        Ok(ActivityValidator {
            schema: compiled,
            fast_path,
            schema_json: serde_json::to_string_pretty(&schema).expect("a schema serializes"),
            metadata_max_bytes: limits.metadata_max_bytes,
            metadata_max_depth: limits.metadata_max_depth,
            max_reported_errors: limits.max_reported_errors,
        })
    }

    /// The effective JSON Schema (the bundled one with the configured limits written in).
    pub fn schema_json(&self) -> &str {
        &self.schema_json
    }

    /// Whether `value` passes the JSON Schema alone (no size or depth limits); for tests that hold
    /// the validator to the schema.
    pub fn schema_accepts(&self, value: &Value) -> bool {
        self.schema.is_valid(value)
    }

    /// Parses and validates a request body: the typed fast path first; a body it refuses is judged
    /// again on the schema path, so every error is the schema's own, word for word.
    pub fn parse_body(&self, body: &[u8]) -> Result<NewActivity, ValidationFailure> {
        match self.fast_path.parse_activity(body) {
            Some(activity) => Ok(activity),
            None => self.parse_body_by_schema(body),
        }
    }

    /// The schema path alone: the body parsed into a `Value`, then `validate`. The definition the
    /// fast path is held to (`fast_path_props`), and the benchmarks' baseline.
    pub fn parse_body_by_schema(&self, body: &[u8]) -> Result<NewActivity, ValidationFailure> {
        let value: Value = serde_json::from_slice(body).map_err(|error| {
            ValidationFailure::single("/", "json", format!("body is not valid JSON ({error})"))
        })?;
        self.validate(value)
    }

    /// Validates an already parsed JSON value.
    ///
    /// Cheap checks first: the schema walk descends only into `metadata` (every other field is a
    /// string checked as a whole, and unknown fields are named, not walked), so `metadata`'s size
    /// and depth are checked before it. A body is already bounded by `http.max_body_bytes` (413)
    /// before it is parsed. Then the walk, describing at most `max_reported_errors` failures.
    pub fn validate(&self, value: Value) -> Result<NewActivity, ValidationFailure> {
        if let Some(metadata) = value.get("metadata") {
            self.check_metadata_size(metadata)?;
        }
        // `is_valid` stops at the first failure and builds no error values; only an invalid body
        // pays for the walk that names failing fields.
        if !self.schema.is_valid(&value) {
            let mut failures = self.schema.iter_errors(&value);
            let errors: Vec<FieldError> = failures
                .by_ref()
                .take(self.max_reported_errors)
                .map(describe_schema_error)
                .collect();
            let omitted = failures.count();
            return Err(ValidationFailure { errors, omitted });
        }
        if let Some(metadata) = value.get("metadata") {
            if let Some(number) = first_unstorable_number(metadata) {
                return Err(ValidationFailure::single(
                    "/metadata",
                    "integerRange",
                    format!("{number} is outside the 64-bit signed integer range MongoDB stores"),
                ));
            }
        }
        // The schema admits exactly the shape of `NewActivity`, so this cannot fail; keep the error
        // path anyway rather than trust two definitions to stay in step.
        serde_json::from_value(value)
            .map_err(|error| ValidationFailure::single("/", "shape", error.to_string()))
    }

    /// The typed fast path, for the batch parser and the differential test.
    pub(crate) fn fast_path(&self) -> &FastPath {
        &self.fast_path
    }

    fn check_metadata_size(&self, metadata: &Value) -> Result<(), ValidationFailure> {
        let size = serialized_len(metadata);
        if size > self.metadata_max_bytes {
            return Err(ValidationFailure::single(
                "/metadata",
                "maxBytes",
                format!(
                    "is {size} bytes serialized; the limit is {}",
                    self.metadata_max_bytes
                ),
            ));
        }
        let depth = nesting_depth(metadata);
        if depth > self.metadata_max_depth {
            return Err(ValidationFailure::single(
                "/metadata",
                "maxDepth",
                format!(
                    "nests {depth} levels deep; the limit is {}",
                    self.metadata_max_depth
                ),
            ));
        }
        Ok(())
    }
}

/// Length of `value` serialized as compact JSON, counted without building the bytes.
pub(super) fn serialized_len(value: &Value) -> usize {
    struct CountingWriter(usize);
    impl std::io::Write for CountingWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = CountingWriter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Depth of objects and arrays: `{}` is 1, `{"a":{}}` is 2, scalars are 0.
fn nesting_depth(value: &Value) -> usize {
    // Iterative, so a hostile body cannot overflow the stack (serde_json already caps parsing at 128).
    let mut deepest = 0;
    let mut pending = vec![(value, 1usize)];
    while let Some((value, depth)) = pending.pop() {
        match value {
            Value::Object(map) => {
                deepest = deepest.max(depth);
                pending.extend(map.values().map(|child| (child, depth + 1)));
            }
            Value::Array(items) => {
                deepest = deepest.max(depth);
                pending.extend(items.iter().map(|child| (child, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// An integer above i64::MAX parses as JSON but has no BSON representation; found here, it is a 400
/// instead of poison for the consumer.
fn first_unstorable_number(value: &Value) -> Option<&serde_json::Number> {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Number(number) if number.is_u64() && number.as_i64().is_none() => {
                return Some(number)
            }
            Value::Object(map) => pending.extend(map.values()),
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    None
}

fn describe_schema_error(error: jsonschema::ValidationError<'_>) -> FieldError {
    use jsonschema::error::ValidationErrorKind;

    let path = error.instance_path().as_str();
    let field = if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    };
    let rule = error.kind().keyword().to_owned();
    let message = match error.kind() {
        // The field list is what a client needs; the seed's summary is built from it.
        ValidationErrorKind::Required { property } => {
            property.as_str().unwrap_or_default().to_owned()
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let listed = unexpected
                .iter()
                .take(UNKNOWN_FIELDS_LISTED)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            match unexpected.len().saturating_sub(UNKNOWN_FIELDS_LISTED) {
                0 => format!("unknown field(s): {listed}"),
                more => format!("unknown field(s): {listed} and {more} more"),
            }
        }
        ValidationErrorKind::Pattern { pattern }
            if path.is_empty() || path.starts_with("/metadata") =>
        {
            format!("{} does not match {pattern}", short_instance(&error))
        }
        _ => error.masked().to_string(),
    };
    FieldError {
        field: shorten(field),
        rule,
        message: shorten(message),
    }
}

/// `text` cut to `FIELD_ERROR_MAX_TEXT` bytes (at a character boundary) with `...` when longer.
fn shorten(mut text: String) -> String {
    if text.len() > FIELD_ERROR_MAX_TEXT {
        let mut cut = FIELD_ERROR_MAX_TEXT - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// The offending value, shortened so an error never echoes a huge body back.
fn short_instance(error: &jsonschema::ValidationError<'_>) -> String {
    let mut text = error.instance().to_string();
    if text.len() > 80 {
        let mut cut = 77;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validator() -> ActivityValidator {
        ActivityValidator::new(16 * 1024, 8)
    }

    fn fields(failure: &ValidationFailure) -> Vec<(&str, &str)> {
        failure
            .errors
            .iter()
            .map(|error| (error.field.as_str(), error.rule.as_str()))
            .collect()
    }

    #[test]
    fn accepts_the_seed_contract() {
        let activity = validator()
            .validate(json!({
                "actorId": "u1", "actorName": "Alice", "type": "comment.created",
                "entityId": "doc-42", "metadata": {"text": "hi", "nested": {"n": [1, 2, {"x": null}]}}
            }))
            .unwrap();
        assert_eq!(activity.actor_id, "u1");
        assert_eq!(activity.activity_type, "comment.created");
        assert_eq!(activity.entity_id.as_deref(), Some("doc-42"));
        let minimal = validator()
            .validate(json!({"actorId": "u1", "actorName": "Alice", "type": "login"}))
            .unwrap();
        assert_eq!(minimal.metadata, None);
        let null_entity = validator()
            .validate(json!({"actorId": "u1", "actorName": "A", "type": "t", "entityId": null}))
            .unwrap();
        assert_eq!(null_entity.entity_id, None);
    }

    #[test]
    fn names_every_missing_field_like_the_seed() {
        let failure = validator().validate(json!({"actorId": "u1"})).unwrap_err();
        assert_eq!(
            failure.summary(),
            "Missing required fields: actorName, type"
        );
        assert_eq!(fields(&failure), [("/", "required"), ("/", "required")]);
    }

    #[test]
    fn rejects_wrong_types_lengths_and_unknown_fields() {
        let failure = validator()
            .validate(json!({"actorId": 7, "actorName": "", "type": "has space", "extra": 1}))
            .unwrap_err();
        let mut found = fields(&failure);
        found.sort();
        assert_eq!(
            found,
            [
                ("/", "additionalProperties"),
                ("/actorId", "type"),
                ("/actorName", "minLength"),
                ("/type", "pattern")
            ]
        );
        assert!(validator().validate(json!([1, 2])).is_err());
        assert!(validator().validate(json!("text")).is_err());
        let long = "x".repeat(129);
        let failure = validator()
            .validate(json!({"actorId": long, "actorName": "A", "type": "t"}))
            .unwrap_err();
        assert_eq!(fields(&failure), [("/actorId", "maxLength")]);
    }

    #[test]
    fn rejects_keys_mongodb_would_refuse_at_any_depth() {
        for metadata in [
            json!({"$set": 1}),
            json!({"a.b": 1}),
            json!({"ok": {"$where": "x"}}),
            json!({"ok": [{"a.b": 1}]}),
            json!({"a\u{0}b": 1}),
            json!({"": 1}),
        ] {
            let body = json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": metadata});
            let failure = validator().validate(body.clone()).unwrap_err();
            assert!(
                failure.errors[0].field.starts_with("/metadata"),
                "{body}: {failure:?}"
            );
        }
    }

    #[test]
    fn rejects_arrays_directly_inside_arrays() {
        // FerretDB refuses nested arrays (BadValue): accepting one would acknowledge an activity
        // the consumer can only dead-letter. Arrays of objects holding arrays are fine.
        for metadata in [
            json!({"a": [[1]]}),
            json!({"a": [1, [2, 3]]}),
            json!({"o": {"a": [[]]}}),
        ] {
            let body = json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": metadata});
            let failure = validator().validate(body.clone()).unwrap_err();
            assert!(
                failure.errors[0].field.starts_with("/metadata"),
                "{body}: {failure:?}"
            );
        }
        assert!(validator()
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"a": [{"b": [1, 2]}, 3]}}))
            .is_ok());
    }

    #[test]
    fn rejects_nul_in_strings() {
        let failure = validator()
            .validate(json!({"actorId": "u\u{0}", "actorName": "A", "type": "t"}))
            .unwrap_err();
        assert_eq!(fields(&failure), [("/actorId", "pattern")]);
        let failure = validator()
            .validate(
                json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"k": "v\u{0}"}}),
            )
            .unwrap_err();
        assert!(failure.errors[0].field.starts_with("/metadata"));
    }

    #[test]
    fn enforces_metadata_size_and_depth() {
        let small = ActivityValidator::new(64, 2);
        let failure = small
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"k": "x".repeat(100)}}))
            .unwrap_err();
        assert_eq!(fields(&failure), [("/metadata", "maxBytes")]);
        let failure = small
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"a": {"b": {}}}}))
            .unwrap_err();
        assert_eq!(fields(&failure), [("/metadata", "maxDepth")]);
        assert!(small
            .validate(
                json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"a": {"b": 1}}})
            )
            .is_ok());
    }

    #[test]
    fn a_body_failing_everywhere_gets_a_bounded_report_with_the_rest_counted() {
        // Under the size limit: 1,000 keys MongoDB would refuse, one failure each.
        let metadata: Map<String, Value> = (0..1000)
            .map(|n| (format!("${n}"), Value::from(n)))
            .collect();
        assert!(serialized_len(&Value::Object(metadata.clone())) <= 16 * 1024);
        let failure = validator()
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": metadata}))
            .unwrap_err();
        assert_eq!(failure.errors.len(), 20, "limits.max_reported_errors");
        assert_eq!(failure.total(), 1000, "the rest are counted");
        assert!(
            failure.summary().ends_with(" (and 980 more)"),
            "{}",
            failure.summary()
        );
        assert!(failure
            .errors
            .iter()
            .all(|error| error.field.starts_with("/metadata")));

        // Over it: 20,000 values FerretDB would refuse. The size is checked before the schema
        // walk, so this is one failure, found without describing 20,000.
        let metadata: Map<String, Value> = (0..20_000)
            .map(|n| (format!("k{n}"), json!([[n]])))
            .collect();
        let failure = validator()
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": metadata}))
            .unwrap_err();
        assert_eq!(fields(&failure), [("/metadata", "maxBytes")]);
        assert_eq!(failure.omitted, 0);
    }

    #[test]
    fn depth_is_checked_before_the_schema_walk() {
        let mut deep = json!({"$x": 1});
        for _ in 0..20 {
            deep = json!({ "a": deep });
        }
        let failure = validator()
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": deep}))
            .unwrap_err();
        assert_eq!(fields(&failure), [("/metadata", "maxDepth")]);
    }

    #[test]
    fn no_reported_text_follows_the_size_of_the_body() {
        let long_key = "k".repeat(5000);
        let unknown: Map<String, Value> = (0..500)
            .map(|n| (format!("{long_key}{n}"), Value::from(n)))
            .collect();
        let mut body = json!({"actorId": "u", "actorName": "A", "type": "t"});
        body.as_object_mut().unwrap().extend(unknown);
        body["metadata"] =
            json!({ format!("${long_key}"): 1, "a": { format!("b.{long_key}"): [[1]] } });
        let failure = validator().validate(body).unwrap_err();
        assert!(failure.total() >= 3, "{failure:?}");
        for error in &failure.errors {
            assert!(
                error.field.len() <= FIELD_ERROR_MAX_TEXT
                    && error.message.len() <= FIELD_ERROR_MAX_TEXT,
                "{error:?}"
            );
        }
        assert!(failure.summary().len() <= 3 * FIELD_ERROR_MAX_TEXT);
        let unknown = failure
            .errors
            .iter()
            .find(|error| error.rule == "additionalProperties" && error.field == "/")
            .unwrap();
        assert!(unknown.message.ends_with("..."), "{unknown:?}");
    }

    #[test]
    fn at_most_ten_unknown_fields_are_named() {
        let mut body = json!({"actorId": "u", "actorName": "A", "type": "t"});
        for n in 0..25 {
            body[format!("x{n}")] = json!(1);
        }
        let failure = validator().validate(body).unwrap_err();
        assert_eq!(fields(&failure), [("/", "additionalProperties")]);
        assert!(
            failure.errors[0].message.ends_with(" and 15 more"),
            "{:?}",
            failure.errors[0]
        );
    }

    #[test]
    fn rejects_integers_bson_cannot_hold() {
        let failure = validator()
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"a": [u64::MAX]}}))
            .unwrap_err();
        assert_eq!(fields(&failure), [("/metadata", "integerRange")]);
        assert!(validator()
            .validate(json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"a": i64::MAX, "b": i64::MIN, "c": 1e300}}))
            .is_ok());
    }

    #[test]
    fn bad_json_is_a_validation_failure() {
        for body in [
            &b"{"[..],
            b"",
            b"not json",
            b"{\"actorId\":}",
            &[0xff, 0xfe],
        ] {
            let failure = validator().parse_body(body).unwrap_err();
            assert_eq!(fields(&failure), [("/", "json")]);
            assert!(failure
                .summary()
                .starts_with("Invalid activity: body is not valid JSON"));
        }
    }

    #[test]
    fn configured_limits_are_enforced_and_served() {
        let limits = ActivityLimits {
            actor_id_max_chars: 4,
            type_pattern: "^[a-z]{1,5}$".to_owned(),
            ..ActivityLimits::default()
        };
        let strict = ActivityValidator::with_limits(&limits).unwrap();
        let failure = strict
            .validate(json!({"actorId": "abcde", "actorName": "A", "type": "Login"}))
            .unwrap_err();
        let mut found = fields(&failure);
        found.sort();
        assert_eq!(found, [("/actorId", "maxLength"), ("/type", "pattern")]);
        assert!(strict
            .validate(json!({"actorId": "abcd", "actorName": "A", "type": "login"}))
            .is_ok());
        let served: Value = serde_json::from_str(strict.schema_json()).unwrap();
        assert_eq!(served["properties"]["actorId"]["maxLength"], 4);
        assert_eq!(served["properties"]["type"]["pattern"], "^[a-z]{1,5}$");
        // The defaults are the bundled schema's own values.
        let default: Value = serde_json::from_str(validator().schema_json()).unwrap();
        let bundled: Value = serde_json::from_str(ACTIVITY_SCHEMA_JSON).unwrap();
        assert_eq!(default, bundled);
    }

    #[test]
    fn unusable_limits_are_named() {
        let error = ActivityValidator::with_limits(&ActivityLimits {
            type_pattern: "([a-z".to_owned(),
            ..ActivityLimits::default()
        })
        .unwrap_err();
        assert_eq!(error.key, "type_pattern");
        let error = ActivityValidator::with_limits(&ActivityLimits {
            entity_id_max_chars: 0,
            ..ActivityLimits::default()
        })
        .unwrap_err();
        assert_eq!(error.key, "entity_id_max_chars");
    }

    #[test]
    fn nesting_depth_counts_containers() {
        assert_eq!(nesting_depth(&json!(1)), 0);
        assert_eq!(nesting_depth(&json!({})), 1);
        assert_eq!(nesting_depth(&json!({"a": [{"b": 1}]})), 3);
    }

    #[test]
    fn serialized_len_is_the_length_of_the_compact_json() {
        for value in [
            json!({}),
            json!({"text": "Can we \"move\" this?\n", "n": [1, -2.5, null, true], "é": "ü"}),
            json!({"deep": {"er": {"est": [[], {}]}}}),
        ] {
            assert_eq!(
                serialized_len(&value),
                serde_json::to_vec(&value).unwrap().len()
            );
        }
    }
}
