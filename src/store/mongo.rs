use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::IntoFuture;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{self, doc, oid::ObjectId, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::StoreOutage;
use crate::config::MongoSettings;
use crate::domain::{
    AcceptanceRank, ActivityEnvelope, IdempotencyKey, NewActivity, PayloadFingerprint, TenantId,
    ACTIVITY_SCHEMA_ID,
};
use crate::failures::RecordFailure;

/// MongoDB's "duplicate key" error: the unique (tenant, key) index already holds this activity.
const DUPLICATE_KEY: i32 = 11000;
/// MongoDB error codes that fail the same way on every attempt: such a record goes to the DLQ at once.
/// Anything else refused for one document is treated as transient and retried on the schedule.
const DETERMINISTIC_WRITE_ERRORS: &[i32] = &[
    2,     // BadValue
    9,     // FailedToParse
    14,    // TypeMismatch
    52,    // DollarPrefixedFieldName
    55,    // InvalidDBRef
    56,    // EmptyFieldName
    57,    // DottedFieldName
    121,   // DocumentValidationFailure
    10334, // BSONObjectTooLarge
];
const UNIQUE_KEY_INDEX: &str = "tenant_idempotency_key_unique";
const NEWEST_FIRST_INDEX: &str = "tenant_newest_first";
/// The filters of `GET /activities`, each newest first within a tenant.
const FILTER_INDEXES: [(&str, &str); 3] = [
    ("type", "tenant_type_newest_first"),
    ("actorId", "tenant_actor_newest_first"),
    ("entityId", "tenant_entity_newest_first"),
];

/// An activity as stored: one document per (tenant, idempotency key), enforced by a unique index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredActivity {
    /// Made by the consumer; time-ordered, so it doubles as the SSE event id and the page cursor.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub tenant_id: TenantId,
    pub idempotency_key: IdempotencyKey,
    /// What the tenant sent, digested: a delivery of the same key with another fingerprint is a
    /// conflict, not a duplicate. Absent on documents stored before fingerprints existed; those are
    /// taken to match (there is nothing to compare them with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_fingerprint: Option<PayloadFingerprint>,
    pub actor_id: String,
    pub actor_name: String,
    #[serde(rename = "type")]
    pub activity_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(default)]
    pub metadata: Document,
    pub enqueued_at: bson::DateTime,
    pub created_at: bson::DateTime,
    /// The datacenter whose API accepted the activity (`dc.name` there; the record's `accepted-dc`
    /// header). Absent on documents stored before datacenters were known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_dc: Option<String>,
    /// The activity this one replaced under the same key by the conflict rule (it had been stored
    /// and counted first, and was accepted later): what the Redis step needs to move its mark and
    /// its count to this one, also on a redelivery after a crash between the replacement and that
    /// step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<SupersededActivity>,
}

/// What a document keeps of the activity it replaced (`StoredActivity::supersedes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupersededActivity {
    pub payload_fingerprint: PayloadFingerprint,
    #[serde(rename = "type")]
    pub activity_type: String,
    /// When it had been stored: its mark and count were set then.
    pub created_at: bson::DateTime,
}

impl StoredActivity {
    /// Builds the document for `envelope`. Fails only for metadata BSON cannot hold (an integer
    /// beyond i64), which is deterministic: the record is rejected, not retried.
    pub fn from_envelope(
        envelope: &ActivityEnvelope,
        fingerprint: &PayloadFingerprint,
        created_at: DateTime<Utc>,
    ) -> Result<StoredActivity, String> {
        let activity = &envelope.activity;
        let metadata = match &activity.metadata {
            Some(map) => bson::to_document(map)
                .map_err(|error| format!("metadata cannot be stored: {error}"))?,
            None => Document::new(),
        };
        Ok(StoredActivity {
            id: ObjectId::new(),
            tenant_id: envelope.tenant_id.clone(),
            idempotency_key: envelope.idempotency_key.clone(),
            payload_fingerprint: Some(fingerprint.clone()),
            actor_id: activity.actor_id.clone(),
            actor_name: activity.actor_name.clone(),
            activity_type: activity.activity_type.clone(),
            entity_id: activity.entity_id.clone(),
            metadata,
            enqueued_at: bson::DateTime::from_millis(envelope.enqueued_at.timestamp_millis()),
            created_at: bson::DateTime::from_millis(created_at.timestamp_millis()),
            origin_dc: None,
            supersedes: None,
        })
    }

