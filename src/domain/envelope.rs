use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use serde::{Deserialize, Serialize};

use super::activity::{ActivityValidator, NewActivity, ValidationFailure, ACTIVITY_SCHEMA_ID};
use super::idempotency::IdempotencyKey;
use super::tenant::TenantId;

/// The value of a record on the activities topic: everything the consumer needs, self-described by
/// its `schema` id so the format can evolve while old records are still in the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivityEnvelope {
    pub schema: String,
    pub tenant_id: TenantId,
    pub idempotency_key: IdempotencyKey,
    /// When the API accepted the activity; the start of end-to-end latency.
    pub enqueued_at: DateTime<Utc>,
    pub activity: NewActivity,
}

/// Why a record's value is not a usable envelope. Every variant is deterministic: the same bytes fail
/// the same way on every attempt, so such a record is poison (DLQ), never retried.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("record value is not a valid envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported envelope schema {0:?} (this consumer reads {ACTIVITY_SCHEMA_ID:?})")]
    UnsupportedSchema(String),
    #[error("envelope activity is invalid: {0}")]
    InvalidActivity(#[from] ValidationFailure),
}

impl ActivityEnvelope {
    pub fn new(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        activity: NewActivity,
    ) -> ActivityEnvelope {
        ActivityEnvelope {
            schema: ACTIVITY_SCHEMA_ID.to_owned(),
            tenant_id,
            idempotency_key,
            enqueued_at: Utc::now(),
            activity,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Room for a typical envelope (~330 bytes), so it is written without growing the buffer
        // (`to_vec` starts at 128 bytes and reallocates twice).
        let mut bytes = Vec::with_capacity(512);
        self.encode_into(&mut bytes);
        bytes
    }

    /// Appends the record value to `bytes` (a publisher reuses one buffer for a whole batch).
    ///
    /// Written field by field: the same bytes as serde's derive (the unit and property tests hold the
    /// two equal), without its generic machinery, a third of the publisher's own thread in phase
    /// 1b's profile: the field names escaped at run time, and the date formatted by chrono through
    /// `collect_str`, a dozen small writes each scanned for escapes. A date chrono would write
    /// otherwise (a year outside 0..=9999) takes serde's path.
    pub fn encode_into(&self, bytes: &mut Vec<u8>) {
        let start = bytes.len();
        if !self.write_fields(bytes) {
            bytes.truncate(start);
            self.encode_into_by_serde(bytes);
        }
    }

    /// The envelope through serde's derive: the definition [`Self::encode_into`] is held to.
    pub fn encode_into_by_serde(&self, bytes: &mut Vec<u8>) {
        serde_json::to_writer(bytes, self).expect("an envelope always serializes");
    }

    /// `false` when the date is one this writer leaves to chrono (the caller then starts over).
    fn write_fields(&self, bytes: &mut Vec<u8>) -> bool {
        // Taken apart whole, so a field added to either type does not compile until it is written
        // here too.
        let ActivityEnvelope {
            schema,
            tenant_id,
            idempotency_key,
            enqueued_at,
            activity,
        } = self;
        let NewActivity {
            actor_id,
            actor_name,
            activity_type,
            entity_id,
            metadata,
        } = activity;
        bytes.extend_from_slice(b"{\"schema\":");
        write_json_string(bytes, schema);
        // Tenant ids and idempotency keys are ASCII letters, digits and `._:-` by construction
        // (their `parse`), so they need no escaping.
        bytes.extend_from_slice(b",\"tenantId\":\"");
        bytes.extend_from_slice(tenant_id.as_str().as_bytes());
        bytes.extend_from_slice(b"\",\"idempotencyKey\":\"");
        bytes.extend_from_slice(idempotency_key.as_str().as_bytes());
        bytes.extend_from_slice(b"\",\"enqueuedAt\":\"");
        if !write_rfc3339_utc(bytes, enqueued_at) {
            return false;
        }
        bytes.extend_from_slice(b"\",\"activity\":{\"actorId\":");
        write_json_string(bytes, actor_id);
        bytes.extend_from_slice(b",\"actorName\":");
        write_json_string(bytes, actor_name);
        bytes.extend_from_slice(b",\"type\":");
        write_json_string(bytes, activity_type);
        if let Some(entity_id) = entity_id {
            bytes.extend_from_slice(b",\"entityId\":");
            write_json_string(bytes, entity_id);
        }
        if let Some(metadata) = metadata {
            bytes.extend_from_slice(b",\"metadata\":");
            serde_json::to_writer(&mut *bytes, metadata).expect("a JSON map always serializes");
        }
        bytes.extend_from_slice(b"}}");
        true
    }

    /// Decodes a record value, re-validating the activity: records can reach the topic without going
    /// through the API (other producers, replays, a bug), and poison must stop here, not in MongoDB.
    pub fn decode(
        bytes: &[u8],
        validator: &ActivityValidator,
    ) -> Result<ActivityEnvelope, EnvelopeError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Raw {
            schema: String,
            tenant_id: TenantId,
            idempotency_key: IdempotencyKey,
            enqueued_at: DateTime<Utc>,
            // Kept as its text, so the activity goes through the API's own `parse_body`: the typed
            // fast path, and the schema path (its errors word for word) only for what that refuses.
            activity: Box<serde_json::value::RawValue>,
        }
        let raw: Raw = serde_json::from_slice(bytes)?;
        if raw.schema != ACTIVITY_SCHEMA_ID {
            return Err(EnvelopeError::UnsupportedSchema(raw.schema));
        }
        let activity = validator.parse_body(raw.activity.get().as_bytes())?;
        Ok(ActivityEnvelope {
            schema: raw.schema,
            tenant_id: raw.tenant_id,
            idempotency_key: raw.idempotency_key,
            enqueued_at: raw.enqueued_at,
            activity,
        })
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn write_json_string(bytes: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(bytes, text).expect("a string always serializes");
}

/// `date` as chrono's serde writes it (RFC 3339, `Z`, the fraction in 0, 3, 6 or 9 digits, whichever
/// is exact; a leap second as second 60), or `false`, writing nothing, for a year outside 0..=9999
/// (chrono writes those with a sign).
fn write_rfc3339_utc(bytes: &mut Vec<u8>, date: &DateTime<Utc>) -> bool {
    let naive = date.naive_utc();
    let year = naive.year();
    if !(0..=9999).contains(&year) {
        return false;
    }
    let (mut second, mut nanos) = (naive.second(), naive.nanosecond());
    if nanos >= 1_000_000_000 {
        second += 1;
        nanos -= 1_000_000_000;
    }
    push_digits(bytes, year as u32, 4);
    bytes.push(b'-');
    push_digits(bytes, naive.month(), 2);
    bytes.push(b'-');
    push_digits(bytes, naive.day(), 2);
    bytes.push(b'T');
    push_digits(bytes, naive.hour(), 2);
    bytes.push(b':');
    push_digits(bytes, naive.minute(), 2);
    bytes.push(b':');
    push_digits(bytes, second, 2);
    if nanos != 0 {
        bytes.push(b'.');
        if nanos % 1_000_000 == 0 {
            push_digits(bytes, nanos / 1_000_000, 3);
        } else if nanos % 1_000 == 0 {
            push_digits(bytes, nanos / 1_000, 6);
        } else {
            push_digits(bytes, nanos, 9);
        }
    }
    bytes.push(b'Z');
    true
}

/// `value`'s last `width` decimal digits (at most 9), zero-padded.
fn push_digits(bytes: &mut Vec<u8>, value: u32, width: usize) {
    let mut buffer = [0u8; 9];
    let mut rest = value;
    for slot in buffer[..width].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    bytes.extend_from_slice(&buffer[..width]);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validator() -> ActivityValidator {
        ActivityValidator::new(16 * 1024, 8)
    }

    fn sample() -> ActivityEnvelope {
        let activity = validator()
            .validate(json!({"actorId": "u1", "actorName": "Alice", "type": "login", "metadata": {"ip": "1.2.3.4"}}))
            .unwrap();
        ActivityEnvelope::new(
            TenantId::parse("acme").unwrap(),
            IdempotencyKey::parse("k-1").unwrap(),
            activity,
        )
    }

    #[test]
    fn round_trips() {
        let envelope = sample();
        let decoded = ActivityEnvelope::decode(&envelope.encode(), &validator()).unwrap();
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn wire_format_is_camel_case_and_versioned() {
        let value: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        assert_eq!(value["schema"], "activity.v1");
        assert_eq!(value["tenantId"], "acme");
        assert_eq!(value["idempotencyKey"], "k-1");
        assert_eq!(value["activity"]["actorId"], "u1");
        assert!(value["enqueuedAt"].as_str().unwrap().ends_with('Z'));
    }

    fn encoded_by_serde(envelope: &ActivityEnvelope) -> String {
        let mut bytes = Vec::new();
        envelope.encode_into_by_serde(&mut bytes);
        String::from_utf8(bytes).unwrap()
    }

    fn at(
        date: chrono::NaiveDate,
        hour: u32,
        minute: u32,
        second: u32,
        nanos: u32,
    ) -> DateTime<Utc> {
        date.and_hms_nano_opt(hour, minute, second, nanos)
            .unwrap()
            .and_utc()
    }

    #[test]
    fn the_written_envelope_is_serdes_byte_for_byte() {
        let mut envelope = sample();
        let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        let cases = [
            (day, 0, 0, 0, 0),
            (day, 9, 5, 7, 120_000_000),
            (day, 23, 59, 59, 123_456_000),
            (day, 1, 2, 3, 123_456_789),
            (day, 1, 2, 3, 1),
            // A leap second: chrono writes second 60.
            (day, 23, 59, 59, 1_000_000_000),
            (day, 23, 59, 59, 1_500_000_007),
            (
                chrono::NaiveDate::from_ymd_opt(9, 1, 1).unwrap(),
                0,
                0,
                0,
                0,
            ),
            (
                chrono::NaiveDate::from_ymd_opt(9999, 12, 31).unwrap(),
                23,
                59,
                59,
                999_999_999,
            ),
            // Years chrono writes with a sign: serde's path.
            (
                chrono::NaiveDate::from_ymd_opt(-1, 6, 1).unwrap(),
                0,
                0,
                0,
                0,
            ),
            (
                chrono::NaiveDate::from_ymd_opt(10_000, 1, 1).unwrap(),
                0,
                0,
                0,
                5_000,
            ),
        ];
        for (date, hour, minute, second, nanos) in cases {
            envelope.enqueued_at = at(date, hour, minute, second, nanos);
            assert_eq!(
                String::from_utf8(envelope.encode()).unwrap(),
                encoded_by_serde(&envelope)
            );
        }
        envelope.schema = "odd \"schema\"\n\u{7f}é".to_owned();
        envelope.activity.entity_id = Some("doc-1".to_owned());
        envelope.activity.metadata = None;
        assert_eq!(
            String::from_utf8(envelope.encode()).unwrap(),
            encoded_by_serde(&envelope)
        );
        // Appended after what the buffer held, also when serde's path is taken.
        let mut buffer = b"before".to_vec();
        envelope.encode_into(&mut buffer);
        assert_eq!(
            String::from_utf8(buffer).unwrap(),
            format!("before{}", encoded_by_serde(&envelope))
        );
    }

    mod props {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::*;

        fn metadata() -> impl Strategy<Value = Option<Map<String, Value>>> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::String),
            ];
            let value = leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((any::<String>(), inner), 0..4)
                        .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
                ]
            });
            prop::option::of(
                prop::collection::vec((any::<String>(), value), 0..5)
                    .prop_map(|pairs| pairs.into_iter().collect()),
            )
        }

        fn enqueued_at() -> impl Strategy<Value = DateTime<Utc>> {
            // Years -300..12,000; fractions exact to the second, millisecond, microsecond or not.
            let seconds = -71_000_000_000i64..316_000_000_000;
            let nanos = prop_oneof![
                Just(0u32),
                (0u32..1_000).prop_map(|millis| millis * 1_000_000),
                (0u32..1_000_000).prop_map(|micros| micros * 1_000),
                0u32..1_000_000_000,
            ];
            (seconds, nanos)
                .prop_map(|(seconds, nanos)| DateTime::from_timestamp(seconds, nanos).unwrap())
        }

        fn envelope() -> impl Strategy<Value = ActivityEnvelope> {
            (
                "[a-z0-9][a-z0-9_-]{0,63}",
                "[A-Za-z0-9._:-]{1,64}",
                enqueued_at(),
                (any::<String>(), any::<String>(), any::<String>()),
                prop::option::of(any::<String>()),
                metadata(),
            )
                .prop_map(
                    |(
                        tenant,
                        key,
                        enqueued_at,
                        (actor_id, actor_name, activity_type),
                        entity_id,
                        metadata,
                    )| {
                        ActivityEnvelope {
                            schema: ACTIVITY_SCHEMA_ID.to_owned(),
                            tenant_id: TenantId::parse(&tenant).unwrap(),
                            idempotency_key: IdempotencyKey::parse(&key).unwrap(),
                            enqueued_at,
                            activity: NewActivity {
                                actor_id,
                                actor_name,
                                activity_type,
                                entity_id,
                                metadata,
                            },
                        }
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn the_written_envelope_is_serdes_byte_for_byte(envelope in envelope()) {
                prop_assert_eq!(String::from_utf8(envelope.encode()).unwrap(), encoded_by_serde(&envelope));
            }
        }
    }

    #[test]
    fn poison_is_classified() {
        let good: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        let decode = |value: serde_json::Value| {
            ActivityEnvelope::decode(value.to_string().as_bytes(), &validator())
        };

        assert!(matches!(
            ActivityEnvelope::decode(b"not json", &validator()),
            Err(EnvelopeError::Malformed(_))
        ));
        let mut other_schema = good.clone();
        other_schema["schema"] = json!("activity.v9");
        assert!(matches!(
            decode(other_schema),
            Err(EnvelopeError::UnsupportedSchema(_))
        ));
        let mut bad_tenant = good.clone();
        bad_tenant["tenantId"] = json!("Not A Tenant");
        assert!(matches!(
            decode(bad_tenant),
            Err(EnvelopeError::Malformed(_))
        ));
        let mut bad_key = good.clone();
        bad_key["idempotencyKey"] = json!("has space");
        assert!(matches!(decode(bad_key), Err(EnvelopeError::Malformed(_))));
        let mut dollar_key = good.clone();
        dollar_key["activity"]["metadata"] = json!({"$gt": 1});
        assert!(matches!(
            decode(dollar_key),
            Err(EnvelopeError::InvalidActivity(_))
        ));
        let mut missing = good;
        missing["activity"].as_object_mut().unwrap().remove("type");
        assert!(matches!(
            decode(missing),
            Err(EnvelopeError::InvalidActivity(_))
        ));
    }
}
