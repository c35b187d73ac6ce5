use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::base_client_config;
use crate::config::KafkaSettings;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Topic configs `topics create` owns: set on new topics, reconciled on existing ones. Any other
/// topic config is left as it is.
pub mod topic_configs {
    pub const RETENTION_MS: &str = "retention.ms";
    pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
}

/// What one topic should look like, from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// The owned configs (see [`topic_configs`]) and their wanted values.
    pub configs: BTreeMap<&'static str, String>,
}

impl TopicSpec {
    /// The spec of `topic` by its role: the DLQ, a retry topic (`<retry_topic>.<n>`), or else the
    /// main topic's settings.
    pub fn for_topic(settings: &KafkaSettings, topic: &str) -> TopicSpec {
        let is_retry_topic = topic
            .strip_prefix(settings.retry_topic.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|step| step.parse::<usize>().is_ok());
        let retention_ms = if topic == settings.dlq_topic {
            settings.dlq_topic_retention_ms
        } else if is_retry_topic {
            settings.retry_topic_retention_ms
        } else {
            settings.topic_retention_ms
        };
        TopicSpec {
            topic: topic.to_owned(),
            partitions: settings.partitions,
            replication_factor: settings.replication_factor,
            configs: BTreeMap::from([
                (topic_configs::RETENTION_MS, retention_ms.to_string()),
                (
                    topic_configs::MIN_INSYNC_REPLICAS,
                    settings.effective_min_insync_replicas().to_string(),
                ),
            ]),
        }
    }
}

/// An owned config whose value on the topic is not the wanted one, or is only inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrift {
    pub name: &'static str,
    /// The effective value, `None` when the broker did not report it.
    pub have: Option<String>,
    /// Whether `have` is set on the topic itself (rather than a broker default it follows).
    pub set_on_topic: bool,
    pub want: String,
}

impl std::fmt::Display for ConfigDrift {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let have = self.have.as_deref().unwrap_or("(unknown)");
        if self.set_on_topic {
            write!(formatter, "{}: have {have}, want {}", self.name, self.want)
        } else {
            write!(
                formatter,
                "{}: have {have} (a broker default, not pinned on the topic), want {}",
                self.name, self.want
            )
        }
    }
}

/// A topic config as the broker reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfigValue {
    pub value: Option<String>,
    /// Set on the topic (a dynamic topic config), not inherited from the broker.
    pub set_on_topic: bool,
}

/// The owned configs that differ from `want`. A config inherited from a broker default counts as
/// drift even when its value matches: a later change of the broker default would change the topic
/// without anyone running `topics create`.
pub fn config_drift(
    want: &BTreeMap<&'static str, String>,
    have: &HashMap<String, TopicConfigValue>,
) -> Vec<ConfigDrift> {
    want.iter()
        .filter_map(|(name, wanted)| {
            let found = have.get(*name);
            let matches = found.is_some_and(|found| {
                found.set_on_topic && found.value.as_deref() == Some(wanted.as_str())
            });
            (!matches).then(|| ConfigDrift {
                name,
                have: found.and_then(|found| found.value.clone()),
                set_on_topic: found.is_some_and(|found| found.set_on_topic),
                want: wanted.clone(),
            })
        })
        .collect()
}

/// A partition count or replication factor that differs from the settings. `topics create` never
/// changes either: more partitions would move keys (tenants) to other partitions and break
/// per-tenant order for records in flight; fewer are impossible in Kafka; another replication
/// factor needs a partition reassignment plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutDrift {
    Partitions { have: i32, want: i32 },
    ReplicationFactor { have: i32, want: i32 },
}

impl std::fmt::Display for LayoutDrift {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutDrift::Partitions { have, want } if want > have => write!(
                formatter,
                "partitions: have {have}, want {want}, not changed (adding partitions moves keys \
                 to other partitions and breaks per-tenant order; add them by hand if you accept that)"
            ),
            LayoutDrift::Partitions { have, want } => write!(
                formatter,
                "partitions: have {have}, want {want}, not changed (Kafka cannot remove partitions)"
            ),
            LayoutDrift::ReplicationFactor { have, want } => write!(
                formatter,
                "replication factor: have {have}, want {want}, not changed (needs a partition \
                 reassignment)"
            ),
        }
    }
}

