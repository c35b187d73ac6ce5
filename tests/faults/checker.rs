//! The checker: reads MongoDB, Redis and the DLQ topic directly (its own clients, none of the
//! project's code) and holds them to the workload's ledger. It checks one set of `Stores` at a
//! time: the run's, or one datacenter's (the datacenter drill checks each, then compares them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use crate::clock::Window;
use crate::env::{
    Env, RedisTarget, COLLECTION, DATABASE, DLQ_TOPIC, GROUP, PARTITIONS, RETRY_TOPICS, TENANTS,
    TOPIC,
};
use crate::ledger::{Outcome, SentActivity, WorkloadReport};
use crate::live::{LiveClient, Via};
use crate::poison::{InjectedPoison, POISON_HEADER};

/// Where one pipeline keeps its effects: a run's stores, or one datacenter's.
#[derive(Debug, Clone)]
pub struct Stores {
    pub mongo_uri: String,
    pub redis: RedisTarget,
    pub brokers: String,
}

/// Keys of the readiness probes `scripts/dc.sh up` posts (tenant acme, type `dc.probe`): stored and
/// counted like any activity, but in no ledger, so the ledger checks and the live check skip them.
pub const PROBE_KEY_PREFIX: &str = "dc-probe-";

pub fn is_probe(key: &str) -> bool {
    key.starts_with(PROBE_KEY_PREFIX)
}

/// A `conflict` dead letter of a key the run raced on purpose: the loser of the conflict rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictLetter {
    pub tenant: String,
    pub key: String,
    /// The loser's `enqueuedAt` (its envelope's), in milliseconds since the epoch.
    pub enqueued_at_millis: Option<i64>,
    /// The datacenter that accepted the loser (`accepted-dc` header).
    pub accepted_dc: Option<String>,
    /// The loser's `payload-fingerprint` header.
    pub fingerprint: Option<String>,
    /// The loser's activity as it was sent.
    pub activity: Value,
}

/// Violations of one kind: how many, and the first few, described.
#[derive(Debug, Default, Clone)]
pub struct Violations {
    pub count: usize,
    pub examples: Vec<String>,
}

impl Violations {
    pub fn add(&mut self, example: impl Into<String>) {
        self.count += 1;
        if self.examples.len() < 8 {
            self.examples.push(example.into());
        }
    }
}

/// Everything the checker found, by check.
#[derive(Debug, Default)]
pub struct Checked {
    /// Stored activities, readiness probes not counted.
    pub stored: usize,
    /// Readiness probes stored (datacenter drill).
    pub probes: usize,
    /// `conflict` dead letters of the keys raced on purpose (`Inputs::conflicts`).
    pub conflict_letters: Vec<ConflictLetter>,
    pub stored_unanswered: usize,
    pub lost: Violations,
    pub duplicated: Violations,
    pub altered: Violations,
    pub phantom: Violations,
    pub refused_but_stored: Violations,
    pub counter_mismatches: Violations,
    pub mark_mismatches: Violations,
    pub live_missed: Violations,
    pub live_leaks: Violations,
    pub live_phantom: Violations,
    pub live_duplicates_dropped: usize,
    pub live_events: usize,
    pub live_backfilled: usize,
    pub live_reconnects: u32,
    pub live_truncated: u32,
    /// Reconnects the server refused, by status (e.g. 503 while the store cannot replay).
    pub live_refusals: BTreeMap<u16, usize>,
    pub dlq_entries: usize,
    pub dlq_unexpected: Violations,
    pub dlq_missing: Violations,
    pub dlq_wrong_error: Violations,
    pub dlq_duplicates: usize,
    pub invalid_wrong_status: Violations,
    /// Valid posts answered 503 without `Retry-After` (clients would not know when to retry).
    pub unavailable_without_retry_after: Violations,
    pub invalid_dropped: Violations,
    pub invalid_by_status: BTreeMap<String, usize>,
    /// Per (tenant, type) where they differ: MongoDB's count minus the Redis counter.
    pub counter_gaps: BTreeMap<(String, String), i64>,
    /// Per (tenant, type): stored activities whose idempotency mark is missing.
    pub unmarked: BTreeMap<(String, String), i64>,
}

