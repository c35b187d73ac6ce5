use chrono::{DateTime, Utc};
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
    pub fn encode_into(&self, bytes: &mut Vec<u8>) {
        serde_json::to_writer(bytes, self).expect("an envelope always serializes");
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