/// The partition count and replication factor that differ from `spec`.
pub fn layout_drift(
    spec: &TopicSpec,
    partitions: i32,
    replication_factor: i32,
) -> Vec<LayoutDrift> {
    let mut drift = Vec::new();
    if partitions != spec.partitions {
        drift.push(LayoutDrift::Partitions {
            have: partitions,
            want: spec.partitions,
        });
    }
    if replication_factor != spec.replication_factor {
        drift.push(LayoutDrift::ReplicationFactor {
            have: replication_factor,
            want: spec.replication_factor,
        });
    }
    drift
}

/// Whether `topics create` changes the cluster or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMode {
    /// Create missing topics, set the drifted configs.
    Apply,
    /// Change nothing (`topics create --check`).
    Check,
}

/// What `topics create` found and did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    pub spec: TopicSpec,
    pub state: TopicState,
    /// Owned configs that differed; in [`TopicMode::Apply`] they have been set.
    pub config_drift: Vec<ConfigDrift>,
    /// Never changed, in either mode.
    pub layout_drift: Vec<LayoutDrift>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    /// Made now, with the spec's partitions and configs.
    Created,
    /// Absent, and left absent ([`TopicMode::Check`]).
    Missing,
    Existed,
}

impl TopicReport {
    /// Whether the topic differs (or differed, before an apply) from its spec in any way.
    pub fn has_drift(&self) -> bool {
        self.state == TopicState::Missing
            || !self.config_drift.is_empty()
            || !self.layout_drift.is_empty()
    }
}

/// Creates the missing `topics` with their [`TopicSpec`] (partitions, retention, min.insync.replicas)
/// and reconciles the owned configs of those that exist. Partition counts and replication factors
/// are only reported. Idempotent.
pub async fn create_topics(
    settings: &KafkaSettings,
    topics: &[String],
) -> anyhow::Result<Vec<TopicReport>> {
    reconcile_topics(settings, topics, TopicMode::Apply).await
}

/// [`create_topics`], or with [`TopicMode::Check`] the same report without changing anything.
pub async fn reconcile_topics(
    settings: &KafkaSettings,
    topics: &[String],
    mode: TopicMode,
) -> anyhow::Result<Vec<TopicReport>> {
    let admin = admin_client(settings)?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|topic| TopicSpec::for_topic(settings, topic))
        .collect();

    let mut created = Vec::new();
    if mode == TopicMode::Apply {
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|spec| {
                spec.configs.iter().fold(
                    NewTopic::new(
                        &spec.topic,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication_factor),
                    ),
                    |topic, (name, value)| topic.set(name, value),
                )
            })
            .collect();
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|error| anyhow::anyhow!("creating topics on {}: {error}", settings.brokers))?;
        for result in results {
            match result {
                Ok(topic) => created.push(topic),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
            }
        }
    }

    let layouts = fetch_topic_layouts(settings, topics).await?;
    let mut reports = Vec::with_capacity(specs.len());
    for spec in specs {
        if created.contains(&spec.topic) {
            reports.push(TopicReport {
                spec,
                state: TopicState::Created,
                config_drift: Vec::new(),
                layout_drift: Vec::new(),
            });
            continue;
        }
        let Some(&(partitions, replication_factor)) = layouts.get(&spec.topic) else {
            match mode {
                TopicMode::Check => {
                    reports.push(TopicReport {
                        spec,
                        state: TopicState::Missing,
                        config_drift: Vec::new(),
                        layout_drift: Vec::new(),
                    });
                    continue;
                }
                TopicMode::Apply => {
                    anyhow::bail!(
                        "topic {} exists but has no metadata yet; run `topics create` again",
                        spec.topic
                    )
                }
            }
        };
        let have = describe_topic_configs_with(&admin, &spec.topic).await?;
        let config_drift = config_drift(&spec.configs, &have);
        if mode == TopicMode::Apply && !config_drift.is_empty() {
            alter_owned_configs(&admin, &spec, &have).await?;
        }
        reports.push(TopicReport {
            layout_drift: layout_drift(&spec, partitions, replication_factor),
            spec,
            state: TopicState::Existed,
            config_drift,
        });
    }
    Ok(reports)
}