/// Whether what Redis lost, it lost together: for every tenant and type, the counter is short by
/// exactly the number of stored activities without a mark (the consumer sets both in one script,
/// so a failover that loses the script's writes loses both). Marks of another value are not this.
pub fn lost_together(checked: &Checked) -> bool {
    let unmarked_total: i64 = checked.unmarked.values().sum();
    unmarked_total == checked.mark_mismatches.count as i64
        && checked
            .counter_gaps
            .iter()
            .all(|(key, gap)| *gap > 0 && checked.unmarked.get(key).copied().unwrap_or(0) == *gap)
        && checked
            .unmarked
            .iter()
            .all(|(key, missing)| checked.counter_gaps.get(key).copied().unwrap_or(0) == *missing)
}

impl Checked {
    /// (name, violations) of every check that can fail the run.
    pub fn checks(&self) -> Vec<(&'static str, &Violations)> {
        vec![
            ("lost (202 but not stored)", &self.lost),
            ("duplicated (stored twice)", &self.duplicated),
            ("fields altered", &self.altered),
            ("stored but never sent", &self.phantom),
            ("stored although refused", &self.refused_but_stored),
            ("counter mismatches", &self.counter_mismatches),
            ("idempotency mark mismatches", &self.mark_mismatches),
            ("live events missed", &self.live_missed),
            ("cross-tenant leaks", &self.live_leaks),
            ("live events of nothing stored", &self.live_phantom),
            ("DLQ entries not injected", &self.dlq_unexpected),
            ("injected poison not in the DLQ", &self.dlq_missing),
            ("DLQ entries without their error", &self.dlq_wrong_error),
            (
                "invalid requests with a wrong status",
                &self.invalid_wrong_status,
            ),
            ("invalid requests dropped", &self.invalid_dropped),
            (
                "503 without Retry-After",
                &self.unavailable_without_retry_after,
            ),
        ]
    }
}

/// What the checker needs to know of the run.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub workload: &'a WorkloadReport,
    pub poison: &'a [InjectedPoison],
    pub live: &'a [LiveClient],
    /// When the API was down on purpose (connections may drop then).
    pub api_down: &'a [Window],
    /// Keys raced on purpose with two bodies (datacenter drill): their `conflict` dead letters are
    /// expected, and collected for the conflict rule's check.
    pub conflicts: &'a HashSet<(String, String)>,
}

pub async fn read_activities(stores: &Stores) -> anyhow::Result<Vec<Document>> {
    let client = mongodb::Client::with_uri_str(&stores.mongo_uri).await?;
    let documents: Vec<Document> = client
        .database(DATABASE)
        .collection::<Document>(COLLECTION)
        .find(mongodb::bson::doc! {})
        .await?
        .try_collect()
        .await?;
    Ok(documents)
}

/// The checker's own Redis connection: one node, or a Redis Cluster (each command routed to the
/// node that owns its keys' slot; a command's keys must share one, as one tenant's do).
pub enum RedisReader {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisReader {
    fn req_packed_command<'a>(
        &'a mut self,
        command: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisReader::Single(connection) => connection.req_packed_command(command),
            RedisReader::Cluster(connection) => connection.req_packed_command(command),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisReader::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisReader::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisReader::Single(connection) => connection.get_db(),
            RedisReader::Cluster(connection) => connection.get_db(),
        }
    }
}

pub async fn redis(stores: &Stores) -> anyhow::Result<RedisReader> {
    Ok(match &stores.redis {
        RedisTarget::Single(url) => RedisReader::Single(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?,
        ),
        RedisTarget::Cluster(seeds) => RedisReader::Cluster(
            redis::cluster::ClusterClient::new(seeds.clone())?
                .get_async_connection()
                .await?,
        ),
    })
}

pub async fn counters(
    connection: &mut RedisReader,
    tenant: &str,
) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(redis::cmd("HGETALL")
        .arg(format!("analytics:{{{tenant}}}"))
        .query_async(connection)
        .await?)
}