    /// This activity in the place of `loser`, which the conflict rule gives up: the same document id
    /// (so the read side's pages and the SSE event id stay where they were), and what the Redis step
    /// needs to move `loser`'s mark and count to this one.
    pub fn superseding(mut self, loser: &StoredActivity) -> StoredActivity {
        self.id = loser.id;
        self.supersedes = loser
            .payload_fingerprint
            .clone()
            .map(|payload_fingerprint| SupersededActivity {
                payload_fingerprint,
                activity_type: loser.activity_type.clone(),
                created_at: loser.created_at,
            });
        self
    }

    /// Where this activity stands in the conflict rule. A document stored before datacenters were
    /// known was accepted by this one (`local_dc`); one stored before fingerprints never conflicts
    /// (`matches` takes any payload), so it has no rank.
    pub fn rank<'a>(&'a self, local_dc: &'a str) -> Option<AcceptanceRank<'a>> {
        let fingerprint = self.payload_fingerprint.as_ref()?;
        Some(AcceptanceRank::from_millis(
            self.enqueued_at.timestamp_millis(),
            self.origin_dc.as_deref().unwrap_or(local_dc),
            fingerprint,
        ))
    }

    /// The envelope this document was stored from, as far as the document keeps it (the schema is
    /// the current one; metadata numbers come back as MongoDB's relaxed JSON gives them): to
    /// dead-letter an activity that is no longer in any record at hand.
    pub fn to_envelope(&self) -> ActivityEnvelope {
        let metadata = match bson::Bson::Document(self.metadata.clone()).into_relaxed_extjson() {
            serde_json::Value::Object(map) if !map.is_empty() => Some(map),
            _ => None,
        };
        ActivityEnvelope {
            schema: ACTIVITY_SCHEMA_ID.to_owned(),
            tenant_id: self.tenant_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            enqueued_at: DateTime::<Utc>::from_timestamp_millis(
                self.enqueued_at.timestamp_millis(),
            )
            .unwrap_or_default(),
            activity: NewActivity {
                actor_id: self.actor_id.clone(),
                actor_name: self.actor_name.clone(),
                activity_type: self.activity_type.clone(),
                entity_id: self.entity_id.clone(),
                metadata,
            },
        }
    }

    /// Records `dc` as the datacenter that accepted the activity.
    pub fn accepted_in(mut self, dc: &str) -> StoredActivity {
        self.origin_dc = Some(dc.to_owned());
        self
    }

    /// Whether `fingerprint` is what this document was stored from. A document from before
    /// fingerprints has none and matches any (documented in ARCHITECTURE.md).
    pub fn matches(&self, fingerprint: &PayloadFingerprint) -> bool {
        self.payload_fingerprint
            .as_ref()
            .is_none_or(|stored| stored == fingerprint)
    }

    /// When the consumer stored it.
    pub fn created_at_utc(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(self.created_at.timestamp_millis())
            .unwrap_or_default()
    }

    /// The JSON shape clients see (API responses, SSE events): camelCase, `id` as hex, RFC 3339 times;
    /// `entityId`, `originDc` and `supersedes` only when the document has them.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "id": self.id.to_hex(),
            "tenantId": self.tenant_id.as_str(),
            "idempotencyKey": self.idempotency_key.as_str(),
            "actorId": self.actor_id,
            "actorName": self.actor_name,
            "type": self.activity_type,
            "metadata": bson::Bson::Document(self.metadata.clone()).into_relaxed_extjson(),
            "enqueuedAt": rfc3339(self.enqueued_at),
            "createdAt": rfc3339(self.created_at),
        });
        if let Some(entity_id) = &self.entity_id {
            value["entityId"] = serde_json::Value::String(entity_id.clone());
        }
        if let Some(origin_dc) = &self.origin_dc {
            value["originDc"] = serde_json::Value::String(origin_dc.clone());
        }
        // A live client may have seen the replaced activity's event under this id: this tells it
        // the event corrects that one.
        if let Some(superseded) = &self.supersedes {
            value["supersedes"] = serde_json::json!({ "type": superseded.activity_type });
        }
        value
    }
}

fn rfc3339(time: bson::DateTime) -> String {
    DateTime::<Utc>::from_timestamp_millis(time.timestamp_millis())
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What happened to one document of an unordered `insert_many`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// The unique index already holds this (tenant, key): stored by an earlier delivery.
    AlreadyStored,
    /// The server refused this document for a reason of its own (not an outage): rejected when the
    /// code says it always will, transient otherwise.
    Refused(RecordFailure),
}

/// What `find_stored` found, by (tenant, key).
pub type StoredByKey = HashMap<(TenantId, IdempotencyKey), Result<StoredActivity, CorruptDocument>>;

