use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::activity::NewActivity;

/// A digest of what the tenant sent for one activity (actor, type, entity, metadata; never a server
/// timestamp or key), so the same idempotency key can be told apart from a reused one: the same key
/// with the same fingerprint is a retry, with another fingerprint a conflict.
///
/// The activity is written canonically before hashing: object keys sorted at every depth, no
/// whitespace, an absent `entityId`/`metadata` and an empty `metadata` alike. So `{"a":1,"b":2}` and
/// `{"b":2,"a":1}` match; numbers are compared as JSON text, so `1` and `1.0` do not. The value is
/// the first 128 bits of SHA-256 as 32 lowercase hex digits: collisions are out of reach, and it is
/// short enough to ride in every Kafka record, Redis marker and stored document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PayloadFingerprint(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a payload fingerprint is 32 lowercase hex digits")]
pub struct InvalidFingerprint;

impl PayloadFingerprint {
    const HEX_LEN: usize = 32;

    pub fn of(activity: &NewActivity) -> PayloadFingerprint {
        let mut canonical = Vec::with_capacity(256);
        canonical.extend_from_slice(b"{\"actorId\":");
        write_string(&mut canonical, &activity.actor_id);
        canonical.extend_from_slice(b",\"actorName\":");
        write_string(&mut canonical, &activity.actor_name);
        if let Some(entity_id) = &activity.entity_id {
            canonical.extend_from_slice(b",\"entityId\":");
            write_string(&mut canonical, entity_id);
        }
        if let Some(metadata) = activity.metadata.as_ref().filter(|map| !map.is_empty()) {
            canonical.extend_from_slice(b",\"metadata\":");
            write_object(&mut canonical, metadata);
        }
        canonical.extend_from_slice(b",\"type\":");
        write_string(&mut canonical, &activity.activity_type);
        canonical.push(b'}');
        let digest = Sha256::digest(&canonical);
        PayloadFingerprint(hex::encode(&digest[..Self::HEX_LEN / 2]))
    }

    pub fn parse(raw: &str) -> Result<PayloadFingerprint, InvalidFingerprint> {
        let valid = raw.len() == Self::HEX_LEN
            && raw
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if valid {
            Ok(PayloadFingerprint(raw.to_owned()))
        } else {
            Err(InvalidFingerprint)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PayloadFingerprint {
    type Error = InvalidFingerprint;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        PayloadFingerprint::parse(&raw)
    }
}

impl From<PayloadFingerprint> for String {
    fn from(fingerprint: PayloadFingerprint) -> String {
        fingerprint.0
    }
}

impl fmt::Display for PayloadFingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing a string to a Vec cannot fail");
}

fn write_object(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (index, (key, value)) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)
            .expect("writing a JSON scalar to a Vec cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn activity(body: Value) -> NewActivity {
        serde_json::from_value(body).unwrap()
    }

    fn fingerprint(body: Value) -> PayloadFingerprint {
        PayloadFingerprint::of(&activity(body))
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = fingerprint(json!({"actorId": "u1", "actorName": "A", "type": "t",
            "metadata": {"b": [1, {"y": 2, "x": 1}], "a": "s"}}));
        let b: NewActivity = serde_json::from_str(
            r#"{ "type":"t", "metadata": { "a":"s", "b":[1,{"x":1,"y":2}] }, "actorName":"A", "actorId":"u1" }"#,
        )
        .unwrap();
        assert_eq!(a, PayloadFingerprint::of(&b));
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(PayloadFingerprint::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn every_field_the_tenant_sent_counts() {
        let base = json!({"actorId": "u1", "actorName": "A", "type": "t", "entityId": "e", "metadata": {"n": 1}});
        let original = fingerprint(base.clone());
        for (field, other) in [
            ("actorId", json!("u2")),
            ("actorName", json!("B")),
            ("type", json!("u")),
            ("entityId", json!("f")),
            ("metadata", json!({"n": 2})),
            ("metadata", json!({"n": 1.0})),
            ("metadata", json!({"n": "1"})),
        ] {
            let mut changed = base.clone();
            changed[field] = other.clone();
            assert_ne!(fingerprint(changed), original, "{field} = {other}");
        }
        let mut without_entity = base.clone();
        without_entity.as_object_mut().unwrap().remove("entityId");
        assert_ne!(fingerprint(without_entity), original);
    }

    #[test]
    fn absent_and_empty_metadata_match() {
        let bare = fingerprint(json!({"actorId": "u1", "actorName": "A", "type": "t"}));
        let empty =
            fingerprint(json!({"actorId": "u1", "actorName": "A", "type": "t", "metadata": {}}));
        assert_eq!(bare, empty);
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        // A naive concatenation would make these equal.
        let a = fingerprint(json!({"actorId": "ab", "actorName": "c", "type": "t"}));
        let b = fingerprint(json!({"actorId": "a", "actorName": "bc", "type": "t"}));
        assert_ne!(a, b);
    }

    #[test]
    fn parse_refuses_anything_else() {
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789",
            &"a".repeat(31),
            &"g".repeat(32),
        ] {
            assert_eq!(
                PayloadFingerprint::parse(bad),
                Err(InvalidFingerprint),
                "{bad:?}"
            );
        }
    }
}