/// Records not yet processed (and committed) by the consumer groups, over the main and retry topics.
pub fn consumer_lag(brokers: &str) -> anyhow::Result<i64> {
    let mut total = 0;
    let mut stages = vec![(TOPIC.to_owned(), GROUP.to_owned())];
    for (step, topic) in RETRY_TOPICS.iter().enumerate() {
        stages.push(((*topic).to_owned(), format!("{GROUP}.retry.{}", step + 1)));
    }
    for (topic, group) in stages {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .set("log_level", "3")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            partitions.add_partition(&topic, partition);
        }
        let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
        for element in committed.elements() {
            let (low, high) =
                consumer.fetch_watermarks(&topic, element.partition(), Duration::from_secs(10))?;
            let position = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            total += (high - position).max(0);
        }
    }
    Ok(total)
}

/// When the drain counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainUntil {
    /// No lag, and the counters add up to the store.
    CountersMatch,
    /// No lag, and the store's count the same twice: after a Redis master failover, which may have
    /// lost counts with their marks for good, the counters cannot be waited for (the checker says
    /// what the failover lost).
    StoreSettled,
}

/// Waits until the consumers have committed everything and the store settled (`until`), or
/// `within` passes. Returns whether it drained. MongoDB is only asked once the lag is 0, one query
/// at a time (an abandoned query keeps FerretDB busy), so a slow store is not buried in checks.
pub async fn wait_for_drain(env: &Env, within: Duration, until: DrainUntil) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut calm = 0;
    let mut last_stored = None;
    let mut last_print = tokio::time::Instant::now();
    let stores = env.stores();
    let mongo = match mongodb::Client::with_uri_str(env.mongo_uri()).await {
        Ok(client) => client.database(DATABASE).collection::<Document>(COLLECTION),
        Err(_) => return false,
    };
    while tokio::time::Instant::now() < deadline {
        let brokers = env.kafka_brokers();
        let lag = tokio::task::spawn_blocking(move || consumer_lag(&brokers))
            .await
            .ok()
            .and_then(Result::ok);
        let balanced = if lag == Some(0) {
            async {
                let stored = mongo.count_documents(mongodb::bson::doc! {}).await? as i64;
                let mut connection = redis(&stores).await?;
                let mut counted = 0;
                for tenant in TENANTS {
                    counted += counters(&mut connection, tenant.id)
                        .await?
                        .values()
                        .sum::<i64>();
                }
                anyhow::Ok((stored, counted))
            }
            .await
            .ok()
        } else {
            None
        };
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = tokio::time::Instant::now();
            println!(
                "faults: t={:>6.1}s  draining: lag {lag:?}, (stored, counted) {balanced:?}",
                env.clock.secs()
            );
        }
        let settled = match until {
            DrainUntil::CountersMatch => {
                balanced.is_some_and(|(stored, counted)| stored == counted)
            }
            DrainUntil::StoreSettled => {
                let stored = balanced.map(|(stored, _)| stored);
                let same = stored.is_some() && stored == last_stored;
                last_stored = stored;
                same
            }
        };
        if settled {
            calm += 1;
            if calm >= 2 {
                return true;
            }
        } else {
            calm = 0;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

/// `(tenant, id)` of every stored activity: what the live clients must have seen.
pub async fn read_ids(stores: &Stores) -> anyhow::Result<Vec<(String, String)>> {
    let client = mongodb::Client::with_uri_str(&stores.mongo_uri).await?;
    let documents: Vec<Document> = client
        .database(DATABASE)
        .collection::<Document>(COLLECTION)
        .find(mongodb::bson::doc! {})
        .projection(mongodb::bson::doc! {"_id": 1, "tenantId": 1, "idempotencyKey": 1})
        .await?
        .try_collect()
        .await?;
    Ok(documents
        .iter()
        .filter(|document| !is_probe(document.get_str("idempotencyKey").unwrap_or_default()))
        .filter_map(|document| {
            Some((
                document.get_str("tenantId").ok()?.to_owned(),
                document.get_object_id("_id").ok()?.to_hex(),
            ))
        })
        .collect())
}

/// Every record of the DLQ topic, with its headers.
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub headers: HashMap<String, String>,
    /// The record's value as JSON (the original envelope), when it is JSON.
    pub value: Option<Value>,
}