/// Every config of `topic` as the broker reports it (effective value, and whether it is set on the
/// topic itself).
pub async fn describe_topic_configs(
    settings: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<HashMap<String, TopicConfigValue>> {
    describe_topic_configs_with(&admin_client(settings)?, topic).await
}

/// Deletes the records of `topic` before the given offset of each partition (Kafka's DeleteRecords:
/// only a prefix of a partition can go). Returns each partition's new low watermark.
pub async fn delete_records_before(
    settings: &KafkaSettings,
    topic: &str,
    before: &[(i32, i64)],
) -> anyhow::Result<Vec<(i32, i64)>> {
    if before.is_empty() {
        return Ok(Vec::new());
    }
    let admin = admin_client(settings)?;
    let mut offsets = TopicPartitionList::new();
    for &(partition, offset) in before {
        offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let result = admin
        .delete_records(&offsets, &options)
        .await
        .map_err(|error| anyhow::anyhow!("deleting records of {topic}: {error}"))?;
    result
        .elements()
        .iter()
        .map(|element| {
            element.error().map_err(|error| {
                anyhow::anyhow!(
                    "deleting records of {topic}[{}]: {error}",
                    element.partition()
                )
            })?;
            match element.offset() {
                Offset::Offset(low) => Ok((element.partition(), low)),
                other => Ok((element.partition(), other.to_raw().unwrap_or(-1))),
            }
        })
        .collect()
}

fn admin_client(settings: &KafkaSettings) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    base_client_config(settings)
        .create()
        .map_err(|error| anyhow::anyhow!("creating the Kafka admin client: {error}"))
}

async fn describe_topic_configs_with(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> anyhow::Result<HashMap<String, TopicConfigValue>> {
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let mut results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|error| anyhow::anyhow!("describing the configs of {topic}: {error}"))?;
    let resource = results
        .pop()
        .ok_or_else(|| anyhow::anyhow!("describing the configs of {topic}: no answer"))?
        .map_err(|code| anyhow::anyhow!("describing the configs of {topic}: {code}"))?;
    Ok(resource
        .entries
        .into_iter()
        .map(|entry| {
            let set_on_topic = entry.source == ConfigSource::DynamicTopic;
            (
                entry.name,
                TopicConfigValue {
                    value: entry.value,
                    set_on_topic,
                },
            )
        })
        .collect())
}

/// Sets the spec's configs on an existing topic. rdkafka 0.39 has only the legacy AlterConfigs,
/// which replaces *all* of a topic's own configs with what it is sent (anything left out falls back
/// to the broker default), not IncrementalAlterConfigs. So this sends every config now set on the
/// topic, with the owned ones replaced, and refuses a topic with a config whose value the broker
/// hides (a sensitive one): sending it would reset it. A concurrent change of another config by
/// someone else between the describe and the alter would be undone; `topics create` is an
/// operator's step, not something run concurrently with other config changes.
async fn alter_owned_configs(
    admin: &AdminClient<DefaultClientContext>,
    spec: &TopicSpec,
    have: &HashMap<String, TopicConfigValue>,
) -> anyhow::Result<()> {
    let mut desired: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, current) in have.iter().filter(|(_, current)| current.set_on_topic) {
        let value = current.value.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "topic {}: config {name} is set but its value is hidden; altering the topic's \
                 configs would reset it, so set {} by hand",
                spec.topic,
                spec.configs.keys().copied().collect::<Vec<_>>().join(", ")
            )
        })?;
        desired.insert(name, value);
    }
    for (name, value) in &spec.configs {
        desired.insert(name, value);
    }
    let alteration = desired.into_iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(&spec.topic)),
        |alteration, (name, value)| alteration.set(name, value),
    );
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .alter_configs(&[alteration], &options)
        .await
        .map_err(|error| anyhow::anyhow!("altering the configs of {}: {error}", spec.topic))?;
    for result in results {
        if let Err((_, code)) = result {
            anyhow::bail!("altering the configs of {}: {code}", spec.topic);
        }
    }
    Ok(())
}

