//! Everything that speaks Kafka: client configuration (TLS, SASL), the activity publisher, the
//! consumer, dead-lettering and topic administration.
//!
//! Architecture invariant: this is the only module that imports `rdkafka`. The roles see records as
//! [`ConsumedRecord`] and publishing as [`ActivityPublisher::publish`].

mod admin;
mod consumer;
mod lag;
mod publisher;
mod spread;
mod topic_reader;

use rdkafka::ClientConfig;
use secrecy::ExposeSecret;

use crate::config::KafkaSettings;

pub use admin::{
    config_drift, create_topics, delete_records_before, describe_topic_configs,
    fetch_cluster_metadata, layout_drift, reconcile_topics, topic_configs, ClusterSummary,
    ConfigDrift, LayoutDrift, TopicConfigValue, TopicMode, TopicReport, TopicSpec, TopicState,
};
pub use consumer::{ActivityConsumer, ConsumedRecord, ConsumerObserver};
pub use lag::{BacklogReader, PartitionBacklog};
pub use publisher::{ActivityPublisher, PublishError};
pub use spread::PartitionSpread;
pub use topic_reader::{read_heads, read_topic, FollowEvent, TopicFollower, TopicWatermarks};

/// Header names carried on every activity record; constants so producer and consumer cannot drift.
pub mod headers {
    /// The activity's idempotency key (also inside the envelope; a header lets tools filter cheaply).
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// The envelope's schema id, e.g. `activity.v1`.
    pub const SCHEMA: &str = "schema";
    /// The activity's payload fingerprint (`domain::PayloadFingerprint`): lets tools compare records
    /// without decoding them. The consumer recomputes it from the value rather than trusting it, so a
    /// record from another producer, or one written without it, is judged the same way.
    pub const PAYLOAD_FINGERPRINT: &str = "payload-fingerprint";
    /// The datacenter whose API accepted the activity (`dc.name`). It survives MirrorMaker 2 (which
    /// copies headers), retry hops and the DLQ, so every datacenter stores where an activity came
    /// from. Not `origin-dc`: the `origin-` prefix belongs to the facts of a failed record's first
    /// consumption, which are rewritten on every hop (`failures::headers`).
    pub const ACCEPTED_DC: &str = "accepted-dc";
    // The headers of failed records (retry topics, DLQ) are in `crate::failures::headers`.
}

/// The settings every client shares: brokers, identity and security. Secrets go to librdkafka only,
/// never into a log line.
fn base_client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", &settings.client_id)
        .set(
            "security.protocol",
            settings.security_protocol.as_librdkafka(),
        )
        .set("log_level", "4");
    if settings.security_protocol.uses_sasl() {
        config.set("sasl.mechanisms", &settings.sasl_mechanism);
        if let Some(username) = &settings.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &settings.sasl_password {
            config.set("sasl.password", password.expose_secret());
        }
    }
    if let Some(ca) = &settings.ssl_ca_location {
        config.set("ssl.ca.location", ca.to_string_lossy());
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, Sources};

    /// The defaults plus `overrides`, for the tests of `kafka/`.
    pub(super) fn kafka_settings(overrides: &[&str]) -> KafkaSettings {
        Settings::load(&Sources {
            files: vec![],
            environment: false,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
        .kafka
    }

    #[test]
    fn plaintext_by_default() {
        let config = base_client_config(&kafka_settings(&[]));
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("sasl.username"), None);
    }

    #[test]
    fn sasl_scram_and_tls_come_from_settings() {
        let config = base_client_config(&kafka_settings(&[
            "kafka.security_protocol=sasl_ssl",
            "kafka.sasl_mechanism=SCRAM-SHA-256",
            "kafka.sasl_username=ingest",
            "kafka.sasl_password=s3cret",
            "kafka.ssl_ca_location=/etc/ca.pem",
        ]));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("sasl.username"), Some("ingest"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/ca.pem"));
    }
}