pub fn read_dlq(brokers: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "faults-checker")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in 0..PARTITIONS {
        let (low, high) =
            consumer.fetch_watermarks(DLQ_TOPIC, partition, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(DLQ_TOPIC, partition, Offset::Offset(low))?;
            remaining.insert(partition, high);
        }
    }
    let mut dead = Vec::new();
    if remaining.is_empty() {
        return Ok(dead);
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let mut headers = HashMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                headers.insert(
                    header.key.to_owned(),
                    header
                        .value
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        if let Some(high) = remaining.get(&message.partition()) {
            if message.offset() + 1 >= *high {
                remaining.remove(&message.partition());
            }
        }
        dead.push(DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            headers,
            value: message
                .payload()
                .and_then(|payload| serde_json::from_slice(payload).ok()),
        });
    }
    anyhow::ensure!(remaining.is_empty(), "reading the DLQ timed out");
    Ok(dead)
}

/// Records of `topic` whose `idempotency-key` header is in `keys`, with where they sit and the main
/// group's committed offset of their partition (forensics for a lost activity).
fn find_in_topic(
    brokers: &str,
    topic: &str,
    keys: &HashSet<String>,
) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let mut committed_query = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        committed_query.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(committed_query, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in 0..PARTITIONS {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            remaining.insert(partition, high);
        }
    }
    let mut found = Vec::new();
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let key = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == "idempotency-key")
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        });
        if let Some(key) = key.filter(|key| keys.contains(key)) {
            let group_at = committed
                .elements_for_topic(topic)
                .iter()
                .find(|element| element.partition() == message.partition())
                .map(|element| format!("{:?}", element.offset()));
            found.push(format!(
                "{key} is in {topic}[{}] at offset {} (the group committed {})",
                message.partition(),
                message.offset(),
                group_at.unwrap_or_else(|| "nothing".to_owned())
            ));
        }
        if let Some(high) = remaining.get(&message.partition()) {
            if message.offset() + 1 >= *high {
                remaining.remove(&message.partition());
            }
        }
    }
    if found.is_empty() {
        found.push(format!("none of {keys:?} is in {topic}"));
    }
    Ok(found)
}

/// Numbers compare by value (BSON may store 3 as Int32 and the client sent 3 as an integer, or 1.5
/// as a double either way); everything else structurally.
fn same_json(expected: &Value, stored: &Value) -> bool {
    match (expected, stored) {
        (Value::Number(left), Value::Number(right)) => match (left.as_i64(), right.as_i64()) {
            (Some(left), Some(right)) => left == right,
            _ => left.as_f64() == right.as_f64(),
        },
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .all(|(key, value)| right.get(key).is_some_and(|other| same_json(value, other)))
        }
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len() && left.iter().zip(right).all(|(a, b)| same_json(a, b))
        }
        _ => expected == stored,
    }
}

/// What differs between what the client sent and the stored document, if anything.
fn compare(sent: &SentActivity, document: &Document) -> Option<String> {
    let stored = Bson::Document(document.clone()).into_relaxed_extjson();
    let mut differences = Vec::new();
    for field in ["actorId", "actorName", "type"] {
        if sent.body[field] != stored[field] {
            differences.push(format!(
                "{field}: sent {} stored {}",
                sent.body[field], stored[field]
            ));
        }
    }
    let sent_entity = sent.body.get("entityId").filter(|value| !value.is_null());
    let stored_entity = stored.get("entityId").filter(|value| !value.is_null());
    if sent_entity != stored_entity {
        differences.push(format!(
            "entityId: sent {sent_entity:?} stored {stored_entity:?}"
        ));
    }
    let empty = Value::Object(Default::default());
    let sent_metadata = sent.body.get("metadata").unwrap_or(&empty);
    let stored_metadata = stored.get("metadata").unwrap_or(&empty);
    if !same_json(sent_metadata, stored_metadata) {
        differences.push(format!(
            "metadata: sent {sent_metadata} stored {stored_metadata}"
        ));
    }
    if stored["tenantId"] != Value::String(sent.tenant.to_owned()) {
        differences.push(format!(
            "tenantId: sent {} stored {}",
            sent.tenant, stored["tenantId"]
        ));
    }
    for field in ["enqueuedAt", "createdAt"] {
        if !matches!(document.get(field), Some(Bson::DateTime(_))) {
            differences.push(format!("{field} missing or not a date"));
        }
    }
    (!differences.is_empty()).then(|| differences.join("; "))
}