/// A document found under a (tenant, key) that does not read as an activity: a failure of the
/// records with that key (DLQ), not an outage of the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the document stored under key {idempotency_key} is corrupt: {reason}")]
pub struct CorruptDocument {
    pub idempotency_key: String,
    pub reason: String,
}

/// The classification of one write error's code.
fn refusal(code: i32, message: &str) -> RecordFailure {
    let error = format!("MongoDB refused the document (code {code}): {message}");
    if DETERMINISTIC_WRITE_ERRORS.contains(&code) {
        RecordFailure::rejected(error)
    } else {
        RecordFailure::transient(error)
    }
}

/// The activities collection.
#[derive(Clone)]
pub struct ActivityRepository {
    collection: Collection<StoredActivity>,
    /// The budget of every consumer-side call (`mongo.op_timeout_ms`), client- and server-side.
    op_timeout: Duration,
}

impl ActivityRepository {
    /// Connects lazily (the driver connects on first use); `ensure_indexes` is the first real call.
    pub async fn connect(settings: &MongoSettings) -> anyhow::Result<ActivityRepository> {
        let mut options = ClientOptions::parse(settings.uri.expose_secret())
            .await
            .map_err(|error| {
                anyhow::anyhow!("mongo.uri is not a valid MongoDB connection string: {error}")
            })?;
        options.app_name = Some("activity-pipeline".to_owned());
        options.server_selection_timeout =
            Some(Duration::from_millis(settings.server_selection_timeout_ms));
        let client = Client::with_options(options)?;
        let collection = client
            .database(&settings.database)
            .collection(&settings.collection);
        Ok(ActivityRepository {
            collection,
            op_timeout: Duration::from_millis(settings.op_timeout_ms),
        })
    }

    /// Creates the unique (tenant, key) index and the newest-first index behind `GET /activities`,
    /// if missing.
    pub async fn ensure_indexes(&self) -> Result<(), StoreOutage> {
        let unique = IndexModel::builder()
            .keys(doc! { "tenantId": 1, "idempotencyKey": 1 })
            .options(
                IndexOptions::builder()
                    .name(UNIQUE_KEY_INDEX.to_owned())
                    .unique(true)
                    .build(),
            )
            .build();
        let newest_first = IndexModel::builder()
            .keys(doc! { "tenantId": 1, "_id": -1 })
            .options(
                IndexOptions::builder()
                    .name(NEWEST_FIRST_INDEX.to_owned())
                    .build(),
            )
            .build();
        let mut indexes = vec![unique, newest_first];
        for (field, name) in FILTER_INDEXES {
            let mut keys = doc! { "tenantId": 1 };
            keys.insert(field, 1);
            keys.insert("_id", -1);
            indexes.push(
                IndexModel::builder()
                    .keys(keys)
                    .options(IndexOptions::builder().name(name.to_owned()).build())
                    .build(),
            );
        }
        // One index per command: FerretDB v1.24 drops the connection when a multi-index
        // createIndexes names indexes that already exist, which is every start but the first.
        for index in indexes {
            self.within(
                "createIndexes",
                self.collection.create_index(index).into_future(),
            )
            .await?;
        }
        Ok(())
    }

    /// Inserts `documents` unordered and reports each one's fate, in order. A duplicate key is
    /// "already stored", not an error: that is what makes redelivery safe.
    pub async fn insert_unordered(
        &self,
        documents: &[StoredActivity],
    ) -> Result<Vec<InsertOutcome>, StoreOutage> {
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        let mut outcomes = vec![InsertOutcome::Inserted; documents.len()];
        let inserted = tokio::time::timeout(
            self.op_timeout,
            self.collection
                .insert_many(documents)
                .ordered(false)
                .into_future(),
        )
        .await
        .map_err(|_| {
            // The insert may still have happened: the retry finds the documents stored (duplicate
            // key) and, their fingerprints matching, counts them as duplicates and re-announces them.
            StoreOutage::mongo(format!(
                "no answer to insert_many within mongo.op_timeout_ms ({} ms)",
                self.op_timeout.as_millis()
            ))
        })?;
        match inserted {
            Ok(_) => Ok(outcomes),
            Err(error) => match *error.kind {
                mongodb::error::ErrorKind::InsertMany(ref failure)
                    if failure.write_concern_error.is_none() && failure.write_errors.is_some() =>
                {
                    for write_error in failure.write_errors.iter().flatten() {
                        let Some(outcome) = outcomes.get_mut(write_error.index) else {
                            return Err(StoreOutage::mongo(format!(
                                "insert_many reported an error for document {} of {}",
                                write_error.index,
                                documents.len()
                            )));
                        };
                        *outcome = if write_error.code == DUPLICATE_KEY {
                            InsertOutcome::AlreadyStored
                        } else {
                            InsertOutcome::Refused(refusal(write_error.code, &write_error.message))
                        };
                    }
                    Ok(outcomes)
                }
                _ => Err(StoreOutage::mongo(error)),
            },
        }
    }

