//! Configuration: one typed [`Settings`] tree, layered from the compiled-in `config/default.toml`, the
//! files given with `--config`, `AP_SECTION__KEY` environment variables and `--set section.key=value`
//! flags, in that order of precedence (last wins).
//!
//! Loading fails with a message naming the offending key, so a bad value stops start-up instead of
//! surfacing later as a confusing runtime error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{ApiKeyDigest, OperatorName, OperatorRole, TenantId};

/// The defaults, compiled in so that the binary runs from any working directory.
const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment variables that override configuration (`AP_KAFKA__BROKERS`).
pub const ENV_PREFIX: &str = "AP_";
/// Separator between nested keys in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Everything the binary can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub kafka: KafkaSettings,
    pub consumer: ConsumerSettings,
    pub retry: RetrySettings,
    pub alerts: AlertSettings,
    pub mongo: MongoSettings,
    pub redis: RedisSettings,
    pub log: LogSettings,
    pub limits: LimitSettings,
    /// The API's intake: batches, the layer-2 dedupe check.
    pub intake: IntakeSettings,
    /// Per-tenant token bucket on intake.
    pub rate_limit: RateLimitSettings,
    /// `GET /activities`, `GET /activities/{key}`, `GET /analytics`.
    pub read: ReadSettings,
    /// `GET /activities/stream`.
    pub sse: SseSettings,
    /// `GET /readyz`.
    pub readiness: ReadinessSettings,
    /// The `console` role: the operators' web console and its JSON API.
    pub console: ConsoleSettings,
    /// Which datacenter this process runs in.
    pub dc: DcSettings,
    /// Tenant id -> its API key digest. Empty by default: a deployment must say who may send.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSettings>,
    /// Operator name -> its console token digest and role. Empty by default: nobody opens the
    /// console until a deployment names its operators.
    #[serde(default)]
    pub operators: BTreeMap<String, OperatorSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// 0 means one worker per core.
    pub workers: usize,
    pub max_body_bytes: usize,
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The spelling librdkafka expects for `security.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub client_id: String,
    pub security_protocol: SecurityProtocol,
    pub sasl_mechanism: String,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// Never logged: `SecretString`'s Debug prints `[REDACTED]`.
    #[serde(default)]
    pub sasl_password: Option<SecretString>,
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    pub topic: String,
    pub retry_topic: String,
    pub dlq_topic: String,
    /// Other datacenters' topics mirrored into this cluster (names, or `^`-prefixed patterns), read
    /// by the main stage together with `topic`. Empty for a single datacenter.
    #[serde(default)]
    pub mirrored_topics: Vec<String>,
    pub partitions: i32,
    pub replication_factor: i32,
    pub consumer_group: String,
    /// How long the group waits for a silent member before its partitions move to the others.
    pub session_timeout_ms: u64,
    /// librdkafka's `max.poll.interval.ms`: the longest a consumer may go between two polls before
    /// the group evicts it. Must exceed the longest batch ([`Settings::longest_batch_ms`]).
    pub max_poll_interval_ms: u64,
    pub delivery_timeout_ms: u64,
    pub linger_ms: u64,
    pub compression: Compression,
    pub queue_max_messages: u32,
    /// librdkafka's `queued.max.messages.kbytes` for the consume stages: records fetched ahead of
    /// processing, per stage, in KiB.
    pub consumer_queue_max_kb: u32,
    /// `retention.ms` that `topics create` sets and keeps on the main topic; -1 keeps records until
    /// they are deleted.
    pub topic_retention_ms: i64,
    /// `retention.ms` of every retry topic: a record must outlive its delay and any stop of the
    /// retry stages, or it is lost without a dead letter.
    pub retry_topic_retention_ms: i64,
    /// `retention.ms` of the DLQ; -1 (the default) keeps dead letters until `dlq purge` drops them.
    pub dlq_topic_retention_ms: i64,
    /// `min.insync.replicas` of every topic; absent means `min(2, replication_factor)`, so
    /// `acks=all` needs a second replica wherever there is one.
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
}

impl KafkaSettings {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    /// The retry topic of step `step` (1-based): `<retry_topic>.<step>`.
    pub fn retry_topic_for(&self, step: usize) -> String {
        format!("{}.{step}", self.retry_topic)
    }

    /// The `min.insync.replicas` every topic gets: the configured one, else `min(2, replication_factor)`.
    pub fn effective_min_insync_replicas(&self) -> i32 {
        self.min_insync_replicas
            .unwrap_or_else(|| self.replication_factor.min(2))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcSettings {
    /// Stamped on every accepted record (header `accepted-dc`) and stored on its document; breaks a
    /// tie of acceptance times in the conflict rule between datacenters.
    pub name: String,
}

/// Whether `name` can name a datacenter: 1-32 characters of [a-z0-9-], starting with a letter. It is
/// a record header and MirrorMaker 2's cluster alias (the prefix of mirrored topics), so it stays
/// within what both accept without quoting.
pub fn is_valid_dc_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|first: char| first.is_ascii_lowercase())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    /// Parts of a batch applied at once, each holding whole partitions (per-partition order kept).
    pub partition_parallelism: usize,
    pub outage_backoff_initial_ms: u64,
    pub outage_backoff_max_ms: u64,
    pub metrics_listen: SocketAddr,
    /// How often each stage writes its instance report (partitions, breaker, last commit) to
    /// Redis for the console; the console calls an instance stale after three intervals without one.
    pub instance_report_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Delay before retry N+1; one retry topic per entry.
    pub delays_ms: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Empty: alerts are off. May carry a token in its path, hence secret.
    pub webhook_url: SecretString,
    pub window_secs: u64,
}

impl ConsumerSettings {
    pub fn instance_report_interval(&self) -> Duration {
        Duration::from_secs(self.instance_report_interval_secs)
    }

    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSettings {
    /// May carry credentials, hence secret.
    pub uri: SecretString,
    pub database: String,
    pub collection: String,
    pub server_selection_timeout_ms: u64,
    /// The budget of every consumer-side MongoDB call (client-side timeout and `maxTimeMS`).
    pub op_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// May carry credentials, hence secret. With `cluster`, one or more seed nodes, comma-separated.
    pub url: SecretString,
    /// `url` names a Redis Cluster: the cluster client, sharded Pub/Sub for the live side.
    pub cluster: bool,
    pub key_prefix: String,
    pub idempotency_ttl_secs: u64,
    /// Length of each tenant's recent-events stream (the SSE replay buffer); 0 keeps none.
    pub recent_events_per_tenant: usize,
    /// Length of each tenant's recent-pages set (the first pages of `GET /activities`); 0 keeps
    /// none (and the consumer deletes what an earlier setting kept, so no stale set serves a page).
    pub recent_pages_per_tenant: usize,
    /// How long a tenant's stream and set live after its last event.
    pub recent_events_ttl_secs: u64,
    /// The budget of every Redis call (the consumer's outage path; the API bounds its own calls
    /// tighter where it waits for them).
    pub op_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub metadata_max_bytes: usize,
    pub metadata_max_depth: usize,
    /// Longest `actorId`, `actorName`, `entityId`, in characters.
    pub actor_id_max_chars: u64,
    pub actor_name_max_chars: u64,
    pub entity_id_max_chars: u64,
    /// The regular expression (ECMA 262) every `type` must match: its charset and length.
    pub type_pattern: String,
    /// Most failures described in one 400 (or one batch item); the others are only counted.
    pub max_reported_errors: usize,
}

impl LimitSettings {
    /// The limits as the validator takes them; the served schema is patched with them.
    pub fn activity_limits(&self) -> crate::domain::ActivityLimits {
        crate::domain::ActivityLimits {
            actor_id_max_chars: self.actor_id_max_chars,
            actor_name_max_chars: self.actor_name_max_chars,
            entity_id_max_chars: self.entity_id_max_chars,
            type_pattern: self.type_pattern.clone(),
            metadata_max_bytes: self.metadata_max_bytes,
            metadata_max_depth: self.metadata_max_depth,
            max_reported_errors: self.max_reported_errors,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeSettings {
    /// Most activities in one `POST /activities/batch`.
    pub batch_max_items: usize,
    /// Largest batch body; larger ones get 413 before they are buffered.
    pub batch_max_body_bytes: usize,
    /// Most failures described in one batch answer, all items together (each item describes at
    /// most `limits.max_reported_errors`); past it, items only count theirs.
    pub batch_max_reported_errors: usize,
    /// How long the API waits for Redis' "already accepted?" answer before producing anyway.
    pub dedupe_timeout_ms: u64,
}

impl IntakeSettings {
    pub fn dedupe_timeout(&self) -> Duration {
        Duration::from_millis(self.dedupe_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Activities per second each tenant may send, sustained; 0 turns the limit off.
    pub per_tenant_per_sec: u32,
    /// Activities a tenant may send at once above the sustained rate (the bucket's size).
    pub burst: u32,
    /// One bucket per tenant in Redis for all API instances (true), or one per instance (false).
    pub shared: bool,
    /// With `shared`: each call to Redis takes this long's worth of the tenant's rate (at least what
    /// the request needs, at most `burst`) and the instance spends it locally; 0 takes exactly each
    /// request's cost, one call per request.
    pub lease_ms: u32,
}

/// The longest lease of the shared rate limit: a second's worth of a tenant's rate.
const MAX_RATE_LIMIT_LEASE_MS: u32 = 1000;

impl RateLimitSettings {
    /// Tokens one call to the shared bucket takes beyond a request's cost: `lease_ms` of the
    /// sustained rate, at most `burst`; 0 when that is less than one activity.
    pub fn lease_tokens(&self) -> u64 {
        let lease = u64::from(self.per_tenant_per_sec) * u64::from(self.lease_ms) / 1000;
        lease.min(u64::from(self.burst))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadSettings {
    /// Page size of `GET /activities` without `limit`, and the largest `limit` accepted.
    pub page_default_limit: usize,
    pub page_max_limit: usize,
    /// Budget of one MongoDB or Redis call of the read side; past it the answer is 503. MongoDB is
    /// sent the same budget (`maxTimeMS`), so a query the API gave up on stops there too.
    pub timeout_ms: u64,
    /// Store reads in flight at once on one API instance, all tenants together, so a burst of reads
    /// cannot queue without bound on the store (and its connection pool).
    pub max_concurrent: usize,
    /// How many of those one tenant may hold at once, so one tenant's slow reads cannot take them all.
    pub max_concurrent_per_tenant: usize,
    /// How long a read queues for its place (its tenant's share, then the instance's) before it is
    /// refused with 503 and Retry-After. Waited before, not within, `timeout_ms`.
    pub queue_wait_ms: u64,
}

impl ReadSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn queue_wait(&self) -> Duration {
        Duration::from_millis(self.queue_wait_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseSettings {
    /// Interval of the `: keep-alive` comment lines that keep proxies from closing idle streams.
    pub heartbeat_secs: u64,
    /// Open streams allowed per tenant on one API instance; more are refused with 429.
    pub max_connections_per_tenant: usize,
    /// Most stored activities replayed after `Last-Event-ID`.
    pub replay_max_events: usize,
    /// The `retry:` hint sent to clients (how long EventSource waits before reconnecting).
    pub retry_ms: u64,
    /// Live events buffered per tenant for slow clients; a client that falls further behind is
    /// disconnected (and resumes with `Last-Event-ID`).
    pub buffer_events: usize,
    /// Replays (after `Last-Event-ID`) being read or sent at once on one API instance, all tenants
    /// together: each holds one page (`replay_page_events`) in memory until its client took it.
    pub max_concurrent_replays: usize,
    /// How many of those slots one tenant may hold at once, so one tenant's resumes cannot take
    /// them all; a resume over its tenant's share waits like one over the instance's.
    pub max_replays_per_tenant: usize,
    /// How long a resume waits for a replay slot before it is refused with 503 and Retry-After.
    pub replay_wait_ms: u64,
    /// Events a replay reads (and holds in memory) at once; the next page is read once the client
    /// took this one.
    pub replay_page_events: usize,
    /// How long a client has to take its whole replay; past it the slot and the page are freed and
    /// the stream ends (the client resumes from the last id it got).
    pub replay_send_timeout_ms: u64,
}

impl SseSettings {
    pub fn replay_wait(&self) -> Duration {
        Duration::from_millis(self.replay_wait_ms)
    }

    pub fn replay_send_timeout(&self) -> Duration {
        Duration::from_millis(self.replay_send_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSettings {
    /// Budget of each dependency check of `GET /readyz`.
    pub timeout_ms: u64,
}

impl ReadinessSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    pub api_key_sha256: String,
    /// Hot tenants: how many partitions this tenant's records spread over (1: keyed by tenant
    /// alone, one partition, per-tenant order). Above 1, records go by a bucket of `spread_by`, so
    /// one tenant can be drained by that many consumers; order then holds per entity (or actor),
    /// not per tenant.
    #[serde(default = "one_partition")]
    pub partition_spread: u32,
    /// What picks a spread tenant's bucket: `entity` (its `entityId`, the `actorId` when it has
    /// none) or `actor`.
    #[serde(default)]
    pub spread_by: SpreadBy,
}

fn one_partition() -> u32 {
    1
}

/// The field that picks a spread tenant's partition: activities that share it keep their order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpreadBy {
    #[default]
    Entity,
    Actor,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Where the console listens: its own address, so operators' surface is not the tenants' API.
    pub listen: SocketAddr,
    /// How long a login session lasts.
    pub session_ttl_secs: u64,
    /// Login sessions one operator keeps at once (in Redis, shared by every console instance): a
    /// login past it ends that operator's oldest session, so no operator's logins grow Redis without
    /// bound and a forgotten browser's session ends by itself.
    pub max_sessions: usize,
    /// Sets the session cookie's `Secure` attribute (the console is served over https, e.g. behind
    /// a TLS proxy).
    pub secure_cookie: bool,
    /// How often the console samples the stages' backlog for its lag chart.
    pub lag_sample_interval_secs: u64,
    /// How much lag history the console keeps in memory (the chart's span).
    pub lag_history_secs: u64,
    /// Dead letters per page without `limit`, and the largest `limit` accepted.
    pub page_default_limit: usize,
    pub page_max_limit: usize,
    /// Budget of each Kafka read (watermarks, committed offsets, the DLQ) and MongoDB call the
    /// console makes; past it the answer is 503.
    pub read_timeout_ms: u64,
    /// Memory the console may spend holding the DLQ's records for its dead-letters view (a dead
    /// letter costs about its key, payload and the facts of its headers plus 0.5 KiB). A DLQ
    /// larger than this is read from Kafka on each request.
    pub dead_letters_memory_mb: usize,
}

impl ConsoleSettings {
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    pub fn lag_sample_interval(&self) -> Duration {
        Duration::from_secs(self.lag_sample_interval_secs)
    }

    /// How many lag samples the console keeps: the history divided by the interval.
    pub fn lag_history_samples(&self) -> usize {
        (self.lag_history_secs / self.lag_sample_interval_secs.max(1)) as usize
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSettings {
    /// The SHA-256 (hex) of the operator's console token.
    pub token_sha256: String,
    pub role: OperatorRole,
}

/// A configuration that could not be loaded; the message always names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration flag `--set {0}`: expected `section.key=value`")]
    MalformedOverride(String),
}

/// Where settings come from, besides the compiled-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Files layered over the defaults, in order.
    pub files: Vec<PathBuf>,
    /// Read `AP_*` environment variables (tests turn this off to stay hermetic).
    pub environment: bool,
    /// `section.key=value` overrides, applied last.
    pub overrides: Vec<String>,
}

impl Settings {
    /// Loads and validates the settings from `sources`.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS_TOML));
        for file in &sources.files {
            if !file.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        if sources.environment {
            // Only variables with a section separator are configuration keys; this leaves
            // `AP_CONFIG` and the stack scripts' `AP_STACK_*` variables alone.
            figment = figment.merge(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| key.as_str().contains(ENV_SEPARATOR))
                    .split(ENV_SEPARATOR),
            );
        }
        for assignment in &sources.overrides {
            let (key, value) = parse_override(assignment)?;
            figment = figment.merge(Serialized::global(&key, value));
        }
        let settings: Settings = figment
            .extract()
            .map_err(|error| ConfigError::Load(describe_figment_error(error)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads the compiled-in defaults layered with `files`, ignoring the environment.
    pub fn from_files(files: &[PathBuf]) -> Result<Settings, ConfigError> {
        Settings::load(&Sources {
            files: files.to_vec(),
            environment: false,
            overrides: Vec::new(),
        })
    }

    /// Every topic the pipeline uses, in creation order: main, retry steps, DLQ.
    pub fn topic_names(&self) -> Vec<String> {
        let mut topics = vec![self.kafka.topic.clone()];
        topics
            .extend((1..=self.retry.delays_ms.len()).map(|step| self.kafka.retry_topic_for(step)));
        topics.push(self.kafka.dlq_topic.clone());
        topics
    }

    /// The tenants with their parsed ids and key digests. Two tenants sharing one digest are refused:
    /// a key would authenticate as whichever tenant the lookup met first, so one tenant's clients
    /// would silently write into the other's data. The message names both tenants, never the digest.
    pub fn tenant_credentials(&self) -> Result<Vec<(TenantId, ApiKeyDigest)>, ConfigError> {
        let mut credentials: Vec<(TenantId, ApiKeyDigest)> = Vec::with_capacity(self.tenants.len());
        for (id, tenant) in &self.tenants {
            let key = format!("tenants.{id}");
            let tenant_id = TenantId::parse(id).map_err(|error| invalid(&key, error))?;
            let digest = ApiKeyDigest::from_hex(&tenant.api_key_sha256)
                .map_err(|error| invalid(&format!("{key}.api_key_sha256"), error))?;
            if let Some((owner, _)) = credentials.iter().find(|(_, other)| *other == digest) {
                return Err(invalid(
                    &format!("{key}.api_key_sha256"),
                    format!(
                        "is also the API-key digest of tenant `{owner}`; tenants `{owner}` and \
                         `{tenant_id}` would share one key, so each needs its own"
                    ),
                ));
            }
            credentials.push((tenant_id, digest));
        }
        Ok(credentials)
    }

    /// The console's operators with their parsed names, token digests and roles. A digest shared by
    /// two operators, or by an operator and a tenant, is refused: a tenant's API key must never open
    /// the console, and an operator's token must say who acted (the audit log names them).
    pub fn operator_credentials(
        &self,
    ) -> Result<Vec<(OperatorName, ApiKeyDigest, OperatorRole)>, ConfigError> {
        let tenants = self.tenant_credentials()?;
        let mut credentials: Vec<(OperatorName, ApiKeyDigest, OperatorRole)> = Vec::new();
        for (name, operator) in &self.operators {
            let key = format!("operators.{name}");
            let operator_name = OperatorName::parse(name).map_err(|error| invalid(&key, error))?;
            let digest_key = format!("{key}.token_sha256");
            let digest = ApiKeyDigest::from_hex(&operator.token_sha256)
                .map_err(|error| invalid(&digest_key, error.replace("API key", "token")))?;
            if let Some((tenant, _)) = tenants.iter().find(|(_, other)| *other == digest) {
                return Err(invalid(
                    &digest_key,
                    format!(
                        "is also the API-key digest of tenant `{tenant}`; a tenant's key must \
                         never open the console, so give operator `{operator_name}` a token of \
                         its own"
                    ),
                ));
            }
            if let Some((owner, _, _)) = credentials.iter().find(|(_, other, _)| *other == digest) {
                return Err(invalid(
                    &digest_key,
                    format!(
                        "is also the token digest of operator `{owner}`; each operator needs a \
                         token of its own, so the audit log can say who acted"
                    ),
                ));
            }
            credentials.push((operator_name, digest, operator.role));
        }
        Ok(credentials)
    }

    fn validate_console(&self) -> Result<(), ConfigError> {
        let console = &self.console;
        require(
            console.listen.port() == 0 || console.listen != self.http.listen,
            "console.listen",
            "must differ from http.listen (the console is not served on the tenants' API)",
        )?;
        require(
            (60..=7 * 86_400).contains(&console.session_ttl_secs),
            "console.session_ttl_secs",
            "must be 60 to 604800 (a week)",
        )?;
        require(
            (1..=10_000).contains(&console.max_sessions),
            "console.max_sessions",
            "must be 1 to 10000 (login sessions per operator)",
        )?;
        require(
            (1..=300).contains(&console.lag_sample_interval_secs),
            "console.lag_sample_interval_secs",
            "must be 1 to 300",
        )?;
        require(
            console.lag_history_secs >= console.lag_sample_interval_secs
                && console.lag_history_secs <= 86_400
                && console.lag_history_samples() <= 10_000,
            "console.lag_history_secs",
            "must be at least console.lag_sample_interval_secs, at most 86400, and keep at most \
             10000 samples (lag_history_secs / lag_sample_interval_secs)",
        )?;
        require(
            (1..=console.page_max_limit).contains(&console.page_default_limit),
            "console.page_default_limit",
            "must be at least 1 and at most console.page_max_limit",
        )?;
        require(
            console.page_max_limit <= 1000,
            "console.page_max_limit",
            "must be at most 1000",
        )?;
        require(
            (100..=120_000).contains(&console.read_timeout_ms),
            "console.read_timeout_ms",
            "must be 100 to 120000",
        )?;
        require(
            (1..=65_536).contains(&console.dead_letters_memory_mb),
            "console.dead_letters_memory_mb",
            "must be 1 to 65536",
        )?;
        self.operator_credentials()?;
        Ok(())
    }

    /// Rejects values that parse but cannot work, naming the key.
    fn validate(&self) -> Result<(), ConfigError> {
        let kafka = &self.kafka;
        require(
            !kafka.brokers.trim().is_empty(),
            "kafka.brokers",
            "must name at least one broker",
        )?;
        for (key, topic) in [
            ("kafka.topic", &kafka.topic),
            ("kafka.retry_topic", &kafka.retry_topic),
            ("kafka.dlq_topic", &kafka.dlq_topic),
        ] {
            require(
                is_valid_topic_name(topic),
                key,
                "must be 1-249 characters of [A-Za-z0-9._-]",
            )?;
        }
        require(
            kafka.topic != kafka.retry_topic
                && kafka.topic != kafka.dlq_topic
                && kafka.retry_topic != kafka.dlq_topic,
            "kafka.dlq_topic",
            "the main, retry and DLQ topics must be three different topics",
        )?;
        for mirrored in &kafka.mirrored_topics {
            let well_formed = match mirrored.strip_prefix('^') {
                // librdkafka subscribes to a `^`-prefixed entry as a regular expression, in its own
                // dialect: it judges the pattern when the consumer subscribes (an error naming it).
                Some(pattern) => !pattern.is_empty(),
                None => is_valid_topic_name(mirrored),
            };
            require(
                well_formed,
                "kafka.mirrored_topics",
                &format!(
                    "{mirrored:?} is neither a topic name (1-249 characters of [A-Za-z0-9._-]) nor a \
                     `^`-prefixed regular expression over topic names"
                ),
            )?;
            require(
                mirrored != &kafka.topic
                    && mirrored != &kafka.dlq_topic
                    && !mirrored.starts_with(&kafka.retry_topic),
                "kafka.mirrored_topics",
                &format!(
                    "{mirrored:?} is one of this datacenter's own topics (kafka.topic, the retry \
                     topics, kafka.dlq_topic); list only topics mirrored from other datacenters"
                ),
            )?;
        }
        require(
            is_valid_dc_name(&self.dc.name),
            "dc.name",
            "must be 1-32 characters of [a-z0-9-], starting with a letter",
        )?;
        require(
            kafka.partitions >= 1,
            "kafka.partitions",
            "must be at least 1",
        )?;
        require(
            kafka.replication_factor >= 1,
            "kafka.replication_factor",
            "must be at least 1",
        )?;
        require(
            (6_000..=300_000).contains(&kafka.session_timeout_ms),
            "kafka.session_timeout_ms",
            "must be 6000 to 300000 (the broker's default group session bounds)",
        )?;
        require(
            !kafka.consumer_group.is_empty(),
            "kafka.consumer_group",
            "must not be empty",
        )?;
        require(
            kafka.delivery_timeout_ms >= 1,
            "kafka.delivery_timeout_ms",
            "must be at least 1",
        )?;
        require(
            (1..=600_000).contains(&self.mongo.op_timeout_ms),
            "mongo.op_timeout_ms",
            "must be 1 to 600000",
        )?;
        require(
            (1..=600_000).contains(&self.redis.op_timeout_ms),
            "redis.op_timeout_ms",
            "must be 1 to 600000",
        )?;
        require(
            kafka.max_poll_interval_ms <= 86_400_000
                && kafka.max_poll_interval_ms >= kafka.session_timeout_ms
                && kafka.max_poll_interval_ms > self.longest_batch_ms(),
            "kafka.max_poll_interval_ms",
            &format!(
                "must be at most 86400000, at least kafka.session_timeout_ms, and more than the \
                 longest batch, {} ms (2 x mongo.op_timeout_ms + 2 x redis.op_timeout_ms + \
                 kafka.delivery_timeout_ms)",
                self.longest_batch_ms()
            ),
        )?;
        require(
            kafka.queue_max_messages >= 1,
            "kafka.queue_max_messages",
            "must be at least 1",
        )?;
        require(
            (1024..=MAX_CONSUMER_QUEUE_KB).contains(&kafka.consumer_queue_max_kb),
            "kafka.consumer_queue_max_kb",
            &format!(
                "must be 1024 (one fetch of a partition, 1 MiB) to {MAX_CONSUMER_QUEUE_KB} \
                 (librdkafka's bound)"
            ),
        )?;
        if kafka.security_protocol.uses_sasl() {
            require(
                matches!(
                    kafka.sasl_mechanism.as_str(),
                    "SCRAM-SHA-256" | "SCRAM-SHA-512" | "PLAIN"
                ),
                "kafka.sasl_mechanism",
                "must be SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN",
            )?;
            require(
                kafka
                    .sasl_username
                    .as_deref()
                    .is_some_and(|user| !user.is_empty()),
                "kafka.sasl_username",
                "is required with a sasl_* security_protocol",
            )?;
            require(
                kafka.sasl_password.is_some(),
                "kafka.sasl_password",
                "is required with a sasl_* security_protocol",
            )?;
        }
        let consumer = &self.consumer;
        require(
            consumer.batch_max_records >= 1,
            "consumer.batch_max_records",
            "must be at least 1",
        )?;
        require(
            (1..=64).contains(&consumer.partition_parallelism),
            "consumer.partition_parallelism",
            "must be 1 to 64",
        )?;
        require(
            consumer.outage_backoff_initial_ms >= 1
                && consumer.outage_backoff_initial_ms <= consumer.outage_backoff_max_ms,
            "consumer.outage_backoff_initial_ms",
            "must be at least 1 and at most consumer.outage_backoff_max_ms",
        )?;
        require(
            (1..=60).contains(&consumer.instance_report_interval_secs),
            "consumer.instance_report_interval_secs",
            "must be 1 to 60",
        )?;
        require(
            (1..=10).contains(&self.retry.delays_ms.len()),
            "retry.delays_ms",
            "must list 1 to 10 delays",
        )?;
        require(
            self.retry
                .delays_ms
                .iter()
                .all(|delay| (1..=3_600_000).contains(delay)),
            "retry.delays_ms",
            "each delay must be 1 ms to 1 hour",
        )?;
        require(
            self.alerts.window_secs >= 1,
            "alerts.window_secs",
            "must be at least 1",
        )?;
        let webhook = self.alerts.webhook_url.expose_secret();
        require(
            webhook.is_empty() || webhook.starts_with("http://") || webhook.starts_with("https://"),
            "alerts.webhook_url",
            "must be empty (off) or an http(s) URL",
        )?;
        require(
            !self.mongo.database.is_empty(),
            "mongo.database",
            "must not be empty",
        )?;
        require(
            !self.mongo.collection.is_empty(),
            "mongo.collection",
            "must not be empty",
        )?;
        let redis_nodes = self
            .redis
            .url
            .expose_secret()
            .split(',')
            .filter(|node| !node.trim().is_empty())
            .count();
        require(
            redis_nodes >= 1 && (self.redis.cluster || redis_nodes == 1),
            "redis.url",
            if self.redis.cluster {
                "must name at least one seed node of the cluster (comma-separated redis:// URLs)"
            } else {
                "must name one Redis server (several comma-separated nodes need redis.cluster = true)"
            },
        )?;
        require(
            self.redis.idempotency_ttl_secs >= 1,
            "redis.idempotency_ttl_secs",
            "must be at least 1",
        )?;
        require(
            self.redis.recent_events_per_tenant <= 1_000_000,
            "redis.recent_events_per_tenant",
            "must be at most 1000000 (0 turns the replay buffer off)",
        )?;
        require(
            self.redis.recent_pages_per_tenant <= 1_000_000,
            "redis.recent_pages_per_tenant",
            "must be at most 1000000 (0 turns the recent-pages set off)",
        )?;
        require(
            self.redis.recent_events_ttl_secs >= 1,
            "redis.recent_events_ttl_secs",
            "must be at least 1",
        )?;
        require(
            self.http.max_body_bytes >= 1024,
            "http.max_body_bytes",
            "must be at least 1024",
        )?;
        require(
            self.limits.metadata_max_depth >= 1,
            "limits.metadata_max_depth",
            "must be at least 1",
        )?;
        require(
            self.limits.metadata_max_bytes >= 2,
            "limits.metadata_max_bytes",
            "must be at least 2",
        )?;
        self.validate_topic_settings()?;
        self.validate_api()?;
        crate::domain::ActivityValidator::with_limits(&self.limits.activity_limits())
            .map_err(|error| invalid(&format!("limits.{}", error.key), error.message))?;
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|error| invalid("log.filter", error))?;
        self.tenant_credentials()?;
        for (id, tenant) in &self.tenants {
            require(
                tenant.partition_spread >= 1
                    && i64::from(tenant.partition_spread) <= i64::from(self.kafka.partitions),
                &format!("tenants.{id}.partition_spread"),
                &format!(
                    "must be between 1 and kafka.partitions ({}): a tenant cannot spread over more partitions than the topic has",
                    self.kafka.partitions
                ),
            )?;
        }
        self.validate_console()?;
        Ok(())
    }
}

/// How many times the longest retry delay a retry topic must at least keep its records: a record
/// waits up to that delay before its stage reads it, and the margin covers a stage that is
/// restarting or catching up. (Retention is counted from when the record was written.)
pub const RETRY_RETENTION_DELAY_MULTIPLE: u64 = 10;

/// The shortest finite retention of the main topic and the DLQ: less would drop records before a
/// stopped consumer or an operator could get to them.
const MIN_FINITE_RETENTION_MS: i64 = 3_600_000;

/// librdkafka's largest `queued.max.messages.kbytes` (`INT_MAX / 1024`).
const MAX_CONSUMER_QUEUE_KB: u32 = 2_097_151;

impl Settings {
    /// The longest one batch can take to process while every dependency answers within its budget:
    /// two MongoDB calls (insert, then the lookup of keys already stored), two Redis calls (the
    /// pre-check and the effects script) and one round of forwards awaited together. A dependency
    /// slower than its budget is an outage, handled between polls, so no batch takes longer.
    pub fn longest_batch_ms(&self) -> u64 {
        2 * self.mongo.op_timeout_ms + 2 * self.redis.op_timeout_ms + self.kafka.delivery_timeout_ms
    }

    /// The topic settings `topics create` applies: retention per role, `min.insync.replicas`.
    fn validate_topic_settings(&self) -> Result<(), ConfigError> {
        let kafka = &self.kafka;
        for (key, retention) in [
            ("kafka.topic_retention_ms", kafka.topic_retention_ms),
            ("kafka.dlq_topic_retention_ms", kafka.dlq_topic_retention_ms),
        ] {
            require(
                retention == -1 || retention >= MIN_FINITE_RETENTION_MS,
                key,
                "must be -1 (keep until deleted) or at least 3600000 (1 hour)",
            )?;
        }
        let longest_delay = self.retry.delays_ms.iter().copied().max().unwrap_or(0);
        let shortest_retry_retention = longest_delay.saturating_mul(RETRY_RETENTION_DELAY_MULTIPLE);
        require(
            kafka.retry_topic_retention_ms == -1
                || (kafka.retry_topic_retention_ms >= 1
                    && kafka.retry_topic_retention_ms as u64 >= shortest_retry_retention),
            "kafka.retry_topic_retention_ms",
            &format!(
                "must be -1 (keep until deleted) or at least {RETRY_RETENTION_DELAY_MULTIPLE} times \
                 the longest of retry.delays_ms ({shortest_retry_retention})"
            ),
        )?;
        if let Some(min_insync) = kafka.min_insync_replicas {
            require(
                (1..=kafka.replication_factor).contains(&min_insync),
                "kafka.min_insync_replicas",
                "must be 1 to kafka.replication_factor (more would refuse every acks=all write)",
            )?;
        }
        Ok(())
    }

    /// The API's keys: intake, rate limit, read side, SSE, readiness.
    fn validate_api(&self) -> Result<(), ConfigError> {
        require(
            (1..=10_000).contains(&self.intake.batch_max_items),
            "intake.batch_max_items",
            "must be between 1 and 10000",
        )?;
        require(
            self.intake.batch_max_body_bytes >= 1024,
            "intake.batch_max_body_bytes",
            "must be at least 1024",
        )?;
        require(
            self.intake.batch_max_reported_errors <= 10_000,
            "intake.batch_max_reported_errors",
            "must be at most 10000",
        )?;
        require(
            (1..=1000).contains(&self.limits.max_reported_errors),
            "limits.max_reported_errors",
            "must be between 1 and 1000",
        )?;
        require(
            self.intake.dedupe_timeout_ms >= 1,
            "intake.dedupe_timeout_ms",
            "must be at least 1",
        )?;
        require(
            self.rate_limit.lease_ms <= MAX_RATE_LIMIT_LEASE_MS,
            "rate_limit.lease_ms",
            &format!("must be at most {MAX_RATE_LIMIT_LEASE_MS} (a second of the tenant's rate)"),
        )?;
        if self.rate_limit.per_tenant_per_sec > 0 {
            require(
                self.rate_limit.burst as usize >= self.intake.batch_max_items,
                "rate_limit.burst",
                "must be at least intake.batch_max_items, or a full batch could never pass",
            )?;
        }
        require(
            self.read.page_default_limit >= 1
                && self.read.page_default_limit <= self.read.page_max_limit,
            "read.page_default_limit",
            "must be at least 1 and at most read.page_max_limit",
        )?;
        require(
            self.read.page_max_limit <= 1000,
            "read.page_max_limit",
            "must be at most 1000",
        )?;
        require(
            self.read.timeout_ms >= 1,
            "read.timeout_ms",
            "must be at least 1",
        )?;
        require(
            self.read.max_concurrent >= 1,
            "read.max_concurrent",
            "must be at least 1",
        )?;
        require(
            (1..=self.read.max_concurrent).contains(&self.read.max_concurrent_per_tenant),
            "read.max_concurrent_per_tenant",
            "must be at least 1 and at most read.max_concurrent",
        )?;
        require(
            self.read.queue_wait_ms <= 60_000,
            "read.queue_wait_ms",
            "must be at most 60000",
        )?;
        require(
            self.sse.heartbeat_secs >= 1,
            "sse.heartbeat_secs",
            "must be at least 1",
        )?;
        require(
            self.sse.max_connections_per_tenant >= 1,
            "sse.max_connections_per_tenant",
            "must be at least 1",
        )?;
        require(
            self.sse.replay_max_events <= 10_000,
            "sse.replay_max_events",
            "must be at most 10000",
        )?;
        require(
            self.sse.buffer_events >= 1,
            "sse.buffer_events",
            "must be at least 1",
        )?;
        require(
            self.sse.max_concurrent_replays >= 1,
            "sse.max_concurrent_replays",
            "must be at least 1",
        )?;
        require(
            (1..=self.sse.max_concurrent_replays).contains(&self.sse.max_replays_per_tenant),
            "sse.max_replays_per_tenant",
            "must be at least 1 and at most sse.max_concurrent_replays",
        )?;
        require(
            self.sse.replay_wait_ms <= 60_000,
            "sse.replay_wait_ms",
            "must be at most 60000",
        )?;
        require(
            (1..=10_000).contains(&self.sse.replay_page_events),
            "sse.replay_page_events",
            "must be between 1 and 10000",
        )?;
        require(
            (100..=3_600_000).contains(&self.sse.replay_send_timeout_ms),
            "sse.replay_send_timeout_ms",
            "must be between 100 and 3600000",
        )?;
        require(
            self.readiness.timeout_ms >= 1,
            "readiness.timeout_ms",
            "must be at least 1",
        )?;
        Ok(())
    }
}

fn require(condition: bool, key: &str, message: &str) -> Result<(), ConfigError> {
    if condition {
        Ok(())
    } else {
        Err(invalid(key, message))
    }
}

fn invalid(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.to_string(),
    }
}

/// Kafka's own rule for topic names.
fn is_valid_topic_name(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

/// Splits `section.key=value`. The value is read the way figment reads environment variables (numbers,
/// booleans, `[arrays]`, else a plain string), so `--set kafka.brokers=host:9092` needs no quoting and
/// a flag means exactly what the same `AP_` variable would.
fn parse_override(assignment: &str) -> Result<(String, figment::value::Value), ConfigError> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| ConfigError::MalformedOverride(assignment.to_owned()))?;
    let key = key.trim();
    let well_formed = !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        });
    if !well_formed {
        return Err(ConfigError::MalformedOverride(assignment.to_owned()));
    }
    let value = raw
        .parse::<figment::value::Value>()
        .map_err(|_| ConfigError::MalformedOverride(assignment.to_owned()))?;
    Ok((key.to_owned(), value))
}

/// Figment's error names the key and the source; keep all of it, one cause per line.
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|error| error.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(overrides: &[&str]) -> Result<Settings, ConfigError> {
        Settings::load(&Sources {
            files: vec![],
            environment: false,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn defaults_load_and_are_valid() {
        let settings = load_with(&[]).expect("defaults must load");
        assert_eq!(settings.kafka.topic, "activities");
        assert_eq!(settings.kafka.partitions, 12);
        assert_eq!(settings.redis.idempotency_ttl_secs, 86_400);
        assert!(settings.tenants.is_empty());
    }

    #[test]
    fn dev_profile_has_the_demo_tenants() {
        let settings = Settings::from_files(&[PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/dev.toml"
        ))])
        .expect("dev config must load");
        let tenants: Vec<String> = settings
            .tenant_credentials()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect();
        assert_eq!(tenants, ["acme", "globex"]);
    }

    #[test]
    fn overrides_win_and_are_typed() {
        let settings = load_with(&["kafka.partitions=3", "kafka.brokers=h1:9092,h2:9092"]).unwrap();
        assert_eq!(settings.kafka.partitions, 3);
        assert_eq!(settings.kafka.brokers, "h1:9092,h2:9092");
    }

    #[test]
    fn a_bad_type_names_the_key() {
        let error = load_with(&["kafka.partitions=many"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("partitions"), "{error}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let error = load_with(&["kafka.partitons=3"]).unwrap_err().to_string();
        assert!(error.contains("partitons"), "{error}");
    }

    #[test]
    fn an_invalid_value_names_the_key() {
        let error = load_with(&["kafka.partitions=0"]).unwrap_err().to_string();
        assert_eq!(
            error,
            "configuration key `kafka.partitions`: must be at least 1"
        );
        let error = load_with(&["kafka.topic=bad topic!"])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("configuration key `kafka.topic`"),
            "{error}"
        );
        let error = load_with(&["log.filter=[[["]).unwrap_err().to_string();
        assert!(
            error.starts_with("configuration key `log.filter`"),
            "{error}"
        );
    }

    #[test]
    fn the_consumer_queue_is_bounded_on_both_sides() {
        assert_eq!(load_with(&[]).unwrap().kafka.consumer_queue_max_kb, 4_096);
        for bad in ["1023", "0", "2097152"] {
            let error = load_with(&[&format!("kafka.consumer_queue_max_kb={bad}")])
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("configuration key `kafka.consumer_queue_max_kb`: must be 1024"),
                "{bad}: {error}"
            );
        }
        let error = load_with(&["kafka.consumer_queue_max_kb=-5"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("consumer_queue_max_kb"), "{error}");
        for good in ["1024", "2097151"] {
            let settings = load_with(&[&format!("kafka.consumer_queue_max_kb={good}")]).unwrap();
            assert_eq!(settings.kafka.consumer_queue_max_kb.to_string(), good);
        }
    }

    #[test]
    fn the_rate_limit_lease_is_a_bounded_share_of_the_rate() {
        let defaults = load_with(&[]).unwrap().rate_limit;
        assert_eq!(defaults.lease_ms, 10);
        assert_eq!(defaults.lease_tokens(), 500, "50,000/s x 10 ms");
        for bad in ["1001", "-1"] {
            let error = load_with(&[&format!("rate_limit.lease_ms={bad}")])
                .unwrap_err()
                .to_string();
            assert!(error.contains("rate_limit.lease_ms"), "{bad}: {error}");
        }
        let lease = |overrides: &[&str]| load_with(overrides).unwrap().rate_limit.lease_tokens();
        assert_eq!(lease(&["rate_limit.lease_ms=0"]), 0, "off");
        assert_eq!(
            lease(&["rate_limit.per_tenant_per_sec=50", "rate_limit.lease_ms=10"]),
            0,
            "under one activity: each request takes its own cost"
        );
        assert_eq!(
            lease(&[
                "rate_limit.per_tenant_per_sec=5000",
                "rate_limit.burst=1000",
                "rate_limit.lease_ms=1000"
            ]),
            1000,
            "never more than the bucket holds"
        );
    }

    #[test]
    fn redis_seed_lists_need_the_cluster_switch() {
        let several = "redis.url=redis://127.0.0.1:7001,redis://127.0.0.1:7002";
        let error = load_with(&[several]).unwrap_err().to_string();
        assert!(
            error.starts_with("configuration key `redis.url`") && error.contains("redis.cluster"),
            "{error}"
        );
        let settings = load_with(&[several, "redis.cluster=true"]).unwrap();
        assert!(settings.redis.cluster);
        let error = load_with(&["redis.url= , ", "redis.cluster=true"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("at least one seed node"), "{error}");
        assert!(load_with(&["redis.url=redis://127.0.0.1:7001", "redis.cluster=true"]).is_ok());
    }

    #[test]
    fn retry_steps_and_alerts_are_checked() {
        let settings = load_with(&[]).unwrap();
        assert_eq!(settings.retry.delays_ms, [1000, 2000, 4000]);
        assert_eq!(settings.kafka.retry_topic_for(2), "activities.retry.2");
        let error = load_with(&["alerts.webhook_url=ftp://x"])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("configuration key `alerts.webhook_url`"),
            "{error}"
        );
        assert!(load_with(&["alerts.webhook_url=https://hooks.example/T/B/x"]).is_ok());
    }

    #[test]
    fn sasl_requires_credentials() {
        let error = load_with(&["kafka.security_protocol=sasl_ssl"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("kafka.sasl_username"), "{error}");
        let settings = load_with(&[
            "kafka.security_protocol=sasl_ssl",
            "kafka.sasl_username=app",
            "kafka.sasl_password=hunter2",
        ])
        .unwrap();
        assert!(
            !format!("{settings:?}").contains("hunter2"),
            "secrets must not be printed"
        );
    }

    #[test]
    fn a_bad_tenant_digest_names_the_tenant() {
        let error = load_with(&["tenants.acme.api_key_sha256=abc"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("tenants.acme.api_key_sha256"), "{error}");
        let error = load_with(&[&format!(
            "tenants.Bad Tenant.api_key_sha256={}",
            "a".repeat(64)
        )]);
        assert!(error.is_err());
    }

    #[test]
    fn a_partition_spread_outside_the_topic_or_an_unknown_spread_field_is_refused() {
        let digest = format!("tenants.acme.api_key_sha256={}", "a".repeat(64));
        for spread in ["0", "13"] {
            let error = load_with(&[&digest, &format!("tenants.acme.partition_spread={spread}")])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("tenants.acme.partition_spread")
                    && error.contains("between 1 and kafka.partitions (12)"),
                "{error}"
            );
        }
        let error = load_with(&[&digest, "tenants.acme.spread_by=tenant"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("spread_by"), "{error}");
        let settings = load_with(&[
            &digest,
            "tenants.acme.partition_spread=4",
            "tenants.acme.spread_by=actor",
        ])
        .unwrap();
        assert_eq!(settings.tenants["acme"].partition_spread, 4);
        assert_eq!(settings.tenants["acme"].spread_by, SpreadBy::Actor);
    }

    #[test]
    fn two_tenants_with_one_key_digest_are_refused_naming_both() {
        let digest = "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873";
        let error = load_with(&[
            &format!("tenants.acme.api_key_sha256={digest}"),
            // Upper case hex is the same digest: the comparison is of the bytes, not the text.
            &format!("tenants.initech.api_key_sha256={}", digest.to_uppercase()),
            &format!("tenants.globex.api_key_sha256={}", "b".repeat(64)),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("configuration key `tenants.initech.api_key_sha256`"),
            "{error}"
        );
        assert!(error.contains("acme") && !error.contains(digest), "{error}");
        assert!(!error.contains("globex"), "{error}");
    }

    #[test]
    fn console_settings_that_cannot_work_name_their_key() {
        let settings = load_with(&[]).unwrap();
        assert_eq!(settings.console.listen.port(), 8088);
        assert!(settings.operators.is_empty());
        let admin = ApiKeyDigest::of_key("op-admin");
        let admin_hex = hex_of("op-admin");
        for (overrides, key) in [
            (
                vec!["console.listen=127.0.0.1:8080".to_owned()],
                "console.listen",
            ),
            (
                vec!["console.lag_history_secs=1".to_owned()],
                "console.lag_history_secs",
            ),
            (
                vec!["console.page_default_limit=0".to_owned()],
                "console.page_default_limit",
            ),
            (
                vec!["console.read_timeout_ms=0".to_owned()],
                "console.read_timeout_ms",
            ),
            (
                vec!["console.max_sessions=0".to_owned()],
                "console.max_sessions",
            ),
            (
                vec!["console.max_sessions=10001".to_owned()],
                "console.max_sessions",
            ),
            (
                vec![
                    "operators.alice.token_sha256=abc".to_owned(),
                    "operators.alice.role=admin".to_owned(),
                ],
                "operators.alice.token_sha256",
            ),
            (
                vec![
                    format!("operators.Alice.token_sha256={admin_hex}"),
                    "operators.Alice.role=admin".to_owned(),
                ],
                "operators.Alice",
            ),
            (
                vec![
                    format!("operators.alice.token_sha256={admin_hex}"),
                    "operators.alice.role=admin".to_owned(),
                    format!("operators.bob.token_sha256={admin_hex}"),
                    "operators.bob.role=viewer".to_owned(),
                ],
                "operators.bob.token_sha256",
            ),
            (
                vec![
                    format!("tenants.acme.api_key_sha256={admin_hex}"),
                    format!("operators.alice.token_sha256={admin_hex}"),
                    "operators.alice.role=admin".to_owned(),
                ],
                "operators.alice.token_sha256",
            ),
        ] {
            let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
            let error = load_with(&overrides).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("configuration key `{key}`")),
                "{overrides:?}: {error}"
            );
            assert!(
                !error.contains(&admin_hex),
                "digests are not echoed: {error}"
            );
        }
        let error = load_with(&[
            &format!("operators.alice.token_sha256={admin_hex}"),
            "operators.alice.role=root",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("role"), "{error}");
        let settings = load_with(&[
            &format!("operators.alice.token_sha256={admin_hex}"),
            "operators.alice.role=admin",
        ])
        .unwrap();
        let operators = settings.operator_credentials().unwrap();
        assert_eq!(operators[0].0.as_str(), "alice");
        assert_eq!(operators[0].1, admin);
        assert_eq!(operators[0].2, OperatorRole::Admin);
    }

    fn hex_of(token: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn malformed_overrides_are_refused() {
        for bad in ["novalue", "=3", "a..b=1", "a b=1"] {
            let error = load_with(&[bad]).unwrap_err();
            assert!(
                matches!(error, ConfigError::MalformedOverride(_)),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = Settings::from_files(&[PathBuf::from("/nonexistent/x.toml")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/x.toml"), "{error}");
    }

    #[test]
    fn override_values_parse_like_environment_variables() {
        let settings =
            load_with(&["retry.delays_ms=[100, 200]", "http.listen=0.0.0.0:9000"]).unwrap();
        assert_eq!(settings.retry.delays_ms, [100, 200]);
        assert_eq!(settings.http.listen.port(), 9000);
        let error = load_with(&["retry.delays_ms=[]"]).unwrap_err().to_string();
        assert!(error.contains("retry.delays_ms"), "{error}");
    }

    #[test]
    fn topic_settings_default_to_durable_and_name_their_key() {
        let kafka = load_with(&[]).unwrap().kafka;
        assert_eq!(kafka.dlq_topic_retention_ms, -1);
        assert_eq!(kafka.effective_min_insync_replicas(), 1);
        let kafka = load_with(&["kafka.replication_factor=3"]).unwrap().kafka;
        assert_eq!(kafka.effective_min_insync_replicas(), 2);
        // Ten times the longest delay (4 s by default) is the least a retry topic may keep.
        assert!(load_with(&["kafka.retry_topic_retention_ms=40000"]).is_ok());
        assert!(load_with(&["kafka.retry_topic_retention_ms=-1"]).is_ok());
        for (overrides, key) in [
            (
                &["kafka.retry_topic_retention_ms=39999"][..],
                "kafka.retry_topic_retention_ms",
            ),
            (
                &["kafka.retry_topic_retention_ms=0"][..],
                "kafka.retry_topic_retention_ms",
            ),
            (
                &[
                    "retry.delays_ms=[1000, 3600000]",
                    "kafka.retry_topic_retention_ms=7200000",
                ][..],
                "kafka.retry_topic_retention_ms",
            ),
            (
                &["kafka.dlq_topic_retention_ms=1000"][..],
                "kafka.dlq_topic_retention_ms",
            ),
            (
                &["kafka.topic_retention_ms=-2"][..],
                "kafka.topic_retention_ms",
            ),
            (
                &["kafka.min_insync_replicas=2"][..],
                "kafka.min_insync_replicas",
            ),
            (
                &["kafka.min_insync_replicas=0"][..],
                "kafka.min_insync_replicas",
            ),
        ] {
            let error = load_with(overrides).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("configuration key `{key}`")),
                "{overrides:?}: {error}"
            );
        }
    }

    #[test]
    fn datacenter_settings_are_checked() {
        let settings = load_with(&[]).unwrap();
        assert_eq!(settings.dc.name, "local");
        assert!(settings.kafka.mirrored_topics.is_empty());
        let settings = load_with(&[
            "dc.name=west",
            r#"kafka.mirrored_topics=["east.activities", "^[a-z]+[.]activities$"]"#,
        ])
        .unwrap();
        assert_eq!(settings.dc.name, "west");
        assert_eq!(settings.kafka.mirrored_topics.len(), 2);
        for (overrides, key) in [
            (&["dc.name=East"][..], "dc.name"),
            (&["dc.name=1east"][..], "dc.name"),
            (&["dc.name=east.1"][..], "dc.name"),
            (&[r#"dc.name="""#][..], "dc.name"),
            (
                &[r#"kafka.mirrored_topics=["east activities"]"#][..],
                "kafka.mirrored_topics",
            ),
            (
                &[r#"kafka.mirrored_topics=["^"]"#][..],
                "kafka.mirrored_topics",
            ),
            (
                &[r#"kafka.mirrored_topics=["activities"]"#][..],
                "kafka.mirrored_topics",
            ),
            (
                &[r#"kafka.mirrored_topics=["activities.retry.1"]"#][..],
                "kafka.mirrored_topics",
            ),
            (
                &[r#"kafka.mirrored_topics=["activities.dlq"]"#][..],
                "kafka.mirrored_topics",
            ),
        ] {
            let error = load_with(overrides).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("configuration key `{key}`")),
                "{overrides:?}: {error}"
            );
        }
    }

    #[test]
    fn api_settings_that_cannot_work_name_their_key() {
        for (overrides, key) in [
            (
                &["rate_limit.burst=10", "intake.batch_max_items=100"][..],
                "rate_limit.burst",
            ),
            (&["limits.type_pattern=([a-z"][..], "limits.type_pattern"),
            (
                &["limits.actor_id_max_chars=0"][..],
                "limits.actor_id_max_chars",
            ),
            (
                &["read.page_default_limit=0"][..],
                "read.page_default_limit",
            ),
            (&["read.page_max_limit=5000"][..], "read.page_max_limit"),
            (&["read.max_concurrent=0"][..], "read.max_concurrent"),
            (
                &["read.max_concurrent=4", "read.max_concurrent_per_tenant=5"][..],
                "read.max_concurrent_per_tenant",
            ),
            (
                &["read.max_concurrent_per_tenant=0"][..],
                "read.max_concurrent_per_tenant",
            ),
            (&["read.queue_wait_ms=600000"][..], "read.queue_wait_ms"),
            (
                &["sse.max_connections_per_tenant=0"][..],
                "sse.max_connections_per_tenant",
            ),
            (
                &["sse.max_concurrent_replays=0"][..],
                "sse.max_concurrent_replays",
            ),
            (&["sse.replay_wait_ms=600000"][..], "sse.replay_wait_ms"),
            (
                &[
                    "sse.max_concurrent_replays=4",
                    "sse.max_replays_per_tenant=5",
                ][..],
                "sse.max_replays_per_tenant",
            ),
            (&["sse.replay_page_events=0"][..], "sse.replay_page_events"),
            (
                &["sse.replay_send_timeout_ms=0"][..],
                "sse.replay_send_timeout_ms",
            ),
            (&["intake.batch_max_items=0"][..], "intake.batch_max_items"),
            (
                &["limits.max_reported_errors=0"][..],
                "limits.max_reported_errors",
            ),
            (
                &["intake.batch_max_reported_errors=20000"][..],
                "intake.batch_max_reported_errors",
            ),
        ] {
            let error = load_with(overrides).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("configuration key `{key}`")),
                "{overrides:?}: {error}"
            );
        }
        // A rate limit of 0 is off, and then the burst does not matter.
        assert!(load_with(&["rate_limit.per_tenant_per_sec=0", "rate_limit.burst=0"]).is_ok());
    }
}
