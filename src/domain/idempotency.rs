use std::fmt;

use serde::{Deserialize, Serialize};

/// The key that makes an activity unique within its tenant: sent by the client as
/// `X-Idempotency-Key` (1-128 characters of `[A-Za-z0-9._:-]`) or made by the server as a UUIDv7.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1-128 characters of [A-Za-z0-9._:-]")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        let valid = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw.bytes().all(|byte| {
                byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-')
            });
        if valid {
            Ok(IdempotencyKey(raw.to_owned()))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    /// A fresh, time-ordered key. Unlike the seed's `tenant-actor-type-Date.now()`, two requests in
    /// the same millisecond never collide.
    pub fn generate() -> IdempotencyKey {
        IdempotencyKey(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = InvalidIdempotencyKey;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        IdempotencyKey::parse(&raw)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

/// Written as the string it is, borrowed: every record's envelope holds one, and `into = "String"`
/// would clone it for each.
impl Serialize for IdempotencyKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset_and_length() {
        for good in ["a", "order-42", "x.y_z:1-2", &"k".repeat(128)] {
            assert!(IdempotencyKey::parse(good).is_ok(), "{good}");
        }
        for bad in ["", " ", "a b", "a/b", "ключ", "a\0b", &"k".repeat(129)] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(InvalidIdempotencyKey),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn generated_keys_are_valid_and_distinct() {
        let keys: std::collections::HashSet<_> =
            (0..1000).map(|_| IdempotencyKey::generate()).collect();
        assert_eq!(keys.len(), 1000);
        for key in &keys {
            assert!(IdempotencyKey::parse(key.as_str()).is_ok());
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<IdempotencyKey>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<IdempotencyKey>("\"not ok\"").is_err());
    }
}