    /// The stored activities with the given (tenant, key) pairs, in one query (to compare
    /// fingerprints, and to re-announce ones stored by an earlier delivery whose Redis step did not
    /// happen). A document that does not read as an activity is reported as corrupt under its key,
    /// rather than failing the whole call as if MongoDB were down.
    pub async fn find_stored(
        &self,
        pairs: &[(&TenantId, &IdempotencyKey)],
    ) -> Result<StoredByKey, StoreOutage> {
        use futures::TryStreamExt;

        let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tenant, key) in pairs {
            by_tenant
                .entry(tenant.as_str())
                .or_default()
                .push(key.as_str());
        }
        let branches: Vec<Document> = by_tenant
            .into_iter()
            .map(|(tenant, keys)| doc! { "tenantId": tenant, "idempotencyKey": { "$in": keys } })
            .collect();
        let query = match <[Document; 1]>::try_from(branches) {
            Ok([single]) => single,
            Err(branches) => doc! { "$or": branches },
        };
        let budget = self.op_timeout;
        let documents: Vec<Document> = self
            .within("find stored", async {
                self.collection
                    .clone_with_type::<Document>()
                    .find(query)
                    .max_time(budget)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let mut found = HashMap::with_capacity(documents.len());
        for document in documents {
            let identity = (
                document.get_str("tenantId").ok().map(TenantId::parse),
                document
                    .get_str("idempotencyKey")
                    .ok()
                    .map(IdempotencyKey::parse),
            );
            // The query matched valid ids, so these parse; anything else is not one we asked for.
            let (Some(Ok(tenant)), Some(Ok(key))) = identity else {
                continue;
            };
            let activity =
                bson::from_document::<StoredActivity>(document).map_err(|error| CorruptDocument {
                    idempotency_key: key.to_string(),
                    reason: error.to_string(),
                });
            found.insert((tenant, key), activity);
        }
        Ok(found)
    }

    /// Puts `winner` in the place of `loser` (the conflict rule; `winner` was built by
    /// `StoredActivity::superseding`, so it has `loser`'s id), only while that document still holds
    /// `loser`'s payload: a concurrent delivery (the main topic, a retry topic and a mirrored topic
    /// are read by different stages) may have replaced it first. `false` when it did.
    pub async fn supersede(
        &self,
        loser: &StoredActivity,
        winner: &StoredActivity,
    ) -> Result<bool, StoreOutage> {
        let still_the_loser = doc! {
            "_id": loser.id,
            "payloadFingerprint": loser.payload_fingerprint.as_ref().map(PayloadFingerprint::as_str),
        };
        let replaced = self
            .within(
                "replace the superseded activity",
                self.collection
                    .replace_one(still_the_loser, winner)
                    .into_future(),
            )
            .await?;
        Ok(replaced.matched_count == 1)
    }

    /// Runs one consumer-side call within `mongo.op_timeout_ms`. The driver has no socket timeout,
    /// so a reply that never comes (a blackholed connection shorter than its heartbeat) would
    /// otherwise hang the stage until the group evicts it; a call past its budget is an outage of
    /// the store (breaker, retry in place), like any other failure of the whole call.
    async fn within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreOutage> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(result) => result.map_err(StoreOutage::mongo),
            Err(_) => Err(StoreOutage::mongo(format!(
                "no answer to {what} within mongo.op_timeout_ms ({} ms)",
                self.op_timeout.as_millis()
            ))),
        }
    }

    /// One stored activity by tenant and key, the server giving up after `max_time`.
    pub async fn find_one(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
        max_time: Duration,
    ) -> Result<Option<StoredActivity>, StoreOutage> {
        self.collection
            .find_one(doc! { "tenantId": tenant.as_str(), "idempotencyKey": key.as_str() })
            .max_time(max_time)
            .await
            .map_err(StoreOutage::mongo)
    }

    /// The document with id `id`, whoever's it is: the caller checks the tenant. A filter that is
    /// exactly `{_id: value}` is the one FerretDB's SQLite backend pushes down to its primary key,
    /// so this stays one probe however many documents the collection holds.
    pub async fn find_by_id(
        &self,
        id: ObjectId,
        max_time: Duration,
    ) -> Result<Option<StoredActivity>, StoreOutage> {
        self.collection
            .find_one(doc! { "_id": id })
            .max_time(max_time)
            .await
            .map_err(StoreOutage::mongo)
    }

    /// Activity counts per type for `tenant`: the source of truth behind the Redis counters. The
    /// server gives up after `max_time` when one is given.
    pub async fn count_by_type(
        &self,
        tenant: &TenantId,
        max_time: Option<Duration>,
    ) -> Result<BTreeMap<String, i64>, StoreOutage> {
        let pipeline = [
            doc! { "$match": { "tenantId": tenant.as_str() } },
            doc! { "$group": { "_id": "$type", "count": { "$sum": 1 } } },
        ];
        let groups = self.aggregate(pipeline, max_time).await?;
        Ok(groups
            .into_iter()
            .filter_map(|group| {
                let activity_type = group.get_str("_id").ok()?.to_owned();
                let count = match group.get("count")? {
                    bson::Bson::Int32(count) => i64::from(*count),
                    bson::Bson::Int64(count) => *count,
                    bson::Bson::Double(count) => *count as i64,
                    _ => return None,
                };
                Some((activity_type, count))
            })
            .collect())
    }

    /// Every tenant that has stored activities. The server gives up after `max_time` when one is
    /// given.
    pub async fn tenants(&self, max_time: Option<Duration>) -> Result<Vec<String>, StoreOutage> {
        let groups = self
            .aggregate([doc! { "$group": { "_id": "$tenantId" } }], max_time)
            .await?;
        let mut tenants: Vec<String> = groups
            .into_iter()
            .filter_map(|group| group.get_str("_id").ok().map(str::to_owned))
            .collect();
        tenants.sort();
        Ok(tenants)
    }

    async fn aggregate(
        &self,
        pipeline: impl IntoIterator<Item = Document>,
        max_time: Option<Duration>,
    ) -> Result<Vec<Document>, StoreOutage> {
        use futures::TryStreamExt;

        let mut aggregate = self.collection.aggregate(pipeline);
        if let Some(max_time) = max_time {
            aggregate = aggregate.max_time(max_time);
        }
        aggregate
            .await
            .map_err(StoreOutage::mongo)?
            .try_collect()
            .await
            .map_err(StoreOutage::mongo)
    }

    /// The log of DLQ replays, beside the activities collection.
    pub fn replay_log(&self) -> ReplayLog {
        let name = format!("{}_dlq_replays", self.collection.name());
        ReplayLog {
            collection: self
                .collection
                .client()
                .database(self.collection.namespace().db.as_str())
                .collection(&name),
        }
    }

    /// The log of DLQ purges, beside the activities collection.
    pub fn purge_log(&self) -> PurgeLog {
        let name = format!("{}_dlq_purges", self.collection.name());
        PurgeLog {
            collection: self
                .collection
                .client()
                .database(self.collection.namespace().db.as_str())
                .collection(&name),
        }
    }

    /// The console's audit log, beside the activities collection.
    pub fn audit_log(&self) -> AuditLog {
        let name = format!("{}_console_audit", self.collection.name());
        AuditLog {
            collection: self
                .collection
                .client()
                .database(self.collection.namespace().db.as_str())
                .collection(&name),
        }
    }

    /// Answers when MongoDB answers a `ping`.
    pub async fn ping(&self) -> Result<(), StoreOutage> {
        self.collection
            .client()
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(StoreOutage::mongo)
    }
}

