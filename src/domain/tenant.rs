use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A tenant's id: 1-64 characters of `[a-z0-9_-]`, starting with a letter or digit. Tenant ids appear
/// in Kafka keys, Redis keys and channel names, so they are kept to a charset safe in all of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id {0:?}: expected 1-64 characters of [a-z0-9_-], starting with a letter or digit")]
pub struct InvalidTenant(pub String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<TenantId, InvalidTenant> {
        let valid = (1..=64).contains(&raw.len())
            && raw.as_bytes()[0].is_ascii_alphanumeric()
            && raw.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
            });
        if valid {
            Ok(TenantId(raw.to_owned()))
        } else {
            Err(InvalidTenant(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenant;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        TenantId::parse(&raw)
    }
}

impl From<TenantId> for String {
    fn from(tenant: TenantId) -> String {
        tenant.0
    }
}

/// Written as the string it is, borrowed: every record's envelope holds one, and `into = "String"`
/// would clone it for each.
impl Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// The SHA-256 digest of an API key. Configuration stores only digests, so a leaked config file does
/// not leak keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyDigest([u8; 32]);

impl fmt::Debug for ApiKeyDigest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ApiKeyDigest(..)")
    }
}

impl ApiKeyDigest {
    pub fn from_hex(hex_digest: &str) -> Result<ApiKeyDigest, String> {
        let bytes = hex::decode(hex_digest.trim())
            .map_err(|_| "must be the hex SHA-256 of the API key (64 hex digits)".to_owned())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "must be the hex SHA-256 of the API key (64 hex digits)".to_owned())?;
        Ok(ApiKeyDigest(bytes))
    }

    pub fn of_key(api_key: &str) -> ApiKeyDigest {
        ApiKeyDigest(Sha256::digest(api_key.as_bytes()).into())
    }

    /// Compares in constant time, so the timing says nothing about how many bytes matched.
    pub fn matches(&self, other: &ApiKeyDigest) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }

    /// The digest as hex: what configuration holds, and never a secret.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Maps presented API keys to tenants.
#[derive(Debug, Clone, Default)]
pub struct TenantDirectory {
    tenants: Vec<(TenantId, ApiKeyDigest)>,
}

impl TenantDirectory {
    pub fn new(tenants: Vec<(TenantId, ApiKeyDigest)>) -> TenantDirectory {
        TenantDirectory { tenants }
    }

    /// The tenant owning `api_key`, if any. Every configured digest is compared, in constant time, so
    /// the answer's timing says nothing about which tenant or how many bytes matched.
    pub fn authenticate(&self, api_key: &str) -> Option<&TenantId> {
        let presented = ApiKeyDigest::of_key(api_key);
        let mut found = None;
        for (tenant, digest) in &self.tenants {
            if digest.matches(&presented) {
                found = Some(tenant);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_restricted_to_a_safe_charset() {
        for good in ["acme", "globex", "a", "t-1_x", &"a".repeat(64)] {
            assert!(TenantId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "a:b",
            "a b",
            "a.b",
            "a{b}",
            &"a".repeat(65),
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authenticate_finds_the_tenant_by_key() {
        let directory = TenantDirectory::new(vec![
            (
                TenantId::parse("acme").unwrap(),
                ApiKeyDigest::of_key("demo-key-acme"),
            ),
            (
                TenantId::parse("globex").unwrap(),
                ApiKeyDigest::of_key("demo-key-globex"),
            ),
        ]);
        assert_eq!(
            directory.authenticate("demo-key-acme").unwrap().as_str(),
            "acme"
        );
        assert_eq!(
            directory.authenticate("demo-key-globex").unwrap().as_str(),
            "globex"
        );
        assert!(directory.authenticate("demo-key-acm").is_none());
        assert!(directory.authenticate("").is_none());
    }

    #[test]
    fn digests_parse_from_hex() {
        let digest = ApiKeyDigest::from_hex(
            "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873",
        )
        .unwrap();
        assert_eq!(digest, ApiKeyDigest::of_key("demo-key-acme"));
        assert!(ApiKeyDigest::from_hex("abcd").is_err());
        assert!(ApiKeyDigest::from_hex(&"z".repeat(64)).is_err());
        assert_eq!(format!("{digest:?}"), "ApiKeyDigest(..)");
    }
}