/// Partition count and replication factor (of partition 0's replica list) of each of `topics` that
/// exists.
async fn fetch_topic_layouts(
    settings: &KafkaSettings,
    topics: &[String],
) -> anyhow::Result<HashMap<String, (i32, i32)>> {
    let settings = settings.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = base_client_config(&settings)
            .create()
            .map_err(|error| anyhow::anyhow!("creating a Kafka metadata client: {error}"))?;
        let metadata = consumer
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .map_err(|error| {
                anyhow::anyhow!("fetching Kafka metadata from {}: {error}", settings.brokers)
            })?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|topic| topic.error().is_none() && topics.iter().any(|t| t == topic.name()))
            .map(|topic| {
                let replication = topic
                    .partitions()
                    .iter()
                    .map(|partition| partition.replicas().len() as i32)
                    .max()
                    .unwrap_or(0);
                (
                    topic.name().to_owned(),
                    (topic.partitions().len() as i32, replication),
                )
            })
            .collect())
    })
    .await?
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::tests::kafka_settings as kafka;

    fn on_topic(value: &str) -> TopicConfigValue {
        TopicConfigValue {
            value: Some(value.to_owned()),
            set_on_topic: true,
        }
    }

    #[test]
    fn each_role_gets_its_retention() {
        let settings = kafka(&[
            "kafka.topic_retention_ms=86400000",
            "kafka.retry_topic_retention_ms=7200000",
        ]);
        let retention = |topic: &str| {
            TopicSpec::for_topic(&settings, topic).configs[topic_configs::RETENTION_MS].clone()
        };
        assert_eq!(retention("activities"), "86400000");
        assert_eq!(retention("activities.retry.2"), "7200000");
        assert_eq!(retention("activities.dlq"), "-1");
        // Not a retry step: the main topic's settings.
        assert_eq!(retention("activities.retry.x"), "86400000");
        let spec = TopicSpec::for_topic(&settings, "activities");
        assert_eq!(spec.configs[topic_configs::MIN_INSYNC_REPLICAS], "1");
        assert_eq!(spec.partitions, 12);
    }

    #[test]
    fn drift_is_a_different_value_or_one_only_inherited() {
        let want = BTreeMap::from([
            (topic_configs::RETENTION_MS, "-1".to_owned()),
            (topic_configs::MIN_INSYNC_REPLICAS, "1".to_owned()),
        ]);
        let mut have = HashMap::from([
            (topic_configs::RETENTION_MS.to_owned(), on_topic("-1")),
            (topic_configs::MIN_INSYNC_REPLICAS.to_owned(), on_topic("1")),
            ("cleanup.policy".to_owned(), on_topic("delete")),
        ]);
        assert_eq!(config_drift(&want, &have), []);

        have.insert(
            topic_configs::RETENTION_MS.to_owned(),
            on_topic("604800000"),
        );
        have.insert(
            topic_configs::MIN_INSYNC_REPLICAS.to_owned(),
            TopicConfigValue {
                value: Some("1".to_owned()),
                set_on_topic: false,
            },
        );
        let drift = config_drift(&want, &have);
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert_eq!(
            drift[0].to_string(),
            "min.insync.replicas: have 1 (a broker default, not pinned on the topic), want 1"
        );
        assert_eq!(
            drift[1].to_string(),
            "retention.ms: have 604800000, want -1"
        );

        have.remove(topic_configs::RETENTION_MS);
        let drift = config_drift(&want, &have);
        assert_eq!(drift[1].have, None);
    }

    #[test]
    fn layout_drift_is_reported_never_planned() {
        let spec = TopicSpec::for_topic(&kafka(&["kafka.partitions=6"]), "activities");
        assert_eq!(layout_drift(&spec, 6, 1), []);
        let more = layout_drift(&spec, 3, 1);
        assert_eq!(more, [LayoutDrift::Partitions { have: 3, want: 6 }]);
        assert!(more[0].to_string().contains("breaks per-tenant order"));
        let fewer = layout_drift(&spec, 12, 3);
        assert!(fewer[0].to_string().contains("cannot remove"));
        assert_eq!(
            fewer[1],
            LayoutDrift::ReplicationFactor { have: 3, want: 1 }
        );
    }
}