/// Which dead letters `dlq replay` already republished, so a second replay does not repeat them.
#[derive(Clone)]
pub struct ReplayLog {
    collection: Collection<Document>,
}

/// Every document of a small log collection (the replay and purge logs).
async fn every_document(collection: &Collection<Document>) -> Result<Vec<Document>, StoreOutage> {
    use futures::TryStreamExt;

    collection
        .find(doc! {})
        .await
        .map_err(StoreOutage::mongo)?
        .try_collect()
        .await
        .map_err(StoreOutage::mongo)
}

/// Inserts `documents` (log entries keyed by `_id`) in one unordered `insert_many`; one already
/// there (another run recorded it first) is left as it is. Per-entry upserts cost a scan of the
/// collection each on FerretDB/SQLite: a replay of 10,000 slowed from ~100 to ~25 records/s as its
/// log grew. Returns how many were new.
async fn insert_new_entries(
    collection: &Collection<Document>,
    documents: Vec<Document>,
) -> Result<usize, StoreOutage> {
    if documents.is_empty() {
        return Ok(0);
    }
    let count = documents.len();
    match collection.insert_many(documents).ordered(false).await {
        Ok(_) => Ok(count),
        Err(error) => match *error.kind {
            mongodb::error::ErrorKind::InsertMany(ref failure)
                if failure.write_concern_error.is_none()
                    && failure
                        .write_errors
                        .iter()
                        .flatten()
                        .all(|write_error| write_error.code == DUPLICATE_KEY) =>
            {
                Ok(count - failure.write_errors.iter().flatten().count())
            }
            _ => Err(StoreOutage::mongo(error)),
        },
    }
}

