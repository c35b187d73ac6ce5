//! The console's operators: who may open it, and what they may do there.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::tenant::ApiKeyDigest;

/// An operator's name, as the audit log records it: 1-64 characters of `[a-z0-9_-]`, starting with
/// a letter or digit (the same charset as tenant ids, so it is safe in logs and documents).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct OperatorName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid operator name {0:?}: expected 1-64 characters of [a-z0-9_-], starting with a letter or digit")]
pub struct InvalidOperatorName(pub String);

impl OperatorName {
    pub fn parse(raw: &str) -> Result<OperatorName, InvalidOperatorName> {
        let valid = (1..=64).contains(&raw.len())
            && raw.as_bytes()[0].is_ascii_alphanumeric()
            && raw.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
            });
        if valid {
            Ok(OperatorName(raw.to_owned()))
        } else {
            Err(InvalidOperatorName(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperatorName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// What an operator may do: a `viewer` looks, an `admin` also replays and purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorRole {
    Viewer,
    Admin,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Admin => "admin",
        }
    }

    /// Whether the role may change the DLQ (replay, purge).
    pub fn may_act(self) -> bool {
        self == OperatorRole::Admin
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Maps presented console tokens to operators. It holds only operators: a tenant's API key is not
/// in it, so it never opens the console (configuration also refuses a digest shared by the two).
#[derive(Debug, Clone, Default)]
pub struct OperatorDirectory {
    operators: Vec<(OperatorName, ApiKeyDigest, OperatorRole)>,
}

impl OperatorDirectory {
    pub fn new(operators: Vec<(OperatorName, ApiKeyDigest, OperatorRole)>) -> OperatorDirectory {
        OperatorDirectory { operators }
    }

    /// The operator owning `token`, and the token's digest. Every digest is compared in constant
    /// time, whatever matched, so the timing tells nothing.
    pub fn authenticate(&self, token: &str) -> Option<(OperatorName, OperatorRole, ApiKeyDigest)> {
        let presented = ApiKeyDigest::of_key(token);
        let mut found = None;
        for (name, digest, role) in &self.operators {
            if digest.matches(&presented) {
                found = Some((name.clone(), *role));
            }
        }
        found.map(|(name, role)| (name, role, presented))
    }

    /// The current role of operator `name` if it is still configured with the token of `digest`:
    /// a session outlives neither its operator's removal nor a change of its token, and acts with
    /// the role configured now.
    pub fn role_of(&self, name: &OperatorName, digest: &ApiKeyDigest) -> Option<OperatorRole> {
        self.operators
            .iter()
            .find(|(configured, configured_digest, _)| {
                configured == name && configured_digest.matches(digest)
            })
            .map(|(_, _, role)| *role)
    }

    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_find_their_operator_and_role() {
        let directory = OperatorDirectory::new(vec![
            (
                OperatorName::parse("ada").unwrap(),
                ApiKeyDigest::of_key("token-ada"),
                OperatorRole::Admin,
            ),
            (
                OperatorName::parse("vic").unwrap(),
                ApiKeyDigest::of_key("token-vic"),
                OperatorRole::Viewer,
            ),
        ]);
        let (name, role, _) = directory.authenticate("token-ada").unwrap();
        assert_eq!((name.as_str(), role), ("ada", OperatorRole::Admin));
        assert!(role.may_act());
        let (_, role, _) = directory.authenticate("token-vic").unwrap();
        assert!(!role.may_act());
        assert!(directory.authenticate("token-ad").is_none());
        assert!(directory.authenticate("").is_none());

        let ada = OperatorName::parse("ada").unwrap();
        let vic = OperatorName::parse("vic").unwrap();
        assert_eq!(
            directory.role_of(&ada, &ApiKeyDigest::of_key("token-ada")),
            Some(OperatorRole::Admin)
        );
        assert_eq!(
            directory.role_of(&vic, &ApiKeyDigest::of_key("token-vic")),
            Some(OperatorRole::Viewer)
        );
        // Another operator's token, or a name no longer configured: no role.
        assert_eq!(
            directory.role_of(&ada, &ApiKeyDigest::of_key("token-vic")),
            None
        );
        let gone = OperatorName::parse("gone").unwrap();
        assert_eq!(
            directory.role_of(&gone, &ApiKeyDigest::of_key("token-ada")),
            None
        );
    }

    #[test]
    fn operator_names_are_restricted_like_tenant_ids() {
        assert!(OperatorName::parse("ops-1_a").is_ok());
        for bad in ["", "Ada", "-a", "a b", "<b>"] {
            assert!(OperatorName::parse(bad).is_err(), "{bad}");
        }
    }
}
