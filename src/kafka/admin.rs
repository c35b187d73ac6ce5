use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::base_client_config;
use crate::config::KafkaSettings;

/// What `topics create` did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCreation {
    Created { topic: String, partitions: i32 },
    AlreadyExists { topic: String },
}

/// Creates `topics` with `settings.partitions` partitions each. Idempotent: a topic that exists is
/// left as it is and reported.
pub async fn create_topics(
    settings: &KafkaSettings,
    topics: &[String],
) -> anyhow::Result<Vec<TopicCreation>> {
    let admin: AdminClient<DefaultClientContext> = base_client_config(settings)
        .create()
        .map_err(|error| anyhow::anyhow!("creating the Kafka admin client: {error}"))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            NewTopic::new(
                topic,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|error| anyhow::anyhow!("creating topics on {}: {error}", settings.brokers))?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(topic) => Ok(TopicCreation::Created {
                topic,
                partitions: settings.partitions,
            }),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok(TopicCreation::AlreadyExists { topic })
            }
            Err((topic, code)) => Err(anyhow::anyhow!("creating topic {topic}: {code}")),
        })
        .collect()
}

/// What the cluster reported in a metadata request.
#[derive(Debug, Clone)]
pub struct ClusterSummary {
    pub brokers: usize,
    /// Partitions of the main topic, or `None` when it does not exist.
    pub topic_partitions: Option<usize>,
}

/// Fetches cluster metadata: the readiness check that proves the brokers answer.
pub fn fetch_cluster_metadata(
    settings: &KafkaSettings,
    timeout: Duration,
) -> anyhow::Result<ClusterSummary> {
    let consumer: BaseConsumer = base_client_config(settings)
        .create()
        .map_err(|error| anyhow::anyhow!("creating a Kafka metadata client: {error}"))?;
    let metadata = consumer
        .fetch_metadata(Some(&settings.topic), timeout)
        .map_err(|error| {
            anyhow::anyhow!("fetching Kafka metadata from {}: {error}", settings.brokers)
        })?;
    let topic_partitions = metadata
        .topics()
        .iter()
        .find(|topic| topic.name() == settings.topic && topic.error().is_none())
        .map(|topic| topic.partitions().len());
    Ok(ClusterSummary {
        brokers: metadata.brokers().len(),
        topic_partitions,
    })
}