impl ReplayLog {
    /// `topic:partition:offset` of every replayed dead letter.
    pub async fn replayed(&self) -> Result<HashSet<String>, StoreOutage> {
        let documents = every_document(&self.collection).await?;
        Ok(documents
            .into_iter()
            .filter_map(|document| document.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// Records replays of dead letters not replayed before (`topic:partition:offset`, tenant,
    /// idempotency key), in one call; one recorded meanwhile by another run is left as it is.
    pub async fn record_new(
        &self,
        entries: &[(String, Option<String>, Option<String>)],
    ) -> Result<usize, StoreOutage> {
        let now = bson::DateTime::now();
        let documents = entries
            .iter()
            .map(|(position, tenant, key)| {
                doc! {
                    "_id": position,
                    "tenantId": tenant.as_deref(),
                    "idempotencyKey": key.as_deref(),
                    "replayedAt": now,
                }
            })
            .collect();
        insert_new_entries(&self.collection, documents).await
    }

    /// Records one replay (idempotent: replaying the same dead letter again updates the time).
    pub async fn record(
        &self,
        position: &str,
        tenant: Option<&str>,
        key: Option<&str>,
    ) -> Result<(), StoreOutage> {
        let entry = doc! {
            "_id": position,
            "tenantId": tenant,
            "idempotencyKey": key,
            "replayedAt": bson::DateTime::now(),
        };
        self.collection
            .replace_one(doc! { "_id": position }, entry)
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(StoreOutage::mongo)
    }
}

/// Which dead letters an operator declared done with `dlq purge`. Kafka cannot delete a record from
/// the middle of a partition, so this log is what hides them from `dlq list` and keeps `dlq replay`
/// off them; the records themselves go when a whole prefix of their partition is purged (or with the
/// DLQ's retention).
#[derive(Clone)]
pub struct PurgeLog {
    collection: Collection<Document>,
}

/// One purged dead letter, as the purge log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgedDeadLetter {
    /// `topic:partition:offset` in the DLQ, the log's `_id`.
    pub position: String,
    pub tenant: Option<String>,
    pub idempotency_key: Option<String>,
    pub purged_at: DateTime<Utc>,
    /// The selection that purged it, as the operator gave it (`tenant=acme older-than=7d`).
    pub selection: String,
    /// The operator's `--reason`, if any.
    pub reason: Option<String>,
}

impl PurgeLog {
    /// Every purged dead letter, by `topic:partition:offset`.
    pub async fn purged(&self) -> Result<BTreeMap<String, PurgedDeadLetter>, StoreOutage> {
        let documents = every_document(&self.collection).await?;
        Ok(documents
            .into_iter()
            .filter_map(|document| {
                let text = |name: &str| document.get_str(name).ok().map(str::to_owned);
                Some(PurgedDeadLetter {
                    position: text("_id")?,
                    tenant: text("tenantId"),
                    idempotency_key: text("idempotencyKey"),
                    purged_at: document
                        .get_datetime("purgedAt")
                        .ok()
                        .and_then(|at| DateTime::from_timestamp_millis(at.timestamp_millis()))
                        .unwrap_or_default(),
                    selection: text("selection").unwrap_or_default(),
                    reason: text("reason"),
                })
            })
            .map(|purged| (purged.position.clone(), purged))
            .collect())
    }

    /// Records purges of dead letters not purged before, in one call; one recorded meanwhile by
    /// another run keeps its entry.
    pub async fn record_new(&self, purged: &[PurgedDeadLetter]) -> Result<usize, StoreOutage> {
        let documents = purged.iter().map(purge_entry).collect();
        insert_new_entries(&self.collection, documents).await
    }
}

fn purge_entry(purged: &PurgedDeadLetter) -> Document {
    doc! {
        "_id": &purged.position,
        "tenantId": purged.tenant.as_deref(),
        "idempotencyKey": purged.idempotency_key.as_deref(),
        "purgedAt": bson::DateTime::from_millis(purged.purged_at.timestamp_millis()),
        "selection": &purged.selection,
        "reason": purged.reason.as_deref(),
    }
}

/// What operators did in the console: one entry per action (replay, purge, export, login, and
/// every refused attempt), newest first. Entries are only ever inserted.
#[derive(Clone)]
pub struct AuditLog {
    collection: Collection<Document>,
}

/// One audited console action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The operator's name, or `-` for an attempt without valid credentials.
    pub operator: String,
    /// `replay`, `replay-preview`, `purge`, `purge-preview`, `export`, `login`, ...
    pub action: String,
    pub at: DateTime<Utc>,
    /// The dead-letter filter the action applied to, as [`crate::ops::dlq::DeadLetterFilter::describe`]
    /// writes it (empty: everything, or not a DLQ action).
    pub filter: String,
    /// What happened: `ok: 3 replayed, 1 skipped`, `refused: viewer`, `failed: ...`.
    pub outcome: String,
}

impl AuditLog {
    /// Appends one entry, the server giving up after `max_time`; returns its id, for
    /// [`AuditLog::set_outcome`] once the action is done.
    pub async fn record(
        &self,
        entry: &AuditEntry,
        max_time: Duration,
    ) -> Result<String, StoreOutage> {
        let id = ObjectId::new();
        let document = doc! {
            "_id": id,
            "operator": &entry.operator,
            "action": &entry.action,
            "at": bson::DateTime::from_millis(entry.at.timestamp_millis()),
            "filter": &entry.filter,
            "outcome": &entry.outcome,
        };
        match tokio::time::timeout(max_time, self.collection.insert_one(document).into_future())
            .await
        {
            Ok(result) => result.map(|_| id.to_hex()).map_err(StoreOutage::mongo),
            Err(_) => Err(StoreOutage::mongo(format!(
                "no answer to the audit insert within {max_time:?}"
            ))),
        }
    }