pub async fn check(stores: &Stores, inputs: Inputs<'_>) -> anyhow::Result<Checked> {
    let mut checked = Checked::default();
    let all_documents = read_activities(stores).await?;
    // The probes count in Redis like any activity; no ledger or live client knows them.
    let documents: Vec<Document> = all_documents
        .iter()
        .filter(|document| !is_probe(document.get_str("idempotencyKey").unwrap_or_default()))
        .cloned()
        .collect();
    checked.stored = documents.len();
    checked.probes = all_documents.len() - documents.len();

    // Stored documents by (tenant, key), and by the nonce every activity carries in its metadata.
    let mut by_key: HashMap<(String, String), Vec<&Document>> = HashMap::new();
    let mut by_nonce: HashMap<String, Vec<&Document>> = HashMap::new();
    for document in &documents {
        let tenant = document.get_str("tenantId").unwrap_or_default().to_owned();
        let key = document
            .get_str("idempotencyKey")
            .unwrap_or_default()
            .to_owned();
        by_key.entry((tenant, key)).or_default().push(document);
        if let Some(nonce) = document
            .get_document("metadata")
            .ok()
            .and_then(|metadata| metadata.get_str("nonce").ok())
        {
            by_nonce.entry(nonce.to_owned()).or_default().push(document);
        }
    }

    // 1. The ledger against the store.
    let mut lost_keys: Vec<(String, String)> = Vec::new();
    let mut accounted: HashSet<(String, String)> = HashSet::new();
    for sent in &inputs.workload.activities {
        let found: Vec<&Document> = match &sent.key {
            Some(key) => by_key
                .get(&(sent.tenant.to_owned(), key.clone()))
                .cloned()
                .unwrap_or_default(),
            None => by_nonce.get(&sent.nonce).cloned().unwrap_or_default(),
        };
        for document in &found {
            accounted.insert((
                document.get_str("tenantId").unwrap_or_default().to_owned(),
                document
                    .get_str("idempotencyKey")
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        let name = format!(
            "{}/{}",
            sent.tenant,
            sent.key.as_deref().unwrap_or(&sent.nonce)
        );
        if found.len() > 1 {
            checked
                .duplicated
                .add(format!("{name} stored {} times", found.len()));
        }
        match (&sent.outcome, found.first()) {
            (Outcome::Acked, None) => {
                lost_keys.push((sent.tenant.to_owned(), sent.key.clone().unwrap_or_default()));
                checked.lost.add(format!(
                    "{name}: 202 at t={:.1}s after {} post(s), not in MongoDB",
                    sent.acked_at.unwrap_or_default(),
                    sent.posts
                ))
            }
            // A raced body refused (422) is stored under its key: the other body is.
            (Outcome::Refused(status), Some(_)) if !sent.conflict => checked
                .refused_but_stored
                .add(format!("{name}: answered {status}, yet stored")),
            (Outcome::Unanswered, Some(_)) => checked.stored_unanswered += 1,
            _ => {}
        }
        // Of a raced key only one body is stored; the conflict rule's check says which.
        if let Some(document) = found.first().filter(|_| !sent.conflict) {
            if let Some(difference) = compare(sent, document) {
                checked.altered.add(format!("{name}: {difference}"));
            }
        }
    }
    for ((tenant, key), found) in &by_key {
        if !accounted.contains(&(tenant.clone(), key.clone())) {
            checked.phantom.add(format!(
                "{tenant}/{key} ({} document(s)) was never sent",
                found.len()
            ));
        }
    }

    // 2. Counters: Redis against MongoDB, per tenant and type.
    let mut connection = redis(stores).await?;
    if !lost_keys.is_empty() {
        // Where did they go? Look for them in the topic and in Redis, for whoever debugs this.
        lost_keys.truncate(8);
        let brokers = stores.brokers.clone();
        let wanted: HashSet<String> = lost_keys.iter().map(|(_, key)| key.clone()).collect();
        let found = tokio::task::spawn_blocking(move || find_in_topic(&brokers, TOPIC, &wanted))
            .await?
            .unwrap_or_else(|error| vec![format!("reading {TOPIC} failed: {error:#}")]);
        for line in found {
            checked.lost.examples.push(format!("  forensics: {line}"));
        }
        for (tenant, key) in &lost_keys {
            let mark: Option<String> = redis::cmd("GET")
                .arg(format!("idempotency:{{{tenant}}}:{key}"))
                .query_async(&mut connection)
                .await?;
            checked.lost.examples.push(format!(
                "  forensics: Redis mark of {tenant}/{key}: {mark:?}"
            ));
        }
    }
    let mut stored_counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for document in &all_documents {
        *stored_counts
            .entry((
                document.get_str("tenantId").unwrap_or_default().to_owned(),
                document.get_str("type").unwrap_or_default().to_owned(),
            ))
            .or_default() += 1;
    }
    for tenant in TENANTS {
        let redis_counts = counters(&mut connection, tenant.id).await?;
        let mut types: HashSet<&String> = redis_counts.keys().collect();
        for (stored_tenant, kind) in stored_counts.keys() {
            if stored_tenant == tenant.id {
                types.insert(kind);
            }
        }
        for kind in types {
            let in_redis = redis_counts.get(kind).copied().unwrap_or(0);
            let in_mongo = stored_counts
                .get(&(tenant.id.to_owned(), kind.clone()))
                .copied()
                .unwrap_or(0);
            if in_redis != in_mongo {
                checked
                    .counter_gaps
                    .insert((tenant.id.to_owned(), kind.clone()), in_mongo - in_redis);
                checked.counter_mismatches.add(format!(
                    "{}/{kind}: Redis counts {in_redis}, MongoDB holds {in_mongo}",
                    tenant.id
                ));
            }
        }
    }

    // 3. Idempotency marks: one per stored activity, holding its document id and fingerprint. One
    // MGET per tenant and chunk: a tenant's keys share a hash slot, so it also runs on a cluster.
    let mut by_tenant: BTreeMap<&str, Vec<&Document>> = BTreeMap::new();
    for document in &all_documents {
        by_tenant
            .entry(document.get_str("tenantId").unwrap_or_default())
            .or_default()
            .push(document);
    }
    for chunk in by_tenant
        .values()
        .flat_map(|documents| documents.chunks(500))
    {
        let keys: Vec<String> = chunk
            .iter()
            .map(|document| {
                format!(
                    "idempotency:{{{}}}:{}",
                    document.get_str("tenantId").unwrap_or_default(),
                    document.get_str("idempotencyKey").unwrap_or_default()
                )
            })
            .collect();
        let marks: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await?;
        for ((document, key), mark) in chunk.iter().zip(&keys).zip(marks) {
            let id = document
                .get_object_id("_id")
                .map(|id| id.to_hex())
                .unwrap_or_default();
            // `<document id>:<payload fingerprint>`, as the stored document says.
            let expected = match document.get_str("payloadFingerprint") {
                Ok(fingerprint) => format!("{id}:{fingerprint}"),
                Err(_) => id.clone(),
            };
            if mark.is_none() {
                *checked
                    .unmarked
                    .entry((
                        document.get_str("tenantId").unwrap_or_default().to_owned(),
                        document.get_str("type").unwrap_or_default().to_owned(),
                    ))
                    .or_default() += 1;
            }
            if mark.as_deref() != Some(expected.as_str()) {
                checked
                    .mark_mismatches
                    .add(format!("{key}: mark {mark:?}, stored document {id}"));
            }
        }
    }

    // 4. Live clients: each saw every stored activity of its tenant, nothing of another tenant, and
    // nothing that is not stored.
    let mut ids_by_tenant: HashMap<&str, HashMap<String, &Document>> = HashMap::new();
    for document in &documents {
        if let Ok(id) = document.get_object_id("_id") {
            ids_by_tenant
                .entry(document.get_str("tenantId").unwrap_or_default())
                .or_default()
                .insert(id.to_hex(), document);
        }
    }
    let empty = HashMap::new();
    for client in inputs.live {
        let seen = client.seen.lock().expect("seen");
        checked.live_events += seen.events.len();
        checked.live_duplicates_dropped += seen.events.len() - seen.ids.len();
        checked.live_reconnects += seen.connects.saturating_sub(1);
        checked.live_truncated += seen.truncated;
        for status in &seen.refusals {
            *checked.live_refusals.entry(*status).or_default() += 1;
        }
        let stored = ids_by_tenant.get(client.tenant.id).unwrap_or(&empty);
        for event in &seen.events {
            if event.via == Via::Backfill {
                checked.live_backfilled += 1;
            }
            if is_probe(&event.key) && event.tenant == client.tenant.id {
                continue;
            }
            if event.tenant != client.tenant.id {
                checked.live_leaks.add(format!(
                    "client {} got event {} of tenant {:?}",
                    client.name, event.id, event.tenant
                ));
                continue;
            }
            match stored.get(&event.id) {
                None => checked.live_phantom.add(format!(
                    "client {} got event {} (key {}) that is not stored",
                    client.name, event.id, event.key
                )),
                Some(document) => {
                    let stored_key = document.get_str("idempotencyKey").unwrap_or_default();
                    // A raced key's loser may have been stored and announced before the winner
                    // replaced it (the conflict rule): its event then names the loser's body.
                    let raced = inputs
                        .conflicts
                        .contains(&(event.tenant.clone(), event.key.clone()));
                    let data_matches = raced
                        || event.data.as_ref().is_none_or(|data| {
                            data["type"].as_str() == document.get_str("type").ok()
                                && data["actorId"].as_str() == document.get_str("actorId").ok()
                        });
                    if stored_key != event.key || !data_matches {
                        checked.live_phantom.add(format!(
                            "client {} got event {} for key {} whose stored document differs",
                            client.name, event.id, event.key
                        ));
                    }
                }
            }
        }
        for (id, document) in stored {
            if !seen.ids.contains(id) {
                checked.live_missed.add(format!(
                    "client {} never got {} (key {})",
                    client.name,
                    id,
                    document.get_str("idempotencyKey").unwrap_or_default()
                ));
            }
        }
    }

    // 5. The DLQ: the injected poison, each with its error, and nothing else.
    let brokers = stores.brokers.clone();
    let dead = tokio::task::spawn_blocking(move || read_dlq(&brokers)).await??;
    checked.dlq_entries = dead.len();
    let injected: HashMap<&str, &InjectedPoison> = inputs
        .poison
        .iter()
        .map(|poison| (poison.id.as_str(), poison))
        .collect();
    let mut found: HashMap<&str, usize> = HashMap::new();
    for letter in &dead {
        let error = letter.headers.get("dlq-error").cloned().unwrap_or_default();
        let class = letter
            .headers
            .get("dlq-error-class")
            .cloned()
            .unwrap_or_default();
        if let Some(letter) = conflict_letter(letter, inputs.conflicts) {
            checked.conflict_letters.push(letter);
            continue;
        }
        let Some(poison) = letter
            .headers
            .get(POISON_HEADER)
            .and_then(|id| injected.get(id.as_str()))
        else {
            checked.dlq_unexpected.add(format!(
                "{}:{} key {:?} class {class:?}: {error}",
                letter.partition,
                letter.offset,
                letter.headers.get("idempotency-key")
            ));
            continue;
        };
        *found.entry(poison.id.as_str()).or_default() += 1;
        if class != "poison"
            || !error
                .to_lowercase()
                .contains(&poison.error_contains.to_lowercase())
        {
            checked.dlq_wrong_error.add(format!(
                "{} ({}): class {class:?}, error {error:?} (expected class \"poison\" and an error naming {:?})",
                poison.id, poison.kind, poison.error_contains
            ));
        }
    }
    for poison in inputs.poison {
        match found.get(poison.id.as_str()) {
            None if poison.acknowledged => checked.dlq_missing.add(format!(
                "{} ({}) injected at t={:.1}s",
                poison.id, poison.kind, poison.at
            )),
            Some(count) => checked.dlq_duplicates += count - 1,
            None => {}
        }
    }

    // 6. Every 503 to a valid post says when to retry.
    for sample in &inputs.workload.post_samples {
        if sample.answer == "503" && !sample.retry_after {
            checked
                .unavailable_without_retry_after
                .add(format!("a post sent at t={:.1}s", sample.at));
        }
    }

    // 7. Invalid requests: the documented 4xx, no 5xx, no dropped connection while the API was up.
    for request in &inputs.workload.invalid {
        let label = request
            .got
            .map_or_else(|| "no answer".to_owned(), |status| status.to_string());
        *checked.invalid_by_status.entry(label.clone()).or_default() += 1;
        if request.got != Some(request.expected) {
            checked.invalid_wrong_status.add(format!(
                "{}: expected {}, got {label}",
                request.case, request.expected
            ));
        }
        for at in &request.drops {
            if !inputs
                .api_down
                .iter()
                .any(|window| window.contains(*at, 2.0))
            {
                checked.invalid_dropped.add(format!(
                    "{}: connection dropped at t={at:.1}s while the API was up",
                    request.case
                ));
            }
        }
    }
    Ok(checked)
}

/// The dead letter as a `ConflictLetter` if it is a `conflict` one of a key in `raced`.
fn conflict_letter(
    letter: &DeadLetter,
    raced: &HashSet<(String, String)>,
) -> Option<ConflictLetter> {
    if letter.headers.get("dlq-error-class").map(String::as_str) != Some("conflict") {
        return None;
    }
    let value = letter.value.as_ref()?;
    let tenant = value["tenantId"].as_str()?.to_owned();
    let key = value["idempotencyKey"].as_str()?.to_owned();
    if !raced.contains(&(tenant.clone(), key.clone())) {
        return None;
    }
    let enqueued_at_millis = value["enqueuedAt"]
        .as_str()
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.timestamp_millis());
    Some(ConflictLetter {
        tenant,
        key,
        enqueued_at_millis,
        accepted_dc: letter.headers.get("accepted-dc").cloned(),
        fingerprint: letter.headers.get("payload-fingerprint").cloned(),
        activity: value["activity"].clone(),
    })
}

/// The pure parts, run by `--self-checks` and at the start of every run.
pub mod checks {
    use super::*;

    pub fn losses_together_are_told_from_drift() {
        let key = |tenant: &str, kind: &str| (tenant.to_owned(), kind.to_owned());
        let mut checked = Checked::default();
        assert!(lost_together(&checked), "nothing lost");
        checked.counter_gaps.insert(key("acme", "login"), 2);
        checked.unmarked.insert(key("acme", "login"), 2);
        checked.mark_mismatches.count = 2;
        assert!(lost_together(&checked), "two marks with their two counts");
        checked.unmarked.insert(key("acme", "login"), 1);
        assert!(!lost_together(&checked), "a count lost without its mark");
        checked.unmarked.insert(key("acme", "login"), 2);
        checked.counter_gaps.insert(key("acme", "share"), 1);
        assert!(
            !lost_together(&checked),
            "a count lost where no mark of its type is"
        );
        checked.counter_gaps.remove(&key("acme", "share"));
        checked.unmarked.insert(key("acme", "login"), 2);
        checked.mark_mismatches.count = 3;
        assert!(!lost_together(&checked), "a mark of another value");
        checked.mark_mismatches.count = 2;
        checked.counter_gaps.insert(key("globex", "share"), -1);
        assert!(!lost_together(&checked), "a count too many");
        checked.counter_gaps.remove(&key("globex", "share"));
        checked.unmarked.insert(key("globex", "share"), 1);
        checked.mark_mismatches.count = 3;
        assert!(!lost_together(&checked), "a mark lost without its count");
    }
}
