//! Everything that speaks Kafka: client configuration (TLS, SASL), the activity publisher, the
//! consumer, dead-lettering and topic administration.
//!
//! Architecture invariant: this is the only module that imports `rdkafka`. The roles see records as
//! [`ConsumedRecord`] and publishing as [`ActivityPublisher::publish`].

mod admin;
mod consumer;
mod dlq;
mod publisher;

use rdkafka::ClientConfig;
use secrecy::ExposeSecret;

use crate::config::KafkaSettings;

pub use admin::{
    config_drift, create_topics, delete_records_before, describe_topic_configs,
    fetch_cluster_metadata, layout_drift, reconcile_topics, topic_configs, ClusterSummary,
    ConfigDrift, LayoutDrift, TopicConfigValue, TopicMode, TopicReport, TopicSpec, TopicState,
};
pub use consumer::{ActivityConsumer, ConsumedRecord, ConsumerObserver};
pub use dlq::read_topic;
pub use publisher::{ActivityPublisher, Failure, PublishError};

/// Header names carried on every activity record; constants so producer and consumer cannot drift.
pub mod headers {
    /// The activity's idempotency key (also inside the envelope; a header lets tools filter cheaply).
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// The envelope's schema id, e.g. `activity.v1`.
    pub const SCHEMA: &str = "schema";
    /// Dead letters: why the record failed, and of which class (`poison`, `rejected`, `transient`).
    pub const ERROR: &str = "dlq-error";
    pub const ERROR_CLASS: &str = "dlq-error-class";
    /// Dead letters: how many times processing was attempted in all.
    pub const ATTEMPTS: &str = "dlq-attempts";
    pub const FIRST_FAILURE_AT: &str = "dlq-first-failure-at";
    pub const LAST_FAILURE_AT: &str = "dlq-last-failure-at";
    /// Dead letters: where the record was first consumed (the main topic, even after retries).
    pub const SOURCE_TOPIC: &str = "dlq-source-topic";
    pub const SOURCE_PARTITION: &str = "dlq-source-partition";
    pub const SOURCE_OFFSET: &str = "dlq-source-offset";
    /// Retry topics: attempts made so far, when the next one is due (RFC 3339), the first failure
    /// and the last error.
    pub const RETRY_ATTEMPTS: &str = "retry-attempts";
    pub const RETRY_DUE_AT: &str = "retry-due-at";
    pub const RETRY_FIRST_FAILURE_AT: &str = "retry-first-failure-at";
    pub const RETRY_ERROR: &str = "retry-error";
    /// Retry topics: where the record was first consumed.
    pub const ORIGIN_TOPIC: &str = "origin-topic";
    pub const ORIGIN_PARTITION: &str = "origin-partition";
    pub const ORIGIN_OFFSET: &str = "origin-offset";
    /// Set by `dlq replay` on the republished record: `<partition>:<offset>` of the dead letter.
    pub const REPLAYED_FROM: &str = "replayed-from";

    /// Headers the pipeline itself writes; rewritten (not duplicated) when a record moves on.
    pub fn is_pipeline_header(name: &str) -> bool {
        ["dlq-", "retry-", "origin-", "replayed-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
    }
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

    fn kafka_settings(overrides: &[&str]) -> KafkaSettings {
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