    /// Sets the outcome of the entry `id` (an action recorded as started, now done).
    pub async fn set_outcome(
        &self,
        id: &str,
        outcome: &str,
        max_time: Duration,
    ) -> Result<(), StoreOutage> {
        let id = ObjectId::parse_str(id).map_err(StoreOutage::mongo)?;
        let update = self
            .collection
            .update_one(doc! { "_id": id }, doc! { "$set": { "outcome": outcome } })
            .into_future();
        match tokio::time::timeout(max_time, update).await {
            Ok(result) => result.map(|_| ()).map_err(StoreOutage::mongo),
            Err(_) => Err(StoreOutage::mongo(format!(
                "no answer to the audit update within {max_time:?}"
            ))),
        }
    }

    /// The newest `limit` entries, newest first.
    pub async fn newest(
        &self,
        limit: i64,
        max_time: Duration,
    ) -> Result<Vec<AuditEntry>, StoreOutage> {
        use futures::TryStreamExt;

        let read = async {
            self.collection
                .find(doc! {})
                .sort(doc! { "_id": -1 })
                .limit(limit)
                .max_time(max_time)
                .await?
                .try_collect::<Vec<Document>>()
                .await
        };
        let documents = tokio::time::timeout(max_time, read)
            .await
            .map_err(|_| {
                StoreOutage::mongo(format!("no answer to the audit read within {max_time:?}"))
            })?
            .map_err(StoreOutage::mongo)?;
        Ok(documents
            .into_iter()
            .map(|document| {
                let text = |name: &str| document.get_str(name).unwrap_or_default().to_owned();
                AuditEntry {
                    operator: text("operator"),
                    action: text("action"),
                    at: document
                        .get_datetime("at")
                        .ok()
                        .and_then(|at| DateTime::from_timestamp_millis(at.timestamp_millis()))
                        .unwrap_or_default(),
                    filter: text("filter"),
                    outcome: text("outcome"),
                }
            })
            .collect())
    }
}

/// A position in a tenant's activities: the id of an activity, which is time-ordered. Clients see it
/// as an opaque string (the page cursor of `GET /activities`, the SSE event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActivityCursor(ObjectId);

impl ActivityCursor {
    /// `None` for anything that is not a cursor this service made.
    pub fn parse(raw: &str) -> Option<ActivityCursor> {
        ObjectId::parse_str(raw).ok().map(ActivityCursor)
    }

    pub fn of(activity: &StoredActivity) -> ActivityCursor {
        ActivityCursor(activity.id)
    }

    pub fn from_id(id: ObjectId) -> ActivityCursor {
        ActivityCursor(id)
    }

    pub fn id(&self) -> ObjectId {
        self.0
    }
}

impl std::fmt::Display for ActivityCursor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0.to_hex())
    }
}

/// The optional equality filters of `GET /activities`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityFilter {
    pub activity_type: Option<String>,
    pub actor_id: Option<String>,
    pub entity_id: Option<String>,
}

/// The read side: always scoped by tenant, every query served by a `(tenantId, ..., _id)` index.
/// Each takes the `max_time` its caller waits (`read.timeout_ms`), sent as `maxTimeMS`: a query the
/// API gave up on stops in the store too, instead of running on for nobody (issue 16).
impl ActivityRepository {
    /// Up to `limit` of the tenant's activities matching `filter`, newest first, strictly older than
    /// `before` and no newer than `through` when given; the server gives up after `max_time`.
    pub async fn newest_first(
        &self,
        tenant: &TenantId,
        filter: &ActivityFilter,
        before: Option<ActivityCursor>,
        through: Option<ActivityCursor>,
        limit: usize,
        max_time: Duration,
    ) -> Result<Vec<StoredActivity>, StoreOutage> {
        use futures::TryStreamExt;

        let mut query = doc! { "tenantId": tenant.as_str() };
        for (field, value) in [
            ("type", &filter.activity_type),
            ("actorId", &filter.actor_id),
            ("entityId", &filter.entity_id),
        ] {
            if let Some(value) = value {
                query.insert(field, value.as_str());
            }
        }
        let mut id_range = Document::new();
        if let Some(ActivityCursor(before)) = before {
            id_range.insert("$lt", before);
        }
        if let Some(ActivityCursor(through)) = through {
            id_range.insert("$lte", through);
        }
        if !id_range.is_empty() {
            query.insert("_id", id_range);
        }
        self.collection
            .find(query)
            .sort(doc! { "_id": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .max_time(max_time)
            .await
            .map_err(StoreOutage::mongo)?
            .try_collect()
            .await
            .map_err(StoreOutage::mongo)
    }

    /// Up to `limit` of the tenant's activities stored after `after`, oldest first (SSE replay); the
    /// server gives up after `max_time`.
    pub async fn stored_after(
        &self,
        tenant: &TenantId,
        after: ActivityCursor,
        limit: usize,
        max_time: Duration,
    ) -> Result<Vec<StoredActivity>, StoreOutage> {
        use futures::TryStreamExt;

        self.collection
            .find(doc! { "tenantId": tenant.as_str(), "_id": { "$gt": after.0 } })
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .max_time(max_time)
            .await
            .map_err(StoreOutage::mongo)?
            .try_collect()
            .await
            .map_err(StoreOutage::mongo)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::ActivityValidator;

    fn envelope(metadata: serde_json::Value) -> ActivityEnvelope {
        let activity = ActivityValidator::new(16 * 1024, 8)
            .validate(json!({"actorId": "u1", "actorName": "Alice", "type": "login", "entityId": "e1", "metadata": metadata}))
            .unwrap();
        ActivityEnvelope::new(
            TenantId::parse("acme").unwrap(),
            IdempotencyKey::parse("k-1").unwrap(),
            activity,
        )
    }

    fn from_envelope(envelope: &ActivityEnvelope) -> Result<StoredActivity, String> {
        let fingerprint = PayloadFingerprint::of(&envelope.activity);
        StoredActivity::from_envelope(envelope, &fingerprint, Utc::now())
    }

    #[test]
    fn documents_carry_tenant_key_fields_and_times() {
        let stored = from_envelope(&envelope(json!({"n": 1, "tags": ["a"]}))).unwrap();
        let document = bson::to_document(&stored).unwrap();
        for field in [
            "_id",
            "tenantId",
            "idempotencyKey",
            "payloadFingerprint",
            "actorId",
            "actorName",
            "type",
            "entityId",
            "metadata",
            "enqueuedAt",
            "createdAt",
        ] {
            assert!(
                document.contains_key(field),
                "{field} missing from {document}"
            );
        }
        assert!(matches!(
            document.get("enqueuedAt"),
            Some(bson::Bson::DateTime(_))
        ));
    }

    #[test]
    fn json_view_round_trips_metadata() {
        let stored = from_envelope(&envelope(
            json!({"n": 1, "f": 1.5, "s": "x", "nested": {"b": true}}),
        ))
        .unwrap();
        let view = stored.to_json();
        assert_eq!(
            view["metadata"],
            json!({"n": 1, "f": 1.5, "s": "x", "nested": {"b": true}})
        );
        assert_eq!(view["id"], stored.id.to_hex());
        assert_eq!(view["entityId"], "e1");
        assert!(view["createdAt"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn unrepresentable_metadata_is_rejected_not_panicked() {
        // The API refuses such integers; build the envelope by hand as a foreign producer could.
        let mut unvalidated = envelope(json!({}));
        unvalidated.activity.metadata = json!({"big": u64::MAX}).as_object().cloned();
        assert!(from_envelope(&unvalidated).is_err());
    }
}
